"""grad_norms: what healthy gradient norms look like, which clip value follows, and vanishing or exploding.

``measure`` reads the shared training probe (total and per-parameter gradient norms per step) and groups the
weight matrices by layer, in the order the forward first calls them; ``judge`` is a pure function of those norms
per step and the thresholds; the statistics both read (percentiles, the clip, spikes, growth, the first/last layer
ratio) are pure functions of lists of floats, below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from ..analysis import fmt
from ..analysis.params import display, is_weight_matrix, layers_of, module_at
from ..analysis.run import finite, suggested_clip
from ..analysis.status import Status
from ..passes.train_probe import TRAIN_STEPS, TrainProbe
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from torch import nn

    from ..session import Session

#: a step's norm is compared with the median of this many steps on either side of it (a burst, not a trend)
SPIKE_WINDOW = 3
#: the probe is cut in this many parts; growth is the median of the last part over that of the first
GROWTH_PARTS = 4


# -- pure statistics of norms per step ------------------------------------------------------------------------
def local_spike(totals: Sequence[float], half: int = SPIKE_WINDOW) -> Optional[list]:
    """[step, ratio, norm] of the step whose norm is the largest multiple of the median of its neighbours
    (``half`` steps either side); None when no step has finite, positive neighbours."""
    totals = list(totals)
    best = None
    for step, v in enumerate(totals):
        around = finite(totals[max(0, step - half):step] + totals[step + 1:step + 1 + half])
        if not math.isfinite(v) or not around:
            continue
        base = float(np.median(around))
        if base <= 0:
            continue
        ratio = v / base
        if best is None or ratio > best[1]:
            best = [step, ratio, v]
    return best


def growth(totals: Sequence[float], parts: int = GROWTH_PARTS) -> Optional[float]:
    """The median norm of the last ``1/parts`` of the steps over that of the first (None when undefined)."""
    part = max(1, len(totals) // parts)
    early, late = finite(totals[:part]), finite(totals[-part:])
    if not early or not late or np.median(early) <= 0:
        return None
    return float(np.median(late)) / float(np.median(early))


def first_last(first: Sequence[float], last: Sequence[float]) -> tuple[Optional[float], list[float]]:
    """The median over steps of the first layer's norm over the last one's (None when no step has both), and the
    per-step ratios (NaN where undefined)."""
    ratios = [a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")
              for a, b in zip(first, last)]
    good = finite(ratios)
    return (float(np.median(good)) if good else None), ratios


#: the first and the last this fraction of the weight layers (at least one each) are compared
END_FRACTION = 0.5


def end_groups(layers: Sequence[int], fraction: float = END_FRACTION) -> tuple[list[int], list[int]]:
    """The first and the last ``fraction`` of ``layers`` (in depth order; at least one each, disjoint).

    The ratio compares the largest gradient among the first layers with the largest among the last: vanishing
    gradients starve every early layer, while one early layer may get a tiny gradient by design (the query and key
    projections of attention at init, whose gradient is small while attention is nearly uniform: 1e-4 of the
    classifier's in a healthy BERT, 1e-4 in a one-layer one, where only a half reaches past them to the value
    projection)."""
    if len(layers) < 2:
        return list(layers), list(layers)
    k = max(1, min(int(len(layers) * fraction), len(layers) // 2))
    return list(layers[:k]), list(layers[-k:])


def median_or_nan(values: Sequence[float]) -> float:
    good = finite(values)
    return float(np.median(good)) if good else float("nan")


# -- measured data -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A module that owns weight matrices, with the gradient norm of those matrices together, per probe step."""

    name: str  # qualified name ('' for the model itself)
    type: str  # the module's class name
    norms: tuple[float, ...]  # NaN at a step where one of its matrices got no gradient


@dataclass(frozen=True)
class GradMeasured:
    """The probe's gradient norms: the total per step, and per weight layer in the order the forward calls them."""

    totals: tuple[float, ...]
    layers: tuple[Layer, ...] = ()
    lr: Optional[float] = None
    batch_factor: int = 1  # N when the loss is summed over a batch of N examples
    skipped_steps: tuple[int, ...] = ()  # float16 steps skipped as a GradScaler would
    step: tuple[str, ...] = ()  # the parts of the user's step the probe ran (clipping, accumulation, ...)
    closure: bool = False  # a closure optimizer (LBFGS): the step-to-step rules do not apply
    bounded_loss: bool = False  # a classification loss (CE, NLL, BCE): its gradient at the outputs is bounded


