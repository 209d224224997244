"""overfit_batch: with regularization off, can the model drive the loss on a tiny subset to about zero?

measure trains on the subset (the user's LR, then lr_range's suggestion when that failed) and keeps plain data of
each attempt: its losses, the reference and floor they are measured against, and what the last outputs show (in
[0, 1], summing to one, the same for every example); judge reads those attempts and ranks the likely causes
without touching the model.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..analysis import fmt
from ..analysis.activations import DEAD_LAYER, DEAD_UNIT, RECTIFIER, of_family
from ..analysis.batches import batch_size_of, concat_batches, named_tensors, slice_batch, to_device
from ..analysis.loss import LossModel, accuracy, bce_floor, constant_loss, loss_floor, soft_targets
from ..analysis.lr_curve import LrReading
from ..analysis.status import Status
from ..optim import OptimizerGroup, group_scales, set_lr, zero_decay
from ..passes.stepper import Stepper
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: outputs that differ from the first example's by less than this fraction of their largest magnitude are the
#: same for every example: the output ignores the input
SAME_OUTPUT_SPREAD = 1e-5
#: outputs whose sum over dimension 1 is within this of 1 for every example are probabilities
SUMS_TO_ONE = 1e-3
#: losses whose targets are real numbers (a regression)
REGRESSION = ("mse", "l1")
#: outputs that are never negative against at least this fraction of negative targets cannot fit them
NEGATIVE_TARGETS = 0.05
#: a loss that ends above this multiple of its start diverged
DIVERGED_RISE = 1.5
#: an attempt whose best loss kept more than this fraction of its excess barely moved
BARELY_MOVED = 0.9
#: without a suggestion from lr_range, the user's LR times these is tried (when its loss did not blow up)
RETRY_MULTIPLES = (10, 100)

_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
             torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout}


class _NoDropout(TorchFunctionMode):
    """Dropout as the identity, wherever it is called from: modules, ``F.dropout(x, p, self.training)`` in a
    user's forward, and attention dropout (``training=False`` only switches dropout off there). BatchNorm
    keeps its training mode."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUTS:
            return args[0] if args else kwargs["input"]
        if func is F.scaled_dot_product_attention:
            if len(args) > 4:
                args = args[:4] + (0.0,) + args[5:]
            kwargs = {**kwargs, "dropout_p": 0.0} if "dropout_p" in kwargs or len(args) <= 4 else kwargs
        elif func is F.multi_head_attention_forward:
            kwargs = {**kwargs, "training": False}
        return func(*args, **kwargs)


@contextlib.contextmanager
def regularization_off(model: nn.Module):
    """Dropout off (recurrent layers' inter-layer dropout included) for the block; everything is put back."""
    patched = []
    try:
        for m in model.modules():
            if isinstance(m, nn.RNNBase) and m.dropout:
                patched.append((m, m.dropout))
                m.dropout = 0.0
        with _NoDropout():
            yield
    finally:
        for m, p in patched:
            m.dropout = p


#: PyTorch's warning when an element-wise loss broadcasts targets of another shape against the outputs
BROADCAST = re.compile(r"Using a target size \(.*\) that is different to the input size")


# -- the subset and what can be said of its outputs --------------------------------------------------
class Subset(NamedTuple):
    """The tiny subset as one batch (on the session's device), its number of examples, what was assumed to cut it
    ('' when the batch's tensors share one leading dimension, the batch dimension), and whether it is whole
    batches (then the loss alone decides: see :func:`whole_batches`)."""

    batch: Any
    examples: int
    note: str = ""
    whole: bool = False


def one_prediction_each(targets: Any, examples: int) -> bool:
    """Whether the loss compares one prediction per example (a label each), so that the subset's accuracy can be
    asked to reach ``min_accuracy``; targets with several per example (next tokens flattened with time, pixels)
    include some that the inputs may not determine, and the loss alone decides."""
    return isinstance(targets, torch.Tensor) and targets.shape[:1] == (examples,) and \
        (targets.ndim == 1 or targets.dtype.is_floating_point and targets.ndim == 2)


def tiny_subset(session: "Session", examples: int) -> Subset:
    """The first ``examples`` examples of the pool as one batch. When the batch's tensors do not share one
    leading dimension (sequence-first ``(T, B)`` inputs with ``(T*B,)`` targets), nothing is sliced: see
    :func:`whole_batches`."""
    if len({t.shape[0] for _, t in named_tensors(session.pool[0]) if t.ndim}) > 1:
        return whole_batches(session, examples)
    taken, n = [], 0
    for b in session.pool:
        taken.append(b)
        n += batch_size_of(b) or 0
        if n >= examples:
            break
    batch = concat_batches(taken) if len(taken) > 1 else taken[0]
    n = batch_size_of(batch) or 0
    if n > examples:
        batch = slice_batch(batch, slice(0, examples), n)
        n = examples
    return Subset(to_device(batch, session.device), n)


def whole_batches(session: "Session", examples: int) -> Subset:
    """The first whole batch, and the next ones while fewer than ``examples`` target rows are taken and the
    batches concatenate consistently (along dimension 0, the forward and loss run, and the target rows add up);
    the examples are the targets' rows (the outputs the loss compares). 100% accuracy is not asked of whole
    batches: rows of a sequence batch can share their context (the first position of each sequence sees one
    token) and differ in target, so the loss alone decides."""
    taken, rows = [session.pool[0]], _target_rows(session, [session.pool[0]])
    for nxt in list(session.pool)[1:]:
        if rows is None or rows >= examples:
            break
        more, both = _target_rows(session, [nxt]), _target_rows(session, taken + [nxt])
        if more is None or both != rows + more:
            break
        taken.append(nxt)
        rows = both
    batch = concat_batches(taken) if len(taken) > 1 else taken[0]
    n = rows if rows is not None else batch_size_of(batch) or 0
    shapes = ", ".join(f"{path} {tuple(t.shape)}" for path, t in named_tensors(session.pool[0], "batch"))
    which = "the first whole batch" if len(taken) == 1 else \
        f"the first {len(taken)} whole batches, concatenated along dimension 0,"
    return Subset(to_device(batch, session.device), n,
                  f"the batch's tensors do not share a leading dimension ({shapes}): nothing is sliced, the subset "
                  f"is {which} of {fmt.plural(n, 'target row')}; the loss alone decides (rows of whole sequence "
                  f"batches can share their context and differ in target: 100% accuracy is not asked)", True)


