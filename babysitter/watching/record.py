"""What a watch keeps of a run, on the host, bounded: the records the verdicts read.

A :class:`RunRecord` is filled by the watcher from the rows it reads off the device, and read by
:mod:`babysitter.watch.verdicts`; it holds no tensor and no model, so verdicts can be tested on a record filled
by hand. Its size does not grow with the run's length (:meth:`RunRecord.size`).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..analysis import fmt
from ..analysis.activations import RECTIFIER, SIGMOID, SOFTMAX, TANH
from ..analysis.run import Downsampled, LossRules, LossTracker, RecentWindow, ZClip
from ..checklist.activation_scale import ActivationScale
from ..checklist.grad_norms import GradNorms
from ..checklist.param_updates import ParamUpdates
from ..checklist.saturation import Saturation


@dataclass(frozen=True)
class WatchRules:
    """The thresholds of a watch. Those that the checklist has too take the checklist's defaults (one number,
    one place): the clip percentile and the spike factor of ``grad_norms``, the update/weight bounds of
    ``param_updates``, the saturated share of ``saturation`` (its failure level), the scale ratio of
    ``activation_scale``."""

    loss: LossRules = LossRules()
    #: the clip is suggested from the total norms of this many most recent steps (norms change as training goes)
    clip_window: int = 1024
    clip_percentile: float = GradNorms.clip_percentile
    spike: float = GradNorms.spike
    #: ZClip's z-score threshold and EMA factor (arXiv 2504.02507's defaults)
    zclip_z: float = 2.5
    zclip_alpha: float = 0.97
    #: gradient spikes: a total norm above ``spike`` times the median of the ``spike_window`` steps before it (a
    #: local median: norms fall by orders of magnitude over a healthy run); noted from ``min_spikes`` on, never
    #: judged (see verdicts._spike_note). ZClip's z-score spikes are counted and shown too
    min_spikes: int = 3
    spike_window: int = 100
    #: warn when the median norm of the recent window is this many times that of the first window (or 1/this)
    growth: float = 100.0
    #: gradients that reach the optimizer clipped: this share of the recent norms sit at their maximum
    clipped_share: float = 0.2
    ratio_low: float = ParamUpdates.low_ratio
    ratio_high: float = ParamUpdates.high_ratio
    #: update/weight ratios are judged on the median of this many most recent samples
    ratio_window: int = 16
    #: a layer whose dead share grew by more than this during the run, to above DEAD_LAYER, died in training
    dead_grown: float = 0.1
    #: a hidden tanh/sigmoid layer saturated during training: above this share (the checklist's failure level at
    #: init; its warning level, 10%, is about a fresh init, and a trained layer that grew confident passes it)
    saturated: float = Saturation.fail_layer
    #: warn when a layer's activation std changed by more than this factor between the first and last sample
    scale_change: float = ActivationScale.warn_ratio
    #: the scaler may skip steps while it finds its scale: judged after this many steps, warn above skip_rate
    skip_warmup: int = 20
    skip_rate: float = 0.05
    #: forwards run with the finiteness probe after a non-finite value
    detail_forwards: int = 3


@dataclass(frozen=True)
class NonfiniteEvent:
    """The first non-finite value of the run: at which optimizer step, in what (loss, gradient, parameter), which
    parameters' gradients or values were not finite, and the LR of the first group then."""

    step: int
    what: str
    params: tuple[str, ...] = ()
    lr: Optional[float] = None


@dataclass(frozen=True)
class ActivationSample:
    """One sampled step's activations: per layer (name, family, dead share, saturated share, std, whether it is
    the model's output)."""

    step: int
    layers: tuple[tuple, ...]

    @classmethod
    def of(cls, step: int, result, dead_unit: float) -> "ActivationSample":
        rows = []
        for layer in result.layers:
            dead = layer.dead_units(dead_unit) / max(layer.units, 1) if layer.family == RECTIFIER else None
            sat = layer.saturated_fraction if layer.family in (TANH, SIGMOID, SOFTMAX) else None
            std = layer.std if math.isfinite(layer.std) else None
            rows.append((layer.name, layer.family, dead, sat, std, layer.is_output))
        return cls(step, tuple(rows))

    def by_name(self) -> dict:
        return {r[0]: r for r in self.layers}