@dataclass(frozen=True)
class NormStats:
    """What the judgment and the report read from the norms: a pure function of the measured data."""

    steps: int
    p50: float
    p90: float
    p99: float
    max: float
    min: float
    clip: float
    spikes: tuple[int, ...]  # steps above ``spike`` times the median, left out of the clip
    nonfinite: tuple[int, ...]  # steps with a non-finite total norm, skipped steps aside
    zero_steps: int
    growth: Optional[float]
    local_spike: Optional[list]  # [step, ratio, norm]
    medians: tuple[float, ...]  # per layer, over steps
    with_grad: tuple[int, ...]  # layers whose median norm is finite and positive
    ratio: Optional[float]  # first/last layer norm, median over steps
    ratios: tuple[float, ...]  # first/last layer norm per step
    first_layer: Optional[str]  # qualified names, for scripts
    last_layer: Optional[str]
    first_label: Optional[str] = None  # as people name them: 'model.0 (Linear)'
    last_label: Optional[str] = None


def declared_clip(step: tuple[str, ...]) -> Optional[float]:
    """The clip_grad_norm value among the declared parts of the user's step ('clip_grad_norm 0.25'), if any."""
    for part in step:
        name, _, value = part.partition(" ")
        if name == "clip_grad_norm":
            try:
                return float(value)
            except ValueError:
                return None
    return None