def _target_rows(session: "Session", batches: list) -> Optional[int]:
    """The leading dimension of the targets the forward gives for ``batches`` concatenated (no gradient), or None
    when they do not concatenate, or the forward or the loss fails on them."""
    try:
        batch = to_device(concat_batches(batches) if len(batches) > 1 else batches[0], session.device)
        with torch.no_grad():
            loss, _, targets = session.forward_loss(batch)
    except Exception:  # an inconsistent concatenation: the caller keeps the batches it has
        return None
    return batch_size_of(targets) if isinstance(loss, torch.Tensor) else None


@dataclass(frozen=True)
class OutputFacts:
    """What the ranked causes need to know of the outputs of an attempt's last step."""

    per_example: int = 1  # values per example
    classes: Optional[int] = None  # the size of dimension 1 (None below two dimensions)
    in_unit: bool = False  # every output in [0, 1] (two or more dimensions)
    sums_to_one: bool = False  # every example's outputs sum to 1 over dimension 1 (two or more dimensions)
    spread: Optional[float] = None  # largest |output - first example's| over the largest |output| (2+ examples)
    never_negative: bool = False  # every output >= 0 (a final ReLU, softplus, sigmoid, exp)
    negative_targets: float = 0.0  # the fraction of float targets below zero


def output_facts(outputs: Any, targets: Any = None) -> Optional[OutputFacts]:
    """The facts of a tensor of outputs (None when the outputs are not one tensor)."""
    if not isinstance(outputs, torch.Tensor):
        return None
    o = outputs.detach().float()
    facts: dict[str, Any] = {"per_example": o[0].numel() if o.ndim >= 1 else 1, "never_negative": bool((o >= 0).all())}
    if isinstance(targets, torch.Tensor) and targets.is_floating_point() and targets.numel():
        facts["negative_targets"] = float((targets.detach() < 0).float().mean())
    if o.ndim >= 2:
        facts.update(classes=int(o.shape[1]), in_unit=bool(((o >= 0) & (o <= 1)).all()),
                     sums_to_one=bool(((o.sum(1) - 1).abs() < SUMS_TO_ONE).all()))
    if o.ndim >= 1 and o.shape[0] > 1:
        flat = o.reshape(o.shape[0], -1)
        facts["spread"] = float((flat - flat[:1]).abs().max()) / max(float(flat.abs().max()), 1e-12)
    return OutputFacts(**facts)


@dataclass(frozen=True)
class Attempt:
    """One training run on the subset at one LR, as plain data."""

    lr: Optional[float]
    why_lr: str
    losses: tuple[float, ...]
    best: float
    start: float
    reduction: float  # (best - floor) / (reference - floor)
    accuracy: Optional[float]
    passed: bool
    steps: int
    floor: float = 0.0
    reference: float = math.nan  # the loss reductions are measured from: min(start, constant prediction's loss)
    family: Optional[str] = None
    decay: tuple[str, ...] = ()
    outputs: Optional[OutputFacts] = None  # of the last step's outputs
    floor_known: bool = True  # False for a loss babysitter does not know: then the fall is judged, not the floor
    soft_floor: Optional[tuple[float, float]] = None  # a BCE's floor on soft targets: (summed, per element)

    @property
    def fall(self) -> float:
        """How far the best loss fell below the start, as a fraction of the start's magnitude (NaN when unknown)."""
        return fall_of(self.start, self.best)

    @property
    def diverged(self) -> bool:
        """A non-finite loss, or one that ended well above its start."""
        return not math.isfinite(self.best) or any(not math.isfinite(v) for v in self.losses) or \
            self.losses[-1] > DIVERGED_RISE * self.start


@dataclass(frozen=True)
class OverfitMeasured:
    """The attempts on the subset, in the order they were run, and what the judgment reads beside them."""

    examples: int
    attempts: tuple[Attempt, ...]
    parameters: int  # trainable parameters
    reading: Optional[LrReading] = None  # lr_range's reading, read when the user's LR failed
    notes: tuple[str, ...] = ()
    step: tuple[str, ...] = ()  # the parts of the user's step each training step on the subset kept
    left_out: tuple[str, ...] = ()  # the parts it left out: 'scheduler' (the probe sets the LR), 'accumulate 4'
    loss_only: bool = False  # the user's step function returns only the loss: no outputs, no accuracy
    warnings: tuple[str, ...] = ()  # what torch warned while the user's LR trained the subset, each once
    dead: tuple[tuple[str, float], ...] = ()  # rectifier layers mostly dead at init: (name, dead fraction)
    whole: bool = False  # whole batches were taken: the examples counted are the targets' rows

    @property
    def subset(self) -> str:
        """'32 examples', or '320 target rows' for whole sequence batches (rows of (T*B) flattened targets)."""
        return f"{self.examples} {'target rows' if self.whole else 'examples'}"

    @property
    def final(self) -> Attempt:
        """The attempt that passed, or else the one that got furthest."""
        return next((x for x in self.attempts if x.passed), None) or min(
            self.attempts, key=lambda x: x.reduction if math.isfinite(x.reduction) else math.inf)


def fall_of(start: float, best: float) -> float:
    """(start - best) / |start|: the fraction of its start a loss fell by (NaN for a non-finite or zero start)."""
    if not (math.isfinite(start) and math.isfinite(best)) or start == 0:
        return math.nan
    return (start - best) / abs(start)


