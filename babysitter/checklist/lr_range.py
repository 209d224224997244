"""lr_range: Leslie Smith's learning-rate range test, repeated over batch orders, with a robust suggestion.

The sweep is an evidence provider (``lr_sweep``) because ``overfit_batch`` reads its verdict too: it runs
once per session, from the user's state, whichever check asks first.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..evidence import provider
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold

#: sweep defaults (also the ``lr_range`` thresholds of the same names)
START_LR = 1e-7
END_LR = 10.0
STEPS = 100
REPEATS = 3
BETA = 0.98
DIVERGE_FACTOR = 4.0
#: host syncs: the losses stay on the device and are read every this many steps
SYNC_EVERY = 8


# -- the sweep --------------------------------------------------------------------------------------
@dataclass
class SweepRun:
    """One pass of the range test over one batch order: the LR and raw loss of every step taken."""

    order_seed: int
    lrs: list[float]
    losses: list[float]
    ema: list[float]  # bias-corrected exponential moving average (the online divergence test)
    stop: str  # "end", "diverged" or "nonfinite"
    stopped_at: Optional[float]  # the LR at which the sweep stopped early
    taken: int = 0  # optimizer steps run (up to sync_every - 1 more than the curve's points, after a stop)


@dataclass
class LrSweep:
    """All repeats of the range test, with the reference LR the sweep's LR values are expressed in."""

    runs: list[SweepRun]
    user_lr: Optional[float]
    group_scales: list[float]  # each param group's LR relative to the first group's
    optimizer: str
    steps: int
    seconds: float
    skipped: Optional[str] = None  # why no sweep could be run
    adaptive: bool = False  # a per-parameter adaptive optimizer (Adam family, RMSprop, Adagrad, Adadelta)


#: hyper-parameters that only per-parameter adaptive optimizers have
_ADAPTIVE_KEYS = ("betas", "alpha", "rho", "initial_accumulator_value", "beta1", "beta2", "eps_root")


def is_adaptive(optimizer) -> bool:
    """Adam-like optimizers normalise each step by a running gradient scale; SGD-like ones do not."""
    if any(k in optimizer.param_groups[0] for k in _ADAPTIVE_KEYS):
        return True
    return type(optimizer).__name__ in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta",
                                        "RMSprop", "SparseAdam", "Adafactor", "LAMB", "Lamb", "Lion")


def _set_lr(groups, lr: float, scales: list[float]) -> None:
    for g, s in zip(groups, scales):
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr * s)
        else:
            g["lr"] = lr * s


def _group_scales(optimizer) -> tuple[Optional[float], list[float]]:
    """The first group's LR, and every group's LR relative to it (all groups are scaled together)."""
    lrs = [float(g.get("lr", 0.0)) for g in optimizer.param_groups]
    ref = lrs[0] if lrs else None
    if not ref or ref <= 0:
        return ref, [1.0] * len(lrs)
    return ref, [v / ref for v in lrs]