# -- the check -----------------------------------------------------------------------------------------------
@dataclass
class GradNorms(Check):
    id = "grad_norms"
    title = "Gradient norms and a clip threshold"
    what = """Over the {train_steps} optimizer steps of the shared training probe (the user's optimizer and
    learning rate): the total gradient norm per step (its histogram and percentiles), the gradient norm of each
    layer against depth (layers in the order the forward first calls them), and the ratio of the gradient norm of
    the first weight layers to the last ones', median over steps: the largest among the first {end_fraction:.0%}
    of the weight layers against the largest among the last {end_fraction:.0%} (at least one each; Linear,
    convolution, recurrent and attention weight matrices; embeddings, biases and norm scales left out), since
    vanishing gradients starve every early layer while one may be small by design (attention's query and key
    projections at init). Fails when that ratio is below {vanishing_ratio:g}
    (vanishing) or above {exploding_ratio:g} (exploding), and when the total norm is non-finite at a step (steps a
    GradScaler would skip aside), exactly zero at more than {zero_steps:.0%} of the steps, above {huge_norm:g}
    (divided by the batch size for a loss summed over the batch), more than {spike_fail:g}x the median of the
    {spike_window} steps either side of it, or when the median of the last quarter of the steps is more than
    {growth:g}x that of the first quarter. A clip value is suggested from the healthy steps: the
    {clip_percentile:g}th percentile of the finite, nonzero total norms that are not spikes (more than {spike:g}x
    the median); none (a note says why) when the verdict is vanishing gradients, which a clip cannot help."""
    why = """Exploding gradients (a recurrent net whose recurrent weights amplify over a long sequence, a deep
    un-normalized net with too large an init, a learning rate that makes the norm grow step after step) make
    updates overshoot and end in NaN; vanishing gradients (the first layers get less than {vanishing_ratio:g} of
    the last layer's gradient) leave the early layers untrained. Clipping at a value drawn from the healthy
    distribution removes the rare spikes without slowing normal steps."""
    todo = """For exploding gradients: clip (torch.nn.utils.clip_grad_norm_(model.parameters(), suggested_clip)
    between backward() and step()), lower the learning rate, use a gated cell (LSTM/GRU) instead of a vanilla RNN,
    shrink the init (Xavier/Kaiming, orthogonal with gain 1 for recurrent weights), add normalization or residual
    connections. For vanishing gradients: use ReLU-family activations instead of sigmoid/tanh in deep stacks,
    He/Kaiming init, normalization layers and residual connections."""
    sources = (
        "X. Zhang et al., 'AUTOTRAINER: An Automatic DNN Training Problem Detection and Repair System', ICSE 2021: "
        "vanishing gradient when the first layer's gradient norm over the last layer's is below 1e-3, exploding "
        "when it is above 70",
        "R. Pascanu, T. Mikolov, Y. Bengio, 'On the difficulty of training recurrent neural networks', ICML 2013: "
        "exploding gradients in RNNs; clip the gradient norm at a value drawn from the average norm over updates",
        "Y. Bengio, P. Simard, P. Frasconi, 'Learning long-term dependencies with gradient descent is difficult', "
        "IEEE TNN 1994",
        "PyTorch docs: torch.nn.utils.clip_grad_norm_ (rescales the whole gradient, keeps its direction) and "
        "clip_grad_value_ (clamps each element)",
    )
    constants = {"train_steps": TRAIN_STEPS, "spike_window": SPIKE_WINDOW, "end_fraction": END_FRACTION}

    vanishing_ratio: float = threshold(1e-3, "fail when the first weight layers' gradient norm over the last ones' "
                                             "(the largest of each half, median over steps) is below this "
                                             "(AUTOTRAINER compares the first layer with the last)")
    exploding_ratio: float = threshold(70.0, "fail when that ratio is above this (AUTOTRAINER)")
    huge_norm: float = threshold(1e4, "fail when the total gradient norm exceeds this at any step: for a "
                                      "mean-reduced loss healthy norms are of order 0.01-10 and common clip values "
                                      "are 0.5-5. A loss summed over the batch (reduction='sum', as in PyTorch's VAE "
                                      "example) has N times the gradient of its mean: its norms are divided by the "
                                      "batch size N before this comparison")
    large_norm: float = threshold(100.0, "under a classification loss (cross-entropy, NLL, BCE: its gradient at "
                                         "the outputs is at most about 1 per example), warn when the median total "
                                         "gradient norm (divided by the batch size for a loss summed over the "
                                         "batch) is above this: a level the probe holds, not one spike; the 45 "
                                         "healthy models of the corpus and of the LR benchmark have medians of 0.02 "
                                         "to 6.9, and a forward pass that amplifies (weights at std 1 where the "
                                         "init meant 0.02) gives hundreds")
    growth: float = threshold(1e3, "fail when the median norm of the last quarter of the probe is this many times "
                                   "that of the first quarter (orders of magnitude of growth: divergence)")
    zero_steps: float = threshold(0.5, "fail when the total gradient norm is exactly zero on more than this share "
                                       "of the probe's steps (the loss no longer depends on any parameter)")
    spike_fail: float = threshold(100.0, "fail when one step's total norm is this many times the median of its "
                                         f"neighbours ({SPIKE_WINDOW} steps either side): two orders of magnitude "
                                         "at once, the sudden jumps of exploding gradients in recurrent nets (Pascanu "
                                         "et al. 2013); a loss that falls fast lowers the norm smoothly, a few x per "
                                         "step")
    spike: float = threshold(10.0, "steps whose total norm is this many times the median are spikes, left out of "
                                   "the suggested clip")
    clip_percentile: float = threshold(90.0, "the suggested clip is this percentile of the healthy total norms")

    # -- measure ------------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> GradMeasured:
        probe = session.evidence("train_probe")
        if not probe.param_names:
            self.skip("the model has no trainable parameter")
        totals = tuple(probe.grad_norm)
        if not finite(totals):
            if len(probe.skipped_steps) == len(totals):
                self.skip("every step's float16 gradient overflowed and was skipped, as a GradScaler would "
                          "(see nonfinite)")
            return GradMeasured(totals=totals, lr=probe.lr, skipped_steps=tuple(probe.skipped_steps))
        if not any(v > 0 for v in finite(totals)):
            self.skip("no parameter received a gradient during the probe (see param_updates)")
        facts = session.evidence("loss_facts")
        batch_factor, bounded = facts.batch_factor, facts.model is not None and facts.model.classification
        order = {name: i for i, name in enumerate(session.evidence("call_order"))}
        return GradMeasured(totals=totals, layers=self._weight_layers(session.model, probe, order), lr=probe.lr,
                            batch_factor=batch_factor, skipped_steps=tuple(probe.skipped_steps), step=probe.step,
                            closure=probe.closure, bounded_loss=bounded)

    @staticmethod
    def _weight_layers(model: "nn.Module", probe: TrainProbe, order: dict[str, int]) -> tuple[Layer, ...]:
        """Layers (owning modules, in the order the forward first calls them; registration order for the rest)
        with the joint gradient norm of their weight matrices per step."""
        names = probe.param_names
        found = []
        for owner, idx in layers_of(list(names)):
            weights = [i for i in idx if is_weight_matrix(model, names[i])]
            if weights:
                norms = tuple(math.sqrt(sum(step[i] ** 2 for i in weights)) for step in probe.param_grad_norms)
                found.append(Layer(owner, type(module_at(model, owner)).__name__, norms))
        rank = {layer.name: k for k, layer in enumerate(found)}
        return tuple(sorted(found, key=lambda layer: (order.get(layer.name, len(order)), rank[layer.name])))

    # -- judge --------------------------------------------------------------------------------------------
    def stats(self, m: GradMeasured) -> NormStats:
        """The statistics of the measured norms under this check's spike and clip thresholds (pure)."""
        totals, good = list(m.totals), finite(m.totals)
        p50 = float(np.median(good))
        medians = tuple(median_or_nan(layer.norms) for layer in m.layers)
        with_grad = tuple(i for i, med in enumerate(medians) if math.isfinite(med) and med > 0)
        first, last = end_groups(with_grad)
        ratio, ratios = first_last(_group_norms(m, first), _group_norms(m, last)) if len(with_grad) >= 2 \
            else (None, [])
        first_at = _largest(m, medians, first) if first else None
        last_at = _largest(m, medians, last) if last else None
        return NormStats(
            steps=len(totals), p50=p50, p90=float(np.percentile(good, 90)), p99=float(np.percentile(good, 99)),
            max=max(good), min=min(good), clip=suggested_clip(good, self.spike, self.clip_percentile),
            spikes=tuple(s for s, v in enumerate(totals) if math.isfinite(v) and v > self.spike * p50),
            nonfinite=tuple(s for s, v in enumerate(totals) if not math.isfinite(v) and s not in m.skipped_steps),
            zero_steps=sum(v == 0 for v in good), growth=growth(totals), local_spike=local_spike(totals),
            medians=medians, with_grad=with_grad, ratio=ratio, ratios=tuple(ratios),
            first_layer=display(m.layers[with_grad[0]].name) if with_grad else None,
            last_layer=display(m.layers[with_grad[-1]].name) if with_grad else None,
            first_label=_label(m.layers[first_at]) if first_at is not None else None,
            last_label=_label(m.layers[last_at]) if last_at is not None else None)

    def judge(self, m: GradMeasured) -> Judgment:
        if not finite(m.totals):
            return Judgment(Status.FAIL, f"exploding gradients: the total norm is non-finite at every one of the "
                                         f"{len(m.totals)} steps",
                            ("The nonfinite check names the first module that produced a NaN/Inf.",))
        s = self.stats(m)
        found = self._fired(m, s)[1]
        if found is not None:
            return found
        ratio_text = f", first/last layer ratio {_norm(s.ratio)}" if s.ratio is not None else ""
        return Judgment(Status.PASS, f"gradient norms healthy: median {_norm(s.p50)}, p99 {_norm(s.p99)}"
                                     f"{ratio_text}; suggested clip {fmt.lr(s.clip)}", _clip_advice(s.clip))

    def _fired(self, m: GradMeasured, s: NormStats) -> tuple[Optional[Callable], Optional[Judgment]]:
        """The first failure rule that applies, in order, and its judgment; (None, None) when none does."""
        rules: tuple[Callable[[GradMeasured, NormStats], Optional[Judgment]], ...] = (
            self._nonfinite, self._stopped, self._exploding_ratio, self._huge, self._spike, self._growth,
            self._vanishing, self._large)
        for rule in rules:
            found = rule(m, s)
            if found is not None:
                return rule, found
        return None, None

    def no_clip_reason(self, m: GradMeasured, s: NormStats) -> str:
        """Why no clip value is suggested ('' when one is): a clip caps large gradients, so gradients that vanish
        (the verdict) get none, neither as a number, nor as a line, nor as advice (pure)."""
        rule = self._fired(m, s)[0]
        if rule == self._stopped:
            return (f"no clip suggested: the total gradient norm is exactly 0 at {s.zero_steps} of {s.steps} steps "
                    f"(median {_norm(s.p50)}); a clip caps large gradients and cannot help gradients that vanish")
        if rule == self._vanishing:
            return (f"no clip suggested: the gradients vanish on their way back to the first layer (first/last "
                    f"layer ratio {_norm(s.ratio)}); a clip caps large gradients and cannot help")
        return ""

    @staticmethod
    def _exploding(s: NormStats, summary: str, advice: str) -> Judgment:
        """A failure of exploding gradients: its advice, then how to clip at the suggested value."""
        return Judgment(Status.FAIL, f"exploding gradients: {summary}", (advice, *_clip_advice(s.clip)))

    def _nonfinite(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if not s.nonfinite:
            return None
        first = s.nonfinite[0]
        return self._exploding(
            s, f"the total norm is non-finite at {len(s.nonfinite)} of {s.steps} steps (first at step {first})",
            f"The gradient became non-finite at step {first} (after norms up to {_norm(s.max)}); the nonfinite "
            f"check names the first module that produced it. Clip the gradient norm and lower the learning rate "
            f"(now {fmt.lr(m.lr)}).")

    def _stopped(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if s.zero_steps <= self.zero_steps * s.steps:
            return None
        return Judgment(Status.FAIL, f"vanishing gradients: the total gradient norm is exactly 0 at {s.zero_steps} "
                                     f"of {s.steps} probe steps", (
            f"No parameter gets any gradient at {s.zero_steps} of {s.steps} steps: the loss has stopped depending "
            f"on the weights. Usual causes: outputs pinned by a saturated softmax or sigmoid (see saturation; a "
            f"softmax fed into CrossEntropyLoss), every ReLU dead (see dead_relu), or a learning rate (now "
            f"{fmt.lr(m.lr)}) that wrecked the weights in the first steps (see lr_range).",))

    def _exploding_ratio(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if s.ratio is None or s.ratio <= self.exploding_ratio:
            return None
        return self._exploding(
            s, f"first/last layer gradient norm ratio {_norm(s.ratio)} > {fmt.lr(self.exploding_ratio)}: "
               f"{s.first_label} vs {s.last_label}",
            f"The first layer {s.first_label} gets {fmt.ratio(s.ratio, 3)} the gradient of the last layer "
            f"{s.last_label}: gradients grow on their way back. For a recurrent net use an LSTM/GRU or an "
            f"orthogonal recurrent init with gain <= 1; for a deep net shrink the init and add normalization; clip "
            f"at {fmt.lr(s.clip)}.")

    def _huge(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if s.max / m.batch_factor <= self.huge_norm:
            return None
        return self._exploding(
            s, f"total norm up to {_norm(s.max)} > {fmt.lr(self.huge_norm)} (median {_norm(s.p50)})",
            f"The total gradient norm reaches {_norm(s.max)} (median {_norm(s.p50)}): the forward pass amplifies "
            f"(too large an init, no normalization, large recurrent weights) or the loss is summed rather than "
            f"averaged. Fix the scale first, then clip.")

    def _large(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        """Norms far above any healthy model's, all along the probe, under a loss whose own gradient is bounded (a
        regression's grows with its targets' scale, input_scale's question): a warning, no single step is extreme."""
        if not m.bounded_loss or s.p50 / m.batch_factor <= self.large_norm:
            return None
        clip = declared_clip(m.step)
        clipped = (f"; your clip_grad_norm {fmt.lr(clip)} scales every step down {fmt.ratio(s.p50 / clip, 3)}, "
                   f"so the learning rate you set is not the one applied") if clip and s.p50 > clip else ""
        return Judgment(Status.WARN, f"large gradients: median total norm {_norm(s.p50)} > "
                                     f"{fmt.lr(self.large_norm)}{clipped}", (
            f"The total gradient norm stays near {_norm(s.p50)} (p99 {_norm(s.p99)}), where healthy models of any "
            f"size measured here sit at 0.02-7, and a classification loss gives each example a gradient of at "
            f"most about 1 at the outputs: the forward pass amplifies it on the way back. Usual causes: an init at "
            f"std 1 (nn.init.normal_ without std, or a custom init loop that forgot the model's initializer_range), "
            f"inputs far from unit scale (see input_scale), or a loss summed over tokens rather than averaged. "
            f"Fix the scale first; clipping at {fmt.lr(s.clip)} only hides it.",))

    def _spike(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if m.closure or s.local_spike is None or s.local_spike[1] <= self.spike_fail:
            return None
        step, ratio, value = s.local_spike
        return self._exploding(
            s, f"a spike of {_norm(value)} at step {step}, {fmt.ratio(ratio, 3)} the steps around it "
               f"(> {fmt.ratio(self.spike_fail, 3)}; median {_norm(s.p50)})",
            f"The gradient norm at step {step} ({_norm(value)}) is {fmt.ratio(ratio, 3)} that of the steps around "
            f"it: exploding gradients in bursts, typical of recurrent weights that amplify over a sequence. Clip at "
            f"{fmt.lr(s.clip)}, use an LSTM/GRU or an orthogonal recurrent init with gain <= 1, and lower the "
            f"learning rate (now {fmt.lr(m.lr)}).")

    def _growth(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if s.growth is None or s.growth <= self.growth:
            return None
        return self._exploding(
            s, f"the total norm grew {fmt.ratio(s.growth, 3)} during the probe",
            f"The gradient norm grew {fmt.ratio(s.growth, 3)} over {s.steps} steps: training is diverging. Lower "
            f"the learning rate (now {fmt.lr(m.lr)}) and clip at {fmt.lr(s.clip)}.")

    def _vanishing(self, m: GradMeasured, s: NormStats) -> Optional[Judgment]:
        if s.ratio is None or s.ratio >= self.vanishing_ratio:
            return None
        # a clip is no answer to gradients that vanish: no clip advice
        return Judgment(Status.FAIL, f"vanishing gradients: first/last layer gradient norm ratio {_norm(s.ratio)} "
                                     f"< {fmt.lr(self.vanishing_ratio)}: {s.first_label} vs {s.last_label}", (
            f"The first layer {s.first_label} gets {fmt.ratio(s.ratio, 3)} the gradient of the last layer "
            f"{s.last_label}: the early layers barely learn. Use ReLU-family activations, Kaiming init, "
            f"normalization or residual connections; check for saturated tanh/sigmoid units.",))

    # -- present ------------------------------------------------------------------------------------------
    def present(self, m: GradMeasured, judgment: Judgment) -> CheckResult:
        if not finite(m.totals):
            return self.result(judgment.status, judgment.summary, advice=judgment.advice,
                               metrics={"steps": len(m.totals), "suggested_clip": None})
        s = self.stats(m)
        withheld = self.no_clip_reason(m, s)
        clip = None if withheld else s.clip
        notes = ((withheld,) if withheld else ()) + self._notes(m, s)
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(m, s, clip),
                           advice=judgment.advice, notes=notes, tables=(self._table(m, s),),
                           plots=self._plots(m, s, clip))

    @staticmethod
    def _metrics(m: GradMeasured, s: NormStats, clip: Optional[float]) -> dict:
        return {
            "suggested_clip": clip, "p50": s.p50, "p90": s.p90, "p99": s.p99, "max": s.max, "min": s.min,
            "first_last_ratio": s.ratio, "growth": s.growth, "steps": s.steps, "spikes": len(s.spikes),
            "nonfinite_steps": len(s.nonfinite), "zero_steps": s.zero_steps, "lr": m.lr,
            "batch_sum_factor": m.batch_factor, "local_spike": s.local_spike, "first_layer": s.first_layer,
            "last_layer": s.last_layer,
        }

    def _notes(self, m: GradMeasured, s: NormStats) -> tuple[str, ...]:
        notes = []
        if s.spikes:
            notes.append(f"{len(s.spikes)} spike step(s) (> {fmt.ratio(self.spike, 3)} the median) left out of the "
                         f"suggested clip: {_steps(s.spikes)}")
        if m.batch_factor > 1:
            notes.append(f"the loss is summed over the batch (its value doubles when the batch is repeated): norms "
                         f"are compared with {fmt.lr(self.huge_norm)} after dividing by the batch size "
                         f"{m.batch_factor}")
        if m.skipped_steps:
            notes.append(f"{_steps(m.skipped_steps)} had non-finite gradients in float16 and were skipped, as "
                         f"a GradScaler skips them")
        notes += self._step_notes(m.step)
        if m.closure:
            notes.append("a closure optimizer (LBFGS): one step runs many evaluations and a line search, so the "
                         "gradient falls by orders of magnitude from one step to the next; the spike rule is not "
                         "applied")
        return tuple(notes)

    @staticmethod
    def _step_notes(step: tuple[str, ...]) -> list[str]:
        """Where the gradients were read in the user's step."""
        if "your step function" in step:
            return ["the probe ran your step function; gradients were read as each optimizer received them "
                    "(after any clipping your step does)"]
        if not step:
            return []
        clip = [p for p in step if p.startswith("clip")]
        return [f"the probe trained with your step ({', '.join(step)})"
                + ("; gradient norms are read before your clipping, so the suggested clip is about raw norms"
                   if clip else "")]

    @staticmethod
    def _table(m: GradMeasured, s: NormStats) -> Table:
        rows = []
        for depth, (layer, med) in enumerate(zip(m.layers, s.medians)):
            good = finite(layer.norms)
            rows.append((depth, display(layer.name), layer.type, med,
                         float(np.percentile(good, 90)) if good else None, max(good) if good else None))
        return Table("layers", "Gradient norm per layer (weight matrices), over the probe's steps",
                     ("depth", "layer", "type", "median", "p90", "max"), rows)

    def _plots(self, m: GradMeasured, s: NormStats, clip: Optional[float]) -> tuple[Plot, ...]:
        """The histogram and the norms per step (with the clip's line when one is suggested), depth, ratio."""
        plots = [
            Plot("total_hist", "Total gradient norm over the probe's steps", "hist",
                 (Series("total norm", (), finite(m.totals)),), x_label="||g||", y_label="steps",
                 markers=(Marker(f"suggested clip {fmt.lr(clip)}", clip),) if clip is not None else (), bins=20),
            Plot("total_steps", "Total gradient norm per step", "line",
                 (Series("total norm", tuple(range(len(m.totals))), m.totals),), x_label="step", y_label="||g||",
                 log_y=True, markers=(Marker("suggested clip", clip, axis="y"),) if clip is not None else ()),
        ]
        if m.layers:
            plots.append(Plot("depth", "Median gradient norm per layer against depth", "line",
                              (Series("median ||g||", tuple(range(len(m.layers))), s.medians),),
                              x_label=f"layer depth (0 = {_label(m.layers[0])})", y_label="||g||", log_y=True))
        if s.ratios:
            plots.append(Plot("first_last", "First/last layer gradient norm ratio per step", "line",
                              (Series("ratio", tuple(range(len(s.ratios))), s.ratios),), x_label="step",
                              y_label="ratio", log_y=True,
                              markers=(Marker(f"vanishing {fmt.lr(self.vanishing_ratio)}", self.vanishing_ratio, "y"),
                                       Marker(f"exploding {fmt.lr(self.exploding_ratio)}", self.exploding_ratio,
                                              "y"))))
        return tuple(plots)


def _label(layer: Layer) -> str:
    """A layer as people name it: 'model.0 (Linear)' for a child of an nn.Sequential model, 'head' by its name."""
    return display(layer.name, layer.type)


def _norm(x: Optional[float]) -> str:
    """A gradient norm or a ratio of norms: three significant digits."""
    return fmt.num(x, 3)


def _steps(steps: Sequence[int]) -> str:
    """'step 3', 'steps 3, 9, 12 and 4 more': probe steps for a note, the count kept when the list is cut."""
    return ("step " if len(steps) == 1 else "steps ") + fmt.listed([str(k) for k in steps], 10)


def _clip_advice(clip: float) -> tuple[str, ...]:
    return (f"To guard against rare spikes: torch.nn.utils.clip_grad_norm_(model.parameters(), "
            f"max_norm={fmt.lr(clip)}) after backward() (with a GradScaler, after scaler.unscale_(optimizer)). "
            f"Prefer norm clipping, which rescales the whole gradient and keeps its direction; "
            f"clip_grad_value_ clamps each element and changes the direction, use it only against isolated "
            f"outlier elements.",)


def _group_norms(m: GradMeasured, group: Sequence[int]) -> list[float]:
    """Per step, the largest gradient norm among the layers of ``group`` (NaN where none is finite)."""
    out = []
    for step in range(len(m.totals)):
        values = finite(m.layers[i].norms[step] for i in group)
        out.append(max(values) if values else float("nan"))
    return out


def _largest(m: GradMeasured, medians: Sequence[float], group: Sequence[int]) -> int:
    """The layer of ``group`` with the largest median gradient norm: the one the ratio speaks for."""
    return max(group, key=lambda i: medians[i])
