"""The LR race after the range test: candidate LRs around its suggestion, each trained from the user's state the way
the user trains and compared on batches held out of that training; a first round of a few steps each, then the best
of them trained longer (CS231n's coarse-to-fine search in log space, as successive halving).

Every candidate starts from the same state (``session.reset()``: the user's weights, optimizer state and seeds, so
the same batches and dropout masks), trains its round's steps on the pool's first batches with the user's step
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

from ..analysis.lr_curve import (FINAL_ROUNDS, LrRace, LrReading, LrSweep, RaceEntry, RaceRules, around_user,
                                 race_bounds, race_round, race_suggestion, race_winner, shrinks)
from ..optim import group_scales, set_lr
from .stepper import Stepper

#: losses are read from the device every this many race steps, to stop a candidate that diverged
SYNC_EVERY = 8


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


def train_curve(session, lr: float, steps: int, train: list[int], held: list[int], checkpoints=(),
                diverge_factor: float = math.inf) -> TrainedCurve:
    """Train ``steps`` steps at ``lr`` from the user's state (``session.reset()``: weights, optimizer state, seeds)
    with the user's step on the ``train`` batches, evaluating the held-out loss after each step count in
    ``checkpoints``. Losses are read from the device every ``SYNC_EVERY`` steps and at each checkpoint; the run stops
    when its training loss turns non-finite or its recent mean exceeds ``diverge_factor`` times its first loss."""
    session.reset()
    session.model.train()
    optimizer = session.make_optimizer()
    stepper = Stepper(session, optimizer, scheduler=False)
    set_lr(optimizer, lr, group_scales(optimizer)[1])
    k, pending, seen, losses = stepper.accumulate, [], [], {}
    marks = set(checkpoints)
    for i in range(steps):
        pending.append(stepper.step([session.batch(train[(i * k + j) % len(train)]) for j in range(k)]).loss)
        if len(pending) == SYNC_EVERY or i == steps - 1 or i + 1 in marks:
            seen += torch.stack(pending).float().cpu().tolist()
            pending = []
            if _diverged(seen[-SYNC_EVERY:], seen[0], diverge_factor):
                return TrainedCurve(lr=lr, train=tuple(seen), held_out=losses, diverged=True)
        if i + 1 in marks:
            losses[i + 1] = _held_out_loss(session, stepper, held)
    return TrainedCurve(lr=lr, train=tuple(seen), held_out=losses, diverged=False)


def run_candidate(session, lr: float, rules: RaceRules, train: list[int], held: list[int], stage: str,
                  steps: Optional[int] = None) -> RaceEntry:
    """Train ``steps`` (default ``rules.steps``) steps at ``lr`` from the user's state; its held-out loss at the end.
    A candidate whose training loss turns non-finite or exceeds ``rules.diverge_factor`` times its first loss stops
    (loss None)."""
    steps = steps or rules.steps
    return entry_of(train_curve(session, lr, steps, train, held, (steps,), rules.diverge_factor), steps, stage)


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
    while True:
        todo = race_round(reading, rules, multiplier, tuple(entries), start)
        if not todo:
            break
        entries += [run_candidate(session, lr, rules, train, held, stage, steps) for lr, steps, stage in todo]
    winner = race_winner(entries, rules, start)
    session.reset()
    return LrRace(entries=tuple(entries), winner=winner, steps=sum(e.steps for e in entries),
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
