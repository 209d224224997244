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
    multiplier: Optional[tuple[float, float]] = None  # the usual range of an optimizer whose lr is a multiplier


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
    range_lr: Optional[float] = None  # the range test's own suggestion, before the race (see ``with_race``)
    race: Optional["LrRace"] = None  # the race that chose ``suggested_lr``, when one ran


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


def noisy_advice(spread: Optional[float], rules: ReadingRules) -> tuple[str, ...]:
    """Advice when the repeats' suggestions vary more than ``rules.noisy_spread``."""
    if spread is None or spread <= rules.noisy_spread:
        return ()
    return (f"The range test's suggestion varies {spread:.0f}x between batch orders: the loss is noisy at this batch "
            f"size; prefer the middle of the range.",)


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
    advice += noisy_advice(spread, rules)
    return LrReading(analyses=tuple(analyses), user_lr=user, status=status, summary=summary, suggested_lr=suggested,
                     lr_low=low, lr_high=high, diverged_at=diverged, spread=spread, advice=advice,
                     reason=joined_reasons(analyses), descent_low=geo_median([a.onset for a in usable]),
                     descent_high=geo_median([a.minimum for a in usable]), open_top=open_top)


# -- the race: candidates from the range, trained briefly, compared on held-out batches --------------------------
@dataclass(frozen=True)
class RaceRules:
    """How the race runs and is read (the ``lr_range`` thresholds ``race_*``): a first round of many LRs trained a
    few steps, then the best of them trained longer, compared on held-out batches."""

    #: the most LRs of the first round (0 turns the race off)
    candidates: int = 8
    #: the first round's steps per LR
    first_steps: int = 16
    #: a race around the user's LR (a curve with no suggestion: a loss that needs more steps than the sweep gives each
    #: LR, which a few steps do not tell apart) is one round, every LR trained this many steps
    plateau_steps: int = 48
    #: the final round's steps per LR: what the winner is chosen on
    steps: int = 96
    #: LRs of the first round trained again for ``steps`` (the best by held-out loss)
    finalists: int = 4
    held_out: int = 4
    #: decades between the first round's LRs
    spacing: float = 1 / 3
    #: the first round spans the range test's suggestion divided by 10 ** below to times 10 ** above
    below: float = 1.5
    above: float = 0.75
    #: raced LRs are rounded to this many values per decade (1, 1.5, 2.2, 3.2, 4.6, 6.8); 0: not rounded
    lattice: int = 6
    min_drop: float = 0.02
    user_tolerance: float = 0.05
    #: the race may try LRs above the range's top, up to this multiple of it (never past ``below_divergence``)
    above_top: float = 3.0
    #: ... and never above the divergence point divided by this
    below_divergence: float = 2.0
    #: a curve with no suggestion whose sweep diverged: the race spans the divergence point divided by these
    no_curve: tuple[float, float] = (1000.0, 3.0)
    #: decades between the coarse LRs of a race over a wide span (no curve, or a multiplier's usual range)
    wide_spacing: float = 1.0
    #: a curve with no suggestion is raced around the user's LR: it and this many LRs ``user_spacing`` decades either
    #: side
    user_neighbours: int = 1
    user_spacing: float = 0.5
    #: ... and when the best of that race is its highest LR, it climbs ``user_spacing`` decades at a time while the
    #: held-out loss keeps falling, at most this many times (``climb``)
    climb: int = 6
    #: ... and your LR, when it did not train there while another did, is trained this many times that race's steps
    #: before a warning (a plateau it leaves later: the corpus's BERT at 5e-4 falls between steps 48 and 96)
    user_longer: float = 4.0
    #: when the final round's best is its lowest LR, the LR ``spacing`` decades below it is trained as long, again
    #: while it is the best (the first round's few steps favour fast LRs, so the best of a longer run may lie
    #: below the finalists), at most this many times (``below_window``); 0: never
    descend: int = 2
    #: a candidate whose training loss exceeds this multiple of its first loss stops (it diverged)
    diverge_factor: float = SweepSettings.diverge_factor
    #: the suggestion is the winner divided by this, rounded to the lattice (``race_suggestion``): the race compares
    #: LRs after ``steps`` steps, and the best LR of a longer run lies lower; 1: the winner itself
    shrink: float = 1.5


@dataclass(frozen=True)
class RaceEntry:
    """One LR of the race: its loss on the held-out batches after ``steps`` steps (None when it diverged), and its
    round."""

    lr: float
    loss: Optional[float]
    round: str  # "coarse", "final", "above" (above the window), "yours" or "longer" (yours longer, around it)
    train_loss: Optional[float] = None  # the mean training loss over the last steps
    steps: int = 0


