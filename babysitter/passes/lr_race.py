"""The LR race after the range test: candidate LRs around its suggestion, each trained from the user's state the way
the user trains and compared on batches held out of that training; a first round of a few steps each, then the best
of them trained longer (CS231n's coarse-to-fine search in log space, as successive halving).

Every candidate starts from the same state (``session.reset()``: the user's weights, optimizer state and seeds, so
the same batches and dropout masks; a finalist goes on from its first round's state, kept on the host, which is the
same run), trains its round's steps on the pool's first batches with the user's step
(clipping, accumulation, autocast; the scheduler left out, as in the sweep: the race sets the LR) and is then
evaluated, in eval mode and without gradients, on the pool's last ``held_out`` batches. Which LRs are tried and
which wins are the pure rules of ``babysitter.analysis.lr_curve``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Optional

import torch

from ..analysis.batches import nbytes
from ..analysis.lr_curve import (FINAL_ROUNDS, LrRace, LrReading, LrSweep, RaceEntry, RaceRules, around_user,
                                 race_bounds, race_round, race_suggestion, race_winner, shrinks)
from ..optim import group_scales, set_lr
from ..sandbox import ModelState, RngState, in_place_loadable, load_in_place, tree_to_cpu
from .stepper import Stepper

#: losses are read from the device every this many race steps, to stop a candidate that diverged
SYNC_EVERY = 8
#: the first round's states kept on the host (to continue a finalist from instead of training its first steps
#: again) take at most this many bytes together; those of the lowest held-out loss are kept
RESUME_BYTES = 256 << 20


def split_pool(n: int, held_out: int) -> Optional[tuple[list[int], list[int]]]:
    """(training, held-out) batch indices of a pool of ``n`` batches: the last ``held_out`` (at most a quarter of
    the pool, at least one) are held out. None when the pool has fewer than 2 batches."""
    if n < 2:
        return None
    held = max(1, min(held_out, n // 4))
    return list(range(n - held)), list(range(n - held, n))


def _autocast(stepper: Stepper):
    if stepper.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(stepper.device_type, dtype=stepper.autocast)


def _held_out_loss(session, stepper: Stepper, held: list[int]) -> Optional[float]:
    """The mean loss over the held-out batches, in eval mode, without gradients (None when it is not finite)."""
    session.model.eval()
    with torch.no_grad(), _autocast(stepper):
        losses = [session.forward_loss(session.batch(i))[0].detach().float() for i in held]
    session.model.train()
    value = float(session.ranks.mean(torch.stack(losses).mean()))  # under torchrun: over every rank's batches
    return value if math.isfinite(value) else None


def _diverged(values: list[float], first: float, factor: float) -> bool:
    return any(not math.isfinite(v) for v in values) or (first > 0 and sum(values) / len(values) > factor * first)


@dataclasses.dataclass(frozen=True)
class TrainedCurve:
    """One LR trained from the user's state: the training loss of every step taken, the held-out loss at each
    checkpoint reached (None where it was not finite), and whether it stopped because it diverged."""

    lr: float
    train: tuple[float, ...]
    held_out: dict
    diverged: bool


@dataclasses.dataclass
class Paused:
    """A candidate stopped after ``steps`` steps, on the host: its weights, optimizer state, GradScaler state and
    RNG as they were after its last step (before its held-out evaluation), and its training losses so far.
    ``resume`` puts it back and continues it exactly as a run trained from the user's state would have gone on."""

    lr: float
    steps: int
    model: ModelState
    optimizer: dict
    scaler: Optional[dict]
    rng: RngState
    train: tuple[float, ...]
    nbytes: int  # what it holds on the host (``_state_bytes``)

    @classmethod
    def capture(cls, session, stepper: Stepper, lr: float, steps: int, seen: list, size: int) -> "Paused":
        scaler = stepper.scaler.state_dict() if stepper.scaler is not None else None
        return cls(lr=lr, steps=steps, model=ModelState.capture(session.model),
                   optimizer=tree_to_cpu(stepper.optimizer.state_dict()), scaler=scaler, rng=RngState.capture(),
                   train=tuple(seen), nbytes=size)

    def resume(self, session) -> Stepper:
        """The session's model and a fresh optimizer put in this state; a stepper over them. (No
        ``session.reset()`` first: the model's values, gradients and flags, the optimizer and the RNG are all put
        back here.)"""
        self.model.restore(onto=session.device if session.model_device is not None else None)
        optimizer = session.make_optimizer()
        if in_place_loadable(optimizer, self.optimizer):  # into the optimizer's own tensors (a user's instance keeps
            load_in_place(optimizer, self.optimizer)       # its objects), copied: this state may be resumed again
        else:
            optimizer.load_state_dict(tree_to_cpu(self.optimizer))
        stepper = Stepper(session, optimizer, scheduler=False)
        if self.scaler is not None and stepper.scaler is not None:
            stepper.scaler.load_state_dict(self.scaler)
        self.rng.restore()
        return stepper


