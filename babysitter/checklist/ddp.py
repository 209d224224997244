"""The checks that only a distributed run needs (``torchrun``): the ranks compared with matched collectives.

Every rank measures its own side (a fingerprint of its parameters, of its batches, of its gradients after one
step), inside a ``try`` so that a rank whose measurement fails still joins the collective, and every rank then
gathers all sides (``all_gather_object``: a few numbers per parameter or batch); the judgment is a pure function
of the gathered sides. They run after the checklist, on every rank, in the same order, and are not in the
single-process checklist (``DISTRIBUTED`` is added by the runner under ``torchrun``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..analysis import fmt
from ..analysis.batches import first_tensor
from ..analysis.params import grouped
from ..analysis.status import Status
from ..distributed import averages_itself, gathered, whole
from ..step import Step
from .base import Check, Judgment, threshold


def _fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per name: (sum, sum of squares) in float64 on the host: equal on two ranks when the tensors are."""
    out = {}
    with torch.no_grad():
        for name, t in tensors.items():
            v = whole(t.detach()).double()  # an FSDP2 shard: the whole tensor
            out[name] = (float(v.sum()), float((v * v).sum()))
    return out


def _differing(sides: list) -> list[str]:
    """The names whose fingerprint is not the same on every rank (a rank that failed to measure is skipped)."""
    good = [s for s in sides if isinstance(s, dict)]
    if len(good) < 2:
        return []
    return [n for n in good[0] if any(not _same(s.get(n), good[0][n]) for s in good[1:])]


def _same(a: Optional[tuple], b: Optional[tuple]) -> bool:
    """Two fingerprints are equal (a NaN equals a NaN: non-finite gradients are the nonfinite check's)."""
    return a is not None and b is not None and all(x == y or (x != x and y != y) for x, y in zip(a, b))


def _failed(sides: list) -> Optional[str]:
    bad = [(r, s) for r, s in enumerate(sides) if isinstance(s, str)]
    return f"rank {bad[0][0]} could not measure: {bad[0][1]}" if bad else None


def _local(measure) -> Any:
    """A rank's side, or the error text when measuring failed (the rank still joins the collective)."""
    try:
        return measure()
    except Exception as exc:  # reported by the judgment; the other ranks must not wait for this one
        return f"{type(exc).__name__}: {exc}"


def _custom(step: Any) -> bool:
    """A step function of the user's own (not a declared Step)."""
    return callable(step) and not isinstance(step, Step)


def _wrapped(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


@dataclass(frozen=True)
class ParamsSides:
    sides: list  # per rank: {name: (sum, sumsq)} or an error text
    wrapped: bool
    custom_step: bool
    batchnorms: list  # names of BatchNorm layers that are not SyncBatchNorm
    per_rank_batch: Optional[int]


@dataclass
class DdpParams(Check):
    id = "ddp_params"
    title = "Parameters and buffers identical across ranks"
    what = """At the start, a fingerprint (float64 sum and sum of squares) of every parameter and buffer on every
    rank, compared; and whether BatchNorm layers normalise each rank's batch alone (no SyncBatchNorm) while that
    batch has fewer than {small_batch} examples."""
    why = """Data parallelism averages gradients on the assumption that every rank holds the same weights. A model
    built with a per-rank seed and trained without a broadcast (a loop of its own, DistributedDataParallel with
    init_sync=False) trains W different models whose averaged gradient fits none of them. BatchNorm under DDP
    normalises with each rank's own batch statistics: with few examples per rank they are noisy."""
    todo = """Build the model with the same seed on every rank, or let DistributedDataParallel broadcast rank 0's
    weights when it wraps the model (its default); for a small per-rank batch convert BatchNorm with
    nn.SyncBatchNorm.convert_sync_batchnorm(model)."""
    sources = ("PyTorch docs: DistributedDataParallel (broadcasts module states from rank 0 at construction), "
               "nn.SyncBatchNorm",)
    small_batch: int = threshold(16, "warn about BatchNorm without SyncBatchNorm below this per-rank batch size")

    def measure(self, session) -> ParamsSides:
        model = session.model
        state = dict(model.named_parameters())
        state.update({f"{n} (buffer)": b for n, b in model.named_buffers() if b.is_floating_point()})
        sides = gathered(_local(lambda: _fingerprint(state)))
        bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and not isinstance(m, nn.SyncBatchNorm)]
        return ParamsSides(sides, _wrapped(model), _custom(session.code.step), bns, session.facts.get("batch_size"))

    def judge(self, m: ParamsSides) -> Judgment:
        failed = _failed(m.sides)
        if failed:
            return Judgment(Status.SKIP, failed)
        differ = _differing(m.sides)
        if differ:
            text = (f"{fmt.plural(len(differ), 'parameter or buffer', 'parameters and buffers')} differ across the "
                    f"{len(m.sides)} ranks at the start: {grouped(differ)}")
            if m.wrapped or m.custom_step:
                return Judgment(Status.FAIL, text, ("Build the model with the same seed on every rank, or broadcast "
                                                    "rank 0's state (torch.distributed.broadcast) before training.",))
            return Judgment(Status.WARN, text + " (DistributedDataParallel broadcasts rank 0's when it wraps the "
                                                "model; a loop without it trains different models)",
                            ("Seed the model the same on every rank, or make sure DDP wraps it.",))
        if m.batchnorms and m.per_rank_batch is not None and m.per_rank_batch < self.small_batch:
            return Judgment(Status.WARN, f"{fmt.plural(len(m.batchnorms), 'BatchNorm layer')} normalise each rank's "
                                         f"{m.per_rank_batch} examples alone: {grouped(m.batchnorms)}",
                            ("nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping it in DDP.",))
        many = fmt.plural(len(m.sides[0]), "parameter and buffer", "parameters and buffers")
        return Judgment(Status.PASS, f"{many} identical on all {len(m.sides)} ranks")

    def present(self, m: ParamsSides, j: Judgment):
        return self.result(j.status, j.summary, advice=j.advice,
                           metrics={"ranks": len(m.sides), "differ": _differing(m.sides), "wrapped": m.wrapped})