@dataclass
class RunRecord:
    """Everything a watch keeps (see the module's docstring)."""

    name: str
    names: list
    group_sizes: list
    rules: WatchRules
    loss: LossTracker
    norms: Downsampled
    zclip: ZClip
    recent: RecentWindow
    local: RecentWindow
    first_norms: list
    grad_sum: np.ndarray
    grad_max: np.ndarray
    grad_steps: np.ndarray
    zero_steps: np.ndarray
    lrs: list
    lr_peak: list
    lr_last: tuple = ()
    steps: int = 0
    scale_last: Optional[float] = None
    skipped: int = 0
    skipped_after_warmup: int = 0
    first_skips: list = field(default_factory=list)
    ratio_first: Optional[np.ndarray] = None
    ratio_recent: deque = field(default_factory=deque)
    ratio_median: Downsampled = field(default_factory=Downsampled)
    samples: list = field(default_factory=list)
    nonfinite: Optional[NonfiniteEvent] = None
    forward_site: Optional[tuple] = None
    big_spikes: int = 0
    first_big_spikes: list = field(default_factory=list)

    @classmethod
    def empty(cls, name: str, names: Sequence[str], group_sizes: Sequence[int], rules: WatchRules) -> "RunRecord":
        p, groups = len(names), len(group_sizes)
        return cls(name=name, names=list(names), group_sizes=list(group_sizes), rules=rules,
                   loss=LossTracker(rules.loss), norms=Downsampled(), zclip=ZClip(rules.zclip_alpha, rules.zclip_z),
                   recent=RecentWindow(rules.clip_window), local=RecentWindow(rules.spike_window), first_norms=[], grad_sum=np.zeros(p),
                   grad_max=np.zeros(p), grad_steps=np.zeros(p, int), zero_steps=np.zeros(p, int),
                   lrs=[Downsampled() for _ in range(groups)], lr_peak=[0.0] * groups,
                   ratio_recent=deque(maxlen=rules.ratio_window))

    # -- filled by the watcher -----------------------------------------------------------------------
    def add_steps(self, first: int, loss: np.ndarray, has_loss: np.ndarray, given: np.ndarray, scale: np.ndarray,
                  norms: np.ndarray, lrs: list, backoff: float) -> Optional[NonfiniteEvent]:
        """A block of consecutive optimizer steps from ``first``: per step its loss (when ``has_loss``), the
        total norm the loop measured (NaN: none), the scaler's scale (NaN: no scaler) and the gradient norm of
        every parameter. Returns the run's first non-finite event when it is in this block."""
        n = len(norms)
        with np.errstate(invalid="ignore", over="ignore"):
            totals = np.where(np.isfinite(given), given, np.sqrt(np.sum(norms * norms, axis=1)))
        for i in range(min(n, len(lrs))):
            self._add_lr(first + i, lrs[i])
        self.loss.add_block(first, loss)
        self._big_spikes(first, totals)
        for i in range(n):
            self._add_scale(first + i, scale[i], backoff)
            self.norms.add(first + i, totals[i])
            self.zclip.update(first + i, totals[i])
            self.recent.add(totals[i])
            self.local.add(totals[i])
        self._add_params(totals, norms)
        self.steps = first + n
        return self._first_nonfinite(first, has_loss & ~np.isfinite(loss), totals, norms)

    def _big_spikes(self, first: int, totals: np.ndarray) -> None:
        """Steps whose total norm is above ``spike`` times the local median before the block."""
        median = self.local.median()
        if median is None or len(self.local.values) < self.rules.loss.min_steps:
            return
        with np.errstate(invalid="ignore"):
            where = np.flatnonzero(totals > self.rules.spike * median)
        self.big_spikes += len(where)
        room = ZClip.FIRST_SPIKES - len(self.first_big_spikes)
        self.first_big_spikes.extend(int(first + i) for i in where[:max(room, 0)])

    def _add_params(self, totals: np.ndarray, norms: np.ndarray) -> None:
        room = self.rules.clip_window - len(self.first_norms)
        if room > 0:
            self.first_norms.extend(float(v) for v in totals[np.isfinite(totals)][:room])
        good = np.isfinite(norms)
        clean = np.where(good, norms, 0.0)
        self.grad_sum += clean.sum(axis=0)
        self.grad_max = np.maximum(self.grad_max, clean.max(axis=0, initial=0.0))
        self.grad_steps += good.sum(axis=0)
        self.zero_steps += (norms == 0).sum(axis=0)

    def _first_nonfinite(self, first: int, bad_loss: np.ndarray, totals, norms) -> Optional[NonfiniteEvent]:
        if self.nonfinite is not None:
            return None
        bad = bad_loss | ~np.isfinite(totals)
        if not bad.any():
            return None
        i = int(np.argmax(bad))
        params = tuple(n for n, v in zip(self.names, norms[i]) if not math.isfinite(v))
        what = "loss" if bad_loss[i] else "gradient"
        self.nonfinite = NonfiniteEvent(first + i, what, params, self.lrs[0].at(first + i) if self.lrs else None)
        return self.nonfinite

    def _add_lr(self, step: int, lrs: tuple) -> None:
        self.lr_last = lrs
        for g, value in enumerate(lrs):
            self.lrs[g].add(step, value)
            self.lr_peak[g] = max(self.lr_peak[g], value)

    def _add_scale(self, step: int, scale: float, backoff: float) -> None:
        if not math.isfinite(scale):
            return
        if self.scale_last is not None and scale < self.scale_last and 0 < backoff < 1:
            n = max(1, round(math.log(scale / self.scale_last) / math.log(backoff)))
            self.skipped += n
            if step >= self.rules.skip_warmup:
                self.skipped_after_warmup += n
            if len(self.first_skips) < ZClip.FIRST_SPIKES:
                self.first_skips.append(step)
        self.scale_last = scale

    def _add_norm(self, step: int, total: float, per: np.ndarray) -> None:
        self.norms.add(step, total)
        self.zclip.update(step, total)
        self.recent.add(total)
        if len(self.first_norms) < self.rules.clip_window and math.isfinite(total):
            self.first_norms.append(total)
        good = np.isfinite(per)
        self.grad_sum += np.where(good, per, 0.0)
        self.grad_max = np.maximum(self.grad_max, np.where(good, per, 0.0))
        self.grad_steps += good
        self.zero_steps += per == 0

    def add_ratios(self, step: int, moved: np.ndarray, weights: np.ndarray) -> Optional[NonfiniteEvent]:
        """One sampled step's update norms and weight norms per parameter."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(weights > 0, moved / weights, np.nan)
        if self.ratio_first is None:
            self.ratio_first = ratio
        self.ratio_recent.append(ratio)
        good = ratio[np.isfinite(ratio) & (ratio > 0)]
        if good.size:
            self.ratio_median.add(step, float(np.median(good)))
        bad = tuple(n for n, w in zip(self.names, weights) if not math.isfinite(w))
        if bad and self.nonfinite is None:
            lr = self.lr_last[0] if self.lr_last else None
            self.nonfinite = NonfiniteEvent(step, "parameter", bad, lr)
            return self.nonfinite
        return None

    def add_sample(self, sample: ActivationSample, kept: int) -> None:
        self.samples.append(sample)
        if len(self.samples) > kept:  # keep the first and the last, thin the rest by halves
            self.samples[1:] = self.samples[1:][::-2][::-1]

    # -- read by the verdicts and the live line ----------------------------------------------------------
    def lr_at(self, step: Optional[int]) -> Optional[float]:
        return self.lrs[0].at(step) if step is not None and self.lrs else None

    def recent_ratios(self) -> Optional[np.ndarray]:
        """The median update/weight ratio of each parameter over the recent samples (None before any)."""
        if not self.ratio_recent:
            return None
        with np.errstate(all="ignore"):
            stacked = np.vstack(list(self.ratio_recent))
            return np.nanmedian(np.where(np.isfinite(stacked), stacked, np.nan), axis=0) \
                if np.isfinite(stacked).any() else np.full(stacked.shape[1], np.nan)

    def status_line(self) -> str:
        """One line for the terminal while the run goes on."""
        smooth = self.loss.smooth.points()[1]
        parts = [f"babysitter: step {self.steps}", f"loss {fmt.num(smooth[-1]) if smooth else '-'}",
                 f"|g| {fmt.num(self.recent.median())}", f"lr {fmt.lr(self.lr_last[0]) if self.lr_last else '-'}"]
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        if self.nonfinite is not None:
            parts.append(f"non-finite {self.nonfinite.what} at step {self.nonfinite.step}")
        return "  ".join(parts)

    def size(self) -> int:
        """Numbers kept, for the bound on memory (everything here is bounded by the rules' windows)."""
        per_param = 4 * len(self.names) * (1 + len(self.ratio_recent) + (self.ratio_first is not None))
        samples = sum(6 * len(s.layers) for s in self.samples)
        series = self.norms.size() + self.loss.series.size() + self.loss.smooth.size() + self.ratio_median.size() \
            + sum(d.size() for d in self.lrs)
        return per_param + samples + series + len(self.recent.values) + len(self.local.values) + len(self.first_norms) \
            + len(self.loss.recent)

