"""param_updates: does every trainable parameter get a gradient and move, and by how much per step?

``measure`` reads, per parameter, what the shared training probe saw (in the optimizer, got a gradient, the
update/weight ratio at the measured steps) and what the model says of it (a weight matrix, zero-initialised, the
norm of the standard init for its shape, whether its module runs in the forward or has submodules); ``judge`` is a
pure function of those records and the thresholds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..analysis import fmt
from ..analysis.params import (Init, InitFit, display, grouped, init_fit, init_match, is_weight_matrix, layers_of,
                               module_at, owner_of, reference_norm)
from ..analysis.status import Status
from ..passes.train_probe import TRAIN_STEPS, TrainProbe
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from torch import nn

    from ..session import Session

#: CS231n's rule of thumb for a healthy update/weight ratio (the reference line of the plot)
CS231N_RATIO = 1e-3
#: how advice cites it, and how the pass summary names it beside the measured ratio
CS231N, CS231N_NAMED = "CS231n: ~1e-3", "CS231n's ~1e-3"
#: a draw from a continuous distribution repeats no value: a frozen weight with fewer distinct values than this
#: fraction of its entries was set by hand (Sobel or Haar filters, a one-hot table) or quantized, not drawn
DISTINCT_MIN = 0.5
#: how messages name the standard inits of analysis.params.init_stds
INIT_NAMES = {"default": "PyTorch's default init U(+-1/sqrt(fan_in))", "kaiming": "Kaiming's init",
              "xavier": "Xavier's init", "lecun": "LeCun's init (or an orthogonal one)",
              "normal(0, 0.02)": "normal(0, 0.02) as in Hugging Face", "normal(0, 1)": "nn.Embedding's normal(0, 1)"}


# -- measured data -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter of the model: what the probe saw of it and what the model says of it."""

    name: str
    shape: tuple[int, ...] = ()
    trainable: bool = True  # requires_grad (held in the probe)
    matrix: bool = False  # a weight matrix (Linear, convolution, recurrent, attention; not an embedding)
    zero_init: bool = False  # a trainable weight matrix whose norm is exactly 0 before training
    reference: float = 0.0  # for a weight matrix, its norm under the standard init (the floor of its ratios)
    called: bool = True  # its owning module runs in the forward pass
    leaf: bool = True  # its owning module has no submodules
    in_optimizer: bool = True
    got_grad: bool = True
    grad_always_zero: bool = False  # its gradient norm is exactly 0 at every probe step
    ratios: tuple[float, ...] = ()  # ||w_after - w_before|| / ||w_before|| at the measured steps
    weight_norms: tuple[float, ...] = ()  # ||w_before|| at the measured steps
    init: Optional[InitFit] = None  # a frozen tensor of 2+ dimensions: how much it looks like a fresh random draw

    @property
    def moved(self) -> bool:
        """Changed at some measured step (a NaN ratio counts as a change)."""
        return any(isinstance(r, float) and r != 0.0 for r in self.ratios)

    def floored_ratios(self) -> list[float]:
        """Update ratios ||dw|| / max(||w||, ||w_ref||): a weight matrix initialised far below the standard scale
        (a head at std 1e-3, a residual branch near zero) is measured against the norm the standard init would
        give it, so that its first Adam steps (each moves every weight by about lr) are not read as rewrites."""
        if not self.weight_norms:
            return list(self.ratios)
        return [r * w / max(w, self.reference) if math.isfinite(r) and w > 0 else r
                for r, w in zip(self.ratios, self.weight_norms)]


@dataclass(frozen=True)
class UpdatesMeasured:
    """Every parameter of the model, in registration order, and the learning rate the probe trained at."""

    params: tuple[Param, ...]
    lr: Optional[float] = None
    closure: bool = False  # a closure optimizer (LBFGS): its steps are line searches, not lr-sized updates


