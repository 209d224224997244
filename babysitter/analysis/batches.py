"""One walker over the nested structures that batches, inputs and outputs come in.

Tensors sit inside tuples, lists, namedtuples and mappings (dicts, and mappings such as Hugging Face's
``BatchEncoding``). Every function here walks them with the same rules, as torchinfo's
``traverse_input_data`` does: containers are rebuilt as their own type where that type can be built from
its items (a namedtuple from its fields, a dict subclass from its items), and as the plain type otherwise;
anything that is not a tensor or a container is a leaf that is passed through unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional, Sequence

import torch


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _rebuild_dict(obj: Mapping, items: list[tuple[Any, Any]]) -> Mapping:
    if type(obj) is dict:
        return dict(items)
    try:
        return type(obj)(dict(items))
    except Exception:  # a mapping whose constructor takes something else: a plain dict holds the same
        return dict(items)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with every tensor ``t`` replaced by ``fn(t)``, containers rebuilt (see the module's rules)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return _rebuild_dict(obj, [(k, map_tensors(fn, v)) for k, v in obj.items()])
    if _is_namedtuple(obj):
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def zip_tensors(fn: Callable[[list[torch.Tensor]], Any], objs: Sequence[Any]) -> Any:
    """Structures of the same shape combined leaf by leaf: ``fn`` gets the list of tensors at one place.
    Non-tensor leaves are taken from the first structure."""
    first = objs[0]
    if isinstance(first, torch.Tensor):
        return fn(list(objs))
    if isinstance(first, Mapping):
        return _rebuild_dict(first, [(k, zip_tensors(fn, [o[k] for o in objs])) for k in first])
    if _is_namedtuple(first):
        return type(first)(*(zip_tensors(fn, list(vs)) for vs in zip(*objs)))
    if isinstance(first, (list, tuple)):
        return type(first)(zip_tensors(fn, list(vs)) for vs in zip(*objs))
    return first


def named_tensors(obj: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor with its path below ``name``: ``name[0]``, ``name['input_ids']``, in structure order."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from named_tensors(v, f"{name}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{name}[{i}]")


def first_tensor(obj: Any) -> Optional[torch.Tensor]:
    """The first tensor in structure order, or None."""
    return next((t for _, t in named_tensors(obj)), None)


def float_tensors(obj: Any, name: str = "") -> list[tuple[str, torch.Tensor]]:
    """The floating-point (and complex) tensors of a structure, with their paths."""
    return [(n, t) for n, t in named_tensors(obj, name) if t.is_floating_point() or t.is_complex()]


def batch_size_of(batch: Any) -> Optional[int]:
    """The leading dimension of the first tensor with at least one dimension, or None."""
    return next((int(t.shape[0]) for _, t in named_tensors(batch) if t.ndim), None)


def nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a structure."""
    return sum(t.numel() * t.element_size() for _, t in named_tensors(obj))


def to_device(obj: Any, device: torch.device) -> Any:
    """Every tensor moved to ``device``; a leaf object with a ``.to`` method (a custom batch class) is moved by it."""
    if not isinstance(obj, (torch.Tensor, Mapping, list, tuple)):
        to = getattr(obj, "to", None)
        if callable(to):
            try:
                return to(device)
            except (TypeError, RuntimeError, ValueError):  # a .to that means something else: left as it is
                return obj
        return obj
    return map_tensors(lambda t: t.to(device, non_blocking=True), obj)


def slice_batch(batch: Any, index: Any, n: int) -> Any:
    """Every tensor whose leading dimension is the batch size ``n`` indexed by ``index`` (a slice or an index
    tensor); other tensors (a shared mask, a scalar) are kept whole."""
    return map_tensors(lambda t: t[index] if t.ndim and t.shape[0] == n else t, batch)


def concat_batches(batches: Sequence[Any]) -> Any:
    """Batches of one structure concatenated along the leading dimension (scalars taken from the first)."""
    return zip_tensors(lambda ts: torch.cat(ts) if ts[0].ndim else ts[0], batches)


def host_copy(obj: Any, limit: int = 1 << 22) -> Any:
    """A detached host copy of a structure, or None when its tensors hold more than ``limit`` elements."""
    if sum(t.numel() for _, t in named_tensors(obj)) > limit:
        return None
    return map_tensors(lambda t: t.detach().to("cpu"), obj)


def type_name(value: Any) -> str:
    """``module.Class`` of a value (just ``Class`` for builtins), for messages."""
    module = type(value).__module__
    return (f"{module}." if module != "builtins" else "") + type(value).__qualname__


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut at ``limit`` characters; a repr that raises gives the type instead."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises must not hide the real message
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(obj: Any) -> str:
    """A short description of a tensor or a structure of tensors, for messages."""
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in list(obj.items())[:6]) + "}"
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__ + "(" + ", ".join(describe(v) for v in obj[:6]) + ")"
    return type_name(obj)


def dense_values(t: torch.Tensor) -> torch.Tensor:
    """The stored values of a sparse tensor (an ``nn.Embedding(sparse=True)`` gradient), or the tensor itself:
    element-wise tests such as ``isfinite`` have no sparse kernel."""
    return t.coalesce().values() if t.is_sparse else t