@dataclass(frozen=True)
class LrRace:
    """The race: every LR tried, the winner, and what it cost."""

    entries: tuple[RaceEntry, ...] = ()
    winner: Optional[float] = None
    steps: int = 0  # optimizer steps taken by every candidate together
    seconds: float = 0.0
    held_out: int = 0  # batches held out for the comparison
    skipped: str = ""  # why no race ran
    bounds: tuple[float, ...] = ()  # (lowest, highest) LR the race may try
    start_loss: Optional[float] = None  # the held-out loss at the user's state
    reason: str = ""  # why the race has no winner, when it ran
    around: Optional[float] = None  # the user's LR, when the race was around it (the curve gave no suggestion)
    suggested: Optional[float] = None  # the suggestion drawn from the winner (``race_suggestion``); None: the winner

    @property
    def suggestion(self) -> Optional[float]:
        """The LR the race suggests: ``suggested`` when set, else the winner."""
        return self.suggested if self.suggested is not None else self.winner


def race_bounds(reading: LrReading, rules: RaceRules,
                multiplier: Optional[tuple[float, float]] = None) -> Optional[tuple[float, float, bool]]:
    """(lowest, highest, wide) LR the race may try. From the range's low end to ``above_top`` times its top (a
    range test's top is where a 5-step-per-LR sweep turned up, conservative for a run at one LR), never past half
    the divergence point. For an optimizer whose ``lr`` is a multiplier, its usual range instead, raced wide; for a
    curve with no suggestion, the span of the race around the user's LR (``user_candidates``), or without a user LR,
    ``no_curve`` below the divergence point, raced wide. None when there is nothing to race over."""
    cap = (reading.diverged_at or math.inf) / rules.below_divergence
    if multiplier is not None:
        return multiplier[0], min(multiplier[1], max(cap, multiplier[0])), True
    if reading.suggested_lr is not None and reading.lr_low and reading.lr_high:
        return reading.lr_low, max(min(rules.above_top * reading.lr_high, cap), reading.lr_high), False
    if around_user(reading, rules):
        lrs = user_candidates(reading, rules)
        return min(lrs), max(lrs), False
    if reading.diverged_at is not None and reading.analyses and not _from_start(reading, rules):
        return reading.diverged_at / rules.no_curve[0], reading.diverged_at / rules.no_curve[1], True
    return None


def _from_start(reading: LrReading, rules: RaceRules) -> bool:
    """The sweep diverged from its start (no LR trained): there is nothing to race."""
    return reading.status is Status.WARN or all(a.diverged_at and len(a.smoothed) < 8 for a in reading.analyses)


def around_user(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]] = None) -> bool:
    """A curve with no suggestion (the loss needs more steps than the sweep gives each LR), from a sweep that did not
    diverge from its start, is raced around the user's LR: the user chose it knowing the model, a prior worth more
    than a span below the divergence point. Not for an optimizer whose lr is a multiplier (its usual range)."""
    user = reading.user_lr
    return (multiplier is None and reading.suggested_lr is None and user is not None and user > 0
            and bool(reading.analyses) and not _from_start(reading, rules))


def user_candidates(reading: LrReading, rules: RaceRules) -> tuple[float, ...]:
    """The race around the user's LR: it and ``rules.user_neighbours`` LRs ``rules.user_spacing`` decades either side,
    none above half the divergence point (an LR above it is replaced by that cap, and raced apart); a sweep that
    diverged adds the wide round's LRs (the divergence point / ``no_curve``) more than half a spacing from those,
    since the user's LR is a prior, not a certainty. Sorted, lowest first."""
    cap = (reading.diverged_at or math.inf) / rules.below_divergence
    center, n = min(reading.user_lr, cap), max(rules.user_neighbours, 0)
    near = [center * 10 ** (rules.user_spacing * k) for k in range(-n, n + 1)]
    near = [lr for lr in near if lr <= cap * 1.001]
    wide: tuple[float, ...] = ()
    if reading.diverged_at is not None:
        wide = wide_candidates((reading.diverged_at / rules.no_curve[0], reading.diverged_at / rules.no_curve[1]),
                               rules)
    far = [lr for lr in wide if all(abs(math.log10(lr / x)) >= rules.user_spacing / 2 for x in near)]
    return tuple(sorted(near + far))


def snap(lr: float, lattice: int) -> float:
    """``lr`` rounded in log space to ``lattice`` values per decade (6: 1, 1.5, 2.2, 3.2, 4.6, 6.8); unchanged when
    ``lattice`` is 0."""
    return float(10 ** (round(math.log10(lr) * lattice) / lattice)) if lattice > 0 else lr


