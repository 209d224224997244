"""The batch pool: the batches drawn from the user's data that every check cycles through."""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from .analysis.batches import nbytes, to_device, type_name
from .errors import TargetError

#: how many batches of the user's data are drawn into the pool the checks cycle through
DEFAULT_MAX_BATCHES = 32
#: device copies of the pool kept on an accelerator, at most this many bytes
DEVICE_POOL_BYTES = 256 << 20
#: batch size used to split a tuple ``(X, y)`` of tensors or a map-style Dataset when ``batch_size`` is not given
DEFAULT_BATCH_SIZE = 64


def draw(data: Any, *, batch_size: Optional[int], seed: int, max_batches: int, where: Optional[str] = None) -> list:
    """At most ``max_batches`` batches of ``data``: a tuple ``(X, y)`` of tensors and a map-style ``Dataset`` are
    shuffled (seeded) and split into batches of ``batch_size`` (default ``DEFAULT_BATCH_SIZE``); anything else is
    iterated as it is."""
    size = batch_size or DEFAULT_BATCH_SIZE
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        return [(x[idx], y[idx]) for idx in _order(x.shape[0], seed).split(size)][:max_batches]
    if is_map_dataset(data):
        return _draw_dataset(data, size, seed, max_batches, where)
    it = iter(data)
    try:
        return list(itertools.islice(it, max_batches))
    finally:
        del it  # shuts DataLoader workers down


def is_map_dataset(data: Any) -> bool:
    """A map-style ``torch.utils.data.Dataset`` (examples by index), which babysitter batches itself."""
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset)


def _order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _draw_dataset(data: Any, batch_size: int, seed: int, max_batches: int, where: Optional[str]) -> list:
    """The first batches of ``DataLoader(data, batch_size, shuffle=True)`` with a generator seeded with ``seed``:
    a DataLoader's order and ``default_collate``, in this process; only the examples needed are read."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        collate_fn=lambda examples: _collate(data, examples, where))
    it = iter(loader)
    try:
        return list(itertools.islice(it, max_batches))
    except TargetError:
        raise
    except Exception as exc:  # any failure of the user's dataset is a target error
        raise TargetError(f"reading examples of {type_name(data)} raised {type(exc).__name__}: {exc}",
                          where=where, field="data") from exc
    finally:
        del it


def _collate(data: Any, examples: list, where: Optional[str]) -> Any:
    try:
        return default_collate(examples)
    except Exception as exc:  # examples that PyTorch's default_collate cannot stack
        raise TargetError(f"batching {type_name(data)} as a DataLoader would (default_collate of "
                          f"{len(examples)} examples) raised {type(exc).__name__}: {exc}", where=where, field="data",
                          hint="give a DataLoader with your own collate_fn: data=DataLoader(dataset, batch_size=..., "
                               "shuffle=True, collate_fn=...)") from exc


class BatchPool:
    """Host batches (as the data yielded them) and their copies on the session's device.

    On an accelerator the copies are kept (up to ``device_bytes``: ``DEVICE_POOL_BYTES``, or the session's share of
    the free memory when that is less), so the probes' hundreds of steps do not pay a host-to-device copy each, as a
    plain loop over preloaded batches would not; on the CPU the pool's own tensors are used, as they are.
    """

    def __init__(self, batches: list, device: torch.device, *, device_bytes: int = DEVICE_POOL_BYTES):
        self.host = batches
        self.device = device
        self.device_bytes = device_bytes
        self._cached: dict[int, Any] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.host)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.host)

    def __getitem__(self, i: int) -> Any:
        return self.host[i]

    def batch(self, i: int) -> Any:
        """Batch ``i`` (cycling) on the device."""
        i %= len(self.host)
        cached = self._cached.get(i)
        if cached is not None:
            return cached
        batch = to_device(self.host[i], self.device)
        if self.device.type != "cpu":
            size = nbytes(batch)
            if self._cached_bytes + size <= self.device_bytes:
                self._cached[i] = batch
                self._cached_bytes += size
        return batch

    def release(self) -> None:
        """Drop the device copies."""
        self._cached.clear()
        self._cached_bytes = 0
