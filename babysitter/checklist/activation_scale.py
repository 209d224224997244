"""activation_scale: do activations vanish or explode with depth at initialization?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional

from ..analysis import fmt
from ..analysis.activations import (RECTIFIER, SIGMOID, TANH, ActivationResult, LayerStats, Producer, hidden_clause,
                                    producers, ref, visibility_notes)
from ..analysis.params import InitAdvice, display, init_advice, scheme_for
from ..analysis.status import Status, level
from ..passes.init_pass import INIT_BATCHES
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: weight layers named in the advice
ADVISED_LAYERS = 4
#: a weight std outside [1/x, x] times the recommended one is named in the advice
INIT_OFF = 2.0
#: a layer whose std over the previous layer's is outside this range is named in the advice
GAIN_RANGE = (0.3, 3.0)


@dataclass(frozen=True)
class ScaleMeasured:
    """The hidden activations through depth at init, the tanh/sigmoid inputs, and the weights that feed them."""

    chain: tuple[LayerStats, ...]  # hidden activations (rectifier family, tanh) in forward order, output left out
    bounded: tuple[LayerStats, ...]  # tanh and sigmoid layers whose input std was measured
    producers: Mapping[str, Producer]  # the modules that feed them, by name
    visibility: tuple[str, ...] = ()  # what the instrument could and could not see

    @property
    def live(self) -> list[LayerStats]:
        """The chain without layers whose outputs are all exactly zero (dead_relu's business)."""
        return [l for l in self.chain if l.std > 0]

    @property
    def ends(self) -> tuple[Optional[LayerStats], Optional[LayerStats]]:
        """The first and last live layers, or (None, None) without two of them to compare."""
        live = self.live
        return (live[0], live[-1]) if len(live) >= 2 else (None, None)

    @property
    def ratio(self) -> float:
        """The last live layer's std over the first's (1 without depth to compare)."""
        first, last = self.ends
        return last.std / first.std if first else 1.0

    @property
    def layers(self) -> list[LayerStats]:
        """The chain, then the tanh/sigmoid layers that are not in it."""
        names = {l.name for l in self.chain}
        return list(self.chain) + [b for b in self.bounded if b.name not in names]

    @property
    def inits(self) -> dict[str, Optional[InitAdvice]]:
        """By activation layer: the standard init for the Linear or convolution feeding it (None for others)."""
        return {l.name: _init_for(l, self.producers.get(l.producer)) for l in self.chain + self.bounded}


@dataclass
class ActivationScale(Check):
    id = "activation_scale"
    title = "Activation scale through depth at init"
    what = """On the {init_batches} batches of the shared pass at initialization, the mean and standard deviation
    of every hidden activation (rectifier family and tanh, as modules or functional calls; an activation the model
    returns as its output is left out) in forward order, with the histogram of log10|activation| layer by layer
    (the CS231n picture). The std of the last activation is compared with the first (layers whose outputs are all
    zero are left out): a collapse toward zero or a growth with depth by more than {warn_ratio:g}x warns, by more
    than {fail_ratio:g}x fails. The input of tanh and sigmoid layers is checked too: a pre-activation std above
    {preact_warn:g} warns and above {preact_fail:g} fails (twice these for sigmoid), since the units then start in
    their flat regions. For the advice, the weight std of each Linear or convolution feeding an activation is
    compared with the Kaiming (ReLU family), LeCun (SELU) or Xavier (tanh, sigmoid) value for that activation."""
    why = """The initialization sets how the signal's scale changes from layer to layer. With weights too small
    every layer multiplies the std by a factor under 1 and activations (and, symmetrically, the gradients) vanish
    geometrically with depth; too large, and they explode or saturate. Either way deep layers learn slowly or not
    at all. Kaiming (He et al. 2015) and Xavier (Glorot & Bengio 2010) inits are chosen to keep that factor at 1."""
    todo = """Re-initialise the layers named in the advice with the scheme given for their activation
    (nn.init.kaiming_normal_(w, nonlinearity='relu') before ReLU, nn.init.xavier_normal_(w) before tanh), with
    zero biases; or add normalization (BatchNorm, LayerNorm), which resets the scale at every layer."""
    sources = (
        "CS231n, 'Neural Networks Part 2: Setting up the data and the model' and lecture 6: histograms of "
        "activations through a 10-layer tanh network collapse to zero with weights of std 0.01 and saturate at "
        "+-1 with std 1",
        "K. He, X. Zhang, S. Ren, J. Sun, 'Delving Deep into Rectifiers' (ICCV 2015): std sqrt(2/fan_in) keeps "
        "the variance of ReLU activations constant with depth",
        "X. Glorot and Y. Bengio, 'Understanding the difficulty of training deep feedforward neural networks' "
        "(AISTATS 2010): std sqrt(2/(fan_in + fan_out)) for tanh/sigmoid",
        "Thresholds: a factor of 100 (warn) or 1000 (fail) between the first and last activation std; PyTorch's "
        "default init (std 1/sqrt(3 fan_in), biases included) loses well under 100x through the depths of usual "
        "MLPs and CNNs, while a 10-layer net with weights of std 0.01 loses more than 10^6",
    )

    constants = {"init_batches": INIT_BATCHES}

    warn_ratio: float = threshold(100.0, "warn when the std of the last hidden activation differs from the first's "
                                         "by more than this factor (either way)")
    fail_ratio: float = threshold(1000.0, "fail when it differs by more than this factor")
    preact_warn: float = threshold(2.5, "warn when the input of a tanh layer has a std above this (twice this for "
                                        "sigmoid): most units then start in the flat region (|tanh(2.5)| = 0.987)")
    preact_fail: float = threshold(5.0, "fail when the input of a tanh layer has a std above this (twice this for "
                                        "sigmoid)")

    # -- measure ----------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> ScaleMeasured:
        init = session.evidence("init_pass").instruments.get("activations")
        chain = _chain(init)
        bounded = [l for l in (init.family(TANH, SIGMOID) if init else []) if l.pre_std is not None]
        if not chain and not bounded:
            self.skip("no hidden activation (ReLU family, tanh, sigmoid) was seen in the forward" + hidden_clause(init))
        return ScaleMeasured(chain=tuple(chain), bounded=tuple(bounded),
                             producers=producers(session.model, chain + bounded), visibility=visibility_notes(init))

    # -- judge ------------------------------------------------------------------------------------------
    def judge(self, measured: ScaleMeasured) -> Judgment:
        status, summary = self._depth_verdict(measured)
        hot = self._hot(measured)
        if hot:
            worst, s = max(hot, key=lambda p: p[1])
            found = Status.FAIL if s > self.preact_fail else Status.WARN
            if level(found) > level(status):
                status = found
                summary = (f"the input of {_label(worst, op=True)} has std {fmt.num(worst.pre_std, 3)} at init: "
                           f"its units start in the flat region")
        if status is Status.PASS:
            return Judgment(status, _pass_summary(measured))
        return Judgment(status, summary, self._advice(measured))

    def _depth_verdict(self, m: ScaleMeasured) -> tuple[Status, str]:
        """Warn or fail when the std changes by more than warn_ratio or fail_ratio from the first to the last."""
        first, last = m.ends
        ratio = m.ratio
        change = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
        if not first or change <= self.warn_ratio:
            return Status.PASS, ""
        direction = "collapses" if ratio < 1 else "grows"
        return (Status.FAIL if change > self.fail_ratio else Status.WARN,
                f"activation std {direction} {fmt.num(change, 3)}x through {len(m.live)} layers at init: "
                f"{fmt.num(first.std, 3)} ({_label(first)}) -> {fmt.num(last.std, 3)} ({_label(last)})")

    def _hot(self, m: ScaleMeasured) -> list[tuple[LayerStats, float]]:
        """tanh and sigmoid layers whose input std (halved for sigmoid) exceeds preact_warn, with that std."""
        scaled = [(l, l.pre_std / (2.0 if l.family == SIGMOID else 1.0)) for l in m.bounded]
        return [(l, s) for l, s in scaled if s > self.preact_warn]

    def _advice(self, m: ScaleMeasured) -> tuple[str, ...]:
        layers = {l.name: l for l in m.chain + m.bounded}
        out = _weight_advice(m.inits, layers)
        if not out:
            gains = _gains(m.chain)
            shrink = [_label(layers[n]) for n, g in gains.items()
                      if g is not None and (g < GAIN_RANGE[0] or g > GAIN_RANGE[1])]
            where = f" (the std changes most at {fmt.listed(shrink, 4)})" if shrink else ""
            out.append(f"The weights look like the standard inits, yet the scale drifts{where}: add a normalization "
                       f"layer (BatchNorm, LayerNorm) or check for a scaling in the forward (a missing or extra "
                       f"division, residual branches summed without scaling).")
        if m.chain and not any(l.producer_type and "Norm" in l.producer_type for l in m.chain) and m.ratio < 1:
            out.append("Alternatively add BatchNorm/LayerNorm before the activations: it restores unit scale at "
                       "every layer whatever the init.")
        return tuple(out)

    # -- present ----------------------------------------------------------------------------------------
    def present(self, measured: ScaleMeasured, judgment: Judgment) -> CheckResult:
        plots = [self._depth_plot(measured.chain)]
        layers = sorted(measured.layers, key=lambda l: l.order)
        if layers:
            plots.append(_log_heatmap(layers))
        notes = list(measured.visibility)
        dead = [_label(l) for l in measured.chain if l.std == 0]
        if dead:
            notes.append(f"layers with all outputs exactly zero are left out of the depth ratio (see dead_relu): "
                         f"{fmt.listed(dead, 6)}")
        return self.result(judgment.status, judgment.summary, metrics=_metrics(measured), advice=judgment.advice,
                           tables=(_table(measured),), plots=tuple(plots), notes=tuple(notes))

    def _depth_plot(self, chain: tuple[LayerStats, ...]) -> Plot:
        series = []
        if chain:
            xs = list(range(len(chain)))
            series.append(Series("std", xs, [l.std for l in chain]))
            series.append(Series("|mean|", xs, [abs(l.mean) for l in chain]))
        first = f" (0 = {_label(chain[0])})" if chain else ""
        return Plot("std_by_depth", "Activation std through depth at init", "line", tuple(series),
            x_label=f"activation layer in forward order{first}", y_label="value", log_y=True,
            markers=(Marker(f"first std / {fmt.num(self.warn_ratio)}", chain[0].std / self.warn_ratio, axis="y"),)
            if chain and chain[0].std > 0 else ())


def _pass_summary(m: ScaleMeasured) -> str:
    first, last = m.ends
    if first:
        summary = (f"activation std through {len(m.live)} layers at init: {fmt.num(first.std, 3)} -> "
                   f"{fmt.num(last.std, 3)} ({fmt.num(m.ratio, 3)}x)")
    else:
        summary = f"{fmt.plural(len({l.name for l in m.layers}), 'activation layer')} at init, no depth to compare"
    if m.bounded:
        top = max(m.bounded, key=lambda l: l.pre_std)
        summary += f"; tanh/sigmoid input std at most {fmt.num(top.pre_std, 3)} ({_label(top)})"
    return summary


def _label(layer: LayerStats, op: bool = False) -> str:
    """A layer as people name it: 'model.1 (Tanh)' for a child of an nn.Sequential model; with ``op``, a layer
    known by its name gets its op, 'act (tanh)'."""
    name = display(layer.name, layer.module_type)
    return f"{name} ({layer.op})" if op and name == display(layer.name, "") else name


def _weight_advice(inits: Mapping[str, Optional[InitAdvice]], layers: Mapping[str, LayerStats]) -> list[str]:
    """The weights furthest from the standard init for their activation (beyond INIT_OFF either way), worst first;
    ``layers``: the activation layers by name."""
    off = [(n, a) for n, a in inits.items() if a is not None and (a.ratio > INIT_OFF or a.ratio < 1 / INIT_OFF)]
    off.sort(key=lambda p: -abs(math.log(p[1].ratio)) if p[1].ratio > 0 else -1e9)
    out = []
    for name, a in off[:ADVISED_LAYERS]:
        side = "too small" if a.ratio < 1 else "too large"
        feeder = display(a.layer, layers[name].producer_type)
        out.append(f"{feeder}, feeding {_label(layers[name])}: weight std {fmt.num(a.std, 3)} is {fmt.small(a.ratio)}x the "
                   f"{a.scheme} value {fmt.num(a.recommended, 3)} ({side}); re-initialise it with {a.call} and a "
                   f"zero bias.")
    return out


def _metrics(m: ScaleMeasured) -> dict:
    first, last = m.ends
    chain = m.chain
    return {
        "layers": len(chain), "std_first": first.std if first else (chain[0].std if chain else None),
        "std_last": last.std if last else (chain[-1].std if chain else None),
        "depth_ratio": m.ratio, "std_by_layer": {l.name: l.std for l in chain},
        "mean_by_layer": {l.name: l.mean for l in chain},
        "tanh_sigmoid_preact_std": {l.name: l.pre_std for l in m.bounded},
        "weight_to_recommended": {n: a.ratio for n, a in m.inits.items() if a is not None},
    }


def _table(m: ScaleMeasured) -> Table:
    gains, inits = _gains(m.chain), m.inits
    rows = []
    for l in m.layers:
        adv = inits.get(l.name)
        rows.append((l.name, l.op, l.units, l.mean, l.std, gains.get(l.name), l.pre_mean, l.pre_std,
                     l.producer, adv.std if adv else None, adv.scheme if adv else None,
                     adv.recommended if adv else None, adv.ratio if adv else None))
    return Table("activation_scale", "Activation statistics per layer at init (forward order)", (
        "layer", "op", "units", "mean", "std", "std / previous std", "pre-activation mean", "pre-activation std",
        "input from", "weight std", "init for this activation", "recommended weight std",
        "weight std / recommended"), rows)


def _chain(result: Optional[ActivationResult]) -> list[LayerStats]:
    """Hidden activations in forward order: the rectifier family and tanh. Sigmoids (mostly gates or outputs) and
    an activation the model returns as its output (a final tanh whose scale a deliberately small last layer sets)
    are left out."""
    if not result:
        return []
    return [l for l in result.family(RECTIFIER, TANH) if l.units and not l.is_output]


def _gains(chain: tuple[LayerStats, ...]) -> dict[str, Optional[float]]:
    out, prev = {}, None
    for l in chain:
        out[l.name] = (l.std / prev.std) if prev is not None and prev.std > 0 else None
        prev = l
    return out


def _init_for(layer: LayerStats, producer: Optional[Producer]) -> Optional[InitAdvice]:
    """The standard init for the weight layer feeding ``layer``, when that layer is a Linear or a Conv."""
    if producer is None or producer.weight_shape is None:
        return None
    return init_advice(layer.producer, producer.weight_shape, producer.weight_std,
                       scheme_for(layer.op, layer.family == RECTIFIER), ref(layer.producer, "weight"))


def _log_heatmap(layers: list[LayerStats]) -> Plot:
    """Histograms of log10|activation| layer by layer: a collapse or a growth shows as a drift across rows."""
    edges = ActivationResult.log_edges()
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    series = []
    for l in layers:
        total = sum(l.log_hist) or 1.0
        series.append(Series(f"{l.name} (std {fmt.small(l.std)})", centres, [v / total for v in l.log_hist]))
    return Plot("log_histograms", "log10 |activation| per layer at init (left bin: zeros)", "heatmap",
                tuple(series), x_label="log10 |activation|", y_label="layer")
