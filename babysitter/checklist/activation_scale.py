"""activation_scale: do activations vanish or explode with depth at initialization?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..analysis.activations import (RECTIFIER, SIGMOID, TANH, ActivationResult, LayerStats, hidden_clause, ref,
                                    visibility_notes)
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


@dataclass(frozen=True)
class InitAdvice:
    """The weight layer feeding an activation, its weight std, and the std the usual init would give it."""

    layer: str
    fan_in: int
    fan_out: int
    std: float
    recommended: float
    scheme: str  # 'Kaiming', 'Xavier', 'LeCun'
    call: str  # the nn.init call that sets it

    @property
    def ratio(self) -> float:
        return self.std / self.recommended if self.recommended else float("nan")


@dataclass
class ActivationScale(Check):
    id = "activation_scale"
    title = "Activation scale through depth at init"
    what = """On the 4 batches of the shared pass at initialization, the mean and standard deviation of every
    hidden activation (rectifier family and tanh, as modules or functional calls) in forward order, with the
    histogram of log10|activation| layer by layer (the CS231n picture). The std of the last activation is compared
    with the first: a collapse toward zero or a geometric growth with depth is flagged. The input of tanh and
    sigmoid layers is checked too: a pre-activation std of several units drives them into their flat regions.
    Each layer's weight std is compared with the Kaiming (ReLU family), LeCun (SELU) or Xavier (tanh, sigmoid)
    value for the activation that follows it."""
    why = """The initialization sets how the signal's scale changes from layer to layer. With weights too small
    every layer multiplies the std by a factor under 1 and activations (and, symmetrically, the gradients) vanish
    geometrically with depth; too large, and they explode or saturate. Either way deep layers learn slowly or not
    at all. Kaiming (He et al. 2015) and Xavier (Glorot & Bengio 2010) inits are chosen to keep that factor at 1."""
    todo = """Re-initialise the layers named in the advice with the scheme given for their activation
    (nn.init.kaiming_normal_(w, nonlinearity='relu') before ReLU, nn.init.xavier_uniform_(w,
    gain=nn.init.calculate_gain('tanh')) before tanh), with zero biases; or add normalization (BatchNorm,
    LayerNorm), which resets the scale at every layer."""
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

    warn_ratio: float = threshold(100.0, "warn when the std of the last hidden activation differs from the first's "
                                         "by more than this factor (either way)")
    fail_ratio: float = threshold(1000.0, "fail when it differs by more than this factor")
    preact_warn: float = threshold(2.5, "warn when the input of a tanh layer has a std above this (twice this for "
                                        "sigmoid): most units then start in the flat region (|tanh(2.5)| = 0.987)")
    preact_fail: float = threshold(5.0, "fail when the input of a tanh layer has a std above this (twice this for "
                                        "sigmoid)")

    def run(self, session):
        init = session.evidence("init_pass").instruments.get("activations")
        chain = _chain(init)
        bounded = [l for l in (init.family(TANH, SIGMOID) if init else []) if l.pre_std is not None]
        if not chain and not bounded:
            self.skip("no hidden activation (ReLU family, tanh, sigmoid) was seen in the forward" + hidden_clause(init))
        modules = dict(session.model.named_modules())
        inits = {l.name: _init_for(l, modules.get(l.producer)) for l in chain + bounded}
        live = [l for l in chain if l.std > 0]
        first, last = (live[0], live[-1]) if len(live) >= 2 else (None, None)
        ratio = last.std / first.std if first else 1.0
        change = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
        status, summary = "pass", ""
        if first and change > self.warn_ratio:
            status = "fail" if change > self.fail_ratio else "warn"
            direction = "collapses" if ratio < 1 else "grows"
            summary = (f"activation std {direction} {change:.3g}x through {len(live)} layers at init: "
                       f"{first.std:.3g} ({first.name}) -> {last.std:.3g} ({last.name})")
        hot = [(l, l.pre_std / (2.0 if l.family == SIGMOID else 1.0)) for l in bounded]
        hot = [(l, s) for l, s in hot if s > self.preact_warn]
        if hot:
            worst, s = max(hot, key=lambda p: p[1])
            level = "fail" if s > self.preact_fail else "warn"
            if _rank(level) > _rank(status):
                status = level
                summary = (f"the input of {worst.name} ({worst.op}) has std {worst.pre_std:.3g} at init: "
                           f"its units start in the flat region")
        if status == "pass":
            if first:
                summary = (f"activation std through {len(live)} layers at init: {first.std:.3g} -> {last.std:.3g} "
                           f"({ratio:.3g}x)")
            else:
                n = len({l.name for l in chain + bounded})
                summary = f"{n} activation layer{'s' if n > 1 else ''} at init, no depth to compare"
            if bounded:
                top = max(bounded, key=lambda l: l.pre_std)
                summary += f"; tanh/sigmoid input std at most {top.pre_std:.3g} ({top.name})"
        gains = _gains(chain)
        rows = []
        for l in chain + [b for b in bounded if b not in chain]:
            adv = inits.get(l.name)
            rows.append((l.name, l.op, l.units, l.mean, l.std, gains.get(l.name), l.pre_mean, l.pre_std,
                         l.producer, adv.std if adv else None, adv.scheme if adv else None,
                         adv.recommended if adv else None, adv.ratio if adv else None))
        metrics = {
            "layers": len(chain), "std_first": first.std if first else (chain[0].std if chain else None),
            "std_last": last.std if last else (chain[-1].std if chain else None),
            "depth_ratio": ratio, "std_by_layer": {l.name: l.std for l in chain},
            "mean_by_layer": {l.name: l.mean for l in chain},
            "tanh_sigmoid_preact_std": {l.name: l.pre_std for l in bounded},
            "weight_to_recommended": {n: a.ratio for n, a in inits.items() if a is not None},
        }
        advice = self._advice(status, ratio, chain, hot, inits, gains) if status != "pass" else ()
        table = Table("activation_scale", "Activation statistics per layer at init (forward order)", (
            "layer", "op", "units", "mean", "std", "std / previous std", "pre-activation mean", "pre-activation std",
            "input from", "weight std", "init for this activation", "recommended weight std",
            "weight std / recommended"), rows)
        plots = [self._depth_plot(chain, bounded)] if chain or bounded else []
        layers = chain + [b for b in bounded if b not in chain]
        layers.sort(key=lambda l: l.order)
        if layers:
            plots.append(_log_heatmap(layers))
        notes = list(visibility_notes(init))
        dead = [l.name for l in chain if l.std == 0]
        if dead:
            notes.append(f"layers with all outputs exactly zero are left out of the depth ratio (see dead_relu): "
                         f"{', '.join(dead[:6])}")
        return self.result(status, summary, metrics=metrics, advice=advice, tables=(table,), plots=tuple(plots),
                           notes=tuple(notes))

    def _advice(self, status, ratio, chain, hot, inits, gains) -> tuple[str, ...]:
        out = []
        off = [(n, a) for n, a in inits.items() if a is not None and (a.ratio > 2 or a.ratio < 0.5)]
        off.sort(key=lambda p: -abs(math.log(p[1].ratio)) if p[1].ratio > 0 else -1e9)
        for name, a in off[:4]:
            side = "too small" if a.ratio < 1 else "too large"
            out.append(f"{a.layer} (feeding {name}): weight std {a.std:.3g} is {a.ratio:.2g}x the {a.scheme} value "
                       f"{a.recommended:.3g} ({side}); re-initialise it with {a.call} and a zero bias.")
        if not off:
            shrink = [n for n, g in gains.items() if g is not None and (g < 0.3 or g > 3)]
            where = f" (the std changes most at {', '.join(shrink[:4])})" if shrink else ""
            out.append(f"The weights look like the standard inits, yet the scale drifts{where}: add a normalization "
                       f"layer (BatchNorm, LayerNorm) or check for a scaling in the forward (a missing or extra "
                       f"division, residual branches summed without scaling).")
        if chain and not any(l.producer_type and "Norm" in l.producer_type for l in chain) and ratio < 1 and \
                status != "pass":
            out.append("Alternatively add BatchNorm/LayerNorm before the activations: it restores unit scale at "
                       "every layer whatever the init.")
        return tuple(out)

    def _depth_plot(self, chain, bounded) -> Plot:
        series = []
        if chain:
            xs = list(range(len(chain)))
            series.append(Series("std", xs, [l.std for l in chain]))
            series.append(Series("|mean|", xs, [abs(l.mean) for l in chain]))
        return Plot("std_by_depth", "Activation std through depth at init (" + " > ".join(
            l.name for l in chain[:8]) + (" ..." if len(chain) > 8 else "") + ")", "line", tuple(series),
            x_label="activation layer (forward order)", y_label="value", log_y=True,
            markers=(Marker("first std / 100", chain[0].std / self.warn_ratio, axis="y"),) if chain and
            chain[0].std > 0 else ())


def _rank(status: str) -> int:
    return {"pass": 0, "warn": 1, "fail": 2}[status]


def _chain(result: Optional[ActivationResult]) -> list[LayerStats]:
    """Hidden activations in forward order: the rectifier family and tanh. Sigmoids (mostly gates or outputs) and
    an activation the model returns as its output (a final tanh whose scale a deliberately small last layer sets)
    are left out."""
    if not result:
        return []
    return [l for l in result.family(RECTIFIER, TANH) if l.units and not l.is_output]


def _gains(chain: list[LayerStats]) -> dict[str, Optional[float]]:
    out, prev = {}, None
    for l in chain:
        out[l.name] = (l.std / prev.std) if prev is not None and prev.std > 0 else None
        prev = l
    return out


def _init_for(layer: LayerStats, producer: Optional[nn.Module]) -> Optional[InitAdvice]:
    """The standard init for the weight layer feeding ``layer``, when that layer is a Linear or a Conv."""
    if not isinstance(producer, (nn.Linear, nn.modules.conv._ConvNd)):
        return None
    weight = producer.weight
    if weight is None or weight.dim() < 2 or weight.numel() < 2:
        return None
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = float(weight.detach().float().std())
    target = ref(layer.producer, "weight")
    if layer.op == "selu":
        return InitAdvice(layer.producer, fan_in, fan_out, std, math.sqrt(1 / fan_in), "LeCun",
                          f"nn.init.kaiming_normal_({target}, nonlinearity='linear')")
    if layer.family == RECTIFIER:
        return InitAdvice(layer.producer, fan_in, fan_out, std, math.sqrt(2 / fan_in), "Kaiming",
                          f"nn.init.kaiming_normal_({target}, nonlinearity='relu')")
    return InitAdvice(layer.producer, fan_in, fan_out, std, math.sqrt(2 / (fan_in + fan_out)), "Xavier",
                      f"nn.init.xavier_normal_({target})")


def _log_heatmap(layers: list[LayerStats]) -> Plot:
    """Histograms of log10|activation| layer by layer: a collapse or a growth shows as a drift across rows."""
    edges = ActivationResult.log_edges()
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    series = []
    for l in layers:
        total = sum(l.log_hist) or 1.0
        series.append(Series(f"{l.name} (std {l.std:.2g})", centres, [v / total for v in l.log_hist]))
    return Plot("log_histograms", "log10 |activation| per layer at init (left bin: zeros)", "heatmap",
                tuple(series), x_label="log10 |activation|", y_label="layer")