@dataclass(frozen=True)
class Findings:
    """The parameters sorted by what is wrong with them, and the update ratios: a pure function of the records."""

    trainable: int
    frozen: int
    not_in_opt: list[str]
    cut: list[str]  # no gradient, in a module that runs
    unused: list[str]  # no gradient, in a module never called (or a container: cannot tell)
    still: list[str]  # in the optimizer with a gradient, never moves
    sandwiched: list[str]  # frozen, between trainable layers
    suffix: list[str]  # frozen, after the last trainable layer
    prefix: list[str]  # frozen, before the first trainable layer
    constants: list[str]  # frozen scalars and vectors among trainable layers
    zero_init: list[str]
    random_init: list[str]  # frozen, in a layer whose frozen weight is still a fresh draw of a standard init
    structured: list[str]  # frozen between or after trainable layers, whose frozen weight has learned structure
    ratios: dict[str, float]  # median floored update ratio per trainable parameter
    peaks: dict[str, float]  # largest floored update ratio per trainable parameter
    judged: dict[str, float] = field(default_factory=dict)  # the weight matrices whose ratio is judged
    reads: dict[str, Param] = field(default_factory=dict)  # the frozen weights read for their init
    low: list[str] = field(default_factory=list)
    high: list[str] = field(default_factory=list)

    @property
    def ratio_median(self) -> Optional[float]:
        return float(np.median(list(self.judged.values()))) if self.judged else None


# -- pure helpers --------------------------------------------------------------------------------------------
def missing(params: Sequence[Param]) -> tuple[list[str], list[str], list[str]]:
    """Trainable parameters not in the optimizer although they get a gradient; without a gradient in a module
    that runs (the path is cut); without a gradient in a module never called, or registered on a container."""
    not_in_opt = [p.name for p in params if p.trainable and not p.in_optimizer and p.got_grad]
    no_grad = [p for p in params if p.trainable and not p.got_grad]
    cut = [p.name for p in no_grad if p.called and p.leaf]
    unused = [p.name for p in no_grad if not (p.called and p.leaf)]
    return not_in_opt, cut, unused


def still(params: Sequence[Param]) -> list[str]:
    """Parameters in the optimizer with a gradient that never moved. A 1-D parameter with a tiny but nonzero
    gradient (a bias before BatchNorm) may not move in float32: only weight matrices, or parameters whose gradient
    is exactly zero at every step, count."""
    return [p.name for p in params if p.trainable and p.got_grad and p.in_optimizer and not p.moved
            and (p.matrix or p.grad_always_zero)]


def frozen_layout(params: Sequence[Param]) -> tuple[list[str], list[str], list[str]]:
    """Frozen parameters between trainable layers, after the last trainable one, and before the first one."""
    layers = layers_of([p.name for p in params])
    trains = [any(params[i].trainable for i in idx) for _, idx in layers]
    if not any(trains):
        return [], [], []
    first = trains.index(True)
    last = len(trains) - 1 - trains[::-1].index(True)
    sandwiched, suffix, prefix = [], [], []
    for k, (_, idx) in enumerate(layers):
        frozen = [params[i].name for i in idx if not params[i].trainable]
        (prefix if k < first else suffix if k > last else sandwiched).extend(frozen)
    return sandwiched, suffix, prefix


def frozen_constants(params: Sequence[Param], names: Sequence[str]) -> list[str]:
    """Of ``names``, those whose layer has no frozen tensor of >= 2 dimensions: a frozen scalar or vector (a fixed
    temperature, a frozen norm's affine in a fine-tuned backbone) is a constant by design far more often than a
    forgotten layer."""
    frozen_matrix_owners = {owner_of(p.name) for p in params if not p.trainable and len(p.shape) >= 2}
    return [n for n in names if owner_of(n) not in frozen_matrix_owners]


def ratio_summary(params: Sequence[Param]) -> tuple[dict[str, float], dict[str, float]]:
    """The median and the largest floored update ratio of each trainable parameter (NaN when none is finite)."""
    medians, peaks = {}, {}
    for p in params:
        if p.trainable:
            vals = [r for r in p.floored_ratios() if math.isfinite(r)]
            medians[p.name] = float(np.median(vals)) if vals else float("nan")
            peaks[p.name] = max(vals, default=float("nan"))
    return medians, peaks


