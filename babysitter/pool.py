"""The batch pool: the batches drawn from the user's data that every check cycles through."""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

import torch

from .analysis.batches import nbytes, to_device

#: how many batches of the user's data are drawn into the pool the checks cycle through
DEFAULT_MAX_BATCHES = 32
#: device copies of the pool kept on an accelerator, at most this many bytes
DEVICE_POOL_BYTES = 256 << 20
#: batch size used to split a tuple ``(X, y)`` of tensors when ``batch_size`` is not given
DEFAULT_BATCH_SIZE = 64


def draw(data: Any, *, batch_size: Optional[int], seed: int, max_batches: int) -> list:
    """At most ``max_batches`` batches of ``data``: a tuple ``(X, y)`` of tensors is shuffled (seeded) and split
    into batches of ``batch_size``; anything else is iterated as it is."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(x.shape[0], generator=gen)
        return [(x[idx], y[idx]) for idx in order.split(batch_size or DEFAULT_BATCH_SIZE)][:max_batches]
    it = iter(data)
    try:
        return list(itertools.islice(it, max_batches))
    finally:
        del it  # shuts DataLoader workers down


class BatchPool:
    """Host batches (as the data yielded them) and their copies on the session's device.

    On an accelerator the copies are kept (up to ``DEVICE_POOL_BYTES``), so the probes' hundreds of steps do not
    pay a host-to-device copy each, as a plain loop over preloaded batches would not; on the CPU the pool's own
    tensors are used, as they are.
    """

    def __init__(self, batches: list, device: torch.device):
        self.host = batches
        self.device = device
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
            if self._cached_bytes + size <= DEVICE_POOL_BYTES:
                self._cached[i] = batch
                self._cached_bytes += size
        return batch

    def release(self) -> None:
        """Drop the device copies."""
        self._cached.clear()
        self._cached_bytes = 0
