"""dead_relu: which rectifier units never fire, at initialization and after the probe's training steps?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..analysis.activations import (RECTIFIER, ActivationResult, LayerStats, hidden_clause, ref,
                                    visibility_notes)
from ..passes.train_probe import TRAIN_STEPS
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


@dataclass
class DeadRelu(Check):
    id = "dead_relu"
    title = "Dead rectifier units"
    what = """Every rectifier-family activation (ReLU, ReLU6, LeakyReLU, ELU, SELU, GELU, SiLU, Mish, Hardswish),
    as a module or a functional call (F.relu, torch.relu, x.relu(), relu_), is watched on the shared passes: the
    4 batches at initialization, and the last 6 of the probe's 24 training steps with the user's optimizer and
    learning rate. A unit (a feature of a linear output, a channel of a feature map) is dead when it is positive
    on under 1% of the elements it produced; each layer's dead fraction is reported at both moments."""
    why = """A dead ReLU unit outputs zero for every input, so its gradient is zero and it never recovers: the
    layer's capacity is lost. Whole layers die at initialization from a negative bias or a bad init, and during
    training from too high a learning rate (one large update pushes the bias far negative)."""
    todo = """At init: initialise biases at zero or a small positive value (0.01), use Kaiming (He) init
    (nn.init.kaiming_normal_(w, nonlinearity='relu')), normalize the layer's input (BatchNorm/LayerNorm). Units that
    die during training: lower the learning rate or add warmup, or use LeakyReLU/GELU, which keep a gradient for
    negative inputs."""
    sources = (
        "Amazon SageMaker Debugger, built-in rule DeadRelu: a ReLU is inactive when active on under "
        "threshold_inactivity = 1% of examples; the rule fires when over threshold_layer = 50% of a layer's units "
        "are inactive",
        "M. Wardat et al., 'DeepDiagnosis: Automatically Diagnosing Faults and Recommending Actionable Fixes in "
        "Deep Learning Programs' (ICSE 2022): dead-node symptom when most of a layer's neurons (70%) output zero",
        "L. Lu, Y. Shin, Y. Su, G. E. Karniadakis, 'Dying ReLU and Initialization: Theory and Numerical "
        "Examples' (2019): deep narrow ReLU nets with symmetric init lose units with depth, hence warning at 60%",
        "A. Karpathy, CS231n 'Commonly used activation functions': as much as 40% of a network can be dead with "
        "too high a learning rate; Kaiming He et al., 'Delving Deep into Rectifiers' (2015) for the init",
    )

    unit_threshold: float = threshold(0.01, "a unit is dead when positive on fewer than this fraction of the "
                                            "elements it produced over the recorded batches (SageMaker: 1%)")
    warn_layer: float = threshold(0.6, "warn when a layer has more than this fraction of dead units. SageMaker "
                                       "Debugger flags at 50%, but deep ReLU stacks on PyTorch's default init "
                                       "settle near 50% dead as their signal shrinks with depth (measured 45-56% "
                                       "in 6-12 layer MLPs; Lu et al. 2019), so 50% would warn on common setups")
    fail_layer: float = threshold(0.7, "fail when a layer has more than this fraction of dead units "
                                       "(DeepDiagnosis, 70%)")

    chance_z: float = threshold(3.0, "a layer is flagged only when its dead fraction also exceeds 1/2 by this many "
                                     "binomial standard deviations (0.5/sqrt(units)): with its input signal faded "
                                     "(deep default-init stacks) each unit is dead by its bias's sign, a coin flip, "
                                     "and 61% of 128 units was measured on a healthy 8-layer MLP; capped at all but 1.5 "
                                     "units, so that a small layer dead but for one unit is still flagged")

    def run(self, session):
        init = session.evidence("init_pass").instruments.get("activations")
        trained, train_error = self.activations(session, "train_probe")
        layers = _rectifiers(init), _rectifiers(trained)
        if not layers[0] and not layers[1]:
            self.skip("no rectifier activation (ReLU family) was seen in the forward" + hidden_clause(init))
        rows, worst = [], {}
        names = list(dict.fromkeys([l.name for l in layers[0]] + [l.name for l in layers[1]]))
        at_init = {l.name: l for l in layers[0]}
        after = {l.name: l for l in layers[1]}
        for name in names:
            a, b = at_init.get(name), after.get(name)
            fa, fb = self._fraction(a), self._fraction(b)
            rows.append((name, (a or b).op, (a or b).units, _count(a, self.unit_threshold), fa,
                         _count(b, self.unit_threshold), fb, _mean_active(a), _mean_active(b),
                         a.pre_mean if a else None, (a or b).producer))
            worst[name] = max((self._level(a), fa or 0.0), (self._level(b), fb or 0.0))
        frac_init = max((self._fraction(l) for l in layers[0]), default=0.0)
        frac_after = max((self._fraction(l) for l in layers[1]), default=0.0)
        total_units = sum(l.units for l in layers[0]) or sum(l.units for l in layers[1])
        dead_init = sum(_count(l, self.unit_threshold) for l in layers[0])
        dead_after = sum(_count(l, self.unit_threshold) for l in layers[1])
        worst_name = max(worst, key=worst.get)
        level, worst_frac = worst[worst_name]
        metrics = {
            "layers": len(names), "units": total_units, "dead_units_init": dead_init,
            "dead_units_trained": dead_after if layers[1] else None,
            "max_dead_fraction_init": frac_init, "max_dead_fraction_trained": frac_after if layers[1] else None,
            "worst_layer": worst_name, "worst_dead_fraction": worst_frac,
            "dead_fraction_by_layer_init": {l.name: self._fraction(l) for l in layers[0]},
            "dead_fraction_by_layer_trained": {l.name: self._fraction(l) for l in layers[1]},
            "train_steps_measured": trained.forwards if trained else 0,
        }
        status = ("pass", "warn", "fail")[level]
        when = ("at init" if frac_init >= frac_after else "after training") if status != "pass" else ""
        if status == "pass":
            summary = (f"{dead_init} of {total_units} rectifier units dead at init"
                       + (f", {dead_after} after {TRAIN_STEPS} training steps" if layers[1] else "")
                       + f"; worst layer {worst_name} {worst_frac:.0%} dead")
        else:
            limit = self.fail_layer if status == 'fail' else self.warn_layer
            summary = f"{worst_frac:.1%} of layer {worst_name}'s units are dead {when} (threshold {limit:.0%})"
        advice = self._advice(session, layers, status) if status != "pass" else ()
        table = Table("dead_units", "Dead units per layer (a unit is dead when positive on < "
                      f"{self.unit_threshold:.0%} of its outputs)",
                      ("layer", "op", "units", "dead at init", "dead fraction at init", "dead after training",
                       "dead fraction after training", "mean active fraction at init",
                       "mean active fraction after training", "pre-activation mean at init", "input from"),
                      rows)
        plot = Plot("dead_fraction", "Dead units per layer", "bar",
                    (Series("at init", names, [self._fraction(at_init.get(n)) or 0.0 for n in names]),
                     Series("after training", names, [self._fraction(after.get(n)) or 0.0 for n in names])),
                    x_label="layer (forward order)", y_label="dead fraction",
                    markers=(Marker(f"warn {self.warn_layer:.0%}", self.warn_layer, axis="y"),
                             Marker(f"fail {self.fail_layer:.0%}", self.fail_layer, axis="y")))
        notes = list(visibility_notes(init))
        if train_error:
            notes.append(f"after-training statistics unavailable: {train_error}")
        return self.result(status, summary, metrics=metrics, advice=advice, tables=(table,), plots=(plot,),
                           notes=tuple(notes))

    def _level(self, layer: Optional[LayerStats]) -> int:
        """0 pass, 1 warn, 2 fail for one layer: its dead fraction above the threshold and above what a coin flip
        per unit gives (a layer whose input signal has faded leaves each unit to its bias's sign: about half dead,
        more in a narrow layer by chance)."""
        frac = self._fraction(layer)
        if not frac:
            return 0
        units = max(layer.units, 1)
        # capped so that a small layer that is wholly dead (or all but one unit) is still flagged
        chance = min(0.5 + self.chance_z * 0.5 / math.sqrt(units), 1 - 1.5 / units)
        if frac <= chance:
            return 0
        return 2 if frac > self.fail_layer else 1 if frac > self.warn_layer else 0

    def _fraction(self, layer: Optional[LayerStats]) -> Optional[float]:
        if layer is None:
            return None
        return _count(layer, self.unit_threshold) / max(layer.units, 1)

    def _advice(self, session, layers, status) -> tuple[str, ...]:
        out = []
        modules = dict(session.model.named_modules())
        init_bad = [l for l in layers[0] if self._level(l)]
        init_names = {l.name for l in init_bad}
        train_bad = [l for l in layers[1] if self._level(l) and l.name not in init_names]
        for layer in init_bad[:4]:
            out.append(_init_advice(layer, modules.get(layer.producer), self._fraction(layer)))
        if train_bad:
            lr = session.user_lr
            names = ", ".join(f"{l.name} ({self._fraction(l):.0%})" for l in train_bad[:6])
            out.append(f"Units die during training in {names}: they were alive at init, so the updates kill them. "
                       f"Lower the learning rate (now {lr:.3g}) or add warmup; LeakyReLU or GELU keep a gradient "
                       "for negative inputs." if lr else
                       f"Units die during training in {names}: lower the learning rate or add warmup; LeakyReLU "
                       "or GELU keep a gradient for negative inputs.")
        return tuple(out)