def race_candidates(center: float, bounds: tuple[float, float], rules: RaceRules) -> tuple[float, ...]:
    """The first round: LRs ``rules.spacing`` decades apart from ``center`` (the range test's suggestion) divided by
    10 ** ``rules.below`` to ``center`` times 10 ** ``rules.above``, inside ``bounds``, on the lattice (the center
    rounded, the spacing a whole number of lattice steps), at most ``rules.candidates`` of them (the nearest to the
    center); the center alone when ``bounds`` leave none. Lowest first."""
    if rules.candidates <= 0:
        return ()
    unit = 1.0 / rules.lattice if rules.lattice > 0 else rules.spacing  # one lattice step, in decades
    step = max(1, round(rules.spacing / unit))
    c = round(math.log10(center) / unit) if rules.lattice > 0 else math.log10(center) / unit
    lo = max(math.ceil(math.log10(bounds[0]) / unit - 1e-9), c - math.floor(rules.below / unit + 1e-9))
    hi = min(math.floor(math.log10(bounds[1]) / unit + 1e-9), c + math.floor(rules.above / unit + 1e-9))
    ks = [c + step * i for i in range(-int((c - lo) // step) - 1, int((hi - c) // step) + 2) if lo <= c + step * i <= hi]
    if not ks:
        ks = [min(max(c, lo), hi)] if lo <= hi else [c]
    ks = sorted(sorted(ks, key=lambda k: (abs(k - c), k))[: rules.candidates])
    return tuple(float(10 ** (k * unit)) for k in ks)


def wide_candidates(bounds: tuple[float, float], rules: RaceRules) -> tuple[float, ...]:
    """LRs spread evenly in log space over ``bounds``, about ``rules.wide_spacing`` decades apart (at least 3)."""
    lo, hi = (math.log10(b) for b in bounds[:2])
    n = max(3, int(round((hi - lo) / rules.wide_spacing)) + 1)
    return tuple(float(v) for v in np.logspace(lo, hi, n)) if hi > lo else (10 ** lo,)


def coarse_candidates(reading: LrReading, rules: RaceRules,
                      multiplier: Optional[tuple[float, float]] = None) -> tuple[float, ...]:
    """The coarse round: around the range test's suggestion (``race_candidates``), around the user's LR for a curve
    with no suggestion (``user_candidates``), or spread over a wide span (``wide_candidates``: a multiplier's usual
    range, or below the divergence point when there is no user LR). Nothing when the race is off or has nothing to
    race over."""
    bounds = race_bounds(reading, rules, multiplier)
    if bounds is None or rules.candidates <= 0:
        return ()
    if around_user(reading, rules, multiplier):
        return user_candidates(reading, rules)
    if bounds[2]:
        return wide_candidates(bounds, rules)
    return race_candidates(reading.suggested_lr, bounds, rules)


def same_lr(a: float, b: float) -> bool:
    """Two LRs within ~5% of each other (0.02 decades): the race's one notion of "the same LR"."""
    return abs(math.log10(a / b)) < 0.02


#: the rounds whose entries compete for the win: the final round and its extensions above and below the window
FINAL_ROUNDS = ("final", "above", "below", "climb", "plateau")


def _tried(lr: float, entries, rounds=("final", "yours")) -> bool:
    return any(same_lr(lr, e.lr) for e in entries if e.round in rounds)


def finalists(entries, rules: RaceRules) -> tuple[float, ...]:
    """The final round: the ``rules.finalists`` LRs of the first round with the lowest held-out loss (those that
    diverged never). Lowest first."""
    coarse = sorted((e for e in entries if e.round == "coarse" and e.loss is not None), key=lambda e: e.loss)
    return tuple(sorted(e.lr for e in coarse[: max(rules.finalists, 0)]))


def race_winner(entries, rules: RaceRules, start_loss: Optional[float] = None) -> Optional[float]:
    """The LR of the final round with the lowest held-out loss (the user's own LR, raced apart, never wins). None
    when every finalist diverged, or when the best held-out loss is not ``rules.min_drop`` below ``start_loss`` (the
    loss at the user's state): a race where nothing trained supports no suggestion."""
    ok = [e for e in entries if e.loss is not None and e.round in FINAL_ROUNDS]
    if not ok:
        return None
    best = min(ok, key=lambda e: e.loss)
    if start_loss is not None and best.loss > start_loss - rules.min_drop * abs(start_loss):
        return None
    return best.lr


def race_suggestion(winner: Optional[float], rules: RaceRules, shrinks: bool = True) -> Optional[float]:
    """The suggestion from a race's winner: the winner divided by ``rules.shrink`` and rounded to the lattice when
    ``shrinks`` (see ``shrinks``: when), else the winner. The race ranks LRs after ``rules.steps``
    steps, a short run: a faster LR is ahead there, and the best LR of a longer run lies lower (on the 26 tuning tasks
    of benchmarks/lr_quality.py the winner was a median 2 lattice steps, 2.2x, above the best LR of a 150-step
    run). Not when the user's LR won a race around it (the user's LR is the prior there) nor over a multiplier's
    range."""
    if winner is None or not shrinks or rules.shrink <= 1:
        return winner
    return snap(winner / rules.shrink, rules.lattice)


def shrinks(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]] = None,
            entries=()) -> bool:
    """Whether the race's suggestion is its winner shrunk (``race_suggestion``): not over a multiplier's usual range;
    in a race around the range test's suggestion or below the divergence point, not when the winner is the highest
    LR raced while the race's bounds left room above it (``open_top``); in a race around the user's LR, when another
    LR than the user's won (it won a short race, as any other winner; the user's LR is the prior there)."""
    if multiplier is not None:
        return False
    if around_user(reading, rules, multiplier):
        winner = race_winner(entries, rules)
        return winner is not None and not same_lr(winner, reading.user_lr)
    return not open_top(reading, rules, entries)


def above_window(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]], entries
                 ) -> tuple[float, ...]:
    """The final round's extension: when its best is the highest LR raced and the bounds leave room above
    (``open_top``), the LR ``rules.spacing`` decades above it (CS231n: when the best lies at the edge of the searched
    range, search beyond it). Only after a first round around the range test's suggestion."""
    if multiplier is not None or around_user(reading, rules, multiplier) or \
            not any(e.round == "coarse" for e in entries) or not open_top(reading, rules, entries):
        return ()
    top = max(e.lr for e in entries if e.round in ("coarse",) + FINAL_ROUNDS)
    return (snap(top * 10 ** rules.spacing, rules.lattice),)