def sweep_once(session, *, start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
               order_seed: int = 0, beta: float = BETA, diverge_factor: float = DIVERGE_FACTOR,
               sync_every: int = SYNC_EVERY) -> SweepRun:
    """One exponential sweep from the session's current (user's) state, in a seeded batch order.

    Each step is a plain training step (the step's loss is the forward of the step: no extra forward) plus
    an LR assignment; the losses stay on the device and are read every ``sync_every`` steps to test for
    divergence, so a step costs what a training step costs.
    """
    model = session.model
    model.train()
    optimizer = session.make_optimizer()
    _, scales = _group_scales(optimizer)
    # one seeded shuffle, rotated by the repeat: repeats start on different batches even in a small pool (two
    # independent shuffles of 4 batches coincide often); the global RNG (dropout masks) differs per repeat too
    gen = torch.Generator().manual_seed(session.seed)
    base = torch.randperm(len(session.pool), generator=gen).tolist()
    shift = round(order_seed * len(base) * 0.618) % len(base)  # golden-ratio steps: distinct starts for many repeats
    order = base[shift:] + base[:shift]
    torch.manual_seed(session.seed * 1000 + order_seed)
    factor = (end_lr / start_lr) ** (1.0 / max(steps - 1, 1))
    lrs, pending, host, ema = [], [], [], []
    avg, best, stop, stopped_at = 0.0, math.inf, "end", None
    for i in range(steps):
        lr = start_lr * factor ** i
        _set_lr(optimizer.param_groups, lr, scales)
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = session.forward_loss(session.batch(order[i % len(order)]))
        if not loss.requires_grad:
            return SweepRun(order_seed=order_seed, lrs=[], losses=[], ema=[], stop="no_grad", stopped_at=None)
        loss.backward()
        optimizer.step()
        lrs.append(lr)
        pending.append(loss.detach())
        if len(pending) == sync_every or i == steps - 1:
            values = torch.stack(pending).float().cpu().tolist()
            pending = []
            for v in values:
                j = len(host)
                host.append(v)
                if not math.isfinite(v):
                    stop, stopped_at = "nonfinite", lrs[j]
                    break
                avg = beta * avg + (1 - beta) * v
                smooth = avg / (1 - beta ** (j + 1))
                ema.append(smooth)
                best = min(best, smooth)
                if j > 0 and smooth > diverge_factor * best:
                    stop, stopped_at = "diverged", lrs[j]
                    break
            if stop != "end":
                break
    n = len(host)
    return SweepRun(order_seed=order_seed, lrs=lrs[:n], losses=host, ema=ema, stop=stop, stopped_at=stopped_at,
                    taken=len(lrs))


def run_sweep(session, *, repeats: int = REPEATS, **kw) -> LrSweep:
    """``repeats`` sweeps, each from the user's state (``session.reset()``) in its own batch order."""
    from ..session import lr_of

    t0 = time.perf_counter()
    optimizer = session.make_optimizer()
    user_lr, scales = _group_scales(optimizer)
    name = type(optimizer).__name__
    trainable = [p for p in session.model.parameters() if p.requires_grad]
    skipped = None
    if not trainable:
        skipped = "the model has no trainable parameter"
    elif isinstance(optimizer, torch.optim.LBFGS):
        skipped = "LBFGS takes a closure and searches its own step size; an LR range test does not apply"
    runs = []
    if skipped is None:
        for r in range(repeats):
            session.reset()
            runs.append(sweep_once(session, order_seed=r, **kw))
            if runs[-1].stop == "no_grad":
                skipped, runs = "the loss does not require grad: nothing can be trained", []
                break
    session.reset()
    return LrSweep(runs=runs, user_lr=user_lr if user_lr is not None else lr_of(optimizer), group_scales=scales,
                   optimizer=name, steps=sum(r.taken for r in runs), seconds=time.perf_counter() - t0,
                   skipped=skipped, adaptive=is_adaptive(optimizer))


@provider("lr_sweep")
def lr_sweep(session) -> LrSweep:
    return run_sweep(session)


# -- analysis ---------------------------------------------------------------------------------------
def smooth_curve(log_lr: np.ndarray, y: np.ndarray, sigma_decades: float) -> np.ndarray:
    """A centred Gaussian smoothing in log-LR (no lag, unlike the EMA), normalised at the edges."""
    if len(y) < 3 or sigma_decades <= 0:
        return y.copy()
    d = log_lr[:, None] - log_lr[None, :]
    w = np.exp(-0.5 * (d / sigma_decades) ** 2)
    return (w @ y) / w.sum(1)


def valley_index(y: np.ndarray) -> int:
    """fastai's 'valley': the middle of the longest decreasing stretch of the curve."""
    n = len(y)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end] + 1
    sections = (max_end - max_start) / 3
    return int(max_start + int(sections) + int(sections / 2))


@dataclass
class CurveAnalysis:
    """What one repeat's curve says; ``suggestion`` is None (with ``reason``) when it supports none."""

    lrs: list[float]
    smoothed: list[float]  # smoothed loss (same units as the loss)
    suggestion: Optional[float] = None
    steepest: Optional[float] = None
    minimum: Optional[float] = None
    valley: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    diverged_at: Optional[float] = None
    drop: float = 0.0  # fraction by which the smoothed loss fell below its start
    reason: str = ""


