"""dead_relu: which rectifier units never fire, at initialization and after the probe's training steps?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional

from ..analysis import fmt
from ..analysis.activations import (DEAD_LAYER, DEAD_UNIT, RECTIFIER, LayerStats, Producer, hidden_clause,
                                    of_family, producers, ref, visibility_notes)
from ..analysis.params import display
from ..analysis.status import LEVELS, Status
from ..evidence import TRAIN_WINDOW
from ..passes.init_pass import INIT_BATCHES
from ..passes.train_probe import TRAIN_STEPS
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: the bias the advice suggests for a layer whose negative bias kills its units
BIAS_FILL = 0.01
#: layers named in the advice on units dead at init
ADVISED_LAYERS = 4


@dataclass(frozen=True)
class DeadReluMeasured:
    """The rectifier layers seen at init and after the probe's training steps, and what fed them."""

    init: tuple[LayerStats, ...]
    trained: tuple[LayerStats, ...]  # empty when the probe saw none or its statistics are unavailable
    train_forwards: int  # training steps whose activations were recorded (0 without the probe's statistics)
    producers: Mapping[str, Producer]  # the modules that feed the layers at init, by name
    user_lr: Optional[float]
    visibility: tuple[str, ...] = ()  # what the instrument could and could not see
    train_error: str = ""  # why the after-training statistics are missing

    @property
    def names(self) -> list[str]:
        """Every layer, in forward order at init, then those seen only after training."""
        return list(dict.fromkeys([l.name for l in self.init] + [l.name for l in self.trained]))

    def label(self, name: str) -> str:
        """A layer as people name it: 'model.1 (ReLU)' for a child of an nn.Sequential model."""
        layer = next((l for l in self.init + self.trained if l.name == name), None)
        return display(name, layer.module_type if layer else "")


