"""Reading an LR range test: the sweep's data, each repeat's curve, and the judgment of the user's LR.

Plain data in, plain data out, as Lightning's ``suggestion()``: the sweep pass (``babysitter.passes.lr_sweep``)
records :class:`LrSweep`; :func:`read_sweep` turns it into an :class:`LrReading` under :class:`ReadingRules`.
``lr_range`` presents the reading and ``overfit_batch`` retries at its suggestion: both read the same one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .fmt import lr as fmt_lr
from .fmt import pct
from .status import Status


# -- the sweep's data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSettings:
    """How the range test runs (the ``lr_range`` thresholds of the same names)."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 100
    repeats: int = 3
    diverge_factor: float = 4.0
    #: the EMA of the online divergence test (fastai, torch-lr-finder)
    beta: float = 0.98
    #: host syncs: the losses stay on the device and are read every this many steps
    sync_every: int = 8


@dataclass(frozen=True)
class SweepRun:
    """One pass of the range test over one batch order: the LR and raw loss of every step taken."""

    order_seed: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    ema: tuple[float, ...]  # bias-corrected exponential moving average (the online divergence test)
    stop: str  # "end", "diverged", "nonfinite" or "no_grad"
    stopped_at: Optional[float]  # the LR at which the sweep stopped early
    taken: int = 0  # optimizer steps run (up to sync_every - 1 more than the curve's points, after a stop)


@dataclass(frozen=True)
class LrSweep:
    """All repeats of the range test, with the reference LR the sweep's LR values are expressed in."""

    runs: tuple[SweepRun, ...]
    user_lr: Optional[float]
    group_scales: tuple[float, ...]  # each param group's LR relative to the first group's
    optimizer: str
    steps: int
    seconds: float
    skipped: Optional[str] = None  # why no sweep could be run
    adaptive: bool = False  # a per-parameter adaptive optimizer (Adam family, RMSprop, Adagrad, Adadelta)
    step: tuple[str, ...] = ()  # the parts of the user's step each sweep step kept (clipping, accumulation, ...)
    scheduler_left_out: bool = False  # the user's scheduler was not run: the sweep sets the LR
    end_lr: Optional[float] = None  # the sweep's last LR (beyond the settings' when extended to cover the user's)


# -- reading one curve --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadingRules:
    """How a curve is read and the user's LR judged (the ``lr_range`` thresholds of the same names)."""

    sigma_decades: float = 0.25
    min_drop: float = 0.1
    onset: float = 0.02
    low_margin: float = 30.0
    band: float = 0.1
    fail_above: float = 1.0
    fail_below: float = 1 / 30
    #: divergence this close to the sweep's start (a multiple of start_lr) means the loss rises from the start
    start_lr: float = SweepSettings.start_lr
    #: a suggestion that varies more than this between batch orders gets a note in the advice
    noisy_spread: float = 10.0


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


@dataclass(frozen=True)
class CurveAnalysis:
    """What one repeat's curve says; ``suggestion`` is None (with ``reason``) when it supports none."""

    lrs: tuple[float, ...]
    smoothed: tuple[float, ...] = ()  # smoothed loss (same units as the loss)
    suggestion: Optional[float] = None
    steepest: Optional[float] = None
    minimum: Optional[float] = None
    valley: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    diverged_at: Optional[float] = None
    drop: float = 0.0  # fraction by which the smoothed loss fell below its start
    reason: str = ""
    onset: Optional[float] = None  # where the descent began (the range's low end times low_margin)
    turned: bool = False  # the curve rose back past its minimum or the sweep diverged: its top was measured