def below_window(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]], entries
                 ) -> tuple[float, ...]:
    """The final round's extension downwards: when its best is the lowest LR trained as long, the LR
    ``rules.spacing`` decades below it (never below the race's bounds), again while the new LR is the best, at most
    ``rules.descend`` times. The first round ranks LRs after a few steps, where the fast ones lead, so its finalists
    are its highest LRs; their best being the lowest of them says the best of a longer run may lie lower (CS231n:
    when the best lies at the edge of the searched range, search beyond it). Only after a first round around the
    range test's suggestion."""
    if rules.descend <= 0 or multiplier is not None or around_user(reading, rules, multiplier) or \
            not any(e.round == "coarse" for e in entries):
        return ()
    long = [e for e in entries if e.round in FINAL_ROUNDS]
    ok = [e for e in long if e.loss is not None]
    if not ok or sum(e.round == "below" for e in long) >= rules.descend:
        return ()
    best = min(ok, key=lambda e: e.loss)
    if not same_lr(best.lr, min(e.lr for e in long)):
        return ()
    lower = snap(best.lr / 10 ** rules.spacing, rules.lattice)
    return (lower,) if lower >= race_bounds(reading, rules)[0] * 0.999 else ()


def climb(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]], entries
          ) -> tuple[float, ...]:
    """A race around the user's LR whose best is its highest LR climbs: the LR ``rules.user_spacing`` decades above
    it, as long as the best is still the highest LR raced (the held-out loss kept falling), at most ``rules.climb``
    times, never above half the divergence point nor, when the sweep did not diverge, above its last LR (CS231n:
    when the best lies at the edge of the searched range, search beyond it; a user's LR far too low for plain SGD
    leaves a curve that the sweep's few steps per LR cannot read)."""
    raced = [e for e in entries if e.round in ("final", "climb")]
    if rules.climb <= 0 or not around_user(reading, rules, multiplier) or not raced or \
            sum(e.round == "climb" for e in raced) >= rules.climb:
        return ()
    top = max(raced, key=lambda e: e.lr)
    ok = [e for e in raced if e.loss is not None]
    if top.loss is None or min(ok, key=lambda e: e.loss) is not top:
        return ()
    cap = reading.diverged_at / rules.below_divergence if reading.diverged_at else \
        max((a.lrs[-1] for a in reading.analyses if a.lrs), default=0.0)
    step = top.lr * 10 ** rules.user_spacing
    return (step,) if step <= cap * 1.001 else ()


def open_top(reading: LrReading, rules: RaceRules, entries) -> bool:
    """The final round's best is the highest LR raced, and an LR ``rules.spacing`` decades above it was inside the
    race's bounds but outside its window: the best LR may lie above the window, so the winner is only a lower bound
    for it, and shrinking it would move away. A top set by the bounds (near divergence, or 3x the range's top) is
    no open top."""
    final = [e for e in entries if e.round in FINAL_ROUNDS and e.loss is not None]
    bounds = race_bounds(reading, rules)
    if not final or bounds is None:
        return False
    top = max(e.lr for e in entries if e.round in ("coarse",) + FINAL_ROUNDS)
    best = min(final, key=lambda e: e.loss).lr
    return same_lr(best, top) and top * 10 ** rules.spacing <= bounds[1] * 1.001