def _batch_hash(batch: Any) -> str:
    t = first_tensor(batch)
    if t is None:
        return hashlib.sha1(repr(batch).encode()).hexdigest()
    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class DataSides:
    sides: list  # per rank: the hashes of its first batches, or an error text


@dataclass
class DdpData(Check):
    id = "ddp_data"
    title = "Every rank sees different data"
    what = """A hash of the inputs of each rank's first {batches} batches, compared across ranks: a batch that
    two ranks both hold."""
    why = """Without a DistributedSampler every rank draws the same batches: the effective batch is W copies of
    one, each step costs W times the compute for the gradient of one rank's batch, and an epoch covers the data W
    times."""
    todo = """Give the DataLoader a torch.utils.data.DistributedSampler(dataset) (shuffle in the sampler, call
    sampler.set_epoch(epoch) every epoch), or shard an iterable dataset by rank."""
    sources = ("PyTorch docs: torch.utils.data.distributed.DistributedSampler",)
    batches: int = threshold(4, "how many of each rank's first batches are compared")

    def measure(self, session) -> DataSides:
        n = min(self.batches, len(session.pool))
        return DataSides(gathered(_local(lambda: [_batch_hash(session.batch(i)) for i in range(n)])))

    def judge(self, m: DataSides) -> Judgment:
        failed = _failed(m.sides)
        if failed:
            return Judgment(Status.SKIP, failed)
        owners: dict[str, set] = {}
        for rank, hashes in enumerate(m.sides):
            for h in hashes:
                owners.setdefault(h, set()).add(rank)
        shared = [h for h, ranks in owners.items() if len(ranks) > 1]
        total = len(owners)
        if shared and len(shared) == total:
            return Judgment(Status.FAIL, f"every rank sees the same batches ({len(m.sides)} ranks, "
                                         f"{fmt.plural(total, 'batch', 'batches')} compared): the effective batch is "
                                         f"{len(m.sides)} copies of one",
                            ("Use a DistributedSampler (or shard the data by rank).",))
        if shared:
            return Judgment(Status.WARN, f"{fmt.plural(len(shared), 'batch', 'batches')} of {total} held by several "
                                         f"ranks", ("Check how the data is split between ranks.",))
        return Judgment(Status.PASS, f"the {len(m.sides)} ranks hold different batches ({total} compared)")

    def present(self, m: DataSides, j: Judgment):
        return self.result(j.status, j.summary, advice=j.advice, metrics={"ranks": len(m.sides)})