def soft_target_floor(outputs: Any, targets: Any) -> Optional[tuple[float, float]]:
    """For soft targets (values in [0, 1], not all 0 or 1: grey levels) beside an output of as many values in
    [0, 1] (a reconstruction, alone or in a tuple with other outputs), the floor a binary cross-entropy between
    them would have: the targets' entropy, summed and per element. None otherwise."""
    if not soft_targets(targets):
        return None
    parts = outputs.values() if isinstance(outputs, dict) else outputs if isinstance(outputs, (tuple, list)) \
        else (outputs,)
    for o in parts:
        if isinstance(o, torch.Tensor) and o.numel() == targets.numel() and bool(((o >= 0) & (o <= 1)).all()):
            return bce_floor(targets, "sum"), bce_floor(targets, "mean")
    return None


def _soft_floor(session: "Session", outputs: Any, targets: Any) -> Optional[tuple[float, float]]:
    """``soft_target_floor`` of the subset, averaged over the ranks under torchrun (every rank's subset counts)."""
    floor = soft_target_floor(outputs, targets)
    summed, mean = session.ranks.mean_floats(*(floor or (None, None)))
    return None if floor is None else (summed, mean)


class Cause(NamedTuple):
    """A likely cause of a failure, with a score in [0, 1] from the evidence."""

    score: float
    cause: str
    evidence: str


@dataclass(frozen=True)
class OverfitJudgment(Judgment):
    """The judgment with the likely causes, ranked (on failure)."""

    causes: tuple[Cause, ...] = ()


@dataclass
class _Progress:
    """One attempt's training so far (device losses until the end)."""

    losses: list = field(default_factory=list)
    accuracy: Any = None  # at the last read of the loss
    family: Optional[str] = None
    floor: float = 0.0
    reference: float = math.nan
    passed: bool = False
    steps: int = 0
    outputs: Optional[OutputFacts] = None
    exact: bool = True  # 100% accuracy asked (examples sliced from batches), or the loss alone (whole batches)
    floor_known: bool = True
    soft_floor: Optional[tuple[float, float]] = None