def analyse_run(run: SweepRun, *, sigma_decades: float, min_drop: float, onset: float, band: float,
                low_margin: float = 1.0, adaptive: bool = False) -> CurveAnalysis:
    """Smooth the curve and read the evidence: steepest descent, minimum, valley, and the good range."""
    lrs = np.asarray(run.lrs, dtype=float)
    losses = np.asarray(run.losses, dtype=float)
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    out = CurveAnalysis(lrs=lrs.tolist(), smoothed=[], diverged_at=run.stopped_at)
    if len(losses) < 8:
        out.reason = f"the sweep diverged after {len(losses)} steps, at LR {run.stopped_at:.3g}" \
            if run.stopped_at else "too few steps in the sweep"
        return out
    x = np.log10(lrs)
    positive = bool((losses > 0).all())
    y = np.log(losses) if positive else losses
    s = smooth_curve(x, y, sigma_decades)
    out.smoothed = (np.exp(s) if positive else s).tolist()
    start = s[: max(3, len(s) // 20)].mean()
    i_min = int(np.argmin(s))
    total = start - s[i_min]
    out.drop = float(1 - math.exp(-total)) if positive else float(total / max(abs(start), 1e-12))
    if out.drop < min_drop:
        out.reason = (f"the loss never fell by {min_drop:.0%} (best {out.drop:.1%} below its start) before "
                      + (f"the sweep diverged at LR {run.stopped_at:.3g}" if run.stopped_at else
                         f"the end of the sweep at LR {lrs[-1]:.3g}"))
        return out
    grad = np.gradient(s, x)
    i_steep = int(np.argmin(grad[: i_min + 1]))
    i_valley = min(valley_index(s), i_min)
    out.steepest, out.minimum, out.valley = float(lrs[i_steep]), float(lrs[i_min]), float(lrs[i_valley])
    # the good range: from the onset of the descent (the loss has made ``onset`` of it: Smith's lower bound)
    # divided by ``low_margin``, to the last LR past the minimum still within ``band`` of the descent above it
    fallen = (start - s) / total
    # the last time the curve was above the onset level, so that noise in the flat start does not count
    not_yet = np.flatnonzero(fallen[: i_min + 1] < onset)
    i_low = int(not_yet[-1]) + 1 if len(not_yet) else 0
    above = (s[i_min:] - s[i_min]) / total
    i_high = i_min + (int(np.argmax(above > band)) - 1 if (above > band).any() else len(above) - 1)
    out.low, out.high = float(lrs[i_low]) / low_margin, float(lrs[i_high])
    # the suggestion: adaptive optimizers (per-parameter normalised steps) reach the curve's minimum at LRs too
    # large to sustain, so take the geometric middle of the steepest descent and fastai's minimum / 10; plain
    # and momentum SGD sustain the bottom of the curve, so take the middle of that bottom (minimum to the top
    # of the range). A curve that never turned back up has no known bottom: the adaptive rule then too.
    turned = bool((above > band).any()) or run.stopped_at is not None
    if adaptive or not turned:
        out.suggestion = math.sqrt(out.steepest * out.minimum / 10)
    else:
        out.suggestion = math.sqrt(out.minimum * out.high)
    out.suggestion = float(min(max(out.suggestion, out.low), out.high))
    return out


def geo_median(values: list[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and v > 0]
    return float(10 ** np.median(np.log10(vals))) if vals else None


@dataclass
class Verdict:
    """The combined reading of all repeats and the judgement of the user's LR."""

    analyses: list[CurveAnalysis]
    suggested_lr: Optional[float]
    lr_low: Optional[float]
    lr_high: Optional[float]
    diverged_at: Optional[float]
    spread: Optional[float]
    user_lr: Optional[float]
    status: str
    summary: str
    advice: list[str] = field(default_factory=list)
    reason: str = ""


# -- the check --------------------------------------------------------------------------------------
@dataclass
class LrRange(Check):
    id = "lr_range"
    title = "Learning-rate range test"
    what = """Leslie Smith's range test: from the user's state, train with the user's optimizer while the LR
    grows exponentially (1e-7 to 10 over 100 steps by default, every parameter group scaled together), stopping
    when the EMA of the loss exceeds 4x its best or turns non-finite. The sweep is repeated over 3 batch orders,
    each from the user's state. Each curve is smoothed in log-LR without lag; the suggestion is the median of
    three readings (the steepest descent, the minimum / 3, fastai's valley), then the median over repeats, with
    their spread. The good range runs from 30x below the onset of the descent (where 2% of it is made: the sweep
    spends ~5 steps per LR, a real run thousands) to where the loss has risen back 10% of its descent past the
    minimum. The user's LR is compared with that range and with the divergence point."""
    why = """The learning rate is the hyper-parameter that matters most. Too high and the loss oscillates or
    diverges; too low and training crawls and looks like a model that cannot learn. Single-sweep finders pick the
    argmin of a noisy gradient, so their suggestion moves by an order of magnitude between seeds; repeating over
    batch orders and combining several readings of the curve makes it stable, and the spread says how much to
    trust it."""
    todo = """Set the LR inside the reported range (the suggestion is a good start for a short run); if it is
    above the divergence point, lower it at least to the suggestion; if the loss does not move at your LR, raise
    it. If the curve is flat at every LR, look at overfit_batch and initial_loss first: the model or the loss is
    likely broken."""
    sources = (
        "L. N. Smith, 'Cyclical Learning Rates for Training Neural Networks' (WACV 2017): the LR range test",
        "L. N. Smith, 'A disciplined approach to neural network hyper-parameters: Part 1' (2018)",
        "fastai lr_find: exponential schedule, EMA beta 0.98 with bias correction, stop at 4x the best loss, "
        "suggestions 'minimum/10', 'steep' and 'valley'",
        "torch-lr-finder / Lightning lr_find: suggestion at the steepest gradient of the smoothed curve",
        "minimum / 3 rather than fastai's minimum / 10: fastai reads the minimum on its EMA curve, which lags the "
        "loss and puts the minimum at a larger LR; our curve is smoothed without lag",
        "Range and fail thresholds: a sweep of 100 steps over 8 decades spends ~5 steps per LR value "
        "(1/ln(10^(8/99))), so an LR 100x below where the sweep first moved the loss gets as far in ~500 steps, "
        "and one 1000x below needs ~5000",
    )
    requires = ("lr_sweep",)

    start_lr: float = threshold(START_LR, "the sweep's first LR (for the first param group; others keep their ratio)")
    end_lr: float = threshold(END_LR, "the sweep's last LR")
    steps: int = threshold(STEPS, "steps per repeat of the sweep")
    repeats: int = threshold(REPEATS, "repeats of the sweep, each over its own batch order")
    diverge_factor: float = threshold(DIVERGE_FACTOR, "stop a sweep when the EMA of the loss exceeds this multiple "
                                                      "of its best value (fastai, torch-lr-finder)")
    sigma_decades: float = threshold(0.25, "width (std, in decades of LR) of the centred smoothing of each curve")
    min_drop: float = threshold(0.1, "a curve whose smoothed loss never falls by this fraction supports no "
                                     "suggestion (flat)")
    onset: float = threshold(0.02, "the good range starts where the smoothed loss has made this fraction of its "
                                   "descent (the onset of the descent, Smith's lower bound)")
    low_margin: float = threshold(30.0, "the range's low end is the onset divided by this. The sweep spends ~5 steps "
                                        "at each LR (so ~5x the onset of cumulative step by the onset), and its descent "
                                        "runs a further 1-1.5 decades past the onset (the LR of half the descent was "
                                        "8-30x the onset on 13 healthy models); a run of ~1000 steps at onset/30 "
                                        "moves the weights ~6x as far as the sweep had at its onset, still early in "
                                        "the descent: slower than that is worth a warning (Adam at 1e-4 and SGD at "
                                        "0.01 stay inside on every model measured)")
    band: float = threshold(0.1, "the good range ends where the smoothed loss has risen back this fraction of its "
                                 "descent past its minimum")
    fail_above: float = threshold(1.0, "fail when the user's LR exceeds the divergence point times this")
    fail_below: float = threshold(1 / 30, "fail when the user's LR is below this times the range's low end (that is "
                                          "1000x below where the sweep first moved the loss: ~5000 steps to get as "
                                          "far as the sweep's 5)")

    def sweep(self, session) -> LrSweep:
        """The session's shared sweep, or a sweep of its own when the sweep settings were changed."""
        if (self.start_lr, self.end_lr, self.steps, self.repeats, self.diverge_factor) == (
                START_LR, END_LR, STEPS, REPEATS, DIVERGE_FACTOR):
            return session.evidence("lr_sweep")
        session.reset()
        return run_sweep(session, repeats=self.repeats, start_lr=self.start_lr, end_lr=self.end_lr,
                         steps=self.steps, diverge_factor=self.diverge_factor)

    def verdict(self, sweep: LrSweep) -> Verdict:
        """Combine the repeats and judge the user's LR; shared with overfit_batch."""
        analyses = [analyse_run(r, sigma_decades=self.sigma_decades, min_drop=self.min_drop,
                                onset=self.onset, band=self.band, low_margin=self.low_margin,
                                adaptive=sweep.adaptive)
                    for r in sweep.runs]
        user = sweep.user_lr
        diverged = geo_median([a.diverged_at for a in analyses])
        usable = [a for a in analyses if a.suggestion is not None]
        v = Verdict(analyses=analyses, suggested_lr=None, lr_low=None, lr_high=None, diverged_at=diverged,
                    spread=None, user_lr=user, status="skip", summary="")
        if len(usable) * 2 <= len(analyses):  # most repeats support no suggestion
            reasons = _joined_reasons(analyses)
            v.reason = reasons
            from_start = all(a.diverged_at and len(a.smoothed) < 8 for a in analyses)
            if from_start or (diverged is not None and diverged <= self.start_lr * 100):
                v.status = "warn"
                v.summary = f"no LR suggestion: the loss diverges from the start of the sweep ({reasons})"
                v.advice.append("The loss rises even at tiny LRs: check the loss (its sign, its reduction) and the "
                                "optimizer (a maximize=True, a momentum or beta outside [0, 1)).")
            else:
                v.status = "skip"
                v.summary = f"the sweep supports no LR suggestion: {reasons}"
            return v
        v.suggested_lr = geo_median([a.suggestion for a in usable])
        v.lr_low = geo_median([a.low for a in usable])
        v.lr_high = geo_median([a.high for a in usable])
        sugg = [a.suggestion for a in usable]
        v.spread = max(sugg) / min(sugg)
        self._judge(v)
        return v

    def _judge(self, v: Verdict) -> None:
        s, lo, hi, user = v.suggested_lr, v.lr_low, v.lr_high, v.user_lr
        rng = f"[{lo:.3g}, {hi:.3g}]"
        if user is None or user <= 0:
            v.status, v.summary = "pass", f"suggested LR {s:.3g}, good range {rng} (the optimizer has no LR)"
            return
        if v.diverged_at is not None and user > self.fail_above * v.diverged_at:
            v.status = "fail"
            v.summary = (f"your LR {user:.3g} is above the point where the loss diverged ({v.diverged_at:.3g}); "
                         f"suggested {s:.3g}, range {rng}")
            v.advice.append(f"Lower the LR to about {s:.3g} (inside {rng}): at {user:.3g} the loss diverges.")
        elif user < self.fail_below * lo:
            v.status = "fail"
            v.summary = (f"your LR {user:.3g} is so low that the loss does not move (in the sweep it first moved "
                         f"near {lo * self.low_margin:.3g}); suggested {s:.3g}, range {rng}")
            v.advice.append(f"Raise the LR to about {s:.3g} (inside {rng}): at {user:.3g} training barely moves.")
        elif user < lo:
            v.status = "warn"
            v.summary = f"your LR {user:.3g} is below the good range {rng} ({lo / user:.1f}x); suggested {s:.3g}"
            v.advice.append(f"Training at {user:.3g} will be slow: try {s:.3g} (the range is {rng}).")
        elif user > hi:
            v.status = "warn"
            v.summary = f"your LR {user:.3g} is above the good range {rng} ({user / hi:.1f}x); suggested {s:.3g}"
            v.advice.append(f"At {user:.3g} the loss was already rising in the sweep: try {s:.3g} (range {rng}).")
        else:
            v.status = "pass"
            v.summary = f"your LR {user:.3g} is inside the good range {rng}; suggested {s:.3g}"
        if v.spread is not None and v.spread > 10:
            v.advice.append(f"The suggestion varies {v.spread:.0f}x between batch orders: the loss is noisy at this "
                            f"batch size; prefer the middle of the range.")

    def run(self, session):
        sweep = self.sweep(session)
        if sweep.skipped:
            self.skip(sweep.skipped)
        v = self.verdict(sweep)
        metrics = {"suggested_lr": v.suggested_lr, "lr_low": v.lr_low, "lr_high": v.lr_high, "user_lr": v.user_lr,
                   "diverged_at": v.diverged_at, "spread": v.spread,
                   "repeats": len(sweep.runs), "steps": sweep.steps, "optimizer": sweep.optimizer,
                   "sweep_seconds": round(sweep.seconds, 4)}
        notes = []
        if len(sweep.group_scales) > 1:
            notes.append(f"{len(sweep.group_scales)} parameter groups were scaled together (ratios "
                         f"{[round(s, 4) for s in sweep.group_scales]}); LRs are the first group's.")
        if v.reason and v.suggested_lr is not None:
            notes.append(f"some repeats supported no suggestion: {v.reason}")
        if v.status == "skip":
            return self.result("skip", v.summary, metrics=metrics, advice=tuple(v.advice), plots=(self._plot(v),),
                               notes=tuple(notes))
        return self.result(v.status, v.summary, metrics=metrics, advice=tuple(v.advice), tables=(self._table(v),),
                           plots=(self._plot(v),), notes=tuple(notes))

    @staticmethod
    def _table(v: Verdict) -> Table:
        rows = [(i, a.suggestion, a.steepest, a.minimum, a.valley, a.low, a.high, a.diverged_at, a.drop,
                 a.reason or "") for i, a in enumerate(v.analyses)]
        return Table("repeats", "Readings of each repeat's curve",
                     ("repeat", "suggestion", "steepest", "minimum", "valley", "low", "high", "diverged_at",
                      "drop", "note"), rows)

    @staticmethod
    def _plot(v: Verdict) -> Plot:
        series = tuple(Series(f"order {i}", a.lrs[: len(a.smoothed)], a.smoothed)
                       for i, a in enumerate(v.analyses) if a.smoothed)
        markers = []
        for label, value in (("suggested", v.suggested_lr), ("range low", v.lr_low), ("range high", v.lr_high),
                             ("diverged", v.diverged_at), ("your LR", v.user_lr)):
            if value:
                markers.append(Marker(f"{label} {value:.3g}", value))
        return Plot("lr_curve", "Smoothed loss against the learning rate", "line", series, x_label="learning rate",
                    y_label="smoothed loss", log_x=True, markers=tuple(markers))


def _joined_reasons(analyses) -> str:
    """The repeats' reasons for no suggestion, once: repeats that failed alike are told by the best of them."""
    failed = [a for a in analyses if a.reason]
    kinds = {a.reason.split(" (")[0] for a in failed}
    if len(failed) > 1 and len(kinds) == 1:
        best = max(failed, key=lambda a: a.drop or 0.0)
        return f"{best.reason}, in the best of {len(analyses)} repeats"
    return "; ".join(sorted({a.reason for a in failed}))
