"""The session owns the model while checks run: device, seeding, batches, the sandbox and shared evidence."""
from __future__ import annotations

import inspect
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .errors import TargetError
from .instruments.hooks import ModuleStack
from .sandbox import Snapshot
from .target import DEFAULT_BATCH_SIZE, Target, _short, _type_name, default_optimizer

#: how many batches of the user's data are drawn into the pool the checks cycle through
DEFAULT_MAX_BATCHES = 32
#: device copies of the pool kept on an accelerator, at most this many bytes
DEVICE_POOL_BYTES = 256 << 20


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import UsageError

        raise UsageError("--device cuda was asked for, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    return dev


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a batch (tuples, lists, dicts, objects with ``.to``) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return type(obj)((k, to_device(v, device)) for k, v in obj.items()) if type(obj) is not dict else {
            k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    to = getattr(obj, "to", None)
    if callable(to):
        try:
            return to(device)
        except Exception:
            return obj
    return obj


def batch_size_of(batch: Any) -> Optional[int]:
    """The leading dimension of the first tensor found in a batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, dict):
        values = batch.values()
    elif isinstance(batch, (list, tuple)):
        values = batch
    else:
        values = getattr(batch, "values", lambda: ())()
    for v in values:
        n = batch_size_of(v)
        if n is not None:
            return n
    return None


def slice_batch(batch: Any, index: Any, n: int) -> Any:
    """Index every tensor whose leading dimension is the batch size ``n`` (a slice or an index tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch[index] if batch.ndim and batch.shape[0] == n else batch
    if isinstance(batch, dict):
        return type(batch)({k: slice_batch(v, index, n) for k, v in batch.items()}) if type(batch) is dict else \
            {k: slice_batch(v, index, n) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(slice_batch(v, index, n) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(slice_batch(v, index, n) for v in batch)
    return batch


def concat_batches(batches: list) -> Any:
    """Concatenate batches of the same structure along the leading dimension."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches) if first.ndim else first
    if isinstance(first, dict):
        return {k: concat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat_batches(list(vs)) for vs in zip(*batches)))
    if isinstance(first, (list, tuple)):
        return type(first)(concat_batches(list(vs)) for vs in zip(*batches))
    return first


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def lr_of(optimizer: torch.optim.Optimizer) -> Optional[float]:
    lr = optimizer.param_groups[0].get("lr")
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    return lr


class Session:
    """Everything checks use: the model on its device, a pool of batches, forward and loss, optimizers.

    Use it as a context manager: on entry the model is moved and a snapshot is taken; on exit (success,
    error or Ctrl-C) everything is restored and the model moved back.
    """

    def __init__(self, target: Target, *, device: str | torch.device | None = "auto", seed: int = 0,
                 max_batches: int = DEFAULT_MAX_BATCHES, where: Optional[str] = None):
        self.target = target
        self.model = target.model
        self.loss_fn = target.loss_fn
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.max_batches = int(max_batches)
        self.where = where or (f"target '{target.name}'" if target.name else None)
        self.optimizer_source = ("default" if target.optimizer is None else
                                 "instance" if isinstance(target.optimizer, torch.optim.Optimizer) else "factory")
        self._user_optimizer: Optional[torch.optim.Optimizer] = (
            target.optimizer if isinstance(target.optimizer, torch.optim.Optimizer) else None)
        self._pool: list = []
        self._device_pool: dict[int, Any] = {}
        self._device_pool_bytes = 0
        self._evidence: dict[str, Any] = {}
        self._snapshot: Optional[Snapshot] = None
        self.facts: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    # -- sandbox ----------------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        self._snapshot = Snapshot(self.model, self._user_optimizer)
        try:
            self._move_model()
            seed_everything(self.seed)
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot = None
        self._evidence.clear()
        self._device_pool.clear()
        self._device_pool_bytes = 0

    def _move_model(self) -> None:
        devices = {t.device for t in itertools.chain(self.model.parameters(), self.model.buffers())}
        self.model_device = next(iter(devices)) if len(devices) == 1 else None
        if len(devices) > 1:  # a model spread over devices stays where it is
            self.device = torch.device("cuda") if any(d.type == "cuda" for d in devices) else self.device
            return
        if devices and self.model_device != self.device:
            self.model.to(self.device)
        self._snapshot.restore_optimizer()  # puts a user optimizer's state on the parameters' device

    def reset(self) -> None:
        """Back to the state the user handed over (model, optimizer, modes), on the session's device, reseeded."""
        snap = self._snapshot
        snap.restore_model(onto=self.device if self.model_device is not None else None)
        snap.restore_optimizer()
        seed_everything(self.seed)

    # -- data -------------------------------------------------------------------------------------
    def _draw_pool(self) -> list:
        data = self.target.data
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            x, y = data
            bs = self.target.batch_size or DEFAULT_BATCH_SIZE
            gen = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(x.shape[0], generator=gen)
            return [(x[idx], y[idx]) for idx in order.split(bs)][: self.max_batches]
        it = iter(data)
        try:
            return list(itertools.islice(it, self.max_batches))
        finally:
            del it  # shuts DataLoader workers down

    @property
    def pool(self) -> list:
        """The batches drawn from the user's data (on the host, as yielded), at most ``max_batches``."""
        return self._pool

    def batch(self, i: int) -> Any:
        """Batch ``i`` of the pool (cycling), on the session's device.

        On an accelerator the copies are kept (up to ``DEVICE_POOL_BYTES``), so the probes' hundreds of steps do not
        pay a host-to-device copy each, as a plain loop over preloaded batches would not; on the CPU the pool's own
        tensors are used, as they are.
        """
        i %= len(self._pool)
        cached = self._device_pool.get(i)
        if cached is not None:
            return cached
        batch = to_device(self._pool[i], self.device)
        if self.device.type != "cpu":
            size = sum(t.numel() * t.element_size() for _, t in named_tensors(batch))
            if self._device_pool_bytes + size <= DEVICE_POOL_BYTES:
                self._device_pool[i] = batch
                self._device_pool_bytes += size
        return batch

    def batches(self, n: int) -> Iterator[Any]:
        for i in range(n):
            yield self.batch(i)

    # -- running the user's code ------------------------------------------------------------------
    def forward(self, batch: Any) -> tuple[Any, Any]:
        """``(outputs, targets)`` for one batch, through the target's ``forward`` or ``model(*inputs)``."""
        if self.target.forward is not None:
            return self.target.forward(self.model, batch)
        *inputs, targets = batch
        return self.model(*inputs), targets

    def inputs_of(self, batch: Any) -> Optional["ModelInputs"]:
        """The tensors the forward passes to the model on ``batch`` (custom forwards and dict batches included),
        or None when the forward never calls the model; see :func:`_model_inputs`."""
        return _model_inputs(self, batch)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.loss_fn(outputs, targets)

    def forward_loss(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        outputs, targets = self.forward(batch)
        return self.loss(outputs, targets), outputs, targets

    @property
    def optimizer_factory(self) -> Callable[..., torch.optim.Optimizer]:
        opt = self.target.optimizer
        if opt is None:
            return default_optimizer
        if isinstance(opt, torch.optim.Optimizer):
            cls, groups = type(opt), opt.param_groups

            accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}

            def rebuild(params):
                # the group's hyper-parameters, limited to what the constructor takes: torch adds keys of its
                # own to param groups (AdamW's 'decoupled_weight_decay', 'initial_lr' from schedulers)
                hyper = {k: v for k, v in groups[0].items() if k in accepted}
                return cls(list(params), **hyper)

            return rebuild
        return opt

    def make_optimizer(self, params=None) -> torch.optim.Optimizer:
        """A fresh optimizer with the user's settings, over ``params`` (default: the model's parameters).

        With a user-provided optimizer instance, it is that instance, reset to its original state (the
        sandbox restores it at the end).
        """
        if params is None and self._user_optimizer is not None:
            self._snapshot.restore_optimizer()
            return self._user_optimizer
        params = list(self.model.parameters()) if params is None else params
        return self.optimizer_factory(params)

    @property
    def user_lr(self) -> Optional[float]:
        return self.facts.get("user_lr")

    # -- validation of the first batch ------------------------------------------------------------
    def prepare(self) -> None:
        """Draw the batch pool and run the user's code once, turning each failure into a TargetError."""
        t0 = time.perf_counter()
        where = self.where
        try:
            self._pool = self._draw_pool()
        except Exception as exc:
            raise TargetError(f"iterating it raised {type(exc).__name__}: {exc}", where=where, field="data") from exc
        if not self._pool:
            raise TargetError(f"yielded no batch ({_type_name(self.target.data)} is empty)", where=where, field="data")
        batch = self.batch(0)
        if self.target.forward is None:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise TargetError(
                    f"a batch must be (inputs, targets) unless a 'forward' is given; the first batch is "
                    f"{_type_name(batch)}: {_short(batch)}", where=where, field="data",
                    hint="add forward=lambda model, batch: (model(batch['x']), batch['y']) for other shapes")
        stack = ModuleStack(self.model)
        try:
            with stack, torch.no_grad():
                outputs, targets = self._checked_forward(batch)
        except TargetError:
            raise
        except Exception as exc:
            field = "forward" if self.target.forward is not None else "model"
            reached = stack.reached()
            raise TargetError(
                f"the forward pass on the first batch raised {type(exc).__name__}: {exc}"
                + (f"\n  it was executing {reached}" if reached else ""),
                where=where, field=field) from exc
        try:
            with torch.no_grad():
                loss = self.loss(outputs, targets)
        except Exception as exc:
            raise TargetError(f"loss_fn(outputs, targets) raised {type(exc).__name__}: {exc}"
                              f" (outputs: {describe(outputs)}; targets: {describe(targets)})",
                              where=where, field="loss_fn") from exc
        if not isinstance(loss, torch.Tensor):
            raise TargetError(f"loss_fn must return a scalar tensor, it returned {_type_name(loss)}: {_short(loss)}",
                              where=where, field="loss_fn",
                              hint="do not call .item() inside loss_fn; return the tensor")
        if loss.numel() != 1:
            raise TargetError(f"loss_fn must return a scalar tensor, it returned shape {tuple(loss.shape)}",
                              where=where, field="loss_fn", hint="reduce it with .mean() (or reduction='mean')")
        try:
            optimizer = self.make_optimizer()
        except Exception as exc:
            raise TargetError(f"calling the optimizer factory raised {type(exc).__name__}: {exc}",
                              where=where, field="optimizer") from exc
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TargetError(f"the optimizer factory must return a torch.optim.Optimizer, it returned "
                              f"{_type_name(optimizer)}: {_short(optimizer)}", where=where, field="optimizer")
        self.facts.update(
            optimizer=type(optimizer).__name__,
            optimizer_source=self.optimizer_source,
            user_lr=lr_of(optimizer),
            batches=len(self._pool),
            batch_size=batch_size_of(batch),
            parameters=sum(p.numel() for p in self.model.parameters()),
            trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            loss_fn=getattr(self.loss_fn, "__qualname__", None) or type(self.loss_fn).__name__,
            model=type(self.model).__name__,
        )
        self.reset()
        self.timings["prepare"] = time.perf_counter() - t0

    def _checked_forward(self, batch):
        result = self.forward(batch)
        if self.target.forward is not None and not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TargetError(f"forward(model, batch) must return (outputs, targets), it returned "
                              f"{_type_name(result)}: {_short(result)}", where=self.where, field="forward")
        return result

    # -- evidence ---------------------------------------------------------------------------------
    def evidence(self, name: str) -> Any:
        """Shared evidence, computed once per session from the state the user handed over."""
        from .evidence import PROVIDERS

        if name not in self._evidence:
            if name not in PROVIDERS:
                raise KeyError(f"no evidence provider named {name!r}; known: {sorted(PROVIDERS)}")
            t0 = time.perf_counter()
            self.reset()
            try:
                self._evidence[name] = ("ok", PROVIDERS[name](self))
            except Exception as exc:
                self._evidence[name] = ("error", exc)
            finally:
                self.reset()
                self.timings[f"evidence:{name}"] = time.perf_counter() - t0
        kind, value = self._evidence[name]
        if kind == "error":
            raise value
        return value


def describe(obj: Any) -> str:
    """A short description of a tensor or a structure of tensors, for messages."""
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in list(obj.items())[:6]) + "}"
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__ + "(" + ", ".join(describe(v) for v in obj[:6]) + ")"
    return _type_name(obj)


def finite_or_none(x: float) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


# -- what the forward passes to the model ---------------------------------------------------------------
class _Seen(BaseException):
    """Stops a forward once the model's inputs are seen. A BaseException, so that a broad ``except Exception``
    in a user's forward cannot swallow it."""


@dataclass(frozen=True)
class ModelInputs:
    """The tensors that the forward passes to the model on its first call, by name: the parameter names of
    ``model.forward`` for positional arguments (``input 0`` when unknown), keyword names for the others, and
    ``name['key']`` / ``name[i]`` inside dicts and sequences."""

    named: tuple[tuple[str, torch.Tensor], ...]

    def floats(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, t) for n, t in self.named if t.is_floating_point() and t.ndim >= 1 and t.numel() > 1]

    def integers(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, t) for n, t in self.named if not t.is_floating_point() and not t.is_complex()
                and t.dtype != torch.bool and t.ndim >= 1]


def positional_names(model: nn.Module, count: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + [f"input {i}" for i in range(len(names), count)]


def named_tensors(obj: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{name}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{name}[{i}]")


def _model_inputs(session, batch) -> Optional[ModelInputs]:
    """The tensors the forward passes to the model on ``batch``, seen by a forward pre-hook on the model's first
    call, which then stops the forward: the model itself does not run.

    This is what counts for a custom ``forward`` too (dict batches, HuggingFace models), after whatever the
    forward does to the batch. None when the forward never calls the model (it calls ``model.forward`` or
    submodules directly), so that the inputs cannot be seen.
    """
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Seen

    handle = session.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            session.forward(batch)
    except _Seen:
        pass
    finally:
        handle.remove()
    if not seen:
        return None
    names = positional_names(session.model, len(seen["args"]))
    named = [item for n, a in zip(names, seen["args"]) for item in named_tensors(a, n)]
    named += [item for k, v in seen["kwargs"].items() for item in named_tensors(v, k)]
    return ModelInputs(tuple(named))