def resumable(optimizer) -> bool:
    """Whether a paused state of ``optimizer`` comes back exactly: one torch optimizer (not a step function's group
    of several) whose state tensors, its ``step`` counters aside, have their parameter's device and (for a
    floating-point parameter) dtype, which is where loading a state dict puts them (NAdam's float32 ``mu_product``
    beside float64 parameters would come back float64)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return False
    for p, state in optimizer.state.items():
        for key, v in state.items():
            if key != "step" and isinstance(v, torch.Tensor) and isinstance(p, torch.Tensor) and (
                    v.device != p.device or (p.is_floating_point() and v.dtype != p.dtype)):
                return False
    return True


def _state_bytes(session, optimizer) -> int:
    """What pausing would copy to the host: the model's parameters, buffers and gradients, the optimizer's state."""
    model = session.model
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    tensors.update({id(p.grad): p.grad for p in model.parameters() if p.grad is not None})
    return sum(t.numel() * t.element_size() for t in tensors.values()) + nbytes(optimizer.state)


def _start(session, lr: float, resume: Optional[Paused]) -> tuple[Stepper, int, list]:
    """A stepper at ``lr`` from the user's state (``session.reset()``: weights, optimizer state, seeds), or from a
    paused candidate; the steps already taken and their losses."""
    if resume is not None:
        return resume.resume(session), resume.steps, list(resume.train)
    session.reset()
    session.model.train()
    stepper = Stepper(session, session.make_optimizer(), scheduler=False)
    set_lr(stepper.optimizer, lr, group_scales(stepper.optimizer)[1])
    return stepper, 0, []


def train_curve(session, lr: float, steps: int, train: list[int], held: list[int], checkpoints=(),
                diverge_factor: float = math.inf, resume: Optional[Paused] = None,
                pause_within: int = 0) -> tuple[TrainedCurve, Optional[Paused]]:
    """Train ``steps`` steps at ``lr`` from the user's state (or on from ``resume``, a run of fewer steps at ``lr``)
    with the user's step on the ``train`` batches, evaluating the held-out loss after each step count in
    ``checkpoints``; the run's state after its last step is kept too (``Paused``) when it takes at most
    ``pause_within`` bytes and comes back exactly (``resumable``). Losses are read from the device every
    ``SYNC_EVERY`` steps (counted from the user's state, resumed or not) and at each checkpoint; the run stops when
    its training loss turns non-finite or its recent mean exceeds ``diverge_factor`` times its first loss."""
    stepper, done, seen = _start(session, lr, resume)
    k, pending, losses, paused = stepper.accumulate, [], {}, None
    marks = set(checkpoints)
    for i in range(done, steps):
        pending.append(stepper.step([session.batch(train[(i * k + j) % len(train)]) for j in range(k)]).loss)
        if (i + 1) % SYNC_EVERY == 0 or i == steps - 1 or i + 1 in marks:
            seen += torch.stack(pending).float().cpu().tolist()
            pending = []
            if _diverged(seen[-SYNC_EVERY:], seen[0], diverge_factor):
                return TrainedCurve(lr=lr, train=tuple(seen), held_out=losses, diverged=True), None
        if pause_within and i == steps - 1 and resumable(stepper.optimizer):
            size = _state_bytes(session, stepper.optimizer)
            paused = Paused.capture(session, stepper, lr, steps, seen, size) if size <= pause_within else None
        if i + 1 in marks:
            losses[i + 1] = _held_out_loss(session, stepper, held)
    return TrainedCurve(lr=lr, train=tuple(seen), held_out=losses, diverged=False), paused


class Kept:
    """The first round's paused candidates, within ``budget`` bytes (those of the lowest held-out loss first), and
    the steps they saved. Nothing is kept when ``budget`` is 0."""

    def __init__(self, budget: int):
        self.budget = budget
        self.held: list[tuple[float, Paused]] = []  # (held-out loss, paused), best first
        self.saved = 0

    def get(self, lr: float, steps: int) -> Optional[Paused]:
        return next((p for _, p in self.held if math.isclose(p.lr, lr, rel_tol=1e-9) and p.steps < steps), None)

    def add(self, paused: Optional[Paused], loss: Optional[float]) -> None:
        if paused is None or loss is None:
            return
        self.held = sorted(self.held + [(loss, paused)], key=lambda h: h[0])
        while self.held and sum(p.nbytes for _, p in self.held) > self.budget:
            self.held.pop()


def run_candidate(session, lr: float, rules: RaceRules, train: list[int], held: list[int], stage: str,
                  steps: Optional[int] = None, kept: Optional[Kept] = None) -> RaceEntry:
    """Train ``steps`` (default ``rules.steps``) steps at ``lr`` from the user's state (on from the first round's
    state at that LR when ``kept`` holds it: the same run, its first steps not trained again); its held-out loss at
    the end. A first-round candidate's state is kept when ``kept`` has room. A candidate whose training loss turns
    non-finite or exceeds ``rules.diverge_factor`` times its first loss stops (loss None)."""
    steps = steps or rules.steps
    resume = kept.get(lr, steps) if kept is not None else None
    within = kept.budget if kept is not None and stage == "coarse" else 0
    curve, paused = train_curve(session, lr, steps, train, held, (steps,), rules.diverge_factor, resume, within)
    entry = entry_of(curve, steps, stage)
    if kept is not None:
        kept.saved += resume.steps if resume is not None else 0
        kept.add(paused, entry.loss)
    return entry


def entry_of(curve: TrainedCurve, steps: int, stage: str) -> RaceEntry:
    """The race's entry for a curve trained ``steps`` steps."""
    if curve.diverged:
        return RaceEntry(lr=curve.lr, loss=None, round=stage, train_loss=None, steps=len(curve.train))
    tail = curve.train[-SYNC_EVERY:]
    return RaceEntry(lr=curve.lr, loss=curve.held_out.get(steps), round=stage, train_loss=sum(tail) / len(tail),
                     steps=steps)


