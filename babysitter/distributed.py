"""Runs under ``torchrun``: the process group, this rank's place in it, this rank's share of the data, and the
collectives that make the checklist's passes one data-parallel run (:class:`Ranks`).

babysitter runs on PyTorch's own ``torch.distributed``. When the environment says the process was launched by
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, with ``WORLD_SIZE`` above 1), ``babysit check`` joins the
process group (gloo on the CPU, NCCL for CUDA tensors beside gloo for host ones, or the group the user already
initialised, left as it was), every rank checks the target on its own shard of the batches with every training
step averaged over the ranks (one model at the effective batch), the distributed checks (``babysitter.checklist.ddp``)
compare the ranks with matched collectives, rank 0 alone writes the report and prints, and a group the tool
created is destroyed at the end. Collectives time out after ``BABYSITTER_DIST_TIMEOUT`` seconds (default 120), so
a rank that crashed ends the run on the others within a bounded time instead of a hang.
"""
from __future__ import annotations

import contextlib
import math
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

#: seconds a collective waits for the other ranks before the run ends with an error
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Place:
    """This process's place in a distributed run (rank 0 of 1 when it is not one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(environ: Optional[dict] = None) -> Place:
    """The place the launcher's environment gives (torchrun sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        return Place()
    return Place(rank, world, local) if world > 1 else Place()


