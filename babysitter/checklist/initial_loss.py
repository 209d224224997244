"""initial_loss: is the loss at initialization what chance predicts?"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from ..analysis import fmt
from ..analysis.loss import expected_text, reference_losses
from ..analysis.status import Status
from ..passes.init_pass import INIT_BATCHES
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: values of the outputs (or probabilities) kept for the histogram
SAMPLE = 20000


def _zero_inputs_hook(module, args, kwargs):
    zero = lambda v: torch.zeros_like(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa
    return tuple(zero(a) for a in args), {k: zero(v) for k, v in kwargs.items()}


def _has_float_input(args, kwargs) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in (*args, *kwargs.values()))


@dataclass(frozen=True)
class InitMeasured:
    """The loss at initialization beside what chance predicts for the loss in use."""

    observed: float  # the user's loss, mean over the pass's batches
    refs: Mapping[str, Any]  # reference_losses: chance, prior, classes, prior_bias, target_mean, ...
    family: str
    how: str  # how the loss was recognised
    classification: bool
    expected: str  # what chance means for this loss, for people ('ln 10 = 2.303')
    scale: float  # the user's loss over its mean-reduced reference (N for a sum)
    summed: bool
    output_std: float
    batches: int
    zeroed: Optional[float] = None  # the loss with every floating-point input zeroed
    sample: tuple[float, ...] = ()  # predicted probabilities (classification) or outputs, for the histogram
    target_sample: tuple[float, ...] = ()  # the targets beside the outputs (regression)
    notes: tuple[str, ...] = ()

    @property
    def chance(self) -> float:
        return self.refs["chance"]

    @property
    def prior(self) -> float:
        return self.refs.get("prior", self.refs["chance"])


@dataclass
class InitialLoss(Check):
    id = "initial_loss"
    title = "Loss at initialization"
    what = """One forward and backward pass at initialization (train mode) on the first {init_batches} batches;
    the observed loss is their mean. It is compared with what chance predicts for the loss in use: ln C for
    C-class cross-entropy (and the entropy of the label prior), ln 2 per output for binary cross-entropy (and the
    entropy of the positive rate), Var(y) for MSE and the mean absolute deviation from the median for L1. A
    classifier warns above {warn_ratio:g}x chance, fails above {fail_ratio:g}x, and warns below {below_ratio:.0%}
    of the lower of chance and the label prior. A regressor warns and fails at the same ratios to Var(y); when
    the outputs' mean is off the targets' (the loss of that mean above {warn_ratio:g}x Var(y): an offset the final
    bias removes in its first steps), only what the outputs' spread adds to the loss of their mean counts.
    A loss summed over the batch (reduction='sum', recognised by doubling on the batch repeated twice) fails.
    Imbalanced labels (the prior's loss below {imbalance_ratio:.0%} of chance) get the final-layer bias that
    starts at the prior. The loss with every floating-point input zeroed is reported beside it."""
    why = """A freshly initialised network should be maximally unsure: logits near zero give exactly the chance
    loss. A much higher loss means the initial outputs are far too large (an over-scaled final layer, a wrong
    init), which wastes the first part of training and can saturate units; a summed loss makes the gradient scale
    with batch size, so a learning rate tuned at one batch size diverges at another; a loss far below chance at
    step 0 means the answer leaks into the inputs or the loss is mis-specified."""
    todo = """Scale the final layer down (or zero it), use the default or Xavier/Kaiming init, use reduction='mean';
    with imbalanced labels set the final-layer bias to the log of the class prior (the report gives the values);
    for regression standardize the targets or set the final bias to their mean."""
    constants = {"init_batches": INIT_BATCHES}
    sources = (
        "CS231n, 'Babysitting the learning process': look for the correct loss at chance performance (ln 10 for "
        "CIFAR-10 softmax)",
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): verify loss @ init; init well (final-layer "
        "bias to the label prior or target mean)",
        "Thresholds: with logits of standard deviation s the expected cross-entropy exceeds ln C by about s^2/2, "
        "so 1.5x chance corresponds to logits of std ~1.5-2 and 2.5x to ~3 or more",
    )

    warn_ratio: float = threshold(1.5, "warn when the observed loss exceeds the chance loss by this factor")
    fail_ratio: float = threshold(2.5, "fail when it exceeds it by this factor (for regression: Var(y) plus what the "
                                       "outputs' spread adds to the loss of their own mean, against Var(y))")
    below_ratio: float = threshold(0.5, "warn when the observed loss is below this fraction of the lowest "
                                        "reference (the label prior): better than chance before training")
    imbalance_ratio: float = threshold(0.85, "advise a prior-matching final bias when the prior's loss is below "
                                             "this fraction of the chance loss")

    # -- measure --------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> InitMeasured:
        ev = session.evidence("init_pass")
        outputs, targets = ev.outputs[0], ev.targets[0]
        facts = session.evidence("loss_facts")
        if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            self.skip(self._not_tensors(session, outputs, targets, facts.summed))
        model = facts.model
        if model is None:
            self.skip(f"{facts.unknown}: the loss at chance of a loss it does not know is unknown, so the loss at "
                      f"initialization has nothing to be compared with")
        all_targets = torch.cat([t for t in ev.targets if isinstance(t, torch.Tensor)])
        all_outputs = torch.cat([o for o in ev.outputs if isinstance(o, torch.Tensor)]).float()
        all_targets = all_targets[:all_outputs.shape[0]]
        refs = reference_losses(model, all_outputs, all_targets)
        measured = InitMeasured(
            observed=ev.loss, refs=refs, family=model.family, how=model.how, classification=model.classification,
            expected=expected_text(model, refs), scale=facts.scale or 1.0, summed=facts.summed,
            output_std=float(all_outputs.std()) if all_outputs.numel() > 1 else 0.0, batches=len(ev.losses))
        if not math.isfinite(measured.observed):
            return measured
        zeroed, notes = self._zeroed_input_loss(session)
        sample, target_sample = self._samples(model.family, all_outputs, all_targets)
        return dataclasses.replace(measured, zeroed=zeroed, sample=sample, target_sample=target_sample, notes=notes)

    @staticmethod
    def _not_tensors(session: "Session", outputs: Any, targets: Any, summed: bool) -> str:
        """Why outputs that are not one tensor (a VAE's (reconstruction, mu, logvar)) cannot be judged."""
        parts = list(outputs.values()) if isinstance(outputs, dict) else list(outputs) \
            if isinstance(outputs, (tuple, list)) else [outputs]
        shapes = ", ".join(str(tuple(p.shape)) if isinstance(p, torch.Tensor) else type(p).__name__ for p in parts)
        name = getattr(session.loss_fn, "__qualname__", None) or type(session.loss_fn).__name__
        what = f"the outputs are a {type(outputs).__name__} of {len(parts)} ({shapes})" \
            if isinstance(outputs, (tuple, list, dict)) else f"the outputs are a {type(outputs).__name__}"
        if not isinstance(targets, torch.Tensor):
            what += f" and the targets a {type(targets).__name__}"
        reason = (f"{what}, which the loss ({name}) takes whole: a loss of its own (such as a VAE's reconstruction "
                  f"plus KL term), whose value at chance is unknown, so the loss at initialization has nothing to be "
                  f"compared with")
        if summed:
            reason += ("; it is summed over the batch (it doubles on the batch repeated twice), as PyTorch's VAE "
                       "example sums its ELBO: keep the learning rate tuned at this batch size")
        return reason + ". If the outputs hold logits that a standard loss reads, a forward(model, batch) returning " \
                        "(logits, targets) lets this check judge them"

    @staticmethod
    def _samples(family: str, outputs: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The predicted probabilities (classification) or the outputs and the targets (regression), for the
        histogram."""
        if family in ("ce", "nll"):
            probs = outputs.softmax(1) if family == "ce" else outputs.exp()
            return tuple(probs.movedim(1, -1).reshape(-1)[:SAMPLE].tolist()), ()
        if family in ("bce_logits", "bce"):
            probs = outputs.sigmoid() if family == "bce_logits" else outputs
            return tuple(probs.reshape(-1)[:SAMPLE].tolist()), ()
        return tuple(outputs.reshape(-1)[:SAMPLE].tolist()), tuple(targets.float().reshape(-1)[:SAMPLE].tolist())

    @staticmethod
    def _zeroed_input_loss(session: "Session") -> tuple[Optional[float], tuple[str, ...]]:
        """The loss on the first batch with every floating-point input zeroed: the input-independent baseline
        (None without a floating-point input, or with a note when the model cannot take zeroed inputs)."""
        batch = session.batch(0)
        seen = {}

        def probe(module, args, kwargs):
            seen["float"] = _has_float_input(args, kwargs)
            return _zero_inputs_hook(module, args, kwargs)

        handle = session.model.register_forward_pre_hook(probe, with_kwargs=True)
        try:
            session.model.train()
            with torch.no_grad():
                loss, _, _ = session.forward_loss(batch)
        except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as exc:  # user code on zeros
            return None, (f"zeroed-input loss unavailable: {type(exc).__name__}: {exc}",)
        finally:
            handle.remove()
            session.reset()
        return (float(loss) if seen.get("float") else None), ()

    # -- judge --------------------------------------------------------------------------------------
    def judge(self, measured: InitMeasured) -> Judgment:
        m = measured
        if not math.isfinite(m.observed):
            return Judgment(Status.FAIL, f"the loss at initialization is {m.observed}: not finite before any step",
                            ("see the nonfinite check for the first module that produced it",))
        if m.summed:
            status, summary, advice = self._judge_summed(m)
        elif m.classification:
            status, summary, advice = self._judge_classification(m)
        else:
            status, summary, advice = self._judge_regression(m)
        return Judgment(status, summary, advice + self._prior_advice(m, status))

    @staticmethod
    def _judge_summed(m: InitMeasured) -> tuple[Status, str, tuple[str, ...]]:
        each = "per example" if m.classification and m.family in ("ce", "nll") else "per output"
        summary = (f"loss is summed over the batch (reduction='sum'): {fmt.num(m.observed)} = {round(m.scale)} x "
                   f"{fmt.num(m.observed / m.scale)} {each}; expected ~{fmt.num(m.chance)} ({m.expected})")
        return Status.FAIL, summary, (
            "Use reduction='mean' (the default): with a summed loss the gradient grows with the batch size, so a "
            "learning rate tuned at one batch size diverges at another.",)

    def _judge_classification(self, m: InitMeasured) -> tuple[Status, str, tuple[str, ...]]:
        observed, chance = fmt.num(m.observed), fmt.num(m.chance)
        ratio = m.observed / m.chance if m.chance > 0 else 0.0
        if ratio > self.fail_ratio:
            return Status.FAIL, f"loss at init {observed} is {fmt.ratio(ratio)} chance {chance} ({m.expected})", (
                f"The initial outputs are far too large (logit std {fmt.num(m.output_std, 3)}): scale the final "
                f"layer's weights down (x0.01, or zero them), check for a missing normalization or an init with too "
                f"large a std.",)
        if ratio > self.warn_ratio:
            return Status.WARN, f"loss at init {observed} is {fmt.ratio(ratio)} chance {chance} ({m.expected})", (
                "The initial predictions are overconfident: shrink the final layer's init so the logits start near "
                "zero.",)
        if m.observed < self.below_ratio * min(m.prior, m.chance):
            return (Status.WARN, f"loss at init {observed} is below chance {chance} and the prior {fmt.num(m.prior)}",
                    ("A loss far below chance before any training usually means the targets leak into the inputs, "
                     "or the loss gets outputs of the wrong kind (NLLLoss needs log-probabilities: apply "
                     "log_softmax; BCELoss needs probabilities).",))
        return Status.PASS, f"loss at init {observed} matches chance {chance} ({m.expected})", ()

    def _judge_regression(self, m: InitMeasured) -> tuple[Status, str, tuple[str, ...]]:
        # an offset between the outputs' mean and the targets' (uncentred targets against outputs near 0, a
        # sigmoid's 0.5) is what the final bias removes in its first steps, not a fault: the loss is judged by
        # what the outputs' spread adds to the loss of their own mean, against Var(y)
        var, constant = m.chance, m.refs.get("constant", m.chance)
        offset = constant > self.warn_ratio * var
        ratio = (var + max(m.observed - constant, 0.0) if offset else m.observed) / max(var, 1e-12)
        advice = (f"The initial outputs average off the targets (target mean {fmt.num(m.refs['target_mean'])}, "
                  f"std {fmt.num(m.refs['target_std'])}): standardize the targets, or initialise the final bias "
                  f"to their mean, so training does not spend its first steps on the offset.",) if offset else ()
        observed = fmt.num(m.observed)
        spread = f" (Var(y) plus what the outputs' spread adds to the loss of their mean {fmt.num(constant)})" \
            if offset else ""
        if ratio > self.fail_ratio:
            return Status.FAIL, f"loss at init {observed} is {fmt.ratio(ratio)} Var(y) {fmt.num(var)}{spread}", \
                advice + ("The initial outputs vary much more than the targets: scale the final layer down or "
                          "check the init of the layers before it.",)
        if ratio > self.warn_ratio:
            return Status.WARN, f"loss at init {observed} is {fmt.ratio(ratio)} {m.expected}{spread}", \
                advice + ("The initial outputs vary more than the targets: shrink the final layer's init.",)
        if offset:
            return Status.PASS, (f"loss at init {observed} is that of the outputs' mean {fmt.num(constant)}, off "
                                 f"the targets' mean; the outputs' spread matches {m.expected}"), advice
        return Status.PASS, f"loss at init {observed} is close to {m.expected}", advice

    def _prior_advice(self, m: InitMeasured, status: Status) -> tuple[str, ...]:
        """Imbalanced labels: the final bias that starts training at the prior's loss."""
        if not m.classification or m.prior >= self.imbalance_ratio * m.chance or status == Status.FAIL:
            return ()
        prior, chance = fmt.num(m.prior), fmt.num(m.chance)
        return (f"Labels are imbalanced (prior loss {prior} vs chance {chance}): initialise the final layer's "
                f"bias to the log prior {m.refs['prior_bias'][:10]} so training starts at {prior} instead of "
                f"spending its first steps learning the class frequencies.",)

    # -- present ------------------------------------------------------------------------------------
    def present(self, measured: InitMeasured, judgment: Judgment) -> CheckResult:
        m = measured
        if not math.isfinite(m.observed):
            return self.result(judgment.status, judgment.summary, metrics={"observed": m.observed,
                                                                           "expected": m.chance},
                               advice=judgment.advice)
        table = Table("references", "Loss references", ("reference", "loss"), self._rows(m))
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(m), advice=judgment.advice,
                           tables=(table,), plots=(self._plot(m),), notes=m.notes)

    @staticmethod
    def _metrics(m: InitMeasured) -> dict[str, Any]:
        metrics = {"observed": m.observed, "expected": m.chance, "loss_family": m.family, "recognised": m.how,
                   "reduction_scale": m.scale, "output_std": m.output_std,
                   "ratio": m.observed / m.chance if m.chance > 0 else None, "batches": m.batches}
        metrics.update({k: v for k, v in m.refs.items() if k not in ("chance", "prior")})
        if "prior" in m.refs:
            metrics["expected_prior"] = m.prior
        if m.zeroed is not None:
            metrics["zeroed_input_loss"] = m.zeroed
        return metrics

    @staticmethod
    def _rows(m: InitMeasured) -> list[tuple[str, float]]:
        rows = [("observed at init", m.observed), ("chance (uniform / mean prediction)", m.chance)]
        if "prior" in m.refs:
            rows.append(("label prior (bias = log prior)", m.refs["prior"]))
        if "zero" in m.refs:
            rows.append(("zero prediction (E[y^2])", m.refs["zero"]))
        if m.zeroed is not None:
            rows.append(("observed with inputs zeroed", m.zeroed))
        return rows

    @staticmethod
    def _plot(m: InitMeasured) -> Plot:
        if m.family in ("ce", "nll"):
            c = m.refs["classes"]
            return Plot("probabilities", "Predicted class probabilities at init", "hist",
                        (Series("p(class)", (), m.sample),), x_label="probability", y_label="count",
                        markers=(Marker(f"1/C = {fmt.num(1 / c, 3)}", 1 / c),))
        if m.family in ("bce_logits", "bce"):
            return Plot("probabilities", "Predicted probabilities at init", "hist",
                        (Series("p(positive)", (), m.sample),), x_label="probability", y_label="count",
                        markers=(Marker("0.5", 0.5), Marker("positive rate", m.refs["positive_rate"])))
        return Plot("outputs", "Outputs at init against the targets", "hist",
                    (Series("outputs", (), m.sample), Series("targets", (), m.target_sample)),
                    x_label="value", y_label="count")
