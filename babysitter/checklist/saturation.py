"""saturation: which tanh/sigmoid units sit in their flat regions, and which softmax outputs are pinned, at init?"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional

from ..analysis import fmt
from ..analysis.activations import (SIGMOID, SOFTMAX, TANH, ActivationResult, LayerStats, Producer, hidden_clause,
                                    producers, ref, visibility_notes)
from ..analysis.params import display, init_std
from ..analysis.status import Status
from ..evidence import TRAIN_WINDOW
from ..instruments.activations import SIGMOID_SATURATED, SOFTMAX_PINNED, TANH_SATURATED
from ..passes.init_pass import INIT_BATCHES
from ..passes.train_probe import TRAIN_STEPS
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: layers named in the advice
ADVISED_LAYERS = 4


@dataclass(frozen=True)
class SaturationMeasured:
    """The tanh, sigmoid and softmax layers at init and after the probe's training steps, and what fed them."""

    layers: tuple[LayerStats, ...]  # at init, in forward order
    trained: tuple[LayerStats, ...]  # after training (empty when unavailable)
    producers: Mapping[str, Producer]  # the modules that feed the layers at init, by name
    visibility: tuple[str, ...] = ()  # what the instrument could and could not see
    train_error: str = ""  # why the after-training statistics are missing

    @property
    def fractions(self) -> dict[str, float]:
        """Saturated (tanh, sigmoid) or pinned (softmax) fraction of each layer at init."""
        return {l.name: l.saturated_fraction or 0.0 for l in self.layers}

    @property
    def worst(self) -> tuple[LayerStats, float]:
        """The layer with the largest fraction at init (the first in forward order on a tie), and that fraction."""
        fractions = self.fractions
        name = max(fractions, key=fractions.get)
        return next(l for l in self.layers if l.name == name), fractions[name]


