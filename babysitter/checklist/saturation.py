"""saturation: which tanh/sigmoid units sit in their flat regions, and which softmax outputs are pinned, at init?"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..analysis.activations import (SIGMOID, SOFTMAX, TANH, ActivationResult, LayerStats, hidden_clause, ref,
                                    visibility_notes)
from ..instruments.activations import SIGMOID_SATURATED, SOFTMAX_PINNED, TANH_SATURATED
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


@dataclass
class Saturation(Check):
    id = "saturation"
    title = "Saturated tanh, sigmoid and softmax units"
    what = f"""Every tanh and sigmoid activation (module or functional call) and every softmax computed in Python
    is watched on the 4 batches of the shared pass at initialization. An output is saturated when |tanh| >
    {TANH_SATURATED}, or sigmoid is outside [{1 - SIGMOID_SATURATED:.2f}, {SIGMOID_SATURATED}] (the local slope is
    then under 2% of its maximum); a softmax distribution is pinned when its top probability exceeds
    {SOFTMAX_PINNED} (rows where every other entry was masked out are not counted). Each layer's saturated
    fraction is reported, at init and over the end of the training probe (for information)."""
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
        "Thresholds: at |tanh| = 0.99 the derivative 1 - y^2 is 0.02, at sigmoid 0.99 the derivative is 0.0099 "
        "(4% of its maximum 0.25)",
    )

    warn_layer: float = threshold(0.10, "warn when more than this fraction of a layer's outputs at init are "
                                        "saturated (or of a softmax's distributions pinned)")
    fail_layer: float = threshold(0.40, "fail when more than this fraction are saturated at init (below "
                                        "SageMaker's 50%: at init a healthy network sits in the linear region)")

    def run(self, session):
        init = session.evidence("init_pass").instruments.get("activations")
        layers = _bounded(init)
        if not layers:
            self.skip("no tanh, sigmoid or softmax activation was seen in the forward" + hidden_clause(init))
        trained, train_error = self.activations(session, "train_probe")
        after = {l.name: l for l in _bounded(trained)}
        fractions = {l.name: l.saturated_fraction or 0.0 for l in layers}
        worst_name = max(fractions, key=fractions.get)
        worst = fractions[worst_name]
        status = "fail" if worst > self.fail_layer else "warn" if worst > self.warn_layer else "pass"
        rows = []
        for l in layers:
            a = after.get(l.name)
            rows.append((l.name, l.op, l.units if l.family != SOFTMAX else None, fractions[l.name],
                         _mostly_saturated(l), a.saturated_fraction if a else None,
                         l.pre_mean, l.pre_std, l.producer))
        metrics = {
            "layers": len(layers), "worst_layer": worst_name, "worst_saturated_fraction": worst,
            "saturated_fraction_by_layer": fractions,
            "saturated_fraction_by_layer_trained": {n: a.saturated_fraction for n, a in after.items()},
            "tanh_layers": sum(l.family == TANH for l in layers),
            "sigmoid_layers": sum(l.family == SIGMOID for l in layers),
            "softmax_layers": sum(l.family == SOFTMAX for l in layers),
        }
        what = "pinned" if _by_name(layers, worst_name).family == SOFTMAX else "saturated"
        if status == "pass":
            summary = (f"{len(layers)} tanh/sigmoid/softmax layers at init, at most {worst:.1%} {what} "
                       f"({worst_name})")
        else:
            summary = (f"{worst:.1%} of {worst_name}'s outputs are {what} at init "
                       f"(threshold {self.fail_layer if status == 'fail' else self.warn_layer:.0%})")
        advice = self._advice(session, layers, fractions) if status != "pass" else ()
        table = Table("saturation", "Saturated fraction per layer", (
            "layer", "op", "units", "saturated fraction at init", "units saturated on most inputs",
            "saturated fraction after training", "pre-activation mean", "pre-activation std", "input from"), rows)
        names = [l.name for l in layers]
        plots = [Plot("saturated_fraction", "Saturated (tanh, sigmoid) or pinned (softmax) fraction per layer", "bar",
                      (Series("at init", names, [fractions[n] for n in names]),
                       Series("after training", names,
                              [(after[n].saturated_fraction or 0.0) if n in after else 0.0 for n in names])),
                      x_label="layer (forward order)", y_label="fraction",
                      markers=(Marker(f"warn {self.warn_layer:.0%}", self.warn_layer, axis="y"),
                               Marker(f"fail {self.fail_layer:.0%}", self.fail_layer, axis="y")))]
        value_rows = [l for l in layers if l.value_hist]
        if value_rows:
            plots.append(_value_heatmap(value_rows))
        notes = list(visibility_notes(init))
        notes.append("the verdict is taken at init; after training, confident outputs (a sigmoid or softmax on the "
                     "logits) are expected to saturate, so that column is for information")
        if train_error:
            notes.append(f"after-training statistics unavailable: {train_error}")
        return self.result(status, summary, metrics=metrics, advice=advice, tables=(table,), plots=tuple(plots),
                           notes=tuple(notes))

    def _advice(self, session, layers, fractions) -> tuple[str, ...]:
        modules = dict(session.model.named_modules())
        out = []
        for l in sorted(layers, key=lambda l: -fractions[l.name]):
            if fractions[l.name] <= self.warn_layer or len(out) >= 4:
                continue
            out.append(_layer_advice(l, modules.get(l.producer), fractions[l.name]))
        return tuple(out)


def _bounded(result: Optional[ActivationResult]) -> list[LayerStats]:
    if not result:
        return []
    return [l for l in result.family(TANH, SIGMOID, SOFTMAX) if l.saturated_fraction is not None]


def _by_name(layers, name) -> LayerStats:
    return next(l for l in layers if l.name == name)


def _mostly_saturated(layer: LayerStats) -> Optional[int]:
    """Units saturated on more than half of their outputs: effectively binary, passing almost no gradient."""
    return None if layer.saturated is None else sum(s > 0.5 for s in layer.saturated)


def _layer_advice(layer: LayerStats, producer: Optional[nn.Module], fraction: float) -> str:
    head = f"{layer.name}: {fraction:.0%} {'pinned' if layer.family == SOFTMAX else 'saturated'} at init"
    if layer.family == SOFTMAX:
        return (f"{head}: the logits fed to the softmax are far too spread out. Shrink the init of the layer that "
                f"produces them{f' ({layer.producer})' if layer.producer else ''}; for attention, divide the scores "
                f"by sqrt(d_head).")
    pre = f" (pre-activation std {layer.pre_std:.3g})" if layer.pre_std is not None else ""
    weight = getattr(producer, "weight", None) if producer is not None else None
    if isinstance(producer, (nn.Linear, nn.modules.conv._ConvNd)) and weight is not None and weight.dim() >= 2:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
        xavier = (2.0 / (fan_in + fan_out)) ** 0.5
        std = float(weight.detach().float().std())
        return (f"{head}{pre}: the weights of {layer.producer} have std {std:.3g}, {std / xavier:.1f}x the Xavier "
                f"value {xavier:.3g}. Use nn.init.xavier_uniform_({ref(layer.producer, 'weight')}, "
                f"gain=nn.init.calculate_gain('{layer.op}')) and standardize the inputs; or switch the hidden "
                f"activation to ReLU/GELU.")
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