def _why_no_race(sweep: LrSweep, rules: RaceRules, bounds, split) -> str:
    if rules.candidates <= 0:
        return "the race is turned off (race_candidates=0)"
    if sweep.skipped or not sweep.runs:
        return "no range test ran"
    if bounds is None:
        return "the range test gave no range to race over"
    if split is None:
        return "the data gave a single batch: none can be held out to compare candidates"
    return ""


def lr_race(session, sweep: LrSweep, reading: LrReading, rules: RaceRules = RaceRules()) -> LrRace:
    """The rounds ``race_round`` asks for (a first round around the range test's suggestion, around the user's LR
    when the curve gave none, or over a wide span; its best trained longer; the user's LR when the range test warns
    about it), each candidate trained from the user's state; the winner is the suggestion."""
    t0 = time.perf_counter()
    multiplier = sweep.multiplier
    bounds = race_bounds(reading, rules, multiplier)
    split = split_pool(len(session.pool), rules.held_out)
    skipped = _why_no_race(sweep, rules, bounds, split)
    if skipped:
        return LrRace(skipped=skipped)
    train, held = split
    session.reset()
    start = _held_out_loss(session, Stepper(session, session.make_optimizer(), scheduler=False), held)
    entries: list[RaceEntry] = []
    kept = Kept(0 if session.ranks.active else RESUME_BYTES)  # under torchrun each rank would keep its own copies
    while True:
        todo = race_round(reading, rules, multiplier, tuple(entries), start)
        if not todo:
            break
        entries += [run_candidate(session, lr, rules, train, held, stage, steps, kept) for lr, steps, stage in todo]
    winner = race_winner(entries, rules, start)
    session.reset()
    return LrRace(entries=tuple(entries), winner=winner, steps=sum(e.steps for e in entries) - kept.saved,
                  suggested=race_suggestion(winner, rules, shrinks(reading, rules, multiplier, entries)),
                  seconds=time.perf_counter() - t0, held_out=len(held), bounds=bounds[:2], start_loss=start,
                  reason="" if winner else _no_winner(entries, start, rules),
                  around=reading.user_lr if around_user(reading, rules, multiplier) else None)


def _no_winner(entries, start: Optional[float], rules: RaceRules) -> str:
    losses = [e.loss for e in entries if e.loss is not None and e.round in FINAL_ROUNDS]
    if not losses:
        return "every raced LR diverged"
    return (f"no raced LR brought the held-out loss {rules.min_drop:.0%} below its start {start:.4g} (best "
            f"{min(losses):.4g})")