def race_user(reading: LrReading, entries, rules: RaceRules,
              multiplier: Optional[tuple[float, float]] = None) -> bool:
    """Race the user's own LR too when the range test warns about it (or could not read the curve: a multiplier
    optimizer, or a race around the user's LR that capped it below the divergence point) and it was not raced
    already: the race can confirm that it trains."""
    user = reading.user_lr
    unread = reading.status is Status.SKIP and (multiplier or around_user(reading, rules, multiplier))
    if not user or user <= 0 or not (reading.status is Status.WARN or unread):
        return False
    return not _tried(user, entries)


def plateau(reading: LrReading, entries, rules: RaceRules, start_loss: Optional[float],
            multiplier: Optional[tuple[float, float]] = None) -> tuple[float, ...]:
    """A race around the user's LR where no LR trained (none lowered the held-out loss ``rules.min_drop``): the LR of
    the lowest held-out loss is trained ``rules.user_longer`` times the race's steps, and wins if it trains then. A
    loss on a plateau at every LR for the race's steps (the corpus's BERT; a dropout CNN whose 10-class loss sat at
    ln 10 for 48 steps at every LR) may leave it later, at the best of them first."""
    raced = [e for e in entries if e.round in ("final", "climb") and e.loss is not None]
    if rules.user_longer <= 1 or not around_user(reading, rules, multiplier) or not raced or \
            race_winner(entries, rules, start_loss) is not None:
        return ()
    return (min(raced, key=lambda e: e.loss).lr,)


def user_longer(reading: LrReading, entries, rules: RaceRules, start_loss: Optional[float],
                multiplier: Optional[tuple[float, float]] = None) -> bool:
    """In a race around the user's LR, train the user's LR ``rules.user_longer`` times the race's steps when it did
    not train in the race while the winner did (a plateau it may leave later); the verdict warns only if it still
    does not train."""
    user, winner = reading.user_lr, race_winner(entries, rules, start_loss)
    if winner is None or rules.user_longer <= 1 or not around_user(reading, rules, multiplier):
        return False
    yours = next((e for e in entries if e.round in ("final", "yours") and same_lr(user, e.lr)), None)
    return not (yours is None or yours.loss is None or trained(yours, start_loss, rules) or same_lr(winner, user))


#: the race's rounds, in order; each runs once, on what the rounds before it found ("below" and "climb" again and
#: again, one LR at a time, while they find a lower held-out loss)
RACE_ROUNDS = ("coarse", "final", "above", "below", "climb", "plateau", "yours", "longer")
REPEATED_ROUNDS = ("below", "climb")


def race_round(reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]], entries,
               start_loss: Optional[float]) -> tuple[tuple[float, int, str], ...]:
    """The race's next round as (lr, steps, round) to train, given the entries of the rounds so far; () when the race
    is over. The pass (``babysitter.passes.lr_race``) trains what this asks for and asks again, so a simulator can
    run the same rules on recorded curves.

    "coarse": the candidates (``coarse_candidates``) trained ``rules.first_steps`` steps each, skipped when there
    are no more of them than finalists; "final": the best ``rules.finalists`` of them (all, without a coarse round)
    trained ``rules.steps`` steps each: the winner is theirs; "above": one LR above them, as long, when their best
    is the highest LR raced and the bounds leave room (``above_window``); "yours": the user's LR, when the range test
    warns about it (``race_user``). A race around the user's LR is one final round of every candidate at ``rules.plateau_steps``
    steps, "climb" rounds above it while its best is its highest LR (``climb``), then "longer": that LR trained
    ``rules.user_longer`` times longer (``user_longer``)."""
    if race_bounds(reading, rules, multiplier) is None or rules.candidates <= 0:
        return ()
    last = max((RACE_ROUNDS.index(e.round) for e in entries if e.round in RACE_ROUNDS), default=-1)
    for i, name in enumerate(RACE_ROUNDS):
        if i < last or (i == last and name not in REPEATED_ROUNDS):  # each round once, some again while they find more
            continue
        lrs, steps = _round(name, reading, rules, multiplier, entries, start_loss)
        if lrs:
            return tuple((lr, steps, name) for lr in lrs)
    return ()