@dataclass
class DeadRelu(Check):
    id = "dead_relu"
    title = "Dead rectifier units"
    what = """Every rectifier-family activation (ReLU, ReLU6, LeakyReLU, ELU, SELU, CELU, GELU, SiLU, Mish,
    Hardswish, RReLU), as a module or a functional call (F.relu, torch.relu, x.relu(), relu_), is watched on the
    shared passes: the {init_batches} batches at initialization, and the last {train_window} of the probe's
    {train_steps} training steps with the user's optimizer and learning rate. A unit (a feature of a linear
    output, a channel of a feature map) is dead when it is positive on under {unit_threshold:.0%} of the elements
    it produced; each layer's dead fraction is reported at both moments. A layer warns above {warn_layer:.0%} dead
    units and fails above {fail_layer:.0%}, at either moment, and only when that fraction also exceeds what a coin
    flip per unit gives by chance: 1/2 plus {chance_z:g} binomial standard deviations (0.5/sqrt(units)), capped at
    all units but 1.5 so that a small layer dead but for one unit is still flagged."""
    why = """A dead ReLU unit outputs zero for every input, so its gradient is zero and it never recovers: the
    layer's capacity is lost. Whole layers die at initialization from a negative bias or a bad init, and during
    training from too high a learning rate (one large update pushes the bias far negative)."""
    todo = """At init: initialise biases at zero or a small positive value ({bias_fill:g}), use Kaiming (He) init
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
    constants = {"init_batches": INIT_BATCHES, "train_window": TRAIN_WINDOW, "train_steps": TRAIN_STEPS,
                 "bias_fill": BIAS_FILL}

    unit_threshold: float = threshold(DEAD_UNIT, "a unit is dead when positive on fewer than this fraction of the "
                                            "elements it produced over the recorded batches (SageMaker: 1%)")
    warn_layer: float = threshold(DEAD_LAYER, "warn when a layer has more than this fraction of dead units. SageMaker "
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

    # -- measure ----------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> DeadReluMeasured:
        init = session.evidence("init_pass").instruments.get("activations")
        trained, train_error = self.activations(session, "train_probe")
        at_init, after = of_family(init, RECTIFIER), of_family(trained, RECTIFIER)
        if not at_init and not after:
            self.skip("no rectifier activation (ReLU family) was seen in the forward" + hidden_clause(init))
        return DeadReluMeasured(
            init=tuple(at_init), trained=tuple(after), train_forwards=trained.forwards if trained else 0,
            producers=producers(session.model, at_init), user_lr=session.user_lr,
            visibility=visibility_notes(init), train_error=train_error)

    # -- judge ------------------------------------------------------------------------------------------
    def judge(self, measured: DeadReluMeasured) -> Judgment:
        name, level, frac = self._worst(measured)
        status = LEVELS[level]
        if status is Status.PASS:
            return Judgment(status, f"{self._counts(measured)}; worst layer {measured.label(name)} {fmt.pct(frac)} "
                                    f"dead")
        when = "at init" if self._max_fraction(measured.init) >= self._max_fraction(measured.trained) \
            else "after training"
        limit = self.fail_layer if status is Status.FAIL else self.warn_layer
        summary = (f"{fmt.pct(frac, 1)} of the units of layer {measured.label(name)} are dead {when} (threshold "
                   f"{fmt.pct(limit)})")
        return Judgment(status, summary, self._advice(measured))

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
        """The fraction of a layer's units that are dead (None for a layer not seen at that moment)."""
        if layer is None:
            return None
        return layer.dead_units(self.unit_threshold) / max(layer.units, 1)

    def _worst(self, m: DeadReluMeasured) -> tuple[str, int, float]:
        """The worst layer at either moment: (name, level, dead fraction), the first in forward order on a tie."""
        at_init, after = {l.name: l for l in m.init}, {l.name: l for l in m.trained}
        worst = {}
        for name in m.names:
            a, b = at_init.get(name), after.get(name)
            worst[name] = max((self._level(a), self._fraction(a) or 0.0),
                              (self._level(b), self._fraction(b) or 0.0))
        name = max(worst, key=worst.get)
        return (name, *worst[name])

    def _counts(self, m: DeadReluMeasured) -> str:
        """'5 of 256 rectifier units dead at init, 53 after 24 training steps'."""
        after = f", {self._dead(m.trained)} after {TRAIN_STEPS} training steps" if m.trained else ""
        return f"{self._dead(m.init)} of {_units(m)} rectifier units dead at init{after}"

    def _dead(self, layers: tuple[LayerStats, ...]) -> int:
        return sum(l.dead_units(self.unit_threshold) for l in layers)

    def _max_fraction(self, layers: tuple[LayerStats, ...]) -> float:
        return max((self._fraction(l) for l in layers), default=0.0)

    def _advice(self, m: DeadReluMeasured) -> tuple[str, ...]:
        init_bad = [l for l in m.init if self._level(l)]
        init_names = {l.name for l in init_bad}
        train_bad = [l for l in m.trained if self._level(l) and l.name not in init_names]
        out = [_init_advice(l, m.producers.get(l.producer), self._fraction(l)) for l in init_bad[:ADVISED_LAYERS]]
        if train_bad:
            names = fmt.listed([f"{_label(l)} ({fmt.pct(self._fraction(l))})" for l in train_bad], 6)
            out.append(f"Units die during training in {names}: they were alive at init, so the updates kill them. "
                       f"Lower the learning rate (now {fmt.lr(m.user_lr)}) or add warmup; LeakyReLU or GELU keep a "
                       "gradient for negative inputs." if m.user_lr else
                       f"Units die during training in {names}: lower the learning rate or add warmup; LeakyReLU "
                       "or GELU keep a gradient for negative inputs.")
        return tuple(out)

    # -- present ----------------------------------------------------------------------------------------
    def present(self, measured: DeadReluMeasured, judgment: Judgment) -> CheckResult:
        notes = list(measured.visibility)
        if measured.train_error:
            notes.append(f"after-training statistics unavailable: {measured.train_error}")
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(measured),
                           advice=judgment.advice, tables=(self._table(measured),), plots=(self._plot(measured),),
                           notes=tuple(notes))

    def _metrics(self, m: DeadReluMeasured) -> dict:
        name, _, frac = self._worst(m)
        return {
            "layers": len(m.names), "units": _units(m), "dead_units_init": self._dead(m.init),
            "dead_units_trained": self._dead(m.trained) if m.trained else None,
            "max_dead_fraction_init": self._max_fraction(m.init),
            "max_dead_fraction_trained": self._max_fraction(m.trained) if m.trained else None,
            "worst_layer": name, "worst_dead_fraction": frac,
            "dead_fraction_by_layer_init": {l.name: self._fraction(l) for l in m.init},
            "dead_fraction_by_layer_trained": {l.name: self._fraction(l) for l in m.trained},
            "train_steps_measured": m.train_forwards,
        }

    def _table(self, m: DeadReluMeasured) -> Table:
        at_init, after = {l.name: l for l in m.init}, {l.name: l for l in m.trained}
        rows = []
        for name in m.names:
            a, b = at_init.get(name), after.get(name)
            rows.append((name, (a or b).op, (a or b).units, self._count(a), self._fraction(a), self._count(b),
                         self._fraction(b), _mean_active(a), _mean_active(b), a.pre_mean if a else None,
                         (a or b).producer))
        return Table("dead_units", "Dead units per layer (a unit is dead when positive on < "
                     f"{fmt.pct(self.unit_threshold)} of its outputs)",
                     ("layer", "op", "units", "dead at init", "dead fraction at init", "dead after training",
                      "dead fraction after training", "mean active fraction at init",
                      "mean active fraction after training", "pre-activation mean at init", "input from"), rows)

    def _plot(self, m: DeadReluMeasured) -> Plot:
        names = m.names
        at_init, after = {l.name: l for l in m.init}, {l.name: l for l in m.trained}
        return Plot("dead_fraction", "Dead units per layer", "bar",
                    (Series("at init", names, [self._fraction(at_init.get(n)) or 0.0 for n in names]),
                     Series("after training", names, [self._fraction(after.get(n)) or 0.0 for n in names])),
                    x_label="layer (forward order)", y_label="dead fraction",
                    markers=(Marker(f"warn {fmt.pct(self.warn_layer)}", self.warn_layer, axis="y"),
                             Marker(f"fail {fmt.pct(self.fail_layer)}", self.fail_layer, axis="y")))

    def _count(self, layer: Optional[LayerStats]) -> Optional[int]:
        return None if layer is None else layer.dead_units(self.unit_threshold)


