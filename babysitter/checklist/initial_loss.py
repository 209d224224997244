"""initial_loss: is the loss at initialization what chance predicts?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.loss import LossModel, expected_text, reference_losses
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


def _zero_inputs_hook(module, args, kwargs):
    zero = lambda v: torch.zeros_like(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa
    return tuple(zero(a) for a in args), {k: zero(v) for k, v in kwargs.items()}


def _has_float_input(args, kwargs) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in (*args, *kwargs.values()))


@dataclass
class InitialLoss(Check):
    id = "initial_loss"
    title = "Loss at initialization"
    what = """One forward pass at initialization on real batches. The observed loss is compared with what chance
    predicts for the loss in use: ln C for C-class cross-entropy (and the entropy of the label prior), ln 2 per
    output for binary cross-entropy (and the entropy of the positive rate), Var(y) for MSE and the mean absolute
    deviation from the median for L1. A loss summed over the batch (reduction='sum') is recognised by its
    scaling with batch size. The loss with inputs zeroed is reported beside it."""
    why = """A freshly initialised network should be maximally unsure: logits near zero give exactly the chance
    loss. A much higher loss means the initial outputs are far too large (an over-scaled final layer, a wrong
    init), which wastes the first part of training and can saturate units; a summed loss makes the gradient scale
    with batch size, so a learning rate tuned at one batch size diverges at another; a loss far below chance at
    step 0 means the answer leaks into the inputs or the loss is mis-specified."""
    todo = """Scale the final layer down (or zero it), use the default or Xavier/Kaiming init, use reduction='mean';
    with imbalanced labels set the final-layer bias to the log of the class prior (the report gives the values);
    for regression standardize the targets or set the final bias to their mean."""
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

    def run(self, session):
        ev = session.evidence("init_pass")
        outputs, targets = ev.outputs[0], ev.targets[0]
        if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            self.skip(f"outputs or targets are not tensors (outputs: {type(outputs).__name__}, targets: "
                      f"{type(targets).__name__}); give a forward(model, batch) that returns (logits, targets)")
        facts = session.evidence("loss_facts")
        model = facts.model
        if model is None:
            self.skip(facts.unknown)
        all_targets = torch.cat([t for t in ev.targets if isinstance(t, torch.Tensor)])
        all_outputs = torch.cat([o for o in ev.outputs if isinstance(o, torch.Tensor)]).float()
        n_out = all_outputs.shape[0]
        refs = reference_losses(model, all_outputs, all_targets[:n_out])
        observed = ev.loss
        if not math.isfinite(observed):
            return self.result("fail", f"the loss at initialization is {observed}: not finite before any step",
                               metrics={"observed": observed, "expected": refs["chance"]},
                               advice=("see the nonfinite check for the first module that produced it",))
        # the user's loss against the mean-reduced reference on the same outputs: 1 for a mean, N for a sum
        scale = facts.scale or 1.0
        summed = facts.summed

        chance = refs["chance"]
        prior = refs.get("prior", chance)
        metrics = {"observed": observed, "expected": chance, "loss_family": model.family, "recognised": model.how,
                   "reduction_scale": scale, "output_std": float(all_outputs.std()) if all_outputs.numel() > 1 else 0.0,
                   "ratio": observed / chance if chance > 0 else None, "batches": len(ev.losses)}
        metrics.update({k: v for k, v in refs.items() if k not in ("chance", "prior")})
        if "prior" in refs:
            metrics["expected_prior"] = prior
        zeroed = self._zeroed_input_loss(session)
        if zeroed is not None:
            metrics["zeroed_input_loss"] = zeroed

        table = Table("references", "Loss references", ("reference", "loss"), self._rows(model, refs, observed, zeroed))
        plots = (self._plot(model, all_outputs, all_targets[:n_out], refs),)
        advice: list[str] = []
        ratio = metrics["ratio"] or 0.0
        what = expected_text(model, refs)

        if summed:
            status = "fail"
            summary = (f"loss is summed over the batch (reduction='sum'): {observed:.4g} = {scale:.0f} x "
                       f"{observed / scale:.4g} per example; expected ~{chance:.4g} ({what})")
            advice.append("Use reduction='mean' (the default): with a summed loss the gradient grows with the batch "
                          "size, so a learning rate tuned at one batch size diverges at another.")
        elif model.classification:
            status, summary = self._judge(observed, chance, prior, ratio, what, advice, metrics["output_std"])
        else:
            status, summary = self._judge_regression(observed, refs, what, advice)
        if model.classification and prior < self.imbalance_ratio * chance and status != "fail":
            advice.append(
                f"Labels are imbalanced (prior loss {prior:.4g} vs chance {chance:.4g}): initialise the final "
                f"layer's bias to the log prior {refs['prior_bias'][:10]} so training starts at {prior:.4g} "
                f"instead of spending its first steps learning the class frequencies.")
        return self.result(status, summary, metrics=metrics, advice=tuple(advice), tables=(table,), plots=plots)

    # -- verdicts ---------------------------------------------------------------------------------
    def _judge(self, observed, chance, prior, ratio, what, advice, output_std):
        low = min(prior, chance)
        if ratio > self.fail_ratio:
            advice.append(f"The initial outputs are far too large (logit std {output_std:.3g}): "
                          f"scale the final layer's weights down (x0.01, or zero them), check for a missing "
                          f"normalization or an init with too large a std.")
            return "fail", f"loss at init {observed:.4g} is {ratio:.1f}x chance {chance:.4g} ({what})"
        if ratio > self.warn_ratio:
            advice.append("The initial predictions are overconfident: shrink the final layer's init so the "
                          "logits start near zero.")
            return "warn", f"loss at init {observed:.4g} is {ratio:.2f}x chance {chance:.4g} ({what})"
        if observed < self.below_ratio * low:
            advice.append("A loss far below chance before any training usually means the targets leak into the "
                          "inputs, or the loss gets outputs of the wrong kind (NLLLoss needs log-probabilities: "
                          "apply log_softmax; BCELoss needs probabilities).")
            return "warn", f"loss at init {observed:.4g} is below chance {chance:.4g} and the prior {prior:.4g}"
        return "pass", f"loss at init {observed:.4g} matches chance {chance:.4g} ({what})"

    def _judge_regression(self, observed, refs, what, advice):
        var = refs["chance"]
        constant = refs.get("constant", var)
        # an offset between the outputs' mean and the targets' (uncentred targets against outputs near 0, a
        # sigmoid's 0.5) is what the final bias removes in its first steps, not a fault: the loss is judged by
        # what the outputs' spread adds to the loss of their own mean, against Var(y)
        offset = constant > self.warn_ratio * var
        effective = var + max(observed - constant, 0.0) if offset else observed
        ratio = effective / max(var, 1e-12)
        if offset:
            advice.append(f"The initial outputs average off the targets (target mean {refs['target_mean']:.4g}, "
                          f"std {refs['target_std']:.4g}): standardize the targets, or initialise the final bias "
                          f"to their mean, so training does not spend its first steps on the offset.")
        spread = f" (Var(y) plus what the outputs' spread adds to the loss of their mean {constant:.4g})" \
            if offset else ""
        if ratio > self.fail_ratio:
            advice.append("The initial outputs vary much more than the targets: scale the final layer down or "
                          "check the init of the layers before it.")
            return "fail", f"loss at init {observed:.4g} is {ratio:.1f}x Var(y) {var:.4g}{spread}"
        if ratio > self.warn_ratio:
            advice.append("The initial outputs vary more than the targets: shrink the final layer's init.")
            return "warn", f"loss at init {observed:.4g} is {ratio:.2f}x {what}{spread}"
        if offset:
            return "pass", (f"loss at init {observed:.4g} is that of the outputs' mean {constant:.4g}, off the "
                            f"targets' mean; the outputs' spread matches {what}")
        return "pass", f"loss at init {observed:.4g} is close to {what}"

    @staticmethod
    def _rows(model, refs, observed, zeroed):
        rows = [("observed at init", observed), ("chance (uniform / mean prediction)", refs["chance"])]
        if "prior" in refs:
            rows.append(("label prior (bias = log prior)", refs["prior"]))
        if "zero" in refs:
            rows.append(("zero prediction (E[y^2])", refs["zero"]))
        if zeroed is not None:
            rows.append(("observed with inputs zeroed", zeroed))
        return rows

    @staticmethod
    def _plot(model: LossModel, outputs, targets, refs) -> Plot:
        if model.family in ("ce", "nll"):
            probs = outputs.softmax(1) if model.family == "ce" else outputs.exp()
            c = refs["classes"]
            sample = probs.movedim(1, -1).reshape(-1)[:20000]
            return Plot("probabilities", "Predicted class probabilities at init", "hist",
                        (Series("p(class)", (), sample.tolist()),), x_label="probability", y_label="count",
                        markers=(Marker(f"1/C = {1 / c:.3g}", 1 / c),))
        if model.family in ("bce_logits", "bce"):
            probs = outputs.sigmoid() if model.family == "bce_logits" else outputs
            return Plot("probabilities", "Predicted probabilities at init", "hist",
                        (Series("p(positive)", (), probs.reshape(-1)[:20000].tolist()),), x_label="probability",
                        y_label="count", markers=(Marker("0.5", 0.5), Marker("positive rate", refs["positive_rate"])))
        return Plot("outputs", "Outputs at init against the targets", "hist",
                    (Series("outputs", (), outputs.reshape(-1)[:20000].tolist()),
                     Series("targets", (), targets.float().reshape(-1)[:20000].tolist())),
                    x_label="value", y_label="count")

    @staticmethod
    def _zeroed_input_loss(session) -> Optional[float]:
        """The loss on the first batch with every floating-point input zeroed: the input-independent baseline."""
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
        finally:
            handle.remove()
            session.reset()
        return float(loss) if seen.get("float") else None
