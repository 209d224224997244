"""What a training run's records say, as pure functions and bounded accumulators: no model, no torch.

The watcher (:mod:`babysitter.watch`) reads these records from the user's own loop; the judgments here turn them
into verdicts and are testable on synthetic series in a few lines. Everything that grows with the run is bounded:
a :class:`Downsampled` series keeps at most ``capacity`` buckets however long the run, a :class:`ZClip` state is
four numbers, a :class:`RecentWindow` keeps the last values only.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


def finite(values: Sequence) -> list[float]:
    """The finite numbers of ``values`` (non-numbers, NaN and infinities left out)."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def suggested_clip(norms: Sequence[float], spike: float, percentile: float) -> float:
    """The ``percentile`` of the finite norms that moved (zero-gradient steps say nothing about a clip) and are not
    spikes (more than ``spike`` times the median). Shared by the ``grad_norms`` check and the watcher."""
    norms = finite(norms)
    p50 = float(np.median(norms))
    moving = [v for v in norms if v > 0] or norms
    healthy = [v for v in moving if v <= spike * p50] or moving
    return float(np.percentile(healthy, percentile))


# -- bounded records ----------------------------------------------------------------------------------
@dataclass
class Downsampled:
    """A series of (step, value) of any length in at most ``capacity`` buckets: every bucket holds ``width``
    consecutive values (their mean, maximum and first step); when the buckets are full, neighbours merge in pairs
    and the width doubles. Non-finite values are not added (the caller records them as events)."""

    capacity: int = 512
    width: int = 1
    steps: list = field(default_factory=list)
    means: list = field(default_factory=list)
    maxes: list = field(default_factory=list)
    _open: Optional[list] = None  # [first step, sum, count, max] of the bucket being filled

    def add(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            return
        if self._open is None:
            self._open = [step, 0.0, 0, -math.inf]
        b = self._open
        b[1] += value
        b[2] += 1
        b[3] = max(b[3], value)
        if b[2] >= self.width:
            self._close()

    def _close(self) -> None:
        step, total, count, peak = self._open
        self._open = None
        self.steps.append(step)
        self.means.append(total / count)
        self.maxes.append(peak)
        if len(self.steps) >= self.capacity:
            self._halve()

    def _halve(self) -> None:
        n = len(self.steps) // 2 * 2
        self.steps[:] = self.steps[:n:2] + self.steps[n:]
        self.means[:] = [(a + b) / 2 for a, b in zip(self.means[:n:2], self.means[1:n:2])] + self.means[n:]
        self.maxes[:] = [max(a, b) for a, b in zip(self.maxes[:n:2], self.maxes[1:n:2])] + self.maxes[n:]
        self.width *= 2

    def points(self) -> tuple[list, list, list]:
        """(steps, means, maxima), the bucket being filled included."""
        steps, means, maxes = list(self.steps), list(self.means), list(self.maxes)
        if self._open is not None and self._open[2]:
            steps.append(self._open[0])
            means.append(self._open[1] / self._open[2])
            maxes.append(self._open[3])
        return steps, means, maxes

    def at(self, step: int) -> Optional[float]:
        """The mean of the bucket that holds ``step`` (None before the first)."""
        steps, means, _ = self.points()
        i = int(np.searchsorted(steps, step, side="right")) - 1
        return means[i] if i >= 0 else None

    def size(self) -> int:
        return 3 * len(self.steps) + 4


@dataclass
class ZClip:
    """ZClip's running statistics of the gradient norm (Kumar et al., arXiv 2504.02507): an exponential moving
    average of the norm's mean and variance; a step whose z-score exceeds ``z`` is a spike, and the adaptive clip
    threshold is mean + z * std. The first ``warmup`` steps only seed the average (as the paper's warm-up)."""

    alpha: float = 0.97
    z: float = 2.5
    warmup: int = 25
    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    spikes: int = 0
    first_spikes: list = field(default_factory=list)  # the steps of the first FIRST_SPIKES spikes

    FIRST_SPIKES = 20

    def update(self, step: int, norm: float) -> Optional[float]:
        """Take one step's norm; its z-score (None during the warm-up or for a non-finite norm)."""
        if not math.isfinite(norm):
            return None
        self.n += 1
        if self.n <= self.warmup:  # the warm-up's plain running mean and variance
            delta = norm - self.mean
            self.mean += delta / self.n
            self.var += (delta * (norm - self.mean) - self.var) / self.n
            return None
        std = math.sqrt(max(self.var, 0.0))
        score = (norm - self.mean) / std if std > 0 else 0.0
        if score > self.z:
            self.spikes += 1
            if len(self.first_spikes) < self.FIRST_SPIKES:
                self.first_spikes.append(step)
            norm = self.mean + self.z * std  # as ZClip: the statistics see the clipped value
        self.mean = self.alpha * self.mean + (1 - self.alpha) * norm
        self.var = self.alpha * self.var + (1 - self.alpha) * (norm - self.mean) ** 2
        return score

    @property
    def threshold(self) -> Optional[float]:
        """The clip ZClip would apply at the next step (None during the warm-up)."""
        return self.mean + self.z * math.sqrt(max(self.var, 0.0)) if self.n > self.warmup else None

    @property
    def judged(self) -> int:
        return max(self.n - self.warmup, 0)


class RecentWindow:
    """The last ``size`` values (a bounded deque), with their percentiles."""

    def __init__(self, size: int):
        self.values: deque = deque(maxlen=size)

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(value)

    def median(self) -> Optional[float]:
        return float(np.median(self.values)) if self.values else None


# -- the loss over a run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossRules:
    """How a run's loss is read (the ``loss_trend`` thresholds of a watch)."""

    #: the loss is smoothed by an exponential moving average of this factor (debiased, as fastai's recorder)
    smoothing: float = 0.98
    #: steps before any verdict on the trend
    min_steps: int = 50
    #: diverged: the smoothed loss rose above both its start and this multiple of its best value
    diverge: float = 2.0
    #: rising: the smoothed loss gave back more than this fraction of the fall from its start to its best
    rise: float = 0.5
    #: no progress: the loss of the last window is above this fraction of the first window's
    stalled: float = 0.98
    #: a plateau: over the last of ``windows`` equal windows the loss moved by less than this fraction (or than two
    #: standard errors of the windows' means, when the loss is noisier than that), while the LR
    #: was still above ``undecayed`` of its largest value (a decayed LR ends every healthy schedule on a plateau)
    plateau: float = 0.01
    windows: int = 3
    plateau_min_steps: int = 300
    undecayed: float = 0.5
    #: a spike: a loss more than ``spike_mads`` robust standard deviations above the median of the last
    #: ``spike_window`` losses, and at least ``spike_ratio`` times that median
    spike_mads: float = 10.0
    spike_ratio: float = 1.5
    spike_window: int = 128
    #: spikes warn when more than this fraction of the steps (and at least ``min_spikes``) are spikes
    spike_rate: float = 0.01
    min_spikes: int = 3


class LossTracker:
    """The loss of every optimizer step, reduced as it arrives in blocks: the smoothed loss, its best and where it
    was, the series for the trend, spikes against a robust running median, all bounded."""

    def __init__(self, rules: LossRules = LossRules()):
        self.rules = rules
        self.series = Downsampled()
        self.smooth = Downsampled()
        self.recent: deque = deque(maxlen=rules.spike_window)
        self.n = 0
        self._ema = 0.0
        self.start: Optional[float] = None  # the smoothed loss after min_steps steps
        self.best: Optional[float] = None
        self.best_step = 0
        self.worst_after_best: Optional[float] = None
        self.worst_step = 0
        self.spikes = 0
        self.first_spikes: list = []

    def add_block(self, first: int, losses: Sequence[float]) -> None:
        """The losses of consecutive steps from ``first``; non-finite ones are skipped (a step without a loss, or
        a loss that was not finite: the watcher records the latter as the run's non-finite event)."""
        spikes = self._spikes(losses)
        for i, loss in enumerate(losses):
            self._add(first + i, float(loss), bool(spikes[i]))

    def _spikes(self, losses: Sequence[float]) -> np.ndarray:
        """Which of a block's losses are spikes against the robust statistics of the losses before the block
        (one median per block, not per step)."""
        r = self.rules
        values = np.asarray(losses, float)
        if len(self.recent) < r.spike_window // 2:
            return np.zeros(len(values), bool)
        before = np.fromiter(self.recent, float)
        median = float(np.median(before))
        mad = 1.4826 * float(np.median(np.abs(before - median)))
        with np.errstate(invalid="ignore"):
            return (mad > 0) & (values > median + r.spike_mads * mad) & (values > r.spike_ratio * median)

    def _add(self, step: int, loss: float, spike: bool) -> None:
        if not math.isfinite(loss):
            return
        self.n += 1
        if spike:
            self.spikes += 1
            if len(self.first_spikes) < ZClip.FIRST_SPIKES:
                self.first_spikes.append(step)
        self.recent.append(loss)
        self.series.add(step, loss)
        r = self.rules
        self._ema = r.smoothing * self._ema + (1 - r.smoothing) * loss
        smoothed = self._ema / (1 - r.smoothing ** self.n)
        self.smooth.add(step, smoothed)
        if self.n < r.min_steps:
            return
        if self.start is None:
            self.start = smoothed
        if self.best is None or smoothed < self.best:
            self.best, self.best_step, self.worst_after_best = smoothed, step, smoothed
        elif smoothed > self.worst_after_best:
            self.worst_after_best, self.worst_step = smoothed, step


@dataclass(frozen=True)
class LossVerdict:
    """What the loss of a run did: ``kind`` is one of ok, too_short, diverged, rising, stalled, plateau, spiky;
    ``step`` where it happened (None when nowhere in particular)."""

    kind: str
    step: Optional[int] = None
    detail: str = ""


def _windows(means: Sequence[float], windows: int) -> list[tuple[float, float]]:
    """(mean, standard error of the mean) of each of ``windows`` equal windows of ``means``."""
    n = len(means)
    size = max(n // windows, 1)
    out = []
    for i in range(windows):
        part = np.asarray(means[i * size:(i + 1) * size], float)
        if part.size:
            out.append((float(part.mean()), float(part.std(ddof=1) / np.sqrt(part.size)) if part.size > 1 else 0.0))
    return out


def judge_loss(t: LossTracker, lr_at_end: Optional[float], lr_peak: Optional[float]) -> LossVerdict:
    """The loss's verdict over its finite values, worst first: diverged, rising, stalled, plateau, spiky, ok (a
    non-finite loss is the ``nonfinite`` verdict's)."""
    r = t.rules
    if t.n < r.min_steps or t.best is None:
        return LossVerdict("too_short")
    _, means, _ = t.series.points()
    stats = _windows(means, r.windows)
    last = [m for m, _ in stats]
    current = t.smooth.points()[1][-1]
    fall = t.start - t.best
    if current > max(t.start, r.diverge * t.best) and t.worst_after_best is not None:
        return LossVerdict("diverged", t.best_step)
    if fall > 0 and current - t.best > r.rise * fall and current > 1.2 * t.best:
        return LossVerdict("rising", t.best_step)
    if len(last) == r.windows and last[-1] > r.stalled * last[0]:
        return LossVerdict("stalled")
    undecayed = lr_at_end is None or lr_peak is None or lr_at_end >= r.undecayed * lr_peak
    if len(last) == r.windows and t.n >= r.plateau_min_steps and undecayed and last[-2] > 0 \
            and abs(last[-2] - last[-1]) < max(r.plateau * last[-2], _noise(stats[-2], stats[-1])):
        change = (last[-2] - last[-1]) / last[-2]
        return LossVerdict("plateau", _plateau_start(t, r), f"{'fell' if change >= 0 else 'rose'} {abs(change):.2%}")
    if t.spikes >= r.min_spikes and t.spikes > r.spike_rate * t.n:
        return LossVerdict("spiky", t.first_spikes[0] if t.first_spikes else None)
    return LossVerdict("ok")


def _noise(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Two standard errors of the difference of two windows' means: a change within it is no change."""
    return 2.0 * math.hypot(a[1], b[1])


def _plateau_start(t: LossTracker, r: LossRules) -> Optional[int]:
    """The first step of the last window (where the plateau is measured from)."""
    steps, _, _ = t.series.points()
    size = max(len(steps) // r.windows, 1)
    return steps[(r.windows - 1) * size] if len(steps) > (r.windows - 1) * size else None


# -- units and ratios over a run ---------------------------------------------------------------------
def died(first: float, last: float, grown: float, layer_threshold: float) -> bool:
    """A layer whose units died during training: its dead fraction grew by more than ``grown`` and ends above
    ``layer_threshold`` (what the ``dead_relu`` check calls a mostly dead layer)."""
    return last - first > grown and last > layer_threshold


def clipped_share(norms: Sequence[float], rel: float = 1e-3) -> tuple[float, Optional[float]]:
    """The share of ``norms`` within ``rel`` of their maximum, and that maximum: gradients that reach the optimizer
    clipped by the user's loop pile up at the clip value."""
    good = finite(norms)
    if not good:
        return 0.0, None
    top = max(good)
    return sum(1 for v in good if v >= top * (1 - rel)) / len(good), top