@dataclass
class Saturation(Check):
    id = "saturation"
    title = "Saturated tanh, sigmoid and softmax units"
    what = """Every tanh and sigmoid activation (module or functional call; hardsigmoid, the gate of MobileNetV3's
    squeeze-excite blocks, counts as a sigmoid: its slope is exactly 0 outside [-3, 3]) and every softmax computed
    in Python is watched on the {init_batches} batches of the shared pass at initialization. An output is saturated when
    |tanh| > {tanh_saturated:g}, or sigmoid is outside [{sigmoid_low:.2f}, {sigmoid_saturated:g}] (the local slope
    is then under {tanh_slope:.0%} of its maximum for tanh, {sigmoid_slope:.0%} for sigmoid); a softmax distribution
    is pinned when its top probability exceeds {softmax_pinned:g} (rows where every other entry was masked out are
    not counted). A layer warns when more than {warn_layer:.0%} of its outputs at init are saturated (or of its
    distributions pinned) and fails above {fail_layer:.0%}. Each layer's fraction is also reported over the last
    {train_window} of the probe's {train_steps} training steps, for information: after training, confident outputs
    are expected to saturate."""
    why = """In the flat regions the derivative is almost zero, so almost no gradient flows back through the
    unit: learning stalls for it and for every layer below it (Glorot & Bengio 2010 saw the top sigmoid layer
    saturate at 1 and stall training for a long time; LeCun et al. 1998 chose tanh scaling to stay off the flat
    parts). A softmax pinned to one class at init is maximally confident before learning anything: its loss
    and gradients start huge, and attention that is pinned attends to one token only."""
    todo = """Scale the weights that feed the layer down: Xavier/Glorot init (nn.init.xavier_uniform_(w,
    gain=nn.init.calculate_gain('tanh'))) for tanh and sigmoid; normalize the inputs and add BatchNorm/LayerNorm
    before the activation; or use the ReLU family for hidden layers. For a softmax: shrink the final layer's
    init, and scale attention scores by 1/sqrt(d_head)."""
    sources = (
        "X. Glorot and Y. Bengio, 'Understanding the difficulty of training deep feedforward neural networks' "
        "(AISTATS 2010): saturation of the top hidden sigmoid layer with standard init; normalized (Xavier) init",
        "Y. LeCun, L. Bottou, G. Orr, K.-R. Mueller, 'Efficient BackProp' (1998), section 4.4: keep tanh units "
        "out of saturation with unit-variance inputs and weights of std 1/sqrt(fan_in)",
        "Amazon SageMaker Debugger, built-in rule SaturatedActivation: flags a layer when over threshold_layer "
        "(50%) of its tanh/sigmoid units are saturated; our thresholds are stricter at init, where a healthy "
        "network has almost no saturated units",
        "CS231n, 'Neural Networks Part 1/2': saturated sigmoid/tanh units kill gradients; the histogram of tanh "
        "activations through depth with too large weights piles up at -1 and 1",
        f"Thresholds: at |tanh| = {TANH_SATURATED:g} the derivative 1 - y^2 is {1 - TANH_SATURATED ** 2:.2g}, at "
        f"sigmoid {SIGMOID_SATURATED:g} the derivative is {SIGMOID_SATURATED * (1 - SIGMOID_SATURATED):.2g} "
        f"({4 * SIGMOID_SATURATED * (1 - SIGMOID_SATURATED):.0%} of its maximum 0.25)",
    )
    constants = {"init_batches": INIT_BATCHES, "train_window": TRAIN_WINDOW, "train_steps": TRAIN_STEPS,
                 "tanh_saturated": TANH_SATURATED, "sigmoid_saturated": SIGMOID_SATURATED,
                 "sigmoid_low": 1 - SIGMOID_SATURATED, "softmax_pinned": SOFTMAX_PINNED,
                 # the slope where saturation starts, as a share of the maximum slope (1 for tanh, 1/4 for sigmoid)
                 "tanh_slope": 1 - TANH_SATURATED ** 2,
                 "sigmoid_slope": 4 * SIGMOID_SATURATED * (1 - SIGMOID_SATURATED)}

    warn_layer: float = threshold(0.10, "warn when more than this fraction of a layer's outputs at init are "
                                        "saturated (or of a softmax's distributions pinned)")
    fail_layer: float = threshold(0.40, "fail when more than this fraction are saturated at init (below "
                                        "SageMaker's 50%: at init a healthy network sits in the linear region)")

    # -- measure ----------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> SaturationMeasured:
        init = session.evidence("init_pass").instruments.get("activations")
        layers = _bounded(init)
        if not layers:
            self.skip("no tanh, sigmoid or softmax activation was seen in the forward" + hidden_clause(init))
        trained, train_error = self.activations(session, "train_probe")
        return SaturationMeasured(layers=tuple(layers), trained=tuple(_bounded(trained)),
                                  producers=producers(session.model, layers), visibility=visibility_notes(init),
                                  train_error=train_error)

    # -- judge ------------------------------------------------------------------------------------------
    def judge(self, measured: SaturationMeasured) -> Judgment:
        layer, worst = measured.worst
        what = "pinned" if layer.family == SOFTMAX else "saturated"
        status = Status.FAIL if worst > self.fail_layer else Status.WARN if worst > self.warn_layer else Status.PASS
        if status is Status.PASS:
            return Judgment(status, f"{fmt.plural(len(measured.layers), 'tanh/sigmoid/softmax layer')} at init, "
                                    f"at most {fmt.pct(worst, 1)} {what} ({_label(layer)})")
        limit = self.fail_layer if status is Status.FAIL else self.warn_layer
        return Judgment(status, f"{fmt.pct(worst, 1)} of the outputs of {_label(layer)} are {what} at init "
                                f"(threshold {fmt.pct(limit)})", self._advice(measured))

    def _advice(self, m: SaturationMeasured) -> tuple[str, ...]:
        """One piece of advice for each of the most saturated layers above the warning threshold."""
        fractions = m.fractions
        flagged = [l for l in sorted(m.layers, key=lambda l: -fractions[l.name]) if fractions[l.name] > self.warn_layer]
        return tuple(_layer_advice(l, m.producers.get(l.producer), fractions[l.name])
                     for l in flagged[:ADVISED_LAYERS])

    # -- present ----------------------------------------------------------------------------------------
    def present(self, measured: SaturationMeasured, judgment: Judgment) -> CheckResult:
        plots = [self._bars(measured)]
        value_rows = [l for l in measured.layers if l.value_hist]
        if value_rows:
            plots.append(_value_heatmap(value_rows))
        notes = list(measured.visibility)
        notes.append("the verdict is taken at init; after training, confident outputs (a sigmoid or softmax on the "
                     "logits) are expected to saturate, so that column is for information")
        if measured.train_error:
            notes.append(f"after-training statistics unavailable: {measured.train_error}")
        return self.result(judgment.status, judgment.summary, metrics=_metrics(measured), advice=judgment.advice,
                           tables=(_table(measured),), plots=tuple(plots), notes=tuple(notes))

    def _bars(self, m: SaturationMeasured) -> Plot:
        fractions, after = m.fractions, {l.name: l for l in m.trained}
        names = [l.name for l in m.layers]
        return Plot("saturated_fraction", "Saturated (tanh, sigmoid) or pinned (softmax) fraction per layer", "bar",
                    (Series("at init", names, [fractions[n] for n in names]),
                     Series("after training", names,
                            [(after[n].saturated_fraction or 0.0) if n in after else 0.0 for n in names])),
                    x_label="layer (forward order)", y_label="fraction",
                    markers=(Marker(f"warn {fmt.pct(self.warn_layer)}", self.warn_layer, axis="y"),
                             Marker(f"fail {fmt.pct(self.fail_layer)}", self.fail_layer, axis="y")))


