"""lr_range: Leslie Smith's learning-rate range test, repeated over batch orders, with a robust suggestion.

The sweep (``lr_sweep``) and its reading (``lr_reading``: the suggestion, the good range and the verdict on the
user's LR, by ``babysitter.analysis.lr_curve``) are evidence, because ``overfit_batch`` retries at the same
suggestion: they run once per session, from the user's state, whichever check asks first, under the options
given to ``lr_range``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, TYPE_CHECKING

from ..analysis.fmt import lr as fmt_lr
from ..analysis.lr_curve import (FINAL_ROUNDS, LrRace, LrReading, RaceRules, ReadingRules, SweepSettings,
                                 race_entry)
from ..analysis.status import Status
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

START_LR, END_LR, STEPS, REPEATS, DIVERGE_FACTOR = (SweepSettings.start_lr, SweepSettings.end_lr, SweepSettings.steps,
                                                    SweepSettings.repeats, SweepSettings.diverge_factor)
RACE = RaceRules()


@dataclass(frozen=True)
class SweepMeasured:
    """The reading of the range test (suggestion, range, verdict) and what the sweep cost."""

    reading: LrReading
    repeats: int
    steps: int
    optimizer: str
    seconds: float
    group_scales: tuple[float, ...] = (1.0,)
    step: tuple[str, ...] = ()  # the parts of the user's step each sweep step kept
    scheduler_left_out: bool = False
    extended_to: Optional[float] = None  # the sweep's end, when extended past end_lr to cover the user's LR
    multiplier: Optional[tuple[float, float]] = None  # the usual range of an optimizer whose lr is a multiplier
    ranks: int = 1  # under torchrun: the ranks every sweep and race step averaged its gradients over
    batch: Optional[int] = None  # the per-rank batch size


# -- the check --------------------------------------------------------------------------------------
@dataclass
class LrRange(Check):
    id = "lr_range"
    title = "Learning-rate range test"
    what = """Leslie Smith's range test: from the user's state, train with the user's optimizer while the LR
    grows exponentially ({start_lr:g} to {end_lr:g} over {steps} steps by default, every parameter group scaled
    together), stopping when the bias-corrected EMA of the loss (beta {beta:g}) exceeds {diverge_factor:g}x its best
    or turns non-finite. The sweep is repeated over {repeats} batch orders, each from the user's state. Each curve
    is smoothed in log-LR without lag (a Gaussian of {sigma_decades:g} decades, on the log of the loss when every
    loss is positive) and read for its steepest descent, its minimum and fastai's valley (shown per repeat). The
    good range runs from {low_margin:g}x below the onset of the descent (where {onset:.0%} of it is made: the
    sweep spends ~5 steps per LR, a real run thousands) to where the loss has risen back {band:.0%} of its descent
    past the minimum, never beyond the point where the sweep diverged. The low end is thus the slowest LR that
    still trains in a run of thousands of steps, not an LR to aim for: the descent itself (its onset to the minimum) is
    reported beside the range, and a top that is only the end of the sweep (the loss never turned back up) is
    said to be so. Each repeat's suggestion, kept inside its range: for adaptive optimizers (Adam family,
    RMSprop, Adagrad, Adadelta), and for a curve that never turned back up, the geometric mean of the steepest
    descent and the minimum / 10; for plain and momentum SGD the geometric mean of the minimum and the top of the
    range. A curve whose smoothed loss never falls by {min_drop:.0%} supports no suggestion, and without one from
    more than half the repeats there is none. The suggestion, the range's ends and the divergence point are
    geometric medians over the repeats, with the suggestions' spread (largest / smallest). Then a race (CS231n's
    coarse-to-fine search in log space, as successive halving) chooses the suggestion: LRs {race_spacing:.2g} decades
    apart from the range test's suggestion / 10^{race_below:g} to x 10^{race_above:g} (at most {race_candidates},
    rounded to {race_lattice} values per decade: 1, 1.5, 2.2, 3.2, 4.6, 6.8), each trained {race_first_steps} steps
    from the user's state with the user's step (the scheduler left out) and compared on {race_held_out} batches held
    out of that training (eval mode); the {race_finalists} with the lowest held-out loss are trained again for
    {race_steps} steps, and the lowest held-out loss then wins; when the winner is the highest LR raced and the
    bounds leave room, the LR {race_spacing:.2g} decades above it is trained as long and joins them (the best may lie
    past the window); when it is the lowest of them, the LR {race_spacing:.2g} decades below it is, again while that
    LR wins (at most {race_descend} times: the first round's few steps favour fast LRs).
    The race may go above the range's top (up to {above_top:g}x it, never past half the divergence
    point): a sweep's top is where the loss turned up at ~5 steps per LR. The winner must have brought the held-out
    loss {race_min_drop:.0%} below the loss at the user's state, else the range test's suggestion stands (kept as
    range_lr either way). The suggestion is the winner divided by {race_shrink:g}, rounded to the lattice (a
    {race_steps}-step race favours faster LRs; a longer run's best LR lies lower), except when the winner is the top
    of the window with room above it (then it is a lower bound) and when the user's LR won a race around it. A curve
    with no suggestion (a loss that needs more steps than the sweep gives each LR), from a sweep that did not diverge
    from its start, is raced around the user's LR in one round of {race_plateau_steps} steps each: it and {race_user_neighbours} LR(s) {race_user_spacing:g} decades either side
    (none past half the divergence point), with, when the sweep diverged, LRs about a decade apart from the
    divergence point / {no_curve_low:g} to / {no_curve_high:g}; when its best is its highest LR it climbs
    {race_user_spacing:g} decades at a time (at most {race_climb} times, never past half the divergence point nor the
    sweep's last LR) while the held-out loss keeps falling; when no LR lowered the held-out loss {race_min_drop:.0%}
    (a plateau at every LR), the LR of the lowest held-out loss is trained {race_user_longer:g}x those steps, and wins
    if it trains then. The user's LR then passes when it won or came within
    {race_user_tolerance:.0%} of the winner's held-out loss, and when beaten clearly (the winner suggested:
    {race_plateau_steps} steps on a plateau are weak evidence against an LR that trains); it
    warns only when it diverged or did not bring the held-out loss {race_min_drop:.0%} below its start while the
    winner did (and, for a loss that only did not fall, still did not when trained {race_user_longer:g}x those
    steps), and fails above the divergence point; a race where nothing trained leaves the skip, with the user's LR as
    the suggestion ("keep your LR") when it did not diverge there: no LR raced did better. Without a user
    LR, a sweep that diverged is raced over that wide span alone. An optimizer whose lr is a multiplier of a
    unit-correcting update (Adadelta: 0.1 to 10; torch's Adafactor: 1e-3 to 0.1) over that usual range, which the
    good range then includes. A race winner above the range's top raises the top to it. The user's LR fails above
    the divergence point (times {fail_above:g}) or more than {fail_below_x:g}x below the range's low end, warns
    outside the range and passes inside it; when it warns, it is raced too and passes if it reached a held-out loss
    within {race_user_tolerance:.0%} of the winner's. Rprop (lr is only the first step size), LBFGS (a line search)
    and Adafactor with relative_step (lr unused) are skipped."""
    why = """The learning rate is the hyper-parameter that matters most. Too high and the loss oscillates or
    diverges; too low and training crawls and looks like a model that cannot learn. Single-sweep finders pick the
    argmin of a noisy gradient, so their suggestion moves by an order of magnitude between seeds; repeating over
    batch orders, reading a curve smoothed without lag and taking the median over repeats makes it stable, and
    the spread says how much to trust it. A sweep spends ~5 steps per LR, so where its curve bends is not where a
    run at one LR trains best; the race trains a few LRs at one LR each and compares them on data they did not
    train on, which is what a run at the suggestion does."""
    todo = """Set the LR inside the reported range (the suggestion, the race's winner, is a good start); if it is
    above the divergence point, lower it at least to the suggestion; if the loss does not move at your LR, raise
    it. If the curve is flat at every LR, look at overfit_batch and initial_loss first: the model or the loss is
    likely broken."""
    constants = {"beta": SweepSettings.beta, "fail_below_x": 1 / ReadingRules.fail_below, "above_top": RACE.above_top,
                 "no_curve_low": RACE.no_curve[0], "no_curve_high": RACE.no_curve[1]}
    sources = (
        "L. N. Smith, 'Cyclical Learning Rates for Training Neural Networks' (WACV 2017): the LR range test",
        "L. N. Smith, 'A disciplined approach to neural network hyper-parameters: Part 1' (2018)",
        "fastai lr_find: exponential schedule, EMA beta 0.98 with bias correction, stop at 4x the best loss, "
        "suggestions 'minimum/10', 'steep' and 'valley'",
        "torch-lr-finder / Lightning lr_find: suggestion at the steepest gradient of the smoothed curve",
        "The suggestion by optimizer: adaptive optimizers (per-parameter normalised steps) reach the curve's minimum "
        "at LRs too large to sustain, hence the geometric mean of the steepest descent and fastai's minimum / 10; "
        "plain and momentum SGD sustain the bottom of the curve, hence the middle of that bottom (the minimum to the "
        "top of the range)",
        "CS231n, 'Neural Networks Part 3: Learning and Evaluation', hyperparameter optimization: search the LR in log "
        "space, coarse to fine, each setting trained briefly and compared on a validation set",
        "K. Jamieson, A. Talwalkar, 'Non-stochastic best arm identification and hyperparameter optimization' "
        "(AISTATS 2016): successive halving, many configurations trained briefly, the best of them longer",
        "The race's defaults (7 LRs a third of a decade apart from 1.5 decades below to 0.75 above the range test's "
        "suggestion, 16 steps, the best 4 trained 96, a descent below them when their best is their lowest, the "
        "winner shrunk 1.5x) were chosen with a simulator (benchmarks/lr_race_sim.py) on the 34 tuning tasks of "
        "benchmarks/lr_quality.py only; the README reports its 8 held-out tasks beside them",
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
    min_drop: float = threshold(ReadingRules.min_drop, "a curve whose smoothed loss never falls by this fraction "
                                                       "supports no suggestion (flat)")
    onset: float = threshold(ReadingRules.onset, "the good range starts where the smoothed loss has made this fraction "
                                                 "of its descent (the onset of the descent, Smith's lower bound)")
    low_margin: float = threshold(ReadingRules.low_margin,
                                  "the range's low end is the onset divided by this. The sweep spends ~5 steps "
                                  "at each LR (so ~5x the onset of cumulative step by the onset), and its descent "
                                  "runs a further 1-1.5 decades past the onset (the LR of half the descent was "
                                  "8-30x the onset on 13 healthy models); a run of ~1000 steps at onset/30 "
                                  "moves the weights ~6x as far as the sweep had at its onset, still early in "
                                  "the descent: slower than that is worth a warning (Adam at 1e-4 and SGD at "
                                  "0.01 stay inside on every model measured)")
    band: float = threshold(ReadingRules.band, "the good range ends where the smoothed loss has risen back this "
                                               "fraction of its descent past its minimum")
    fail_above: float = threshold(ReadingRules.fail_above, "fail when the user's LR exceeds the divergence point "
                                                           "times this")
    fail_below: float = threshold(ReadingRules.fail_below, "fail when the user's LR is below this times the range's "
                                                           "low end (with low_margin 30, that is 900x below where the "
                                                           "sweep first moved the loss: ~4500 steps to get as far as "
                                                           "the sweep's 5)")

    race_candidates: int = threshold(RACE.candidates, "the most LRs of the race's first round (0 turns the race off: "
                                                      "the suggestion is then the range test's)")
    race_spacing: float = threshold(RACE.spacing, "decades between the first round's LRs")
    race_below: float = threshold(RACE.below, "the first round starts this many decades below the range test's "
                                              "suggestion (which was 0.6-1.6 decades above the best LR of a 150-step "
                                              "run on 8 of the 13 tuning tasks where it gave one)")
    race_above: float = threshold(RACE.above, "... and ends this many decades above it (it was up to 0.6 decades "
                                              "below the best on 3 tuning tasks), never past above_top times the "
                                              "range's top nor half the divergence point")
    race_lattice: int = threshold(RACE.lattice, "raced LRs are rounded to this many values per decade (0: not "
                                                "rounded)")
    race_first_steps: int = threshold(RACE.first_steps, "training steps of each LR of the first round, from your "
                                                        "state")
    race_finalists: int = threshold(RACE.finalists, "the LRs of the first round with the lowest held-out loss, "
                                                    "trained again for race_steps")
    race_steps: int = threshold(RACE.steps, "training steps of each finalist, from your state: the lowest held-out "
                                            "loss after them wins")
    race_descend: int = threshold(RACE.descend, "when the final round's best is its lowest LR, the LR race_spacing "
                                                "decades below it is trained race_steps too, again while it wins, at "
                                                "most this many times (0: never): the first round ranks LRs after "
                                                "race_first_steps steps, where fast LRs lead, so its finalists are "
                                                "its highest LRs (on tabular-layernorm-adamw of the tuning set, the "
                                                "best of a 150-step run lay below all four)")
    race_shrink: float = threshold(RACE.shrink, "the suggestion is the race's winner divided by this, rounded to the "
                                                "lattice (one step down): the race ranks LRs after race_steps steps, "
                                                "where a faster LR is ahead, and a longer run's best LR lies lower; "
                                                "not when the winner is the top of the window with room above, nor "
                                                "when your LR won a race around it; 1: the winner itself")
    race_plateau_steps: int = threshold(RACE.plateau_steps,
                                        "a curve with no suggestion is raced around your LR in one round of this many "
                                        "steps per LR (a loss that needs more steps than the sweep gives each LR, which "
                                        "a first round of race_first_steps would not tell apart)")
    race_held_out: int = threshold(RACE.held_out, "batches held out of the race's training to compare its LRs on (at "
                                                  "most a quarter of the pool)")
    race_min_drop: float = threshold(RACE.min_drop, "the race suggests an LR only when its held-out loss fell this "
                                                    "fraction below the loss at your state")
    race_user_tolerance: float = threshold(RACE.user_tolerance,
                                           "your LR, outside the range (or raced when the curve gave no range), "
                                           "passes when the race trained it to a held-out loss within this fraction "
                                           "of the winner's")
    race_user_neighbours: int = threshold(RACE.user_neighbours,
                                          "a curve with no suggestion is raced around your LR: it and this many LRs "
                                          "race_user_spacing decades either side (your LR is a prior the sweep could "
                                          "not confirm or refute)")
    race_user_spacing: float = threshold(RACE.user_spacing, "decades between your LR and its neighbours in a race "
                                                            "around it")
    race_climb: int = threshold(RACE.climb, "in that race, when the best is its highest LR, it climbs "
                                            "race_user_spacing decades at a time while the held-out loss keeps "
                                            "falling, at most this many times (0: no climb): plain SGD at an LR 1000x "
                                            "too low leaves a curve the sweep cannot read")
    race_user_longer: float = threshold(RACE.user_longer,
                                        "in that race, your LR, when its held-out loss did not fall while another "
                                        "LR's did, is trained this many times race_plateau_steps before a warning (a "
                                        "plateau it leaves later: the corpus's BERT at 5e-4 falls between steps 48 "
                                        "and 96); and when no LR's held-out loss fell, the LR of the lowest is "
                                        "trained as long; 1: no longer run")

    def measure(self, session: "Session") -> SweepMeasured:
        sweep = session.evidence("lr_sweep")
        if sweep.skipped:
            self.skip(sweep.skipped)
        return SweepMeasured(reading=session.evidence("lr_reading"), repeats=len(sweep.runs), steps=sweep.steps,
                             optimizer=sweep.optimizer, seconds=sweep.seconds, group_scales=tuple(sweep.group_scales),
                             step=sweep.step, scheduler_left_out=sweep.scheduler_left_out,
                             extended_to=sweep.end_lr if sweep.end_lr and sweep.end_lr > self.end_lr else None,
                             multiplier=sweep.multiplier, ranks=session.ranks.world,
                             batch=session.facts.get("batch_size"))

    def judge(self, measured: SweepMeasured) -> Judgment:
        """The reading's verdict: ``read_sweep`` judged the user's LR under this check's rules (the options given
        to lr_range reach the ``lr_reading`` evidence), so that overfit_batch reads the same one."""
        v = measured.reading
        return Judgment(Status(v.status), v.summary, tuple(v.advice))

    def present(self, measured: SweepMeasured, judgment: Judgment) -> CheckResult:
        v = measured.reading
        race = v.race or LrRace()
        metrics = {"suggested_lr": v.suggested_lr, "range_lr": v.range_lr, "lr_low": v.lr_low, "lr_high": v.lr_high,
                   "user_lr": v.user_lr, "diverged_at": v.diverged_at, "spread": v.spread,
                   "descent_low": v.descent_low, "descent_high": v.descent_high, "open_top": v.open_top,
                   "repeats": measured.repeats, "steps": measured.steps, "optimizer": measured.optimizer,
                   "sweep_seconds": round(measured.seconds, 4), "race_lrs": len(race.entries),
                   "race_steps": race.steps, "race_held_out": race.held_out, "race_seconds": round(race.seconds, 4)}
        curve = any(a.suggestion is not None for a in v.analyses)
        tables = ((self._table(v),) if curve else ()) + ((self._race_table(race),) if race.entries else ())
        plots = (self._plot(v),) + ((self._race_plot(v, race),) if race.entries else ())
        return self.result(judgment.status, judgment.summary, metrics=metrics, advice=judgment.advice, tables=tables,
                           plots=plots, notes=self._notes(measured))

    def _notes(self, measured: SweepMeasured) -> tuple[str, ...]:
        notes = list(self._range_notes(measured.reading)) + list(self._race_notes(measured.reading))
        scales = measured.group_scales
        if len(scales) > 1:
            notes.append(f"{len(scales)} parameter groups were scaled together (ratios "
                         f"{', '.join(fmt_lr(s) for s in scales)}); LRs are the first group's.")
        if measured.reading.reason and any(a.suggestion is not None for a in measured.reading.analyses):
            notes.append(f"some repeats supported no suggestion: {measured.reading.reason}")
        if measured.step:
            notes.append(f"each sweep step was your step: {', '.join(measured.step)}")
        if measured.ranks > 1:
            b, w = measured.batch, measured.ranks
            notes.append(f"under torchrun every step of the sweep and the race averaged the gradients of the {w} "
                         f"ranks, as DistributedDataParallel does: the LRs are for the effective batch"
                         + (f" of {b * w} ({w} ranks x {b})" if isinstance(b, int) else ""))
        if measured.scheduler_left_out:
            notes.append("your LR scheduler was left out of the sweep: the sweep sets the LR itself")
        if measured.multiplier:
            lo, hi = measured.multiplier
            notes.append(f"{measured.optimizer}'s lr multiplies an update that corrects its own units (it builds "
                         f"up over more steps than the sweep spends at one LR, which reads it poorly): the race "
                         f"spans its usual range [{fmt_lr(lo)}, {fmt_lr(hi)}], and the good range includes it")
        if measured.extended_to:
            notes.append(f"the sweep was extended to {fmt_lr(measured.extended_to)} (10x your LR, at the same steps "
                         f"per decade) so that your LR is tested, not assumed")
        return tuple(notes)

    def _range_notes(self, v: LrReading) -> tuple[str, ...]:
        """How to read the range: its low end is a floor for long runs, the descent is where the loss fell in the
        sweep, and a top that is only the end of the sweep is no measured bound."""
        if v.suggested_lr is None or v.descent_low is None:
            return ()
        notes = [f"how to read the range: its low end {fmt_lr(v.lr_low)} is {self.low_margin:g}x below where the "
                 f"sweep's loss began to fall ({fmt_lr(v.descent_low)}), the slowest LR that still trains in a run "
                 f"of thousands of steps, not an LR to aim for; in the sweep the loss fell from {fmt_lr(v.descent_low)} to "
                 f"its minimum at {fmt_lr(v.descent_high)}{self._cut_at_divergence(v)}; start from the suggestion "
                 f"{fmt_lr(v.suggested_lr)}"]
        if v.open_top:
            notes.append(f"the loss never turned back up before the sweep's last LR ({fmt_lr(v.lr_high)}): the "
                         f"range's top is the end of the sweep, not a measured bound (a larger end_lr would find it)")
        return tuple(notes)

    @staticmethod
    def _race_notes(v: LrReading) -> tuple[str, ...]:
        """What the race did: how many LRs, how long each, on how many held-out batches, and what won."""
        race = v.race
        if race is None or (race.skipped and v.range_lr is None):
            return ()
        if race.skipped or race.winner is None:
            why = race.skipped or race.reason or "every raced LR diverged"
            if not race.skipped and v.suggested_lr is not None and v.suggested_lr == v.user_lr:
                return (f"the race found no winner ({why}): the suggestion is to keep your LR",)
            return (f"no race: {why}; the suggestion is the range test's",)
        final = [e for e in race.entries if e.round in FINAL_ROUNDS]
        first = [e for e in race.entries if e.round == "coarse"]
        steps = final[0].steps if final else 0
        if race.around:
            how = f"a race around your LR of {len(final)} LRs, each trained {steps} steps"
        elif first:
            how = (f"a race of {len(first)} LRs, each trained {first[0].steps} steps, then the best {len(final)} "
                   f"trained {steps}")
        else:
            how = f"a race of {len(final)} LRs, each trained {steps} steps"
        won = f"{fmt_lr(race.winner)} won" if race.suggestion == race.winner else \
            f"{fmt_lr(race.suggestion)} is the race's winner {fmt_lr(race.winner)} divided by " \
            f"{race.winner / race.suggestion:.2g} (a longer run's best LR lies lower than a short race's); the winner won"
        notes = [f"the suggestion {won} {how} from your state, compared on {race.held_out} "
                 f"held-out batches ({race.steps} steps, {race.seconds:.1f}s); "
                 + (f"the range test alone suggested {fmt_lr(v.range_lr)}" if v.range_lr else
                    "the range test alone gave no suggestion")]
        if race.around and v.status is Status.PASS and abs(math.log10(race.winner / race.around)) > 0.02:
            notes.append(f"the race trained {fmt_lr(race.winner)} better than your {fmt_lr(race.around)} in "
                         f"{steps} steps, but your LR trains: a short race on a loss that "
                         f"falls slowly is weak evidence; worth trying {fmt_lr(race.winner)} beside yours")
        return tuple(notes)

    @staticmethod
    def _cut_at_divergence(v: LrReading) -> str:
        """' (the range stops at 6.89, where the sweep diverged)' when the descent's minimum lies past it."""
        if v.diverged_at is None or v.descent_high is None or v.descent_high <= v.lr_high:
            return ""
        return f" (the range stops at {fmt_lr(v.lr_high)}, where the sweep diverged)"

    @staticmethod
    def _table(v: LrReading) -> Table:
        rows = [(i, a.suggestion, a.steepest, a.minimum, a.valley, a.onset, a.low, a.high, a.diverged_at, a.drop,
                 a.reason or "") for i, a in enumerate(v.analyses)]
        return Table("repeats", "Readings of each repeat's curve",
                     ("repeat", "suggestion", "steepest", "minimum", "valley", "onset", "low", "high", "diverged_at",
                      "drop", "note"), rows)

    @staticmethod
    def _race_table(race: LrRace) -> Table:
        won = race_entry(race, race.winner, FINAL_ROUNDS)
        rows = [(e.round, e.lr, e.steps, e.loss, e.train_loss,
                 "winner" if e is won else "diverged" if e.loss is None else "") for e in race.entries]
        return Table("race", "The race: each LR trained from your state for its round's steps, its loss on the held-out "
                             "batches after them (the final round's lowest wins)",
                     ("round", "lr", "steps", "held_out_loss", "train_loss", "note"), rows)

    @staticmethod
    def _race_plot(v: LrReading, race: LrRace) -> Plot:
        def points(name):
            return [e for e in race.entries if e.round == name and e.loss]

        rounds = (("first round", "coarse"), ("final round", "final"), ("above the window", "above"),
                  ("below the window", "below"), ("climbing above it", "climb"),
                  ("the best, longer (a plateau)", "plateau"), ("your LR", "yours"), ("your LR, longer", "longer"))
        series = tuple(Series(f"{label} ({pts[0].steps} steps)", tuple(e.lr for e in pts), tuple(e.loss for e in pts))
                       for label, pts in ((label, points(name)) for label, name in rounds) if pts)
        markers = tuple(Marker(f"{label} {fmt_lr(value)}", value)
                        for label, value in (("suggested", race.suggestion), ("race winner", race.winner),
                                             ("range test", v.range_lr)) if value)
        return Plot("lr_race", "The race: held-out loss at each LR after each round's steps", "scatter", series,
                    x_label="learning rate", y_label="held-out loss", log_x=True, markers=markers)

    @staticmethod
    def _plot(v: LrReading) -> Plot:
        series = tuple(Series(f"order {i}", a.lrs[: len(a.smoothed)], a.smoothed)
                       for i, a in enumerate(v.analyses) if a.smoothed)
        markers = []
        for label, value in (("suggested", v.suggested_lr), ("range test", v.range_lr if v.race and v.race.winner
                                                                  else None),
                             ("range low", v.lr_low), ("range high", v.lr_high), ("diverged", v.diverged_at),
                             ("your LR", v.user_lr)):
            if value:
                markers.append(Marker(f"{label} {fmt_lr(value)}", value))
        return Plot("lr_curve", "Smoothed loss against the learning rate", "line", series, x_label="learning rate",
                    y_label="smoothed loss", log_x=True, markers=tuple(markers))