# -- the check --------------------------------------------------------------------------------------
@dataclass
class OverfitBatch(Check):
    id = "overfit_batch"
    title = "Overfit a tiny subset"
    what = """Trains on a tiny fixed subset (the first {examples} examples by default) with regularization off
    (dropout inactive, including functional, attention and recurrent dropout, while BatchNorm keeps training
    statistics; weight decay set to zero), with the user's optimizer class and LR and the user's kind of step (their
    clipping, autocast, GradScaler, closure optimizer or step function; their LR scheduler left out, since the check
    sets the LR, and accumulation moot: the subset is fed once per step), for {max_steps} full-subset steps
    (continued up to {extend_to} while the loss's excess over its floor still falls by {extend_progress:.0%} per
    {extend_window} steps), stopping early once it passes. When that does not get there, lr_range's reading is used:
    its suggestion (which replaces an LR it judged unusable) and then the top of its good range are tried with the
    same budget, or, when the sweep gives no suggestion, {retry_low}x and {retry_high}x the user's LR (unless its
    loss blew up); each only while no attempt has passed and only if it differs from every LR tried by more than
    {retry_factor:g}x. The report says which LR was used and why. Passes when the loss falls to {pass_fraction:.0%}
    of its excess over the lowest reachable loss (zero, or the entropy left by label smoothing or soft labels, and
    for binary cross-entropy on soft targets such as grey levels, their entropy), measured from the start or, when
    lower, from the loss of the best prediction that ignores the input (the class frequencies, the target mean),
    and, for classification with one label per example, when at least {min_accuracy:.0%} of the subset's examples
    are classified right (every one of a subset of fewer than 100); with several predictions per example (next
    tokens flattened with time, pixels), some of which the inputs may not determine, the loss alone decides and the
    accuracy is reported. When the batch's tensors do not share a leading dimension (sequence-first (T, B) inputs
    with (T*B,) targets), nothing is sliced: whole batches are taken, and the loss alone decides; so it does for a
    step function, which returns only the loss (one that trains several optimizers, a GAN, is skipped). A loss
    babysitter does not know (a function of its own, such as a VAE's summed reconstruction plus KL term, which
    cannot approach zero) has an unknown floor: the subset is trained for the whole {max_steps} steps and passes
    when the best loss fell by at least {unknown_fall:.0%} of its start; the report says that the verdict is about
    the fall, and, for soft targets beside an output in [0, 1], gives the floor a binary cross-entropy on them would
    have. On failure the likely causes are ranked by the evidence."""
    why = """A network that cannot memorise a few dozen examples will not learn the data set: the bug is in the
    model, the loss or the optimizer, and no amount of training fixes it. It is the cheapest test that the whole
    pipeline can learn at all (softmax fed into CrossEntropyLoss, an output that ignores its input, a frozen or
    mis-wired layer, an LR far off all show here)."""
    todo = """Follow the ranked causes: remove a softmax/sigmoid before CrossEntropyLoss/BCEWithLogitsLoss (they
    take raw logits); check that the input reaches the output (a detached tensor, a constant, a wrong variable);
    use an LR inside lr_range's range; make the model larger if it is very small."""
    constants = {"retry_low": RETRY_MULTIPLES[0], "retry_high": RETRY_MULTIPLES[1]}
    sources = (
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): overfit one batch, verify that you can reach "
        "the lowest achievable loss (e.g. zero)",
        "CS231n, 'Babysitting the learning process': overfit a tiny subset of 20 examples with regularization off; "
        "you should reach a loss of about zero and 100% training accuracy",
        "Threshold: a softmax before CrossEntropyLoss bounds the loss below by ln(1 + (C-1)/e), 45-65% of ln C for "
        "2 to 10 classes, and an output that ignores its input stays near the label entropy (~100%), while a model "
        "that can learn goes below 10% of its start in a few dozen steps on 32 examples",
        "Threshold unknown_fall: the PyTorch VAE example (shrunk to 64-32-8, Adam 1e-3, summed ELBO) on 8x8 "
        "grey-level images fell 47% of its start in 200 steps on 32 examples, never near zero (the targets' entropy "
        "alone is 25% of the start); with its reconstruction detached, 0.8% at its LR and at 10x and 100x it: a "
        "loss whose main term gets no gradient keeps about all of its start",
    )

    examples: int = threshold(32, "examples in the tiny subset (the first of the data)")
    max_steps: int = threshold(200, "step budget (full-subset steps); training stops early once the test passes")
    pass_fraction: float = threshold(0.1, "pass when (loss - floor) falls to this fraction of (reference - floor), "
                                          "the reference being the start or, when lower, the loss of the best "
                                          "prediction that ignores the input (the target mean, the class prior)")
    min_accuracy: float = threshold(0.99, "classification with one label per example passes only when at least "
                                          "this fraction of the subset's examples is classified right as well: with "
                                          "fewer than 100 examples that is all of them (CS231n's 100% training "
                                          "accuracy). Several predictions per example (a language model's next "
                                          "tokens) may include some no input determines: the loss alone decides")
    min_constant_excess: float = threshold(1e-4, "use the best constant prediction's loss as the reference only "
                                                 "when its excess over the floor is at least this fraction of the "
                                                 "start's (a subset of one class or one value keeps the start)")
    check_every: int = threshold(10, "steps between reads of the loss on the host (early stop)")
    extend_to: int = threshold(800, "past max_steps, keep training up to this many steps while the loss is still "
                                    "falling: a slow but healthy model (an autoencoder through a sigmoid) is not a "
                                    "model that cannot learn; the faults this check is for (a softmax before the "
                                    "loss, an output that ignores its input) plateau above the pass level")
    extend_window: int = threshold(100, "steps over which progress is measured past max_steps")
    extend_progress: float = threshold(0.2, "keep going past max_steps while the excess loss over the floor fell by "
                                            "at least this fraction over the last extend_window steps")
    unknown_fall: float = threshold(0.1, "a loss babysitter does not know (a custom function, such as a VAE's summed "
                                         "ELBO) has an unknown floor: it is trained for max_steps and passes when "
                                         "its best value fell by at least this fraction of its start (of its "
                                         "magnitude, for a loss that starts below zero); less is a loss stuck near "
                                         "its start")
    retry_factor: float = threshold(3.0, "when the user's LR failed, retry at lr_range's suggestion and at the top of "
                                         "its range, each only if it differs from every LR tried by this factor")

    # -- measure: the attempts ---------------------------------------------------------------------
    def measure(self, session: "Session") -> OverfitMeasured:
        params = [p for p in session.model.parameters() if p.requires_grad]
        if not params:
            self.skip("the model has no trainable parameter")
        step = self._step_facts(session)
        subset = tiny_subset(session, self.examples)
        user_lr = session.user_lr
        why = f"your LR {fmt.lr(user_lr)}" if user_lr is not None else "the optimizer's own LR"
        with warnings.catch_warnings(record=True) as seen:  # what torch says while the subset trains
            warnings.simplefilter("always")
            attempts = [self._attempt(session, subset, user_lr, why)]
        reading, notes = None, (subset.note,) if subset.note else ()
        # lr_range's reading is needed only when the user's LR failed (in a full checklist it is computed once
        # anyway); its suggestion is tried when it differs enough
        if not attempts[0].passed:
            reading, more = self._lr_reading(session)
            notes += more
            self._retry(session, subset, reading, attempts)
        dead = self._dead_layers(session) if not attempts[-1].passed else ()
        return OverfitMeasured(examples=subset.examples, attempts=tuple(attempts), reading=reading, notes=notes,
                               dead=dead, whole=subset.whole,
                               parameters=sum(p.numel() for p in params),
                               warnings=tuple(dict.fromkeys(" ".join(str(w.message).split()) for w in seen)), **step)

    @staticmethod
    def _dead_layers(session: "Session") -> tuple[tuple[str, float], ...]:
        """Rectifier layers with more than DEAD_LAYER of their units dead at initialization (the shared pass)."""
        layers = of_family(session.evidence("init_pass").instruments.get("activations"), RECTIFIER)
        fractions = ((layer.name, layer.dead_units(DEAD_UNIT) / max(layer.units, 1)) for layer in layers)
        return tuple((name, frac) for name, frac in fractions if frac > DEAD_LAYER)

    def _step_facts(self, session: "Session") -> dict:
        """Which parts of the user's step the attempts keep (a stepper as theirs, read, not run); a step function
        training several optimizers is skipped."""
        stepper = Stepper(session, session.make_optimizer(), scheduler=False)
        if stepper.custom is not None and isinstance(stepper.optimizer, OptimizerGroup):
            self.skip(f"your step function trains {len(stepper.optimizer.optimizers)} optimizers (a GAN's players): "
                      f"the loss it returns need not fall toward 0 (a game has no such floor), so overfitting it "
                      f"tests nothing; overfit each network with a target of its own")
        kept = stepper.kept()
        moot = tuple(p for p in kept if p.startswith("accumulate"))
        return dict(step=tuple(p for p in kept if p not in moot), loss_only=stepper.custom is not None,
                    left_out=("scheduler",) * stepper.scheduler_declared + moot)

    @staticmethod
    def _lr_reading(session: "Session") -> tuple[Optional[LrReading], tuple[str, ...]]:
        """lr_range's reading (None when its sweep was skipped), or None with a note saying why it is missing."""
        try:
            sweep = session.evidence("lr_sweep")
            return (None if sweep.skipped else session.evidence("lr_reading")), ()
        except Exception as exc:  # the sweep's own error is lr_range's to report; here it only means no retry
            return None, (f"lr_range's reading unavailable, so no retry at its suggestion: "
                          f"{type(exc).__name__}: {exc}",)

    def _retry(self, session: "Session", subset: Subset, reading: Optional[LrReading], attempts: list[Attempt]
               ) -> None:
        """Retry at lr_range's LRs until one passes, skipping an LR within ``retry_factor`` of one tried."""
        for lr, why in self._retry_lrs(reading, attempts[0]):
            if any(x.passed for x in attempts):
                break
            tried = [x.lr for x in attempts if x.lr]
            if all(abs(math.log(lr / t)) > math.log(self.retry_factor) for t in tried):
                attempts.append(self._attempt(session, subset, lr, why))

    @staticmethod
    def _retry_lrs(reading: Optional[LrReading], first: Attempt) -> list[tuple[float, str]]:
        """LRs to retry at when the user's failed: lr_range's suggestion (the race's winner), the range test's own
        reading when the race moved it, then the top of its good range (the
        largest LR at which the sweep's loss was still at its lowest: memorising a few examples wants a large
        step). Without a suggestion (a flat sweep), RETRY_MULTIPLES times the user's LR when its loss did not
        blow up."""
        if reading is None or not reading.suggested_lr:
            blew_up = not all(math.isfinite(v) for v in first.losses) or first.losses[-1] > first.start
            if first.lr and not blew_up:
                return [(first.lr * k, f"{k}x your LR ({fmt.lr(first.lr * k)}; lr_range has no suggestion)")
                        for k in RETRY_MULTIPLES]
            return []
        unusable = f" (it judged your LR unusable: {reading.summary})" if reading.status == Status.FAIL else ""
        out = [(reading.suggested_lr, f"lr_range's suggestion {fmt.lr(reading.suggested_lr)}{unusable}")]
        if reading.range_lr and reading.range_lr != reading.suggested_lr:  # the race moved it: the curve's own too
            out.append((reading.range_lr, f"lr_range's range-test reading {fmt.lr(reading.range_lr)}"))
        if reading.lr_high:
            out.append((reading.lr_high, f"the top of lr_range's good range {fmt.lr(reading.lr_high)}"))
        return out

    def _attempt(self, session: "Session", subset: Subset, lr: Optional[float], why: str) -> Attempt:
        """Train from the user's state on the subset at ``lr`` (the optimizer's own when None), regularization off."""
        loss_model = session.evidence("loss_facts").model  # before training: computing it resets the model
        session.reset()
        model = session.model
        model.train()
        with regularization_off(model):
            optimizer = session.make_optimizer()
            decay = tuple(zero_decay(optimizer))
            if lr is not None:
                ref, scales = group_scales(optimizer)
                if ref and ref > 0:
                    set_lr(optimizer, lr, scales)
            run = self._train(session, subset, Stepper(session, optimizer, scheduler=False), loss_model)
        return self._finish(run, lr, why, decay)

    def _train(self, session: "Session", subset: Subset, stepper: Stepper, loss_model: Optional[LossModel]
               ) -> _Progress:
        """Full-subset steps of the user's kind (the subset fed once per step), the loss read on the host every
        ``check_every`` steps, until a pass, a non-finite loss, or the budget (extended while the loss still
        falls)."""
        run, out = _Progress(exact=not subset.whole), None
        for step in range(max(self.max_steps, self.extend_to)):
            out = stepper.step([subset.batch])
            if not out.trained:
                self.skip("the loss does not require grad: nothing can be trained")
            run.losses.append(out.loss.detach().float().reshape(()))
            run.steps = step + 1
            if step == 0:
                run.family, floor, constant = self._understand(session, loss_model, out.outputs, out.targets)
                run.floor, constant = session.ranks.mean_floats(floor, constant)  # under torchrun: every rank's
                run.reference = self._reference(float(run.losses[0]), run.floor, constant)
                run.floor_known = loss_model is not None
                run.soft_floor = None if run.floor_known else _soft_floor(session, out.outputs, out.targets)
                run.exact = run.exact and one_prediction_each(out.targets, subset.examples)
            if run.steps % self.check_every and run.steps != self.max_steps:
                continue
            if self._stop(session, run, out.outputs, out.targets):
                break
        run.outputs = output_facts(out.outputs, out.targets)
        return run

    def _stop(self, session: "Session", run: _Progress, outputs: Any, targets: Any) -> bool:
        """At a read of the loss: note the accuracy; stop on a non-finite loss, on a pass, or past max_steps once
        the loss no longer falls."""
        hits = accuracy(run.family, outputs.detach(), targets, getattr(session.loss_fn, "ignore_index", -100)) \
            if isinstance(outputs, torch.Tensor) else None
        run.accuracy = session.ranks.mean_floats(None if hits is None else float(hits))[0]
        now = float(run.losses[-1])
        if not math.isfinite(now):
            return True
        if not run.floor_known:  # no early stop: the whole budget, then the fall is judged
            run.passed = run.steps >= self.max_steps and self._fell_enough(run.losses)
            return run.steps >= self.max_steps
        red = (now - run.floor) / (run.reference - run.floor) if run.reference > run.floor else math.inf
        if red <= self.pass_fraction and (run.accuracy is None or not run.exact
                                          or float(run.accuracy) >= self.min_accuracy):
            run.passed = True
            return True
        return run.steps >= self.max_steps and not self._still_falling(run.losses, run.floor)

    @staticmethod
    def _finish(run: _Progress, lr: Optional[float], why: str, decay: tuple[str, ...]) -> Attempt:
        host = torch.stack(run.losses).cpu().tolist()
        finite = [v for v in host if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        ref, floor = run.reference, run.floor
        reduction = (best - floor) / (ref - floor) if ref > floor and finite else math.inf
        if not run.floor_known:  # the fraction of the start's magnitude the best loss kept
            fall = fall_of(host[0], best)
            reduction = 1.0 - fall if math.isfinite(fall) else math.inf
        return Attempt(lr=lr, why_lr=why, losses=tuple(host), best=best, start=host[0], reduction=reduction,
                       accuracy=None if run.accuracy is None else float(run.accuracy), passed=run.passed,
                       steps=run.steps, floor=floor, reference=ref, family=run.family, decay=decay,
                       outputs=run.outputs, floor_known=run.floor_known, soft_floor=run.soft_floor)

    def _fell_enough(self, losses: list) -> bool:
        """With an unknown floor: did the best loss fall by at least unknown_fall of the start's magnitude?"""
        host = torch.stack(losses).cpu()
        finite = host[torch.isfinite(host)]
        fall = fall_of(float(host[0]), float(finite.min())) if finite.numel() else math.nan
        return math.isfinite(fall) and fall >= self.unknown_fall

    def _still_falling(self, losses: list, floor: float) -> bool:
        """Past the budget: did the excess loss (best of the last few steps) fall by extend_progress over the last
        extend_window steps?"""
        w, k = self.extend_window, self.check_every
        if len(losses) < w + k:
            return False
        recent = torch.stack(losses[-w - k:]).cpu()
        before, now = float(recent[:k].min()) - floor, float(recent[-k:].min()) - floor
        return math.isfinite(now) and before > 0 and now <= (1 - self.extend_progress) * before

    @staticmethod
    def _understand(session: "Session", model: Optional[LossModel], outputs: Any, targets: Any
                    ) -> tuple[Optional[str], float, float]:
        """The loss family, the floor and the best constant prediction's loss on the subset."""
        if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            return None, 0.0, math.nan
        out = outputs.detach()
        family = model.family if model is not None else None
        return family, loss_floor(session.loss_fn, family, out, targets), constant_loss(session.loss_fn, model, out,
                                                                                        targets)

    def _reference(self, start: float, floor: float, constant: float) -> float:
        """What reductions are measured from: the start, or the loss of the best input-ignoring prediction when
        lower (uncentred regression targets, a class prior): learning the offset or the prior alone is no
        evidence that the input reaches the output. A subset that a constant already fits nearly to the floor
        keeps the start."""
        if math.isfinite(constant) and constant < start and \
                constant - floor > self.min_constant_excess * (start - floor):
            return constant
        return start

    # -- judge: pure, from the attempts ------------------------------------------------------------
    def judge(self, measured: OverfitMeasured) -> OverfitJudgment:
        final = measured.final
        if final.passed:
            return OverfitJudgment(Status.PASS, self._passed_summary(measured, final),
                                   self._slow_lr_advice(measured, final))
        causes = self.causes(measured)
        summary = self._failed_summary(measured, final)
        if causes:
            summary += f"; likely: {causes[0].cause}"
        return OverfitJudgment(Status.FAIL, summary, tuple(c.evidence for c in causes), causes=causes)

    @staticmethod
    def _accuracy_text(a: Attempt) -> str:
        return f", accuracy {fmt.pct(a.accuracy)}" if a.accuracy is not None else ""

    def _passed_summary(self, m: OverfitMeasured, final: Attempt) -> str:
        if not final.floor_known:
            return (f"loss on {m.subset} fell by {fmt.pct(final.fall)}, from {fmt.num(final.start)} to "
                    f"{fmt.num(final.best)}, in {final.steps} steps at {final.why_lr}; its floor is unknown (a loss "
                    f"babysitter does not know), so the verdict is about the fall, not about reaching ~0")
        return (f"loss on {m.subset} fell from {fmt.num(final.start)} to {fmt.num(final.best)} "
                f"({fmt.pct(max(final.reduction, 0.0), 1)} of its {self._ref_name(final)})"
                f"{self._accuracy_text(final)} in {final.steps} steps at {final.why_lr}")

    def _failed_summary(self, m: OverfitMeasured, final: Attempt) -> str:
        if not math.isfinite(final.start):
            return f"could not overfit {m.subset}: the loss is {final.start} from the first step"
        if not final.floor_known:
            return (f"the loss on {m.subset} barely fell: best {fmt.num(final.best)} is "
                    f"{fmt.pct(final.reduction, 1)} of its start {fmt.num(final.start)} after {final.steps} steps (its "
                    f"floor is unknown; a fall of {fmt.pct(self.unknown_fall)} was asked)")
        return (f"could not overfit {m.subset}: best loss {fmt.num(final.best)} is "
                f"{fmt.pct(final.reduction)} of its {self._ref_name(final)}{self._accuracy_text(final)} after "
                f"{final.steps} steps")

    @staticmethod
    def _slow_lr_advice(m: OverfitMeasured, final: Attempt) -> tuple[str, ...]:
        """When a retry passed where the user's LR did not."""
        first = m.attempts[0]
        if final is first:
            return ()
        clips = any(p.startswith("clip") for p in m.step)
        verdict = "your LR is slow for this" if not first.lr or not final.lr or final.lr > first.lr else \
            "your LR is too high for this" + ("" if clips else " (if your training clips the gradients, declare "
                                                               "it in the target's step)")
        return (f"At {first.why_lr} the subset was not fit in {first.steps} steps (loss {fmt.num(first.best)}, "
                f"{fmt.pct(first.reduction)} of its start); at {fmt.lr(final.lr)} it was: {verdict}, see "
                f"lr_range.",)

    @staticmethod
    def _ref_name(a: Attempt) -> str:
        if math.isfinite(a.reference) and a.reference < a.start:
            return (f"reference {fmt.num(a.reference)} (the loss of the best constant prediction, below the start "
                    f"{fmt.num(a.start)})")
        return f"start {fmt.num(a.start)}"

    def causes(self, measured: OverfitMeasured) -> tuple[Cause, ...]:
        """The likely causes of the final attempt's failure, best first."""
        final = measured.final
        if final.floor_known and math.isfinite(final.reduction) and final.reduction <= self.pass_fraction:
            return (Cause(0.9, "targets the inputs do not determine",
                          f"The loss fell to {fmt.pct(final.reduction)} of its {self._ref_name(final)}, but only "
                          f"{fmt.pct(final.accuracy, 1)} of the predictions are right (at least "
                          f"{fmt.pct(self.min_accuracy)} are asked): some inputs appear with different targets "
                          f"(duplicates with other labels, next tokens their prefix cannot determine). Check the "
                          f"labels of the examples still wrong; the model itself can fit."),)
        found = [*self._warned_causes(measured.warnings), *self._nonfinite_cause(final), *self._dead_cause(measured),
                 *self._output_causes(final, measured.examples),
                 *self._lr_causes(final, measured.reading), self._capacity_cause(final, measured),
                 *self._stuck_cause(measured)]
        found.sort(key=lambda c: -c.score)
        return tuple(Cause(round(c.score, 2), c.cause, c.evidence) for c in found)

    @staticmethod
    def _warned_causes(seen: tuple[str, ...]) -> list[Cause]:
        """What PyTorch said during training, when it names a fault: a loss that broadcast outputs against targets
        of another shape ((N, 1) against (N,) compares every output with every target)."""
        broadcast = [w for w in seen if BROADCAST.search(w)]
        if not broadcast:
            return []
        return [Cause(1.0, "outputs and targets of different shapes, broadcast by the loss",
                      f"PyTorch warned while the subset trained: '{broadcast[0]}'. The loss broadcast the outputs "
                      f"against the targets, so it compares every output with every target and no model can fit "
                      f"them: give both the same shape (outputs.squeeze(-1) for (N, 1) outputs against (N,) "
                      f"targets, or targets.unsqueeze(-1)).")]

    @staticmethod
    def _nonfinite_cause(final: Attempt) -> list[Cause]:
        """A loss that is NaN or Inf from the first step: no LR can fix it."""
        if math.isfinite(final.start):
            return []
        return [Cause(1.0, "the loss is not finite from the first step",
                      f"The loss was {final.start} before any update, at every LR tried: the data, the forward or "
                      f"the loss makes a NaN/Inf by itself (see nonfinite for where the first one appears).")]

    @staticmethod
    def _dead_cause(m: OverfitMeasured) -> list[Cause]:
        """Rectifier layers whose units are nearly all dead at initialization: no gradient reaches below them."""
        if not m.dead:
            return []
        named = fmt.listed([f"{name} ({fmt.pct(frac)})" for name, frac in m.dead])
        return [Cause(0.9, "dead units",
                      f"Most units of {named} never fire at initialization, so almost no gradient flows through "
                      f"them (see dead_relu: biases or inputs that push every unit negative).")]

    @staticmethod
    def _output_causes(final: Attempt, n: int) -> list[Cause]:
        """Probabilities fed to a loss that wants logits; the same output for every example."""
        o, family, out = final.outputs, final.family, []
        if o is None:
            return out
        if o.classes is not None and family == "ce" and o.in_unit and o.sums_to_one:
            out.append(Cause(1.0, "softmax fed into CrossEntropyLoss",
                             "The outputs are probabilities (non-negative, summing to 1 per example), but "
                             "CrossEntropyLoss applies log_softmax itself: remove the softmax from the model's "
                             "forward (keep it for inference only). The loss cannot fall below "
                             f"ln(1 + (C-1)/e) = {fmt.num(math.log(1 + (o.classes - 1) / math.e), 3)}."))
        elif o.classes is not None and family == "bce_logits" and o.in_unit:
            out.append(Cause(0.9, "sigmoid fed into BCEWithLogitsLoss",
                             "The outputs all lie in [0, 1]: BCEWithLogitsLoss applies the sigmoid itself; "
                             "remove the model's final sigmoid."))
        if family in REGRESSION and o.never_negative and o.negative_targets >= NEGATIVE_TARGETS:
            out.append(Cause(0.95, "outputs that cannot be negative, against negative targets",
                             f"Every output is >= 0 but {fmt.pct(o.negative_targets)} of the targets are negative: a "
                             f"final ReLU (or softplus, sigmoid, exp) bounds the outputs. Remove it for a regression "
                             f"over standardized targets, or keep the targets in the outputs' range."))
        if o.spread is not None and o.spread < SAME_OUTPUT_SPREAD:
            out.append(Cause(0.95, "the output ignores the input",
                             f"All {n} examples get the same output (relative spread {fmt.small(o.spread)}) after "
                             "training: the input does not reach the output (a detached or constant tensor, a wrong "
                             "variable in forward, a layer whose output is overwritten)."))
        return out

    @staticmethod
    def _lr_causes(final: Attempt, reading: Optional[LrReading]) -> list[Cause]:
        """An LR above lr_range's good range or one that diverged, an LR below it."""
        lr, diverged = final.lr, final.diverged
        if reading is None or not lr:
            return [Cause(0.8, "learning rate too high", f"The loss diverged at LR {fmt.lr(lr)}: lower the LR.")] \
                if diverged else []
        low, high = reading.lr_low, reading.lr_high
        if diverged or (high and lr > high):
            within = f"; lr_range's good range is [{fmt.lr(low)}, {fmt.lr(high)}]" if low else ""
            return [Cause(0.8 if diverged else 0.5, "learning rate too high",
                          f"At LR {fmt.lr(lr)} the loss {'diverged' if diverged else 'did not settle'}{within}: "
                          f"lower the LR.")]
        if low and lr < low:
            return [Cause(0.7 if final.reduction > BARELY_MOVED else 0.4, "learning rate too low",
                          f"At LR {fmt.lr(lr)} the loss barely moved; lr_range's good range starts at "
                          f"{fmt.lr(low)}: raise the LR.")]
        return []

    @staticmethod
    def _stuck_cause(m: OverfitMeasured) -> list[Cause]:
        """A loss babysitter does not know that kept nearly all of its start: its main term gets no gradient."""
        final = m.final
        if final.floor_known:
            return []
        every = " at every LR tried" if len(m.attempts) > 1 else ""
        return [Cause(0.75, "the loss's main term gets no gradient",
                      f"The loss kept {fmt.pct(final.reduction, 1)} of its start over {final.steps} steps{every}: the "
                      f"gradient of its main term does not reach the parameters (a .detach(), .data or "
                      f"torch.no_grad() between the model's output and the loss, a constant or frozen layer in the "
                      f"path: see param_updates), and at most a side term (a KL or regularization term) trains.")]

    @staticmethod
    def _capacity_cause(final: Attempt, m: OverfitMeasured) -> Cause:
        outputs = final.outputs.per_example if final.outputs is not None else 1
        small = m.parameters < m.examples * outputs
        return Cause(0.6 if small else 0.2, "too little capacity",
                     f"The model has {m.parameters} trainable parameters for {m.subset} x {outputs} "
                     "outputs" + (": fewer than the values to fit; make it wider or deeper." if small else
                                  "; if none of the causes above applies, try a wider or deeper model."))

    # -- present ------------------------------------------------------------------------------------
    def present(self, measured: OverfitMeasured, judgment: OverfitJudgment) -> CheckResult:
        final, attempts = measured.final, measured.attempts
        metrics = {"examples": measured.examples, "start_loss": final.start, "best_loss": final.best,
                   "floor": final.floor if final.floor_known else None, "floor_known": final.floor_known,
                   "fall": final.fall, "reduction": final.reduction, "accuracy": final.accuracy,
                   "steps": final.steps, "lr": final.lr, "lr_source": final.why_lr, "attempts": len(attempts)}
        tables = (self._attempts_table(attempts),)
        if judgment.status == Status.FAIL:
            metrics["likely_cause"] = judgment.causes[0].cause if judgment.causes else None
            tables += (Table("causes", "Likely causes, ranked", ("score", "cause", "evidence"), judgment.causes),)
        plots = (self._plot(attempts, self._pass_level(final)),)
        return self.result(judgment.status, judgment.summary, metrics=metrics, advice=judgment.advice,
                           tables=tables, plots=plots, notes=self._notes(measured, final))

    def _pass_level(self, final: Attempt) -> float:
        """The loss the final attempt had to reach (the plot's marker)."""
        if not final.floor_known:
            return final.start - self.unknown_fall * abs(final.start)
        return final.floor + self.pass_fraction * (final.reference - final.floor)

    @staticmethod
    def _floor_notes(final: Attempt) -> list[str]:
        """A loss babysitter does not know: why the fall is judged, and the floor a BCE on soft targets has."""
        if final.floor_known:
            return []
        notes = ["the loss is not one babysitter knows (not CrossEntropy, NLL, BCE, MSE or L1 on the model's "
                 "outputs: a custom function, such as a VAE's reconstruction plus KL term), so its lowest reachable "
                 "value is unknown: the subset is trained for the whole budget and the verdict is about how far the "
                 "loss fell, not about reaching ~0"]
        if final.soft_floor is not None:
            total, each = final.soft_floor
            notes.append(f"the targets are soft (values in [0, 1], not only 0 and 1: grey levels): a binary "
                         f"cross-entropy between them and the outputs cannot go below their entropy, "
                         f"{fmt.num(total)} summed over the subset ({fmt.num(each, 3)} per element); the best loss "
                         f"{fmt.num(final.best)} is {fmt.ratio(final.best / total)} that" if total > 0 else
                         "the targets are soft: a binary cross-entropy on them keeps their entropy")
        return notes

    @staticmethod
    def _notes(m: OverfitMeasured, final: Attempt) -> tuple[str, ...]:
        notes = ["weight decay set to zero for the probe: " + ", ".join(final.decay)] if final.decay else []
        notes += OverfitBatch._floor_notes(final)
        notes.append("dropout switched off (modules, F.dropout calls, attention and recurrent dropout); "
                     "BatchNorm kept in training mode")
        if m.warnings:
            notes.append("PyTorch warned while the subset trained: " + "; ".join(m.warnings[:4]))
        return tuple(notes) + OverfitBatch._step_notes(m) + m.notes

    @staticmethod
    def _step_notes(m: OverfitMeasured) -> tuple[str, ...]:
        """Which parts of the user's step the probe kept and left out."""
        notes = [f"each step on the subset was your step: {', '.join(m.step)}"] if m.step else []
        if "scheduler" in m.left_out:
            notes.append("your LR scheduler was left out: each attempt sets its LR itself and keeps it constant")
        notes += [f"{p} is moot on a fixed subset: each step feeds the whole subset once" for p in m.left_out
                  if p.startswith("accumulate")]
        if m.loss_only:
            notes.append("your step function returns only the loss: the accuracy and the outputs are unknown, so "
                         "the test reads the loss alone (its fall toward 0) and ranks no cause from the outputs")
        return tuple(notes)

    @staticmethod
    def _attempts_table(attempts: tuple[Attempt, ...]) -> Table:
        return Table("attempts", "Attempts", ("lr", "lr source", "steps", "start loss", "best loss", "reduction",
                                              "accuracy", "passed"),
                     [(x.lr, x.why_lr, x.steps, x.start, x.best, x.reduction, x.accuracy, x.passed) for x in attempts])

    @staticmethod
    def _plot(attempts: tuple[Attempt, ...], target: float) -> Plot:
        series = tuple(Series(f"LR {fmt.lr(a.lr)}" if a.lr else "LR (optimizer's)", tuple(range(1, len(a.losses) + 1)),
                              a.losses) for a in attempts)
        start = attempts[0].start
        markers = ()
        if math.isfinite(start):
            markers = (Marker("start", start, axis="y"),)
        if math.isfinite(target) and target > 0:
            markers += (Marker("pass level", target, axis="y"),)
        return Plot("loss_curve", "Loss on the tiny subset, regularization off", "line", series, x_label="step",
                    y_label="loss", log_y=all(v > 0 for a in attempts for v in a.losses if math.isfinite(v)),
                    markers=markers)