def timeout_s() -> float:
    try:
        return float(os.environ.get("BABYSITTER_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


@contextlib.contextmanager
def joined(place: Optional[Place] = None) -> Iterator[Place]:
    """Inside the process group for the block: the user's own, as it is, or one made here (gloo on the CPU, NCCL
    when CUDA is available) and destroyed after. Outside a distributed launch, a no-op (rank 0 of 1)."""
    place = place or from_env()
    if not place.active:
        yield place
        return
    if dist.is_available() and dist.is_initialized():
        yield place
        return
    # with CUDA, NCCL for CUDA tensors and gloo for the few host ones (a model checked with --device cpu too)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(place.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    try:
        yield place
    finally:
        dist.destroy_process_group()


def gathered(value: Any) -> list:
    """Every rank's ``value`` (a small picklable object), in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def averages_itself(model: Any) -> bool:
    """A model wrapped by the user for data parallelism, whose backward averages the gradients over the ranks
    itself: DistributedDataParallel, FSDP, or parameters sharded as DTensors (FSDP2's fully_shard)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return True
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a build without torch.distributed
        return False
    return isinstance(model, FullyShardedDataParallel) or any(_is_dtensor(p) for p in model.parameters())


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor as one value on every rank: a DTensor (an FSDP2 parameter, its gradient, a norm of one) gathered
    into its full tensor (a collective: every rank calls it alike); any other tensor as it is."""
    return t.full_tensor() if _is_dtensor(t) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (no collective); any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def fsdp2_modules(model: torch.nn.Module) -> list:
    """The modules of ``model`` that FSDP2's ``fully_shard`` manages (none without torch.distributed)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(t, DTensor)


def device_for(place: Place) -> str:
    """The device a rank checks on: its own GPU (LOCAL_RANK) under NCCL, else the CPU."""
    return f"cuda:{place.local_rank}" if place.active and torch.cuda.is_available() else "cpu"


def shard(data: Any, place: Place, seed: int) -> Any:
    """This rank's share of tuple ``(X, y)`` data, as ``DistributedSampler`` splits it: a permutation of the
    examples drawn with ``seed`` (the same on every rank), padded with its first examples to a multiple of
    ``world`` (so every rank has as many batches), then every ``world``-th example from ``rank``. Other data
    (a DataLoader, a Dataset, a list of batches) is the target's to shard, and ``ddp_data`` checks that it is."""
    if not place.active or not (isinstance(data, tuple) and len(data) == 2
                                and all(isinstance(t, torch.Tensor) for t in data)):
        return data
    x, y = data
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    order = torch.cat([order, order[:(-x.shape[0]) % place.world]])[place.rank::place.world]
    return x[order], y[order]


#: elements per all-reduce when gradients are averaged (DDP's buckets are 25 MiB; this bounds the flat copy)
BUCKET_ELEMENTS = 1 << 24


class Ranks:
    """The collectives the checklist's passes run under ``torchrun``, so that every rank trains the same model at the
    effective batch and takes the same decisions: rank 0's weights broadcast when a training pass starts (as
    ``DistributedDataParallel`` broadcasts them when it wraps a model), each step's gradients averaged over the
    ranks (as its all-reduce does) together with the step's loss, and the few host numbers that steer a pass (a
    held-out loss, an accuracy, a loss floor) averaged. Rank 0 of 1 (``Ranks()``): every method is the identity and
    runs no collective."""

    def __init__(self, place: Optional[Place] = None):
        self.place = place or Place()

    @property
    def active(self) -> bool:
        return self.place.active and dist.is_available() and dist.is_initialized()

    @property
    def world(self) -> int:
        """The number of ranks whose steps are averaged (1 when not active)."""
        return self.place.world if self.active else 1

    def broadcast_state(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers onto every rank, in place (bucketed as the gradients are)."""
        if not self.active:
            return
        tensors = [t.data for t in [*model.parameters(), *model.buffers()]]
        with torch.no_grad():
            for bucket, flat in self._buckets(tensors):
                dist.broadcast(flat, src=0)
                for j, piece in zip(bucket, flat.split([tensors[j].numel() for j in bucket])):
                    tensors[j].copy_(piece.view_as(tensors[j]))

    def agreement(self, results: dict, batch: Any) -> dict:
        """The run's facts under torchrun from every rank's ``{check id: (status, summary)}``: the ranks, the
        effective batch, the statuses that differ from rank 0's (``ranks_differ``) and the checks whose summaries
        differ (``ranks_read_own``: those that read each rank's own batches as they are). Empty in one process."""
        if not self.active:
            return {}
        facts = {"world_size": self.world, "rank": self.place.rank,
                 "effective_batch_size": batch * self.world if isinstance(batch, int) else None}
        try:
            sides = gathered(results)
        except Exception as exc:  # another rank is gone: this rank's report is still written
            return {**facts, "ranks_differ": f"not compared: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        differ = {r: {k: v[0] for k, v in side.items() if v[0] != sides[0].get(k, (None,))[0]}
                  for r, side in enumerate(sides)}
        return {**facts, "ranks_differ": {str(r): d for r, d in differ.items() if d},
                "ranks_read_own": sorted(k for k in sides[0] if any(s.get(k) != sides[0][k] for s in sides[1:]))}

    def average_grads(self, params: list, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every parameter's gradient averaged over the ranks, in place (a parameter with no gradient on this rank
        counts as zeros, and gets the average when another rank had one); ``extra`` tensors (a step's loss) averaged
        in the same all-reduce and returned."""
        if not self.active:
            return extra
        n = len(params)
        device = params[0].device if params else self._device()  # the same on every rank, grads or not
        flags = torch.tensor([p.grad is not None for p in params] + [p.grad is not None and p.grad.is_sparse
                                                                     for p in params], dtype=torch.float32)
        parts = [p.grad.to_dense() if p.grad is not None else torch.zeros_like(p) for p in params]
        parts += [flags.to(device), *(e.detach().float().reshape(-1) for e in extra)]
        out = self._mean_coalesced(parts)
        # which ranks had a gradient is read on the host only when this rank lacks one or holds a sparse one
        plain = all(p.grad is not None and not p.grad.is_sparse for p in params)
        seen = [True] * n + [False] * n if plain else (out[n] > 0).tolist()
        for p, g, had, sparse in zip(params, out, seen[:n], seen[n:]):
            if p.grad is not None and not p.grad.is_sparse and not sparse:
                p.grad.copy_(g)
            elif had:  # sparse on any rank: sparse on every rank (SparseAdam takes no other)
                p.grad = g.to(p.dtype).to_sparse() if sparse else g.to(p.dtype).clone()
        return tuple(t.reshape(e.shape) for t, e in zip(out[n + 1:], extra))

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the ranks (a new tensor)."""
        return self._mean_coalesced([t.detach().float().reshape(-1)])[0].reshape(t.shape) if self.active else t

    def mean_floats(self, *values: Optional[float]) -> tuple:
        """Host numbers averaged over the ranks that know them (None where no rank does): the same on every rank,
        whichever ranks had None."""
        if not self.active:
            return values
        pairs = [(0.0, 0.0) if v is None else (float(v), 1.0) for v in values]
        flat = torch.tensor([x for pair in pairs for x in pair], dtype=torch.float64, device=self._device())
        out = self._mean_coalesced([flat])[0].tolist()
        return tuple(out[2 * i] / out[2 * i + 1] if out[2 * i + 1] > 0 else None for i in range(len(values)))

    def first_found(self, value: Any) -> Any:
        """The first rank's ``value`` that is not None (each rank's own search, e.g. for the first NaN)."""
        if not self.active:
            return value
        return next((v for v in gathered(value) if v is not None), None)

    def mean_if_same(self, flat: torch.Tensor) -> torch.Tensor:
        """A flat vector of accumulators (an instrument's sums) averaged over the ranks when every rank has one of
        the same length (the same layers seen); this rank's own otherwise."""
        if not self.active:
            return flat
        n = torch.tensor([flat.numel(), -flat.numel()], dtype=torch.float64, device=self._device())
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        return self.mean(flat) if n[0] == -n[1] else flat

    @staticmethod
    def _device() -> torch.device:
        """Where the small tensors of a collective live: the rank's GPU under NCCL alone (a group the user made
        with backend='nccl'), else the CPU (gloo, or gloo beside NCCL as babysitter makes it)."""
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def _mean_coalesced(self, tensors: list) -> list:
        """All-reduce averages of ``tensors``, as new tensors in the same order."""
        world = dist.get_world_size()
        out: list = [None] * len(tensors)
        for bucket, flat in self._buckets(tensors):
            flat /= world  # before the sum, as DDP divides: half-precision sums stay in range
            dist.all_reduce(flat)
            for j, piece in zip(bucket, flat.split([tensors[j].numel() for j in bucket])):
                out[j] = piece.view(tensors[j].shape)
        return out

    @staticmethod
    def _buckets(tensors: list) -> Iterator[tuple[list, torch.Tensor]]:
        """``tensors`` by index, grouped by dtype and device into flat copies of at most ``BUCKET_ELEMENTS`` (one
        larger tensor alone): the same groups on every rank, whose tensors match in shape, dtype and device."""
        order = sorted(range(len(tensors)), key=lambda i: (str(tensors[i].dtype), str(tensors[i].device)))
        bucket: list = []
        size = 0
        for i in order + [None]:
            t = tensors[i] if i is not None else None
            if bucket and (t is None or t.dtype != tensors[bucket[0]].dtype or t.device != tensors[bucket[0]].device
                           or size + t.numel() > BUCKET_ELEMENTS):
                yield bucket, torch.cat([tensors[j].reshape(-1) for j in bucket])
                bucket, size = [], 0
            if i is not None:
                bucket.append(i)
                size += t.numel()
