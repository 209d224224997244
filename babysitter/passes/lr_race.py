"""The LR race after the range test: a few candidate LRs from its good range, each trained briefly from the user's
state the way the user trains, compared on batches held out of that training, then refined around the winner
(CS231n's coarse-to-fine search in log space).

Every candidate starts from the same state (``session.reset()``: the user's weights, optimizer state and seeds, so
the same batches and dropout masks), trains ``steps`` steps on the pool's first batches with the user's step
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

from ..analysis.lr_curve import (LrRace, LrReading, LrSweep, RaceEntry, RaceRules, around_user, coarse_candidates,
                                 race_bounds, race_score, race_winner, refine_candidates, same_lr, trained)
from ..analysis.status import Status
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
    value = float(torch.stack(losses).mean())
    return value if math.isfinite(value) else None


def _diverged(values: list[float], first: float, factor: float) -> bool:
    return any(not math.isfinite(v) for v in values) or (first > 0 and sum(values) / len(values) > factor * first)


def run_candidate(session, lr: float, rules: RaceRules, train: list[int], held: list[int], stage: str) -> RaceEntry:
    """Train ``rules.steps`` steps at ``lr`` from the user's state; the held-out loss half-way and at the end, and
    the score they rank by. A candidate whose training loss turns non-finite or exceeds ``rules.diverge_factor``
    times its first loss stops (loss None)."""
    session.reset()
    session.model.train()
    optimizer = session.make_optimizer()
    stepper = Stepper(session, optimizer, scheduler=False)
    set_lr(optimizer, lr, group_scales(optimizer)[1])
    k, pending, seen, mid = stepper.accumulate, [], [], None
    for i in range(rules.steps):
        pending.append(stepper.step([session.batch(train[(i * k + j) % len(train)]) for j in range(k)]).loss)
        if len(pending) == SYNC_EVERY or i == rules.steps - 1 or i + 1 == rules.steps // 2:
            seen += torch.stack(pending).float().cpu().tolist()
            pending = []
            if _diverged(seen[-SYNC_EVERY:], seen[0], rules.diverge_factor):
                return RaceEntry(lr=lr, loss=None, round=stage, train_loss=None, steps=i + 1)
        if i + 1 == rules.steps // 2:
            mid = _held_out_loss(session, stepper, held)
    tail, end = seen[-SYNC_EVERY:], _held_out_loss(session, stepper, held)
    return RaceEntry(lr=lr, loss=end, round=stage, train_loss=sum(tail) / len(tail), steps=rules.steps,
                     mid_loss=mid, score=race_score(mid, end, rules))


def _race_user(reading: LrReading, entries, multiplier, rules: RaceRules) -> bool:
    """Race the user's own LR too when the range test warns about it (or could not read the curve: a multiplier
    optimizer, or a race around the user's LR that capped it below the divergence point) and it was not raced
    already: the race can confirm that it trains."""
    user = reading.user_lr
    unread = reading.status is Status.SKIP and (multiplier or around_user(reading, rules, multiplier))
    if not user or user <= 0 or not (reading.status is Status.WARN or unread):
        return False
    return not any(same_lr(user, e.lr) for e in entries)


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
    """The coarse round (``race_candidates`` around the range test's suggestion, around the user's LR when the curve
    gave none, or spread over a wide span), the fine round around its winner, and the user's LR when the range test
    warns about it (or cannot read it and did not race it); the winner is the suggestion."""
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
    entries = [run_candidate(session, lr, rules, train, held, "coarse")
               for lr in coarse_candidates(reading, rules, multiplier)]
    entries += [run_candidate(session, lr, rules, train, held, "fine")
                for lr in refine_candidates(entries, bounds, rules)]
    if _race_user(reading, entries, multiplier, rules):
        entries.append(run_candidate(session, reading.user_lr, rules, train, held, "yours"))
    winner = race_winner(entries, rules, start)
    entries += _longer(session, reading, entries, winner, start, rules, (train, held), multiplier)
    session.reset()
    return LrRace(entries=tuple(entries), winner=winner, steps=sum(e.steps for e in entries),
                  seconds=time.perf_counter() - t0, held_out=len(held), bounds=bounds[:2], start_loss=start,
                  reason="" if winner else _no_winner(entries, start, rules),
                  around=reading.user_lr if around_user(reading, rules, multiplier) else None)


def _longer(session, reading: LrReading, entries, winner, start, rules: RaceRules, split, multiplier) -> list:
    """In a race around the user's LR, the user's LR trained ``rules.user_longer`` times the race's steps when it did
    not train in the race while the winner did (a plateau it may leave later); the verdict warns only if it still
    does not train."""
    user = reading.user_lr
    if winner is None or rules.user_longer <= 1 or not around_user(reading, rules, multiplier):
        return []
    yours = next((e for e in entries if same_lr(user, e.lr)), None)
    if yours is None or yours.loss is None or trained(yours, start, rules) or same_lr(winner, user):
        return []
    longer = dataclasses.replace(rules, steps=int(round(rules.steps * rules.user_longer)))
    return [run_candidate(session, user, longer, *split, "longer")]


def _no_winner(entries, start: Optional[float], rules: RaceRules) -> str:
    losses = [e.loss for e in entries if e.loss is not None and e.round != "yours"]
    if not losses:
        return "every raced LR diverged"
    return (f"no raced LR brought the held-out loss {rules.min_drop:.0%} below its start {start:.4g} (best "
            f"{min(losses):.4g})")