def _metrics(m: SaturationMeasured) -> dict:
    layer, worst = m.worst
    return {
        "layers": len(m.layers), "worst_layer": layer.name, "worst_saturated_fraction": worst,
        "saturated_fraction_by_layer": m.fractions,
        "saturated_fraction_by_layer_trained": {l.name: l.saturated_fraction for l in m.trained},
        "tanh_layers": sum(l.family == TANH for l in m.layers),
        "sigmoid_layers": sum(l.family == SIGMOID for l in m.layers),
        "softmax_layers": sum(l.family == SOFTMAX for l in m.layers),
    }


def _table(m: SaturationMeasured) -> Table:
    fractions, after = m.fractions, {l.name: l for l in m.trained}
    rows = []
    for l in m.layers:
        a = after.get(l.name)
        rows.append((l.name, l.op, l.units if l.family != SOFTMAX else None, fractions[l.name], _mostly_saturated(l),
                     a.saturated_fraction if a else None, l.pre_mean, l.pre_std, l.producer))
    return Table("saturation", "Saturated fraction per layer", (
        "layer", "op", "units", "saturated fraction at init", "units saturated on most inputs",
        "saturated fraction after training", "pre-activation mean", "pre-activation std", "input from"), rows)


def _bounded(result: Optional[ActivationResult]) -> list[LayerStats]:
    if not result:
        return []
    return [l for l in result.family(TANH, SIGMOID, SOFTMAX) if l.saturated_fraction is not None]


def _mostly_saturated(layer: LayerStats) -> Optional[int]:
    """Units saturated on more than half of their outputs: effectively binary, passing almost no gradient."""
    return None if layer.saturated is None else sum(s > 0.5 for s in layer.saturated)


def _label(layer: LayerStats) -> str:
    """A layer as people name it: 'model.1 (Tanh)' for a child of an nn.Sequential model."""
    return display(layer.name, layer.module_type)


def _layer_advice(layer: LayerStats, producer: Optional[Producer], fraction: float) -> str:
    head = f"{_label(layer)}: {fmt.pct(fraction)} {'pinned' if layer.family == SOFTMAX else 'saturated'} at init"
    feeder = display(layer.producer, layer.producer_type)
    if layer.family == SOFTMAX:
        return (f"{head}: the logits fed to the softmax are far too spread out. Shrink the init of the layer that "
                f"produces them{f' ({feeder})' if layer.producer else ''}; for attention, divide the scores "
                f"by sqrt(d_head).")
    pre = f" (pre-activation std {fmt.num(layer.pre_std, 3)})" if layer.pre_std is not None else ""
    if producer is not None and producer.weight_shape is not None:
        xavier = init_std("xavier", producer.weight_shape)
        return (f"{head}{pre}: the weights of {feeder} have std {fmt.num(producer.weight_std, 3)}, "
                f"{fmt.small(producer.weight_std / xavier)}x the Xavier value {fmt.num(xavier, 3)}. Use "
                f"nn.init.xavier_uniform_({ref(layer.producer, 'weight')}, gain=nn.init.calculate_gain('{layer.op}')) "
                f"and standardize the inputs; or switch the hidden activation to ReLU/GELU.")
    return (f"{head}{pre}: scale down what feeds it (Xavier init, standardized inputs), add a normalization layer "
            f"before it, or use the ReLU family for hidden layers.")


def _value_heatmap(layers: list[LayerStats]) -> Plot:
    """The CS231n picture for bounded activations: the histogram of outputs, one row per layer in depth order."""
    series = []
    for l in layers:
        lo, hi = l.value_range
        n = len(l.value_hist)
        total = sum(l.value_hist) or 1.0
        centres = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
        label = f"{l.name} (max p)" if l.family == SOFTMAX else l.name
        series.append(Series(label, centres, [v / total for v in l.value_hist]))
    mixed = len({l.value_range for l in layers}) > 1
    return Plot("value_histograms", "Outputs of tanh, sigmoid (and softmax top probability) at init, by layer",
                "heatmap", tuple(series), y_label="layer",
                x_label="position in the output range (tanh: -1 to 1; sigmoid, softmax: 0 to 1)" if mixed
                else "output value")
