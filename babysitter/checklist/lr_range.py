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

from ..analysis.fmt import lr as fmt_lr
from ..analysis.lr_curve import LrReading, ReadingRules, SweepSettings
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold

START_LR, END_LR, STEPS, REPEATS, DIVERGE_FACTOR = (SweepSettings.start_lr, SweepSettings.end_lr, SweepSettings.steps,
                                                    SweepSettings.repeats, SweepSettings.diverge_factor)

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

    start_lr: float = threshold(START_LR, "the sweep's first LR (for the first param group; others keep their ratio)")
    end_lr: float = threshold(END_LR, "the sweep's last LR")
    steps: int = threshold(STEPS, "steps per repeat of the sweep")
    repeats: int = threshold(REPEATS, "repeats of the sweep, each over its own batch order")
    diverge_factor: float = threshold(DIVERGE_FACTOR, "stop a sweep when the EMA of the loss exceeds this multiple "
                                                      "of its best value (fastai, torch-lr-finder)")
    sigma_decades: float = threshold(ReadingRules.sigma_decades, "width (std, in decades of LR) of the centred "
                                                                 "smoothing of each curve")
    min_drop: float = threshold(ReadingRules.min_drop, "a curve whose smoothed loss never falls by this fraction supports no "
                                     "suggestion (flat)")
    onset: float = threshold(ReadingRules.onset, "the good range starts where the smoothed loss has made this fraction of its "
                                   "descent (the onset of the descent, Smith's lower bound)")
    low_margin: float = threshold(ReadingRules.low_margin, "the range's low end is the onset divided by this. The sweep spends ~5 steps "
                                        "at each LR (so ~5x the onset of cumulative step by the onset), and its descent "
                                        "runs a further 1-1.5 decades past the onset (the LR of half the descent was "
                                        "8-30x the onset on 13 healthy models); a run of ~1000 steps at onset/30 "
                                        "moves the weights ~6x as far as the sweep had at its onset, still early in "
                                        "the descent: slower than that is worth a warning (Adam at 1e-4 and SGD at "
                                        "0.01 stay inside on every model measured)")
    band: float = threshold(ReadingRules.band, "the good range ends where the smoothed loss has risen back this fraction of its "
                                 "descent past its minimum")
    fail_above: float = threshold(ReadingRules.fail_above, "fail when the user's LR exceeds the divergence point times this")
    fail_below: float = threshold(ReadingRules.fail_below, "fail when the user's LR is below this times the range's low end (that is "
                                          "1000x below where the sweep first moved the loss: ~5000 steps to get as "
                                          "far as the sweep's 5)")

    def run(self, session):
        sweep = session.evidence("lr_sweep")
        if sweep.skipped:
            self.skip(sweep.skipped)
        v: LrReading = session.evidence("lr_reading")
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
    def _table(v: LrReading) -> Table:
        rows = [(i, a.suggestion, a.steepest, a.minimum, a.valley, a.low, a.high, a.diverged_at, a.drop,
                 a.reason or "") for i, a in enumerate(v.analyses)]
        return Table("repeats", "Readings of each repeat's curve",
                     ("repeat", "suggestion", "steepest", "minimum", "valley", "low", "high", "diverged_at",
                      "drop", "note"), rows)

    @staticmethod
    def _plot(v: LrReading) -> Plot:
        series = tuple(Series(f"order {i}", a.lrs[: len(a.smoothed)], a.smoothed)
                       for i, a in enumerate(v.analyses) if a.smoothed)
        markers = []
        for label, value in (("suggested", v.suggested_lr), ("range low", v.lr_low), ("range high", v.lr_high),
                             ("diverged", v.diverged_at), ("your LR", v.user_lr)):
            if value:
                markers.append(Marker(f"{label} {value:.3g}", value))
        return Plot("lr_curve", "Smoothed loss against the learning rate", "line", series, x_label="learning rate",
                    y_label="smoothed loss", log_x=True, markers=tuple(markers))