def _round(name: str, reading: LrReading, rules: RaceRules, multiplier: Optional[tuple[float, float]], entries,
           start_loss: Optional[float]) -> tuple[tuple[float, ...], int]:
    """The LRs round ``name`` trains given the entries so far (none: it does not run), and their steps."""
    around = around_user(reading, rules, multiplier)
    steps = rules.plateau_steps if around else rules.steps
    if name == "coarse":
        lrs = coarse_candidates(reading, rules, multiplier)
        return (lrs if not around and len(lrs) > max(rules.finalists, 1) else ()), rules.first_steps
    if name == "final":
        coarse = any(e.round == "coarse" for e in entries)
        return (finalists(entries, rules) if coarse else coarse_candidates(reading, rules, multiplier)), steps
    if name == "above":
        return above_window(reading, rules, multiplier, entries), steps
    if name == "below":
        return below_window(reading, rules, multiplier, entries), steps
    if name == "climb":
        return climb(reading, rules, multiplier, entries), steps
    if name == "plateau":
        return plateau(reading, entries, rules, start_loss, multiplier), int(round(steps * rules.user_longer))
    if name == "yours":
        return ((reading.user_lr,) if race_user(reading, entries, rules, multiplier) else ()), steps
    longer = user_longer(reading, entries, rules, start_loss, multiplier)
    return ((reading.user_lr,) if longer else ()), int(round(steps * rules.user_longer))


def race_entry(race: LrRace, lr: Optional[float], rounds=("final", "yours")) -> Optional[RaceEntry]:
    """The race's entry at ``lr`` (within 5%) in one of ``rounds`` (the one trained longest, when that LR was raced
    twice: a plateau's best trained longer), None when that LR was not raced there."""
    if not lr:
        return None
    return max((e for e in race.entries if e.round in rounds and same_lr(e.lr, lr)), key=lambda e: e.steps,
               default=None)


def race_range(reading: LrReading, race: LrRace,
               multiplier: Optional[tuple[float, float]] = None) -> Optional[tuple[float, float]]:
    """The good range with the race: a multiplier's usual range (with the curve's range, when it gave one);
    else the curve's range, its top raised to the race's winner when the winner lies above it (the race trained it
    best) and its low end lowered to the suggestion when that lies below it; None when the curve gave no range."""
    if multiplier is not None and race.bounds:
        if reading.suggested_lr is None:
            return race.bounds[0], race.bounds[1]
        return min(race.bounds[0], reading.lr_low), max(race.bounds[1], reading.lr_high)
    if reading.suggested_lr is None or reading.lr_low is None or reading.lr_high is None:
        return None
    return min(reading.lr_low, race.suggestion or math.inf), max(reading.lr_high, race.winner or 0.0)


def judge_with_race(reading: LrReading, race: LrRace, rules: RaceRules, reading_rules: ReadingRules,
                    multiplier: Optional[tuple[float, float]] = None) -> tuple[Status, str, tuple[str, ...]]:
    """The user's LR against the range with the race (``race_range``), the race's winner as the suggestion. What
    catches an LR far too high or far too low is the range test's and is kept; a warning turns into a pass only
    when the race trained the user's own LR as well as its winner (held-out loss within ``rules.user_tolerance``).
    A curve with no range keeps its verdict and gains the race's suggestion."""
    winner, user, suggested = race.winner, reading.user_lr, race.suggestion
    rng = race_range(reading, race, multiplier)
    if rng is None:
        return (reading.status, f"{reading.summary}; a race of {len(race.entries)} LRs below the divergence point "
                                f"suggests {fmt_lr(suggested)}", reading.advice)
    low, high = rng
    judged_by = reading_rules if reading.suggested_lr is not None else \
        dataclasses.replace(reading_rules, fail_below=0.0)
    status, summary, advice = judge_user_lr(user, suggested, low, high, reading.diverged_at, judged_by,
                                            reading.open_top and multiplier is None and high == reading.lr_high)
    yours, best = race_entry(race, user), race_entry(race, winner, FINAL_ROUNDS)
    if status is not Status.WARN or yours is None or yours.loss is None or best is None:
        return status, summary, advice
    if yours.loss <= best.loss + rules.user_tolerance * abs(best.loss):
        where = "below" if user < low else "above"
        return (Status.PASS, f"your LR {fmt_lr(user)} is {where} the good range [{fmt_lr(low)}, {fmt_lr(high)}] but "
                             f"trained as well as the race's winner {fmt_lr(winner)} (held-out loss {yours.loss:.4g} "
                             f"vs {best.loss:.4g} after {yours.steps} steps); suggested {fmt_lr(suggested)}", ())
    return status, summary + (f"; in the race it reached a held-out loss of {yours.loss:.4g} against "
                              f"{best.loss:.4g} at {fmt_lr(winner)}"), advice


def trained(entry: Optional[RaceEntry], start_loss: Optional[float], rules: RaceRules) -> bool:
    """The raced LR brought the held-out loss ``rules.min_drop`` below its value at the user's state (the rule a
    winner must meet); one that diverged did not."""
    if entry is None or entry.loss is None:
        return False
    return start_loss is None or entry.loss <= start_loss - rules.min_drop * abs(start_loss)