def _rectifiers(result: Optional[ActivationResult]) -> list[LayerStats]:
    return [l for l in result.family(RECTIFIER) if l.units] if result else []


def _count(layer: Optional[LayerStats], threshold: float) -> Optional[int]:
    return None if layer is None else layer.dead_units(threshold)


def _mean_active(layer: Optional[LayerStats]) -> Optional[float]:
    return None if layer is None or not layer.active else sum(layer.active) / len(layer.active)


def _init_advice(layer: LayerStats, producer: Optional[nn.Module], fraction: float) -> str:
    """Say why a layer is dead at init from its input: a negative bias, a shifted pre-activation, the init."""
    head = f"{layer.name}: {fraction:.0%} of its {layer.units} units are dead at init"
    pre = (f" (pre-activation mean {layer.pre_mean:.3g}, std {layer.pre_std:.3g})"
           if layer.pre_mean is not None and layer.pre_std is not None else "")
    bias = getattr(producer, "bias", None) if producer is not None else None
    if isinstance(bias, torch.Tensor) and bias.numel():
        b = bias.detach().float()
        if float(b.mean()) < 0 and float(b.mean()) < -0.5 * float(b.std() if b.numel() > 1 else 0.0):
            return (f"{head}{pre}: the bias of {layer.producer} has mean {float(b.mean()):.3g}, which pushes the "
                    f"inputs below zero. Initialise it at 0 or a small positive value "
                    f"(nn.init.constant_({ref(layer.producer, 'bias')}, 0.01)).")
    if layer.pre_mean is not None and layer.pre_std is not None and layer.pre_mean < -layer.pre_std:
        return (f"{head}{pre}: its inputs are shifted far below zero. Normalize them (BatchNorm/LayerNorm before "
                f"the activation), center the input data, and use zero biases.")
    where = f" of {layer.producer}" if layer.producer else ""
    return (f"{head}{pre}. Use Kaiming init{where} (nn.init.kaiming_normal_(w, nonlinearity='relu')) with zero "
            f"biases, or LeakyReLU.")
