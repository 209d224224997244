"""A watched run's verdicts: each reads the :class:`~babysitter.watching.record.RunRecord` (judge: a pure function
to a :class:`Judgment`) and becomes a :class:`CheckResult` with its numbers, tables and plots (present), in the
report format of ``babysit check``. Ids shared with the checklist mean the same question asked of the run
(``grad_norms.metrics.suggested_clip`` is the clip from the run's own norms); ``loss_trend`` and ``amp_scaler`` are
the watch's own.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..analysis import fmt
from ..analysis.activations import DEAD_LAYER, RECTIFIER, SIGMOID, TANH
from ..analysis.params import owner_of
from ..analysis.run import clipped_share, judge_loss, suggested_clip
from ..analysis.status import Status
from ..checklist.base import Judgment
from ..report import CheckResult, Marker, Plot, Report, Series, Table
from .record import RunRecord

TITLES = {
    "loss_trend": "The loss over the run",
    "grad_norms": "Gradient norms over the run and a clip threshold",
    "param_updates": "Update/weight ratios over the run",
    "dead_relu": "Units that died during training",
    "saturation": "Units that saturated during training",
    "activation_scale": "Activation scale over the run",
    "nonfinite": "The first NaN or Inf of the run",
    "amp_scaler": "Steps the gradient scaler skipped",
}


def build_report(record: RunRecord, run: dict, interrupted: bool = False) -> Report:
    """The report of a watched run (``run``: facts about it, shown in the report's header)."""
    checks = tuple(_result(check_id, fn, record) for check_id, fn in VERDICTS)
    return Report(target=f"watch: {record.name}", checks=checks, run=run, interrupted=interrupted)


def _result(check_id: str, fn: Callable, record: RunRecord) -> CheckResult:
    judgment, extra = fn(record)
    return CheckResult(id=check_id, title=TITLES[check_id], status=str(judgment.status), summary=judgment.summary,
                       advice=judgment.advice, **extra)


def _steps(record: RunRecord) -> str:
    return fmt.plural(record.steps, "step")


# -- the loss ---------------------------------------------------------------------------------------------
def judge_loss_trend(record: RunRecord) -> Judgment:
    t = record.loss
    peak = record.lr_peak[0] if record.lr_peak else None
    v = judge_loss(t, record.lr_last[0] if record.lr_last else None, peak)
    lr = fmt.lr(record.lr_at(v.step))
    current = t.smooth.points()[1][-1] if t.smooth.points()[1] else None
    if record.nonfinite is not None and record.nonfinite.what == "loss":
        return Judgment(Status.SKIP, f"the loss became non-finite at step {record.nonfinite.step}: see nonfinite")
    if v.kind == "too_short":
        return Judgment(Status.SKIP, f"{fmt.plural(t.n, 'step')} with a loss: the trend is judged after "
                                     f"{t.rules.min_steps} (hand the loss over with w.after_backward(loss))")
    trend = f"smoothed loss {fmt.num(t.start)} -> best {fmt.num(t.best)} (step {t.best_step}) -> {fmt.num(current)}"
    if v.kind == "diverged":
        return Judgment(Status.FAIL, f"the loss diverged from step {v.step} at LR {lr}: {trend}",
                        (f"Lower the learning rate (now {lr}) 3-10x, or warm it up; clip the gradient norm at "
                         f"grad_norms' suggested clip.",))
    if v.kind == "rising":
        return Judgment(Status.WARN, f"the loss is rising again since step {v.step} (LR {lr}): {trend}",
                        (f"The LR ({lr}) is likely too high for this stage: decay it (a schedule, "
                         f"ReduceLROnPlateau) or lower it.",))
    if v.kind == "stalled":
        return Judgment(Status.WARN, f"the loss has not fallen in {fmt.plural(t.n, 'step')} (LR "
                                     f"{fmt.lr(record.lr_last[0] if record.lr_last else None)}): {trend}",
                        ("Run `babysit check` on this setup: lr_range says whether the LR trains at all, "
                         "overfit_batch whether the model can learn a small subset.",))
    if v.kind == "plateau":
        return Judgment(Status.WARN, f"a plateau since step {v.step} at LR {lr}: over the last third of the run the "
                                     f"loss {v.detail}; {trend}",
                        (f"Decay the learning rate (a cosine or step schedule, ReduceLROnPlateau): the loss has "
                         f"stopped falling at {lr}.",))
    if v.kind == "spiky":
        return Judgment(Status.WARN, f"{fmt.plural(t.spikes, 'loss spike')} in {_steps(record)} (first at step "
                                     f"{v.step}, LR {lr}); {trend}",
                        ("Spikes come from a too-high LR, bad batches or missing clipping: clip at grad_norms' "
                         "suggested clip and look at the batches of the steps listed.",))
    return Judgment(Status.PASS, f"{trend} over {fmt.plural(t.n, 'step')}")


def loss_trend(record: RunRecord):
    t = record.loss
    steps, means, _ = t.series.points()
    s_steps, smooth, _ = t.smooth.points()
    plots = [Plot("loss", "Loss per optimizer step", "line",
                  (Series("loss", steps, means), Series("smoothed", s_steps, smooth)), "step", "loss",
                  log_y=bool(means) and min(means) > 0 and max(means) / min(means) > 30)]
    lr_series = tuple(Series(f"group {g}", *d.points()[:2]) for g, d in enumerate(record.lrs) if d.points()[0])
    if lr_series:
        plots.append(Plot("lr", "Learning rate per param group", "line", lr_series, "step", "learning rate",
                          log_y=True))
    metrics = {"steps": t.n, "start": t.start, "best": t.best, "best_step": t.best_step,
               "final": smooth[-1] if smooth else None, "spikes": t.spikes, "spike_steps": t.first_spikes,
               "lr_final": list(record.lr_last)}
    return judge_loss_trend(record), {"metrics": metrics, "plots": tuple(plots)}


# -- gradient norms ---------------------------------------------------------------------------------------
def judge_grad_norms(record: RunRecord) -> Judgment:
    r, norms = record.rules, list(record.recent.values)
    if not norms:
        return Judgment(Status.SKIP, "no optimizer step with finite gradients was seen")
    clip = suggested_clip(norms, r.spike, r.clip_percentile)
    z = record.zclip
    numbers = (f"median {fmt.num(float(np.median(norms)))}, suggested clip {fmt.num(clip)} (the "
               f"{r.clip_percentile:g}th percentile of the last {len(norms)} steps), ZClip threshold "
               f"{fmt.num(z.threshold)} ({fmt.plural(z.spikes, 'spike')} above z {z.z:g})")
    growth = _growth(record)
    if growth is not None and (growth > r.growth or growth < 1 / r.growth):
        word = "grew" if growth > 1 else "shrank"
        return Judgment(Status.WARN, f"the gradient norm {word} {fmt.ratio(growth if growth > 1 else 1 / growth)}x "
                                     f"since the start of the run; {numbers}",
                        ("Growing norms: lower the LR or clip at the suggested value; shrinking ones: the model "
                         "may be settling in a flat region or its gradients vanishing (look at dead_relu).",))
    return Judgment(Status.PASS, numbers, (f"To clip: torch.nn.utils.clip_grad_norm_(model.parameters(), "
                                           f"{fmt.num(clip)}) before optimizer.step().",))


def _growth(record: RunRecord) -> Optional[float]:
    first, recent = record.first_norms, list(record.recent.values)
    if len(first) < record.rules.loss.min_steps or record.steps < 2 * record.rules.clip_window:
        return None
    a, b = float(np.median(first)), float(np.median(recent))
    return b / a if a > 0 and b > 0 else None


def grad_norms(record: RunRecord):
    judgment = judge_grad_norms(record)
    norms = list(record.recent.values)
    notes = _spike_note(record)
    share, top = clipped_share(norms)
    if norms and share >= record.rules.clipped_share:
        notes += (f"{fmt.pct(share)} of the recent norms sit at {fmt.num(top)}: the gradients reach the optimizer "
                 f"clipped, so these are norms after clipping. Hand over the norm before clipping: "
                 f"w.after_backward(loss, grad_norm=torch.nn.utils.clip_grad_norm_(...)).",)
    clip = suggested_clip(norms, record.rules.spike, record.rules.clip_percentile) if norms else None
    steps, means, maxes = record.norms.points()
    markers = tuple(Marker(label, value, "y") for label, value in
                    (("suggested clip", clip), ("ZClip threshold", record.zclip.threshold)) if value is not None)
    plot = Plot("norms", "Total gradient norm per step", "line",
                (Series("mean", steps, means), Series("max", steps, maxes)), "step", "gradient norm",
                log_y=True, markers=markers)
    means_per = record.grad_sum / np.maximum(record.grad_steps, 1)
    rows = tuple((n, float(m), float(x), int(z)) for n, m, x, z in
                 zip(record.names, means_per, record.grad_max, record.zero_steps))
    table = Table("layers", "Gradient norm per parameter over the run", ("parameter", "mean", "max", "zero steps"),
                  rows)
    metrics = {"suggested_clip": clip, "zclip_threshold": record.zclip.threshold, "zclip_spikes": record.zclip.spikes,
               "zclip_spike_steps": record.zclip.first_spikes,
               "spikes": record.big_spikes, "spike_steps": record.first_big_spikes, "p50": _pct(norms, 50), "p90": _pct(norms, 90),
               "p99": _pct(norms, 99), "clipped_share": share, "growth": _growth(record)}
    return judgment, {"metrics": metrics, "plots": (plot,), "tables": (table,), "notes": notes}


def _spike_note(record: RunRecord) -> tuple[str, ...]:
    """Gradient spikes are noted, not judged: a healthy run has them (the corpus's BERT and MobileNetV3: 2-4% of
    steps at 10x the local median), the suggested clip caps them, and whether they hurt shows in the loss
    (``loss_trend`` judges its spikes)."""
    r = record.rules
    if record.big_spikes < r.min_spikes:
        return ()
    return (f"{fmt.plural(record.big_spikes, 'gradient spike')} above {r.spike:g}x the median of the "
            f"{r.spike_window} steps before ({fmt.pct(record.big_spikes / max(record.steps, 1), 1)} of the steps, "
            f"first at step {record.first_big_spikes[0]}): clipping at the suggested value caps them.",)


def _pct(values, q) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


# -- update/weight ratios --------------------------------------------------------------------------------
def judge_param_updates(record: RunRecord) -> Judgment:
    r = record.rules
    if record.steps == 0:
        return Judgment(Status.SKIP, "no optimizer step was seen")
    never = [n for n, m, k in zip(record.names, record.grad_max, record.grad_steps) if m == 0 and k > 0]
    ratios = record.recent_ratios()
    median = _median_ratio(ratios)
    told = f"median update/weight ratio {fmt.small(median)} (CS231n: ~1e-3)" if median is not None else \
        "no update/weight ratio sampled yet"
    if never:
        return Judgment(Status.WARN, f"{fmt.plural(len(never), 'parameter')} never got a gradient in "
                                     f"{_steps(record)}: {fmt.listed(never)}; {told}",
                        ("A parameter the loss does not reach: an unused layer, a detached branch, or one that "
                         "should be frozen (requires_grad_(False)) or left out of the optimizer.",))
    if median is not None and median < r.ratio_low:
        return Judgment(Status.WARN, f"the weights barely move: {told}, below {fmt.small(r.ratio_low)}",
                        (f"The LR ({fmt.lr(record.lr_last[0]) if record.lr_last else '?'}) is likely too low "
                         f"for the weights' scale; see lr_range.",))
    if median is not None and median > r.ratio_high:
        return Judgment(Status.WARN, f"the weights are rewritten fast: {told}, above {fmt.small(r.ratio_high)}",
                        ("The LR is likely too high: every sampled step moves the weights by more than a tenth "
                         "of their norm.",))
    return Judgment(Status.PASS, f"{told} over {fmt.plural(len(record.ratio_recent), 'recent sample')}; every "
                                 f"parameter got a gradient")


def _median_ratio(ratios: Optional[np.ndarray]) -> Optional[float]:
    if ratios is None:
        return None
    good = ratios[np.isfinite(ratios) & (ratios > 0)]
    return float(np.median(good)) if good.size else None


def param_updates(record: RunRecord):
    ratios = record.recent_ratios()
    first = record.ratio_first
    rows = tuple((n, _f(first, i), _f(ratios, i)) for i, n in enumerate(record.names)) if ratios is not None else ()
    table = Table("ratios", "Update/weight ratio per parameter", ("parameter", "first sample", "recent median"), rows)
    steps, means, _ = record.ratio_median.points()
    plot = Plot("ratio", "Median update/weight ratio per sampled step", "line", (Series("median", steps, means),),
                "step", "update / weight", log_y=True, markers=(Marker("CS231n ~1e-3", 1e-3, "y"),))
    metrics = {"median_ratio": _median_ratio(ratios), "samples": len(record.ratio_recent)}
    return judge_param_updates(record), {"metrics": metrics, "tables": (table,), "plots": (plot,)}


def _f(values: Optional[np.ndarray], i: int) -> Optional[float]:
    return float(values[i]) if values is not None and math.isfinite(values[i]) else None


# -- activations over the run -----------------------------------------------------------------------------
def _first_last(record: RunRecord, pick: Callable) -> list[tuple]:
    """(layer, first value, last value) for the layers ``pick(row)`` reads in the first and last samples."""
    if len(record.samples) < 2:
        return []
    first, last = record.samples[0].by_name(), record.samples[-1].by_name()
    out = []
    for name, row in last.items():
        a, b = pick(first.get(name)), pick(row)
        if a is not None and b is not None:
            out.append((name, a, b))
    return out


def _sampled(record: RunRecord, pick: Callable, nothing: str) -> tuple[list, Optional[Judgment]]:
    """The (layer, first, last) rows ``pick`` reads, or the skip when there are not two samples or no such layer."""
    if len(record.samples) < 2:
        return [], Judgment(Status.SKIP, f"{fmt.plural(len(record.samples), 'activation sample')}: two are "
                                         f"needed (one every `every` steps, and the first)")
    rows = _first_last(record, pick)
    return rows, None if rows else Judgment(Status.SKIP, nothing)


def _listed(rows: list, row: Callable) -> str:
    return "; ".join(row(*r) for r in rows[:4])


def judge_dead_relu(record: RunRecord) -> Judgment:
    rows, skip = _sampled(record, lambda r: r[2] if r and r[1] == RECTIFIER else None,
                          "no rectifier activation was seen")
    if skip:
        return skip
    span = f"between steps {record.samples[0].step} and {record.samples[-1].step}"
    whole = [(n, a, b) for n, a, b in rows if b >= 0.99 and a < DEAD_LAYER]
    died = [(n, a, b) for n, a, b in rows if b - a > record.rules.dead_grown and b > DEAD_LAYER]
    listed = _listed(whole or died, lambda n, a, b: f"{n} {fmt.pct(a)} -> {fmt.pct(b)} dead")
    lr = fmt.lr(record.lr_at(record.samples[-1].step))
    advice = (f"Units die when a too-large step pushes their pre-activation below zero for every input: lower "
              f"the LR (now {lr}), warm it up, clip the gradient norm, or use LeakyReLU/GELU.",)
    if whole:
        return Judgment(Status.FAIL, f"{fmt.plural(len(whole), 'layer')} died during training {span}: {listed}", advice)
    if died:
        return Judgment(Status.WARN, f"units died during training in {fmt.plural(len(died), 'layer')} {span}: "
                                     f"{listed}", advice)
    worst = max(b for _, _, b in rows)
    return Judgment(Status.PASS, f"no layer lost its units {span} ({fmt.plural(len(rows), 'rectifier layer')}, "
                                 f"at most {fmt.pct(worst)} dead in the last sample)")


def judge_saturation(record: RunRecord) -> Judgment:
    rows, skip = _sampled(record, lambda r: r[3] if r and r[1] in (TANH, SIGMOID) and not r[5] else None,
                          "no hidden tanh or sigmoid activation was seen")
    if skip:
        return skip
    limit = record.rules.saturated
    bad = [(n, a, b) for n, a, b in rows if b > limit and a <= limit]
    if bad:
        listed = _listed(bad, lambda n, a, b: f"{n} {fmt.pct(a)} -> {fmt.pct(b)}")
        return Judgment(Status.WARN, f"{fmt.plural(len(bad), 'layer')} saturated during training: {listed} of the "
                                     f"outputs in the flat region",
                        ("Saturated units pass almost no gradient: lower the LR, normalise the layer's input "
                         "(LayerNorm), or use a non-saturating activation.",))
    return Judgment(Status.PASS, f"no hidden tanh/sigmoid layer saturated over the run (at most "
                                 f"{fmt.pct(max(b for _, _, b in rows))} in the last sample)")


def judge_activation_scale(record: RunRecord) -> Judgment:
    rows, skip = _sampled(record, lambda r: r[4] if r and r[4] else None, "no activation with a finite scale was seen")
    if skip:
        return skip
    limit = record.rules.scale_change
    changed = [(n, a, b) for n, a, b in rows if b / a > limit or a / b > limit]
    if changed:
        listed = _listed(changed, lambda n, a, b: f"{n} std {fmt.num(a)} -> {fmt.num(b)}")
        return Judgment(Status.WARN, f"the activation scale changed more than {limit:g}x during training in "
                                     f"{fmt.plural(len(changed), 'layer')}: {listed}",
                        ("Activations that grow without bound precede NaNs; add normalization or weight decay, "
                         "or lower the LR.",))
    return Judgment(Status.PASS, f"the activation std of {fmt.plural(len(rows), 'layer')} stayed within {limit:g}x "
                                 f"of its first sample")


def _activation_table(record: RunRecord, check_id: str) -> tuple:
    if len(record.samples) < 2:
        return ()
    column = {"dead_relu": 2, "saturation": 3, "activation_scale": 4}[check_id]
    rows = _first_last(record, lambda r: r[column] if r else None)
    label = {"dead_relu": "dead share", "saturation": "saturated share", "activation_scale": "std"}[check_id]
    return (Table("layers", f"{label} per layer, first and last sample",
                  ("layer", f"{label} at step {record.samples[0].step}", f"at step {record.samples[-1].step}"),
                  tuple(rows)),)


def _activation_verdict(judge: Callable, check_id: str) -> Callable:
    return lambda record: (judge(record), {"tables": _activation_table(record, check_id),
                                           "metrics": {"samples": len(record.samples)}})


# -- non-finite values and the scaler -----------------------------------------------------------------------
def judge_nonfinite(record: RunRecord) -> Judgment:
    e = record.nonfinite
    if e is None:
        skipped = f" ({fmt.plural(record.skipped, 'step')} skipped by the scaler)" if record.skipped else ""
        return Judgment(Status.PASS, f"every loss, gradient and sampled parameter finite over {_steps(record)}"
                                     f"{skipped}")
    where = ""
    if e.params:
        owners = sorted({owner_of(n) for n in e.params})
        noun = "values" if e.what == "parameter" else "gradients"
        where = f"; non-finite {noun} of {fmt.listed(e.params, 4)} (in {fmt.listed(owners, 4)})"
    if e.what == "gradient" and e.params:
        last = max(e.params, key=record.names.index)
        where += (f"; the loss was finite, so the backward pass broke: {owner_of(last)} is the last layer, in the "
                  f"model's order, whose gradients are not finite (the layers after it got finite ones): look at "
                  f"what runs between it and the next layer (sqrt or pow at 0, log, a division)")
    if record.forward_site is not None:
        where += f"; the first module with a non-finite output: {record.forward_site[0]} ({record.forward_site[1]})"
    return Judgment(Status.FAIL, f"first non-finite {e.what} at optimizer step {e.step} (LR {fmt.lr(e.lr)}){where}",
                    ("Lower the LR or clip the gradient norm; look for log/sqrt/division of values that can reach "
                     "0, and for inputs with NaN. `babysit check` names the operation with nonfinite.",))


def judge_amp_scaler(record: RunRecord) -> Judgment:
    if record.scale_last is None:
        return Judgment(Status.SKIP, "no GradScaler was given to the watch (scaler=...)")
    r = record.rules
    judged = max(record.steps - r.skip_warmup, 0)
    text = (f"{fmt.plural(record.skipped, 'step')} skipped in {_steps(record)} "
            f"({record.skipped_after_warmup} after the first {r.skip_warmup}); scale now {fmt.num(record.scale_last)}")
    if judged and record.skipped_after_warmup > r.skip_rate * judged:
        return Judgment(Status.WARN, f"the scaler skips many steps: {text}",
                        ("Frequent overflow in half precision: lower the LR, clip the gradient norm after "
                         "scaler.unscale_(), or train in bfloat16.",))
    return Judgment(Status.PASS, text)


def _nonfinite(record: RunRecord):
    e = record.nonfinite
    metrics = {"step": e.step if e else None, "what": e.what if e else None, "params": list(e.params) if e else [],
               "module": record.forward_site[0] if record.forward_site else None, "lr": e.lr if e else None}
    return judge_nonfinite(record), {"metrics": metrics}


def _amp_scaler(record: RunRecord):
    return judge_amp_scaler(record), {"metrics": {"skipped": record.skipped, "scale": record.scale_last,
                                                  "skip_steps": record.first_skips}}


VERDICTS: tuple[tuple[str, Callable], ...] = (
    ("loss_trend", loss_trend),
    ("grad_norms", grad_norms),
    ("param_updates", param_updates),
    ("dead_relu", _activation_verdict(judge_dead_relu, "dead_relu")),
    ("saturation", _activation_verdict(judge_saturation, "saturation")),
    ("activation_scale", _activation_verdict(judge_activation_scale, "activation_scale")),
    ("nonfinite", _nonfinite),
    ("amp_scaler", _amp_scaler),
)