def judge_around_user(reading: LrReading, race: LrRace, rules: RaceRules,
                      reading_rules: ReadingRules) -> tuple[Status, str, tuple[str, ...]]:
    """The user's LR by a race around it, when the range test could not read the curve and the race has a winner.
    Above the divergence point: a fail, as with a curve. The user's LR that won or came within
    ``rules.user_tolerance`` of the winner's held-out loss passes; one beaten clearly passes too, with the winner as
    the suggestion (a short race on a plateau is weak evidence against an LR that trains), unless it diverged or did
    not train at all (``trained``) while the winner did: a warning naming both."""
    user, winner, diverged = reading.user_lr, race.winner, reading.diverged_at
    u, w, sug = fmt_lr(user), fmt_lr(winner), _suggested(race)
    head = f"the range test could not read the curve ({reading.reason})"
    if diverged is not None and user > reading_rules.fail_above * diverged:
        return (Status.FAIL, f"your LR {u} is above the point where the loss diverged ({fmt_lr(diverged)}); {head}; "
                             f"a race below it suggests {sug}",
                (f"Lower the LR to about {fmt_lr(race.suggestion)}: at {u} the loss diverges.",))
    yours, best = race_entry(race, user, ("final", "yours", "plateau")), race_entry(race, winner, FINAL_ROUNDS)
    if yours is None or best is None:
        return reading.status, f"{reading.summary}; a race around your LR suggests {sug}", reading.advice
    after = f"after {best.steps} steps{_start(race)}"
    same = yours_against(race, user, best)
    if yours_as_good(same, best, race.start_loss, rules):  # then yours is the suggestion: a short race's winner is
        best_is = "yours is the winner" if same is best else f"the winner {w} reached {best.loss:.4g}"
        return (Status.PASS, f"{head}; a race around your LR: yours {u} trains as well as the best raced (held-out "
                             f"loss {same.loss:.4g}, {best_is}, {after}); suggested: yours, {u}", ())
    if not trained(yours, race.start_loss, rules):
        return _untrained(reading, race, yours, best, head, rules)
    return (Status.PASS, f"{head}; a race around your LR trained {w} better than yours {u} (held-out loss "
                         f"{best.loss:.4g} vs {yours.loss:.4g} {after}); suggested {sug}", ())


def yours_against(race: LrRace, user: Optional[float], best: Optional[RaceEntry]) -> Optional[RaceEntry]:
    """The user's entry to compare with the winner's ``best``: the one trained as many steps when the winner was
    trained longer (a plateau's best, 4x the race's steps, against your LR trained as long), else yours from the
    race's rounds."""
    yours = race_entry(race, user, ("final", "yours", "plateau"))
    longer = race_entry(race, user, ("longer",))
    if yours is not None and best is not None and longer is not None and longer.steps == best.steps > yours.steps:
        return longer
    return yours


def yours_as_good(yours: Optional[RaceEntry], best: Optional[RaceEntry], start_loss: Optional[float],
                  rules: RaceRules) -> bool:
    """Whether the user's LR did as well as the winner (``as_good``; ``yours`` from ``yours_against``: trained as
    many steps when it was raced that long); against a plateau's best it must also have trained (lowered the
    held-out loss ``rules.min_drop``): on a loss that barely moves, 5% of the loss is more than any LR moved it."""
    if yours is best:
        return yours is not None
    plateau = best is not None and best.round == "plateau"
    return as_good(yours, best, rules) and (not plateau or trained(yours, start_loss, rules))


def as_good(yours: Optional[RaceEntry], best: Optional[RaceEntry], rules: RaceRules) -> bool:
    """Whether the user's raced LR reached the winner's held-out loss within ``rules.user_tolerance``."""
    return yours is not None and best is not None and yours.loss is not None and best.loss is not None and \
        yours.loss <= best.loss + rules.user_tolerance * abs(best.loss)


def _untrained(reading: LrReading, race: LrRace, yours: RaceEntry, best: RaceEntry, head: str,
               rules: RaceRules) -> tuple[Status, str, tuple[str, ...]]:
    """The user's LR did not train in the race around it while the winner did: a warning, unless it trained when
    given ``user_longer`` times the steps (the race's "longer" entry: a plateau it leaves later)."""
    u, w = fmt_lr(reading.user_lr), fmt_lr(race.winner)
    longer = race_entry(race, reading.user_lr, ("longer",))
    if yours.loss is not None and longer is not None and trained(longer, race.start_loss, rules):
        return (Status.PASS, f"{head}; a race around your LR: yours {u} trains, later than {w} (held-out loss "
                             f"{yours.loss:.4g} after {yours.steps} steps, {longer.loss:.4g} after {longer.steps}"
                             f"{_start(race)}; "
                             f"{w}: {best.loss:.4g} after {best.steps}); suggested {_suggested(race)}", ())
    what = "diverged" if yours.loss is None else f"did not train (held-out loss {yours.loss:.4g} after {yours.steps} " \
        f"steps{_longer_words(longer)}{_start(race)})"
    return (Status.WARN, f"{head}; in a race around your LR, yours {u} {what} while {w} brought the held-out loss to "
                         f"{best.loss:.4g} in {best.steps} steps",
            (f"Try an LR near {fmt_lr(race.suggestion)}: at {u} the held-out loss did not fall.",))