def _smoothed(lrs: np.ndarray, losses: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """The curve smoothed in log-LR (on log(loss) when every loss is positive), and whether it was logged."""
    x = np.log10(lrs)
    positive = bool((losses > 0).all())
    return x, smooth_curve(x, np.log(losses) if positive else losses, sigma), positive


def _good_range(s: np.ndarray, start: float, i_min: int, total: float, rules: ReadingRules) -> tuple[int, int, bool]:
    """Indices of the good range's ends, and whether the curve turned back up past its minimum.

    From the onset of the descent (the loss has made ``onset`` of it: Smith's lower bound; the last time the
    curve was above that level, so that noise in the flat start does not count) to the last LR past the minimum
    still within ``band`` of the descent above it."""
    fallen = (start - s) / total
    not_yet = np.flatnonzero(fallen[: i_min + 1] < rules.onset)
    i_low = int(not_yet[-1]) + 1 if len(not_yet) else 0
    above = (s[i_min:] - s[i_min]) / total
    rose = above > rules.band
    i_high = i_min + (int(np.argmax(rose)) - 1 if rose.any() else len(above) - 1)
    return i_low, i_high, bool(rose.any())


def analyse_run(run: SweepRun, rules: ReadingRules, adaptive: bool = False) -> CurveAnalysis:
    """Smooth one repeat's curve and read it: steepest descent, minimum, valley, the good range, a suggestion.

    The suggestion: adaptive optimizers (per-parameter normalised steps) reach the curve's minimum at LRs too
    large to sustain, so the geometric middle of the steepest descent and fastai's minimum / 10; plain and
    momentum SGD sustain the bottom of the curve, so the middle of that bottom (minimum to the top of the
    range). A curve that never turned back up has no known bottom: the adaptive rule then too.
    """
    lrs, losses = np.asarray(run.lrs, dtype=float), np.asarray(run.losses, dtype=float)
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    out = CurveAnalysis(lrs=tuple(lrs.tolist()), diverged_at=run.stopped_at)
    if len(losses) < 8:
        return dataclasses.replace(out, reason=f"the sweep diverged after {len(losses)} steps, at LR "
                                               f"{fmt_lr(run.stopped_at)}" if run.stopped_at else
                                   "too few steps in the sweep")
    x, s, positive = _smoothed(lrs, losses, rules.sigma_decades)
    start = s[: max(3, len(s) // 20)].mean()
    i_min = int(np.argmin(s))
    total = start - s[i_min]
    drop = float(1 - math.exp(-total)) if positive else float(total / max(abs(start), 1e-12))
    out = dataclasses.replace(out, smoothed=tuple((np.exp(s) if positive else s).tolist()), drop=drop)
    if drop < rules.min_drop:
        end = (f"the sweep diverged at LR {fmt_lr(run.stopped_at)}" if run.stopped_at else
               f"the end of the sweep at LR {fmt_lr(lrs[-1])}")
        return dataclasses.replace(out, reason=f"the loss never fell by {pct(rules.min_drop)} (best "
                                               f"{pct(drop, 1)} below its start) before {end}")
    grad = np.gradient(s, x)
    i_steep = int(np.argmin(grad[: i_min + 1]))
    i_valley = min(valley_index(s), i_min)
    i_low, i_high, rose = _good_range(s, start, i_min, total, rules)
    if run.stopped_at is not None:  # the top stays below the LR at which the sweep diverged
        i_high = min(i_high, max(int(np.searchsorted(lrs, run.stopped_at)) - 1, 0))
    steepest, minimum, low, high = float(lrs[i_steep]), float(lrs[i_min]), float(lrs[i_low]) / rules.low_margin, \
        float(lrs[i_high])
    turned = rose or run.stopped_at is not None
    suggestion = math.sqrt(steepest * minimum / 10) if adaptive or not turned else math.sqrt(minimum * high)
    return dataclasses.replace(out, steepest=steepest, minimum=minimum, valley=float(lrs[i_valley]), low=low,
                               high=high, suggestion=float(min(max(suggestion, low), high)),
                               onset=float(lrs[i_low]), turned=turned)


def geo_median(values) -> Optional[float]:
    """The geometric median of the positive values (None when there is none)."""
    vals = [v for v in values if v is not None and v > 0]
    return float(10 ** np.median(np.log10(vals))) if vals else None


# -- the reading of all repeats -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LrReading:
    """The combined reading of all repeats and the judgment of the user's LR."""

    analyses: tuple[CurveAnalysis, ...]
    user_lr: Optional[float]
    status: Status
    summary: str
    suggested_lr: Optional[float] = None
    lr_low: Optional[float] = None
    lr_high: Optional[float] = None
    diverged_at: Optional[float] = None
    spread: Optional[float] = None
    advice: tuple[str, ...] = ()
    reason: str = ""
    descent_low: Optional[float] = None  # where the sweep's loss began to fall (geometric median of the onsets)
    descent_high: Optional[float] = None  # where it reached its minimum
    open_top: bool = False  # most curves never turned back up and none diverged: the top is the sweep's end


def joined_reasons(analyses) -> str:
    """The repeats' reasons for no suggestion, once: repeats that failed alike are told by the best of them."""
    failed = [a for a in analyses if a.reason]
    kinds = {a.reason.split(" (")[0] for a in failed}
    if len(failed) > 1 and len(kinds) == 1:
        best = max(failed, key=lambda a: a.drop or 0.0)
        return f"{best.reason}, in the best of {len(analyses)} repeats"
    return "; ".join(sorted({a.reason for a in failed}))


def _no_suggestion(analyses, user: Optional[float], diverged: Optional[float], rules: ReadingRules) -> LrReading:
    reasons = joined_reasons(analyses)
    from_start = all(a.diverged_at and len(a.smoothed) < 8 for a in analyses)
    base = LrReading(analyses=tuple(analyses), user_lr=user, diverged_at=diverged, reason=reasons,
                     status=Status.SKIP, summary=f"the sweep supports no LR suggestion: {reasons}")
    if from_start or (diverged is not None and diverged <= rules.start_lr * 100):
        return dataclasses.replace(
            base, status=Status.WARN,
            summary=f"no LR suggestion: the loss diverges from the start of the sweep ({reasons})",
            advice=("The loss rises even at tiny LRs: check the loss (its sign, its reduction) and the optimizer "
                    "(a maximize=True, a momentum or beta outside [0, 1)).",))
    return base


def judge_user_lr(user: Optional[float], suggested: float, low: float, high: float, diverged: Optional[float],
                  rules: ReadingRules, open_top: bool = False) -> tuple[Status, str, tuple[str, ...]]:
    """The user's LR against the good range and the divergence point: (status, summary, advice). ``open_top``:
    the range's top is only where the sweep ended (the loss never turned back up), and the summary says so."""
    s = fmt_lr(suggested)
    rng = f"[{fmt_lr(low)}, {fmt_lr(high)}{' (the end of the sweep)' if open_top else ''}]"
    if user is None or user <= 0:
        return Status.PASS, f"suggested LR {s}, good range {rng} (the optimizer has no LR)", ()
    u = fmt_lr(user)
    if diverged is not None and user > rules.fail_above * diverged:
        return (Status.FAIL, f"your LR {u} is above the point where the loss diverged ({fmt_lr(diverged)}); "
                             f"suggested {s}, range {rng}",
                (f"Lower the LR to about {s} (inside {rng}): at {u} the loss diverges.",))
    if user < rules.fail_below * low:
        return (Status.FAIL, f"your LR {u} is so low that the loss does not move (in the sweep it first moved near "
                             f"{fmt_lr(low * rules.low_margin)}); suggested {s}, range {rng}",
                (f"Raise the LR to about {s} (inside {rng}): at {u} training barely moves.",))
    if user < low:
        return (Status.WARN, f"your LR {u} is below the good range {rng} ({low / user:.1f}x); suggested {s}",
                (f"Training at {u} will be slow: try {s} (the range is {rng}).",))
    if user > high:
        return (Status.WARN, f"your LR {u} is above the good range {rng} ({user / high:.1f}x); suggested {s}",
                (f"At {u} the loss was already rising in the sweep: try {s} (range {rng}).",))
    return Status.PASS, f"your LR {u} is inside the good range {rng}; suggested {s}", ()


def read_sweep(sweep: LrSweep, rules: ReadingRules = ReadingRules()) -> LrReading:
    """Combine the repeats (geometric medians of the usable ones) and judge the user's LR. Most repeats without
    a suggestion give none (a skip, or a warning when the loss diverges from the start of the sweep)."""
    analyses = [analyse_run(r, rules, sweep.adaptive) for r in sweep.runs]
    user = sweep.user_lr
    diverged = geo_median([a.diverged_at for a in analyses])
    usable = [a for a in analyses if a.suggestion is not None]
    if len(usable) * 2 <= len(analyses):
        return _no_suggestion(analyses, user, diverged, rules)
    sugg = [a.suggestion for a in usable]
    spread = max(sugg) / min(sugg)
    high = min(geo_median([a.high for a in usable]), diverged or math.inf)  # never past where the sweep diverged
    low = min(geo_median([a.low for a in usable]), high)
    suggested = min(max(geo_median(sugg), low), high)
    open_top = diverged is None and 2 * sum(not a.turned for a in usable) > len(usable)
    status, summary, advice = judge_user_lr(user, suggested, low, high, diverged, rules, open_top)
    if spread > rules.noisy_spread:
        advice += (f"The suggestion varies {spread:.0f}x between batch orders: the loss is noisy at this batch "
                   f"size; prefer the middle of the range.",)
    return LrReading(analyses=tuple(analyses), user_lr=user, status=status, summary=summary, suggested_lr=suggested,
                     lr_low=low, lr_high=high, diverged_at=diverged, spread=spread, advice=advice,
                     reason=joined_reasons(analyses), descent_low=geo_median([a.onset for a in usable]),
                     descent_high=geo_median([a.minimum for a in usable]), open_top=open_top)