# -- the check -----------------------------------------------------------------------------------------------
@dataclass
class ParamUpdates(Check):
    id = "param_updates"
    title = "Every parameter gets a gradient and moves"
    what = """From the {train_steps} steps of the shared training probe (the user's optimizer and learning rate):
    which trainable parameters the optimizer does not hold, which never receive a gradient (in a module that runs
    in the forward pass: the gradient path is cut; in a module that never runs: an unused module), which never move
    (weight matrices, and any parameter whose gradient is exactly zero at every step), and which layers are frozen
    (requires_grad=False). Every frozen weight of {min_entries} entries or more is read for its initialization from
    its values alone: its top singular value against that of its own entries shuffled (an i.i.d. matrix of the same
    values: the Marchenko-Pastur edge, measured), the kurtosis of its entries (1.8 for a uniform draw, 3 for a
    Gaussian one), their mean and their std against the standard inits for its shape (PyTorch's default, Kaiming,
    Xavier, LeCun, normal(0, 0.02) as in Hugging Face, normal(0, 0.01), normal(0, 1) for embeddings). It is still
    a fresh random draw when its top singular value is within {random_spike:g} fluctuation units of its shuffled
    entries', its mean within {random_sigmas:g} standard errors of zero, and its std and kurtosis those of one
    standard init (the std within {random_scale:.0%} plus {random_sigmas:g} standard errors, the kurtosis from
    {random_low_sigmas:g} standard errors below to {random_sigmas:g} above the init's uniform or Gaussian draws);
    it carries learned structure (pretrained) when its top singular value is {structured_spike:g} units or more
    above, or its kurtosis {heavy_tails:g} standard errors or more above a Gaussian's. Fails on the first three
    and on frozen weights still at their random initialization, wherever they sit; warns on unused modules and on
    layers frozen between or after trainable ones that hold a frozen tensor of two or more dimensions that reads as
    neither; frozen scalars and vectors, frozen layers before the first trainable one (a frozen backbone) and frozen
    pretrained weights (fine-tuning) are notes. Per parameter, the update-to-weight ratio
    ||w_after - w_before|| / ||w_before|| (median over the measured steps), judged on weight matrices: a warning
    when the median is below {low_ratio:g} or above {high_ratio:g}, or when a single step's ratio is above
    {rewrite_ratio:g}. A matrix below {low_ratio:g} is flagged when the model as a whole is that slow (the median
    over its weight matrices is below it too: the learning rate is too low for all of them) or when it lags that
    median by more than {lag_ratio:g}x; one that is merely slower than the rest in a model that trains is not. A weight matrix initialised below the standard scale is measured against the norm of that
    scale; zero-initialised ones are not judged."""
    why = """A parameter that the loss depends on but the optimizer does not hold (a module created after the
    optimizer, a param group that forgot it) or whose gradient path is cut (.detach(), .data, torch.no_grad(),
    an argmax or integer cast in the forward) silently stays at its initial value. A frozen layer in the middle of
    a trainable stack is usually a leftover from a fine-tuning recipe; a frozen layer that was never trained (a loop
    meant to freeze a pretrained backbone that froze the new head too, a stem frozen by mistake in a model trained
    from scratch) stays a random projection forever, and nothing else in training reveals it. The update/weight
    ratio says whether the learning rate fits the parameters' scale: about {cs231n_ratio:g} is healthy; far below,
    the weights barely change; far above, each step rewrites them."""
    todo = """Create the optimizer after the model is complete and pass it model.parameters() (or check the param
    groups); remove .detach()/.data/no_grad from the forward path; delete unused modules or pass
    find_unused_parameters where intended; set requires_grad=True on layers meant to train, or load the pretrained
    weights meant to be frozen (a fixed random projection by design, such as random features or a random target
    network, is the exception: ignore the failure there). For a ratio far from
    {cs231n_ratio:g}, tune the learning rate (see lr_range)."""
    sources = (
        "CS231n, 'Neural Networks Part 3: Learning and Evaluation', ratio of weights:updates: 'a rough heuristic is "
        "that this ratio should be somewhere around 1e-3. If it is lower than this then the learning rate might be "
        "too low. If it is higher then the learning rate is likely too high'",
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): verify that every parameter gets a gradient "
        "and trains",
        "Thresholds 1e-5 and 1e-1: two orders of magnitude either side of CS231n's 1e-3; Adam's first steps move "
        "each weight by about the learning rate, so lr 1e-3 on weights of std 0.02-0.1 gives 1e-2-5e-2, inside",
        "V. Marchenko, L. Pastur (1967): the singular values of an i.i.d. matrix fill a bulk with a sharp edge, "
        "whose fluctuations shrink as (m n)^(-1/3) (Tracy-Widom); C. Martin, M. Mahoney, 'Implicit "
        "Self-Regularization in Deep Neural Networks' (JMLR 2021): trained weight matrices have spikes beyond the "
        "edge and heavy tails",
        "Calibration of the random-init reading (python benchmarks/frozen_init.py): 1,140 fresh draws (nn.Linear, "
        "Conv2d, Embedding with and without padding_idx, LSTM, GRU, MultiheadAttention defaults; Kaiming, Xavier, "
        "orthogonal, normal(0, 0.02), truncated normal(0, 0.02), normal(0, 0.01); shapes 4x64 to 30522x128) all "
        "read as random: spike at most 1.28 units, kurtosis -3.1 to +3.5 standard errors from its init's draws, "
        "mean within 3.5. The layers of MLPs trained 300-1000 steps (Adam 1e-3 and 3e-3, SGD with momentum) read "
        "as learned structure (hidden layers: spikes of 4-22 units) or as 'cannot tell' (heads, first layers: their "
        "kurtosis and mean moved off any init's), none as random; a sinusoidal position table, an identity, a DCT, "
        "a Sobel filter bank, low-rank plus noise and Student-t weights do not read as random either. Small layers "
        "that barely moved in a short training can (an 8x64 head, a 64x16 first layer on 16 independent features, "
        "an N(0, 1) embedding at Adam 1e-3): the reading is meant for pretrained weights, trained long",
    )
    constants = {"train_steps": TRAIN_STEPS, "cs231n_ratio": CS231N_RATIO}

    low_ratio: float = threshold(1e-5, "warn when a weight matrix's median update/weight ratio is below this")
    high_ratio: float = threshold(1e-1, "warn when it is above this")
    lag_ratio: float = threshold(100.0, "a weight matrix below low_ratio in a model whose median ratio is above "
                                        "it is flagged only when it is this many times below that median (a layer "
                                        "left behind, not one that is merely slower: a squeeze-excite layer under "
                                        "RMSprop moves about 15x slower than the rest of a healthy MobileNetV3)")
    rewrite_ratio: float = threshold(1.0, "warn when a single measured step of a weight matrix changes it by more "
                                          "than this fraction of its norm (the median hides this when the weights "
                                          "blow up and the ratio falls as they grow). Ratios of a weight matrix "
                                          "initialised below the standard scale are taken against the norm of that "
                                          "scale (std 1/sqrt(3 max(fan_in, fan_out)))")
    min_entries: int = threshold(256, "frozen weights with fewer entries are not read for their initialization: too "
                                      "few values to tell a fresh draw from a trained weight")
    random_spike: float = threshold(1.5, "a frozen weight is still a fresh random draw only if its top singular value "
                                         "exceeds that of its own entries shuffled by less than this many units of "
                                         "the edge's fluctuation scale (m n)^(-1/3) (fresh draws measured: at most "
                                         "1.28)")
    random_sigmas: float = threshold(5.0, "... and its entries' kurtosis is at most this many standard errors above "
                                          "a uniform draw's 1.8 or a Gaussian's 3 (as the init allows), their mean "
                                          "within this many of 0, and their std within random_scale plus this many "
                                          "standard errors of that init's")
    random_scale: float = threshold(0.1, "the fraction by which a fresh draw's std may differ from the standard "
                                         "init's, beyond its sampling error")
    structured_spike: float = threshold(4.0, "a frozen weight carries learned structure (a pretrained layer, frozen "
                                             "as in fine-tuning: a note) when its top singular value exceeds its "
                                             "shuffled entries' by this many units or more")
    heavy_tails: float = threshold(10.0, "... or when its entries' kurtosis is above a Gaussian's 3 by this many "
                                         "standard errors or more (trained weights grow heavy tails)")
    random_low_sigmas: float = threshold(3.5, "the kurtosis of a fresh draw may fall this many standard errors below "
                                              "1.8 or 3 (its lower tail is short: 2.2-2.8 at the 0.1% quantile over "
                                              "256-4096 entries, where the upper reaches 3.1-4.6; fresh draws "
                                              "measured: -3.1 to +3.5)")

    # -- measure ------------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> UpdatesMeasured:
        probe = session.evidence("train_probe")
        model = session.model
        named = list(model.named_parameters())
        if not probe.param_names:
            return UpdatesMeasured(tuple(Param(n, tuple(p.shape), trainable=False) for n, p in named), probe.lr)
        called = {id(module_at(model, n)) for n in session.evidence("call_order")}
        index = {n: i for i, n in enumerate(probe.param_names)}
        return UpdatesMeasured(tuple(self._param(model, probe, n, p, index.get(n), called) for n, p in named),
                               probe.lr, probe.closure)

    def _param(self, model: "nn.Module", probe: TrainProbe, name: str, p: "nn.Parameter", i: Optional[int],
               called: set[int]) -> Param:
        """The record of one parameter (``i``: its index in the probe, None when it is frozen)."""
        owner = module_at(model, owner_of(name))
        matrix = is_weight_matrix(model, name)
        where = dict(name=name, shape=tuple(p.shape), matrix=matrix, called=id(owner) in called,
                     leaf=not list(owner.children()))
        if i is None:
            read = p.numel() >= self.min_entries and p.is_floating_point()
            return Param(**where, trainable=False, init=init_fit(p.detach()) if read else None)
        return Param(**where, zero_init=matrix and float(p.detach().float().norm()) == 0.0,
                     reference=reference_norm(tuple(p.shape)) if matrix else 0.0,
                     in_optimizer=name not in probe.not_in_optimizer, got_grad=name not in probe.no_grad,
                     grad_always_zero=all(row[i] == 0.0 for row in probe.param_grad_norms),
                     ratios=tuple(row[i] for row in probe.update_ratios),
                     weight_norms=tuple(row[i] for row in probe.weight_norms))

    # -- judge --------------------------------------------------------------------------------------------
    def findings(self, m: UpdatesMeasured) -> Findings:
        """What is wrong with which parameter, under this check's thresholds (pure)."""
        params = m.params
        not_in_opt, cut, unused = missing(params)
        random_init, structured = self.frozen_by_init(params)
        sandwiched, suffix, prefix = frozen_layout(params)
        constants = frozen_constants(params, sandwiched + suffix)
        read = set(random_init) | set(structured) | set(constants)
        ratios, peaks = ratio_summary(params)
        zero_init = sorted(p.name for p in params if p.trainable and p.zero_init)
        judged = {p.name: ratios[p.name] for p in params
                  if p.trainable and p.matrix and not p.zero_init and p.got_grad and p.in_optimizer
                  and math.isfinite(ratios[p.name]) and ratios[p.name] > 0 and not m.closure}
        return Findings(
            trainable=sum(p.trainable for p in params), frozen=sum(not p.trainable for p in params),
            not_in_opt=not_in_opt, cut=cut, unused=unused, still=still(params),
            sandwiched=[n for n in sandwiched if n not in read], suffix=[n for n in suffix if n not in read],
            prefix=[n for n in prefix if n not in random_init], constants=constants,
            zero_init=zero_init, random_init=random_init, structured=[n for n in structured if n not in prefix],
            ratios=ratios, peaks=peaks, judged=judged, reads={p.name: p for p in params if p.init is not None},
            low=self.lagging(judged),
            high=[n for n, r in judged.items() if r > self.high_ratio or peaks[n] > self.rewrite_ratio])

    def lagging(self, judged: dict[str, float]) -> list[str]:
        """The weight matrices whose ratio is below low_ratio, when all of them are that slow (median below it) or
        when the matrix lags the median by more than lag_ratio."""
        median = float(np.median(list(judged.values()))) if judged else float("nan")
        return [n for n, r in judged.items()
                if r < self.low_ratio and (median < self.low_ratio or r * self.lag_ratio < median)]

    def init_reading(self, p: Param) -> tuple[str, Optional[Init]]:
        """What a frozen weight's values say: 'random' (still a fresh draw of a standard init, with that init),
        'structured' (learned: pretrained), or '' (cannot tell, or not read)."""
        fit = p.init
        if fit is None or fit.entries < self.min_entries:
            return "", None
        if fit.spike_z >= self.structured_spike or fit.kurtosis_z("Gaussian") >= self.heavy_tails:
            return "structured", None
        if (fit.distinct is not None and fit.distinct < DISTINCT_MIN) or fit.spike_z >= self.random_spike or \
                fit.mean_z > self.random_sigmas:
            return "", None
        shape = p.shape[1:] if len(p.shape) > 2 and p.shape[0] == 1 else p.shape  # a (1, N, D) table is N x D
        init = init_match(fit, shape, self.random_scale, self.random_low_sigmas, self.random_sigmas)
        return ("random" if init is not None else ""), init

    def frozen_by_init(self, params: Sequence[Param]) -> tuple[list[str], list[str]]:
        """Frozen parameters of layers whose frozen weight is still a fresh random draw (with that layer's other
        frozen parameters, its bias), and of layers whose frozen weight carries learned structure."""
        kinds = {p.name: self.init_reading(p)[0] for p in params if not p.trainable}
        owners = {k: {owner_of(n) for n, v in kinds.items() if v == k} - {""} for k in ("random", "structured")}
        owners["structured"] -= owners["random"]
        random_init = [n for n, v in kinds.items() if v == "random" or owner_of(n) in owners["random"]]
        structured = [n for n, v in kinds.items() if n not in random_init and
                      (v == "structured" or owner_of(n) in owners["structured"])]
        return random_init, structured

    def judge(self, m: UpdatesMeasured) -> Judgment:
        f = self.findings(m)
        if not f.trainable:
            return Judgment(Status.FAIL, f"no trainable parameter: all {len(m.params)} parameters have "
                                         f"requires_grad=False",
                            ("Set requires_grad=True on the layers meant to train.",))
        fails, warns = self._failures(f), self._warnings(f, m.lr)
        advice = tuple(a for _, a in fails + warns)
        tail = f"; median update/weight {fmt.small(f.ratio_median)}" if f.ratio_median is not None else ""
        if fails:
            return Judgment(Status.FAIL, "; ".join(s for s, _ in fails) + tail, advice)
        if warns:
            return Judgment(Status.WARN, "; ".join(s for s, _ in warns) + tail, advice)
        return Judgment(Status.PASS, self._pass_summary(f), advice)

    def _pass_summary(self, f: Findings) -> str:
        """'all 6 trainable parameters get a gradient and move; median update/weight 0.03, within [1e-05, 0.1]
        around CS231n's ~1e-3' (the citation only beside a measured ratio)."""
        every = "the 1 trainable parameter gets a gradient and moves" if f.trainable == 1 else \
            f"all {f.trainable} trainable parameters get a gradient and move"
        if f.ratio_median is None:
            return every
        return (f"{every}; median update/weight {fmt.small(f.ratio_median)}, within [{fmt.lr(self.low_ratio)}, "
                f"{fmt.lr(self.high_ratio)}] around {CS231N_NAMED}")

    def _failures(self, f: Findings) -> list[tuple[str, str]]:
        """(summary, advice) of each failure: parameters that cannot train."""
        out = []
        if f.not_in_opt:
            out.append((f"{len(f.not_in_opt)} parameter(s) get a gradient but are not in the optimizer",
                        f"Not in the optimizer, so never updated although the loss depends on them: "
                        f"{grouped(f.not_in_opt)}. Build the optimizer from model.parameters() after the model is "
                        f"complete, or add them to a param group."))
        if f.cut:
            out.append((f"{len(f.cut)} parameter(s) in modules that run get no gradient",
                        f"These layers run in the forward pass but receive no gradient: the path to the loss is "
                        f"cut (.detach(), .data, torch.no_grad(), argmax/round or an integer cast after them): "
                        f"{grouped(f.cut)}."))
        if f.still:
            out.append((f"{len(f.still)} parameter(s) never move",
                        f"These get a gradient and are in the optimizer but did not change over the probe "
                        f"(gradient exactly zero, or a param group with lr 0): {grouped(f.still)}."))
        if f.random_init:
            weights = [n for n in f.random_init if n in f.reads]
            their = "its" if len(weights) == 1 else "their"
            out.append((f"{_frozen_weights(len(weights))} still at {their} random initialization: "
                        f"{grouped(f.random_init, 3)}",
                        f"Frozen (requires_grad=False) and never trained: {grouped(f.random_init)}. Each still reads "
                        f"as a fresh random draw: {fmt.listed([self._init_text(f.reads[n]) for n in weights], 3)}. A "
                        f"frozen layer that was never trained stays a random projection for the whole run. Set "
                        f"requires_grad=True on it (a loop meant to freeze a pretrained backbone may have frozen the "
                        f"new head or the stem too), or load the pretrained weights meant to be frozen; a fixed "
                        f"random projection by design (random features, a random target network) is the exception."))
        return out

    def _warnings(self, f: Findings, lr: Optional[float]) -> list[tuple[str, str]]:
        """(summary, advice) of each warning: parameters that may be left out on purpose, and ratios far off."""
        out = []
        if f.unused:
            out.append((f"{len(f.unused)} parameter(s) of modules never called in the forward pass",
                        f"Unused: never called in the forward pass, so they get no gradient: {grouped(f.unused)}. "
                        f"Delete them if they are leftovers (a head from another task); if they are meant to "
                        f"be used, the forward skips them."))
        if f.sandwiched or f.suffix:
            frozen = f.sandwiched + f.suffix
            where = "between trainable layers" if f.sandwiched else "after the last trainable layer"
            out.append((f"{len(frozen)} frozen parameter(s) {where}",
                        f"requires_grad=False {where}: {grouped(frozen)}. Freezing a backbone prefix is common in "
                        f"fine-tuning; a frozen layer in the middle or at the end of a trained stack is usually "
                        f"a leftover. Set requires_grad=True if it should train."))
        return out + self._ratio_warnings(f, lr)

    def _ratio_warnings(self, f: Findings, lr: Optional[float]) -> list[tuple[str, str]]:
        out = []
        if f.low:
            out.append((f"{_matrices(len(f.low))} with update/weight below {fmt.lr(self.low_ratio)}",
                        f"Update/weight ratio below {fmt.lr(self.low_ratio)} ({CS231N}): "
                        f"{_ratios_text(f.low, f)}; the learning rate ({fmt.lr(lr)}) is too low for them."))
        if f.high:
            out.append((f"{_matrices(len(f.high))} with update/weight above {fmt.lr(self.high_ratio)} (median) or "
                        f"{fmt.lr(self.rewrite_ratio)} (one step)",
                        f"Update/weight ratio too high ({CS231N}): {_ratios_text(f.high, f)}; each step rewrites "
                        f"these weights: lower the learning rate ({fmt.lr(lr)}) or check their init scale."))
        return out

    # -- present ------------------------------------------------------------------------------------------
    def present(self, m: UpdatesMeasured, judgment: Judgment) -> CheckResult:
        f = self.findings(m)
        if not f.trainable:
            return self.result(judgment.status, judgment.summary, metrics={"trainable": 0, "frozen": len(m.params)},
                               advice=judgment.advice)
        table = Table("parameters", "Parameters: gradient, optimizer, update/weight ratio (median over steps)",
                      ("parameter", "shape", "requires_grad", "in optimizer", "got grad", "update/weight",
                       "judged", "verdict"), self._rows(m, f))
        tables = (table, self._frozen_table(f)) if f.reads else (table,)
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(m, f), advice=judgment.advice,
                           notes=self._notes(f, m.closure), tables=tables, plots=(self._plot(f),))

    def _frozen_table(self, f: Findings) -> Table:
        """Each frozen weight read for its initialization, with the statistics the reading rests on."""
        readings = {"random": "fresh random draw", "structured": "learned structure", "": "cannot tell"}
        return Table("frozen", "Frozen weights: a fresh random draw or trained? (spike: top singular value over "
                               "that of the same entries shuffled)",
                     ("parameter", "entries", "spike", "spike units", "kurtosis", "|mean| (s.e.)", "std",
                      "init it matches", "its std", "reading"),
                     [self._frozen_row(p, readings) for p in f.reads.values()])

    def _frozen_row(self, p: Param, readings: dict[str, str]) -> tuple:
        x, (kind, init) = p.init, self.init_reading(p)
        return (p.name, x.entries, x.spike, x.spike_z, x.kurtosis, x.mean_z, x.std, init.name if init else None,
                init.std if init else None, readings[kind])

    def _init_text(self, p: Param) -> str:
        """Why a frozen weight reads as a fresh random draw, for people."""
        fit, init = p.init, self.init_reading(p)[1]
        shape = "uniform" if "uniform" in init.shapes and abs(fit.kurtosis_z("uniform")) < abs(
            fit.kurtosis_z("Gaussian")) else "Gaussian"
        return (f"{display(p.name, '')} has std {fmt.num(fit.std, 3)} against {fmt.num(init.std, 3)} for "
                f"{INIT_NAMES.get(init.name, init.name)}, {shape} entries (kurtosis {fmt.num(fit.kurtosis, 3)}) "
                f"and a top singular value {fmt.num(fit.spike, 3)}x that of its own entries shuffled (no learned "
                f"structure)")

    @staticmethod
    def _metrics(m: UpdatesMeasured, f: Findings) -> dict:
        judged = f.judged.values()
        return {
            "trainable": f.trainable, "frozen": f.frozen, "not_in_optimizer": len(f.not_in_opt),
            "no_grad_path": len(f.cut), "unused": len(f.unused), "never_moved": len(f.still),
            "frozen_between_trainable": len(f.sandwiched), "frozen_after_trainable": len(f.suffix),
            "frozen_prefix": len(f.prefix), "frozen_random_init": len(f.random_init),
            "frozen_pretrained": len(f.structured), "ratio_median": f.ratio_median,
            "ratio_min": min(judged) if judged else None, "ratio_max": max(judged) if judged else None,
            "ratio_low": len(f.low), "ratio_high": len(f.high), "lr": m.lr,
            "ratio_peak": max((f.peaks[n] for n in f.judged), default=None),
        }

    @staticmethod
    def _notes(f: Findings, closure: bool = False) -> tuple[str, ...]:
        notes = []
        if closure:
            notes.append("a closure optimizer (LBFGS): each step is a line search over many evaluations, not an "
                         "update of about lr x gradient, so update/weight ratios are shown but not judged against "
                         "CS231n's ~1e-3")
        if f.constants:
            notes.append(f"{len(f.constants)} frozen scalar/vector parameter(s) among trainable layers (constants "
                         f"by design, such as a fixed temperature or frozen norm scales): {grouped(f.constants)}")
        if f.prefix:
            notes.append(f"{len(f.prefix)} frozen parameters before the first trainable layer (a frozen backbone, "
                         f"as in fine-tuning): {grouped(f.prefix)}")
        if f.structured:
            notes.append(f"{len(f.structured)} frozen parameters between or after trainable layers carry learned "
                         f"structure (pretrained layers, frozen as in fine-tuning): {grouped(f.structured)}")
        if f.zero_init:
            notes.append(f"zero-initialised parameters have no meaningful update/weight ratio: {grouped(f.zero_init)}")
        return tuple(notes)

    def _verdict_of(self, p: Param, f: Findings, labels: dict[str, str]) -> str:
        """The table's verdict on one parameter."""
        if p.name in labels:
            return labels[p.name]
        if not p.trainable:
            return "frozen"
        if p.name in f.judged:
            r = f.judged[p.name]
            return "low" if r < self.low_ratio else "high" if r > self.high_ratio else "ok"
        return "ok (not judged)"

    def _rows(self, m: UpdatesMeasured, f: Findings) -> list[tuple]:
        labels = {**{n: "not in optimizer" for n in f.not_in_opt}, **{n: "gradient path cut" for n in f.cut},
                  **{n: "unused module" for n in f.unused}, **{n: "never moves" for n in f.still},
                  **{n: "frozen (between/after trainable layers)" for n in f.sandwiched + f.suffix},
                  **{n: "frozen at its random init" for n in f.random_init},
                  **{n: "frozen (pretrained)" for n in f.structured}}
        return [(p.name, "x".join(map(str, p.shape)) or "scalar", p.trainable,
                 p.in_optimizer if p.trainable else None, p.got_grad if p.trainable else None, f.ratios.get(p.name),
                 p.name in f.judged, self._verdict_of(p, f, labels)) for p in m.params]

    def _plot(self, f: Findings) -> Plot:
        names = list(f.judged) or [n for n, r in f.ratios.items() if math.isfinite(r) and r > 0]
        return Plot("ratios", "Update/weight ratio per weight matrix (median over the probe's steps)", "bar",
                    (Series("update/weight", tuple(names), tuple(f.ratios[n] for n in names)),), x_label="parameter",
                    y_label="||dw|| / ||w||", log_y=True,
                    markers=(Marker(f"low {fmt.lr(self.low_ratio)}", self.low_ratio, "y"),
                             Marker("CS231n 1e-3", CS231N_RATIO, "y"),
                             Marker(f"high {fmt.lr(self.high_ratio)}", self.high_ratio, "y")))


def _matrices(n: int) -> str:
    return fmt.plural(n, "weight matrix", "weight matrices")


def _frozen_weights(n: int) -> str:
    return fmt.plural(n, "frozen weight")


def _ratios_text(names: Sequence[str], f: Findings) -> str:
    """'fc.weight 0.12 (max 1.3), ...': the median and largest update ratio of each named weight matrix."""
    return fmt.listed([f"{display(n, '')} {fmt.small(f.judged[n])} (max {fmt.small(f.peaks[n])})" for n in names], 6)