@dataclass(frozen=True)
class GradSides:
    sides: list  # per rank: {name: (sum, sumsq)} of the gradients after one step's backward, or an error text
    unused: list  # per rank: names whose gradient is None after it (or an error text)
    how: str  # "your DDP model", "DDP wrapped by babysitter" or "your step function"


def _grads_after_step(session) -> tuple[dict, list[str]]:
    """One step of the user's kind on the first batch, gradients read before the optimizer applies them."""
    from ..passes.stepper import Stepper

    seen: dict = {}

    def on_grads(loss, params) -> bool:
        named = {n: p for n, p in session.model.named_parameters() if p.requires_grad}
        seen["grads"] = {n: p.grad for n, p in named.items() if p.grad is not None}
        seen["unused"] = [n for n, p in named.items() if p.grad is None]
        return True  # skip the optimizer step: the gradients are what is compared

    stepper = Stepper(session, session.make_optimizer(), scheduler=False, clip=False, reduce=False)
    stepper.step([session.batch(i) for i in range(stepper.accumulate)], on_grads=on_grads)
    if "grads" not in seen:
        raise RuntimeError("the step read no gradients")
    return _fingerprint(seen["grads"]), seen["unused"]


@dataclass
class DdpGrads(Check):
    id = "ddp_grads"
    title = "Gradients synchronised across ranks"
    what = """One training step of your kind on every rank's own first batch, with the gradients compared across
    ranks before the optimizer would apply them: through your DistributedDataParallel model when the target wraps
    it, through your step function when it has one, else through DDP wrapped here. Parameters without a gradient
    on every rank are listed."""
    why = """Ranks that apply different gradients drift apart: a loop of its own that forgets the all-reduce, a
    model left inside no_sync(). Parameters that get no gradient make DDP wait for them (find_unused_parameters)
    or fail at the next step."""
    todo = """Wrap the model in DistributedDataParallel (or all-reduce the gradients in your step); leave no_sync()
    only around the micro-batches that accumulate; remove unused parameters or pass find_unused_parameters=True."""
    sources = ("PyTorch docs: DistributedDataParallel, no_sync(), find_unused_parameters",)

    def measure(self, session) -> GradSides:
        how, restore = self._route(session)
        try:
            local = _local(lambda: _grads_after_step(session))
        finally:
            restore()
        sides = gathered(local if isinstance(local, str) else local[0])
        unused = gathered(local if isinstance(local, str) else local[1])
        return GradSides(sides, unused, how)

    @staticmethod
    def _route(session):
        model, step = session.code.model, session.code.step
        if _wrapped(model):
            return "your DDP model", lambda: None
        if averages_itself(model):
            return "your FSDP model", lambda: None
        if _custom(step):
            return "your step function", lambda: None
        device_ids = [model_device.index] if (model_device := next(model.parameters()).device).type == "cuda" else None
        session.code.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                                 find_unused_parameters=True)

        def restore():
            session.code.model = model
        return "DDP wrapped by babysitter", restore

    def judge(self, m: GradSides) -> Judgment:
        failed = _failed(m.sides) or _failed(m.unused)
        if failed:
            return Judgment(Status.SKIP, failed)
        differ = _differing(m.sides)
        if differ:
            return Judgment(Status.FAIL, f"gradients differ across the {len(m.sides)} ranks after backward "
                                         f"({m.how}): {grouped(differ)}",
                            ("The gradients were not all-reduced: wrap the model in DistributedDataParallel, "
                             "all-reduce them in your step, or leave no_sync() after the accumulation.",))
        unused = sorted(set.intersection(*(set(u) for u in m.unused))) if m.unused else []
        if unused:
            return Judgment(Status.WARN, f"gradients synchronised ({m.how}), but "
                                         f"{fmt.plural(len(unused), 'parameter')} got no gradient on any rank: "
                                         f"{grouped(unused)}",
                            ("DDP fails at the next step unless find_unused_parameters=True; better, remove "
                             "them from the model or freeze them (requires_grad_(False)).",))
        return Judgment(Status.PASS, f"gradients identical on all {len(m.sides)} ranks after backward ({m.how})")

    def present(self, m: GradSides, j: Judgment):
        return self.result(j.status, j.summary, advice=j.advice,
                           metrics={"ranks": len(m.sides), "differ": _differing(m.sides), "how": m.how})


#: the distributed checks, in the order every rank runs them (after the checklist)
DISTRIBUTED: tuple[type[Check], ...] = (DdpParams, DdpData, DdpGrads)