def _suggested(race: LrRace) -> str:
    """The race's suggestion, and its winner when the suggestion is the winner lowered (``race_suggestion``)."""
    s = fmt_lr(race.suggestion)
    return s if race.suggestion == race.winner else f"{s}, a step below the winner {fmt_lr(race.winner)}"


def _start(race: LrRace) -> str:
    return f", from {race.start_loss:.4g}" if race.start_loss is not None else ""


def _longer_words(longer: Optional[RaceEntry]) -> str:
    if longer is None:
        return ""
    return f", {longer.loss:.4g} after {longer.steps}" if longer.loss is not None else \
        f", diverged when trained {longer.steps}"


def _around_user_reading(out: LrReading, race: LrRace, rules: RaceRules, reading_rules: ReadingRules) -> LrReading:
    """The reading of a curve with no suggestion after a race around the user's LR: its verdict and the winner as
    the suggestion, or, without a winner, the range test's skip with the race's reason added."""
    if race.winner is None:
        lrs = ", ".join(fmt_lr(e.lr) for e in race.entries)
        keep = kept_user_lr(out, race)
        then = f"; keep your LR {fmt_lr(keep)}: no LR raced trained better than it" if keep else ""
        return dataclasses.replace(out, suggested_lr=keep,
                                   summary=f"{out.summary}; a race around your LR ({lrs}): {race.reason}{then}")
    status, summary, advice = judge_around_user(out, race, rules, reading_rules)
    best = race_entry(race, race.winner, FINAL_ROUNDS)
    keep = status is Status.PASS and yours_as_good(yours_against(race, out.user_lr, best), best, race.start_loss, rules)
    return dataclasses.replace(out, suggested_lr=out.user_lr if keep else race.suggestion, status=status,
                               summary=summary, advice=advice)


def kept_user_lr(reading: LrReading, race: LrRace) -> Optional[float]:
    """The user's LR, as the suggestion of a race around it that has no winner (no LR raced lowered the held-out loss
    ``min_drop`` below its start), when the user's LR reached the lowest held-out loss of every LR raced and lowered
    it below its start, however little: no LR beat it, so the sensible advice is to keep it (the corpus's LLaMA,
    whose loss barely moves in a short run at any LR). None when it diverged, was not raced, or another LR did
    better (an LR far too low, beaten even by its neighbours on a plateau). The check's status stays the range
    test's skip: the race did not show that the user's LR trains either."""
    mine = [e for e in race.entries if e.round in ("final", "yours", "plateau") and same_lr(e.lr, reading.user_lr)]
    yours = min(mine, key=lambda e: math.inf if e.loss is None else e.loss, default=None)  # its lowest, 48 or 192
    losses = [e.loss for e in race.entries if e.round in FINAL_ROUNDS and e.loss is not None]
    if race.winner is not None or yours is None or yours.loss is None or yours.loss > min(losses, default=math.inf):
        return None
    return reading.user_lr if race.start_loss is None or yours.loss < race.start_loss else None


def with_race(reading: LrReading, race: LrRace, rules: RaceRules, reading_rules: ReadingRules,
              multiplier: Optional[tuple[float, float]] = None) -> LrReading:
    """The reading with the race's winner as its suggestion (the range test's own kept as ``range_lr``), the range
    with the race (``race_range``) and the user's LR judged with it (``judge_with_race``). Without a winner, the
    range test's reading stands."""
    out = dataclasses.replace(reading, race=race, range_lr=reading.suggested_lr)
    if race.entries and around_user(reading, rules, multiplier):
        return _around_user_reading(out, race, rules, reading_rules)
    if race.winner is None:
        return out
    status, summary, advice = judge_with_race(reading, race, rules, reading_rules, multiplier)
    rng = race_range(reading, race, multiplier)
    if rng is None:  # no range: the curve's verdict (its advice included) with the race's suggestion
        return dataclasses.replace(out, suggested_lr=race.suggestion, summary=summary)
    return dataclasses.replace(out, suggested_lr=race.suggestion, status=status, summary=summary, lr_low=rng[0],
                               lr_high=rng[1], open_top=reading.open_top and rng[1] == reading.lr_high,
                               advice=advice + noisy_advice(reading.spread, reading_rules))