def _units(m: DeadReluMeasured) -> int:
    """Rectifier units in the model: as seen at init, or after training when init saw none."""
    return sum(l.units for l in m.init) or sum(l.units for l in m.trained)


def _mean_active(layer: Optional[LayerStats]) -> Optional[float]:
    return None if layer is None or not layer.active else sum(layer.active) / len(layer.active)


def _label(layer: LayerStats) -> str:
    """A layer as people name it: 'model.1 (ReLU)' for a child of an nn.Sequential model."""
    return display(layer.name, layer.module_type)


def _init_advice(layer: LayerStats, producer: Optional[Producer], fraction: float) -> str:
    """Say why a layer is dead at init from its input: a negative bias, a shifted pre-activation, the init."""
    head = f"{_label(layer)}: {fmt.pct(fraction)} of its {layer.units} units are dead at init"
    feeder = display(layer.producer, layer.producer_type)
    known = layer.pre_mean is not None and layer.pre_std is not None
    pre = f" (pre-activation mean {fmt.num(layer.pre_mean, 3)}, std {fmt.num(layer.pre_std, 3)})" if known else ""
    if producer is not None and producer.bias_mean is not None and producer.bias_mean < 0 \
            and producer.bias_mean < -0.5 * producer.bias_std:
        return (f"{head}{pre}: the bias of {feeder} has mean {fmt.num(producer.bias_mean, 3)}, which pushes "
                f"the inputs below zero. Initialise it at 0 or a small positive value "
                f"(nn.init.constant_({ref(layer.producer, 'bias')}, {BIAS_FILL:g})).")
    if known and layer.pre_mean < -layer.pre_std:
        return (f"{head}{pre}: its inputs are shifted far below zero. Normalize them (BatchNorm/LayerNorm before "
                f"the activation), center the input data, and use zero biases.")
    where = f" of {feeder}" if layer.producer else ""
    return (f"{head}{pre}. Use Kaiming init{where} (nn.init.kaiming_normal_(w, nonlinearity='relu')) with zero "
            f"biases, or LeakyReLU.")
