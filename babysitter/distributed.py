"""Runs under ``torchrun``: the process group, this rank's place in it, and this rank's share of the data.

babysitter runs on PyTorch's own ``torch.distributed``. When the environment says the process was launched by
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, with ``WORLD_SIZE`` above 1), ``babysit check`` joins the
process group (gloo on the CPU, NCCL on CUDA, or the group the user already initialised, left as it was), every
rank checks the target on its own shard of the batches, the distributed checks (``babysitter.checklist.ddp``)
compare the ranks with matched collectives, rank 0 alone writes the report and prints, and a group the tool
created is destroyed at the end. Collectives time out after ``BABYSITTER_DIST_TIMEOUT`` seconds (default 120), so
a rank that crashed ends the run on the others within a bounded time instead of a hang.
"""
from __future__ import annotations

import contextlib
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
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
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


def device_for(place: Place) -> str:
    """The device a rank checks on: its own GPU (LOCAL_RANK) under NCCL, else the CPU."""
    return f"cuda:{place.local_rank}" if place.active and torch.cuda.is_available() else "cpu"


def shard(data: Any, place: Place, seed: int) -> Any:
    """This rank's share of tuple ``(X, y)`` data, as ``DistributedSampler`` splits it: a permutation of the
    examples drawn with ``seed`` (the same on every rank), then every ``world``-th example from ``rank``. Other data
    (a DataLoader, a Dataset, a list of batches) is the target's to shard, and ``ddp_data`` checks that it is."""
    if not place.active or not (isinstance(data, tuple) and len(data) == 2
                                and all(isinstance(t, torch.Tensor) for t in data)):
        return data
    x, y = data
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[place.rank::place.world]
    return x[order], y[order]
