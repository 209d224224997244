"""The LR range test's sweep: exponentially growing LRs from the user's state, repeated over batch orders.

Each step is a plain training step (the step's loss is the forward of the step: no extra forward) plus an LR
assignment; the losses stay on the device and are read every ``sync_every`` steps to test for divergence, so a
step costs what a training step costs. What the curves say is read by ``babysitter.analysis.lr_curve``.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..analysis.lr_curve import LrSweep, SweepRun, SweepSettings
from ..optim import group_scales, is_adaptive, lr_multiplier_range, lr_of, lr_unused, set_lr
from .stepper import Stepper


def _order(session, order_seed: int) -> list[int]:
    """One seeded shuffle of the pool, rotated by the repeat: repeats start on different batches even in a small
    pool (two independent shuffles of 4 batches coincide often). Golden-ratio steps give distinct starts."""
    gen = torch.Generator().manual_seed(session.seed)
    base = torch.randperm(len(session.pool), generator=gen).tolist()
    shift = round(order_seed * len(base) * 0.618) % len(base)
    return base[shift:] + base[:shift]


class _Divergence:
    """fastai's online test: the bias-corrected EMA of the loss against its best value."""

    def __init__(self, settings: SweepSettings):
        self.settings, self.avg, self.best = settings, 0.0, math.inf
        self.host: list[float] = []
        self.ema: list[float] = []

    def feed(self, values: list[float]) -> str:
        """Take losses read from the device; returns 'end' to go on, 'nonfinite' or 'diverged' to stop."""
        beta = self.settings.beta
        for v in values:
            j = len(self.host)
            self.host.append(v)
            if not math.isfinite(v):
                return "nonfinite"
            self.avg = beta * self.avg + (1 - beta) * v
            smooth = self.avg / (1 - beta ** (j + 1))
            self.ema.append(smooth)
            self.best = min(self.best, smooth)
            if j > 0 and smooth > self.settings.diverge_factor * self.best:
                return "diverged"
        return "end"


def sweep_once(session, settings: SweepSettings, order_seed: int = 0) -> SweepRun:
    """One exponential sweep from the session's current (user's) state, in a seeded batch order. Each step is the
    user's kind of step (clipping, accumulation, autocast, a closure or their step function) at the sweep's LR; a
    scheduler is left out, since the sweep sets the LR."""
    model = session.model
    model.train()
    optimizer = session.make_optimizer()
    stepper = Stepper(session, optimizer, scheduler=False)
    _, scales = group_scales(optimizer)
    order = _order(session, order_seed)
    torch.manual_seed(session.seed * 1000 + order_seed)  # dropout masks differ per repeat too
    s, k = settings, stepper.accumulate
    factor = (s.end_lr / s.start_lr) ** (1.0 / max(s.steps - 1, 1))
    lrs, pending, test, stop = [], [], _Divergence(s), "end"
    for i in range(s.steps):
        lrs.append(s.start_lr * factor ** i)
        set_lr(optimizer, lrs[-1], scales)
        out = stepper.step([session.batch(order[(i * k + j) % len(order)]) for j in range(k)])
        if not out.trained:
            return SweepRun(order_seed=order_seed, lrs=(), losses=(), ema=(), stop="no_grad", stopped_at=None)
        pending.append(out.loss)
        if len(pending) == s.sync_every or i == s.steps - 1:
            stop = test.feed(torch.stack(pending).float().cpu().tolist())
            pending = []
            if stop != "end":
                break
    n = len(test.host)
    return SweepRun(order_seed=order_seed, lrs=tuple(lrs[:n]), losses=tuple(test.host), ema=tuple(test.ema),
                    stop=stop, stopped_at=lrs[n - 1] if stop != "end" else None, taken=len(lrs))


#: the sweep reaches at least this multiple of the user's LR
COVER = 10.0


def covering(settings: SweepSettings, user_lr: float | None) -> SweepSettings:
    """The settings extended so that the sweep reaches COVER x the user's LR, at the same steps per decade: a
    user LR at or past the sweep's end (SGD at 20 with clipping, in PyTorch's word-language-model example) is
    tested, not assumed."""
    if not user_lr or user_lr <= 0 or user_lr * COVER <= settings.end_lr:
        return settings
    end = user_lr * COVER
    per_decade = (settings.steps - 1) / math.log10(settings.end_lr / settings.start_lr)
    steps = int(round(per_decade * math.log10(end / settings.start_lr))) + 1
    return dataclasses.replace(settings, end_lr=end, steps=steps)


def _why_not(session, optimizer) -> str | None:
    if not any(p.requires_grad for p in session.model.parameters()):
        return "the model has no trainable parameter"
    return lr_unused(optimizer)


def lr_sweep(session, settings: SweepSettings = SweepSettings()) -> LrSweep:
    """``settings.repeats`` sweeps, each from the user's state (``session.reset()``) in its own batch order."""
    t0 = time.perf_counter()
    optimizer = session.make_optimizer()
    skipped, runs = _why_not(session, optimizer), []
    user_lr, scales = group_scales(optimizer) if skipped is None else (None, [1.0] * len(optimizer.param_groups))
    settings = covering(settings, user_lr)
    if skipped is None:
        for r in range(settings.repeats):
            session.reset()
            runs.append(sweep_once(session, settings, order_seed=r))
            if runs[-1].stop == "no_grad":
                skipped, runs = "the loss does not require grad: nothing can be trained", []
                break
    session.reset()
    stepper = Stepper(session, optimizer, scheduler=False)
    return LrSweep(runs=tuple(runs), user_lr=user_lr if user_lr is not None else lr_of(optimizer),
                   group_scales=tuple(scales), optimizer=type(optimizer).__name__, steps=sum(r.taken for r in runs),
                   seconds=time.perf_counter() - t0, skipped=skipped, adaptive=is_adaptive(optimizer),
                   step=tuple(stepper.kept()), scheduler_left_out=stepper.scheduler_declared, end_lr=settings.end_lr,
                   multiplier=lr_multiplier_range(optimizer))
