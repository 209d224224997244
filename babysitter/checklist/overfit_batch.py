"""overfit_batch: with regularization off, can the model drive the loss on a tiny subset to about zero?"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..analysis.batches import batch_size_of, concat_batches, slice_batch, to_device
from ..analysis.loss import accuracy, constant_loss, loss_floor
from ..optim import group_scales, set_lr, zero_decay
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold

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


# -- the subset and what can be said of its outputs --------------------------------------------------
def tiny_subset(session, examples: int) -> tuple[Any, int]:
    """The first ``examples`` examples of the pool as one batch (on the session's device), and their number."""
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
    return to_device(batch, session.device), n


@dataclass
class Attempt:
    lr: Optional[float]
    why_lr: str
    losses: list[float]
    best: float
    start: float
    reduction: float  # (best - floor) / (reference - floor)
    accuracy: Optional[float]
    passed: bool
    steps: int
    floor: float = 0.0
    reference: float = math.nan  # the loss reductions are measured from: min(start, constant prediction's loss)
    family: Optional[str] = None
    decay: tuple = ()
    outputs: Any = None


# -- the check --------------------------------------------------------------------------------------
@dataclass
class OverfitBatch(Check):
    id = "overfit_batch"
    title = "Overfit a tiny subset"
    what = """Trains on a tiny fixed subset (the first 32 examples by default) with regularization off (dropout
    inactive, including functional, attention and recurrent dropout, while BatchNorm keeps training statistics;
    weight decay set to zero), with the user's optimizer class and LR, for 200 full-subset steps (continued up to 800 while the loss is
    still falling by 20% per 100 steps). When
    that does not get there, lr_range's verdict is read: its suggestion (which replaces an LR it judged unusable)
    and then the top of its good range are tried with the same budget, and the report says which LR was used
    and why. Passes when the loss falls to 10% of its starting excess over the lowest reachable loss (zero, or
    the entropy left by label smoothing or soft labels) and, for classification, every example of the subset is
    classified right. On failure the likely causes are ranked by the evidence."""
    why = """A network that cannot memorise a few dozen examples will not learn the data set: the bug is in the
    model, the loss or the optimizer, and no amount of training fixes it. It is the cheapest test that the whole
    pipeline can learn at all (softmax fed into CrossEntropyLoss, an output that ignores its input, a frozen or
    mis-wired layer, an LR far off all show here)."""
    todo = """Follow the ranked causes: remove a softmax/sigmoid before CrossEntropyLoss/BCEWithLogitsLoss (they
    take raw logits); check that the input reaches the output (a detached tensor, a constant, a wrong variable);
    use an LR inside lr_range's range; make the model larger if it is very small."""
    sources = (
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): overfit one batch, verify that you can reach "
        "the lowest achievable loss (e.g. zero)",
        "CS231n, 'Babysitting the learning process': overfit a tiny subset of 20 examples with regularization off; "
        "you should reach a loss of about zero and 100% training accuracy",
        "Threshold: a softmax before CrossEntropyLoss bounds the loss below by ln(1 + (C-1)/e), 45-65% of ln C for "
        "2 to 10 classes, and an output that ignores its input stays near the label entropy (~100%), while a model "
        "that can learn goes below 10% of its start in a few dozen steps on 32 examples",
    )

    examples: int = threshold(32, "examples in the tiny subset (the first of the data)")
    max_steps: int = threshold(200, "step budget (full-subset steps); training stops early once the test passes")
    pass_fraction: float = threshold(0.1, "pass when (loss - floor) falls to this fraction of (reference - floor), "
                                          "the reference being the start or, when lower, the loss of the best "
                                          "prediction that ignores the input (the target mean, the class prior)")
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
    retry_factor: float = threshold(3.0, "when the user's LR failed, retry at lr_range's suggestion and at the top of "
                                         "its range, each only if it differs from every LR tried by this factor")

    def run(self, session):
        params = [p for p in session.model.parameters() if p.requires_grad]
        if not params:
            self.skip("the model has no trainable parameter")
        subset, n = tiny_subset(session, self.examples)
        user_lr = session.user_lr
        notes = []
        # the user's LR first; lr_range's sweep is read only when that fails (in a full checklist it is computed
        # once anyway), and its suggestion is tried when it differs enough
        attempts = [self._attempt(session, subset, user_lr,
                                  f"your LR {user_lr:.3g}" if user_lr is not None else "the optimizer's own LR")]
        verdict = None
        if not attempts[0].passed:
            verdict = self._lr_verdict(session)
            for lr, why in self._retry_lrs(verdict, attempts[0]):
                if any(x.passed for x in attempts):
                    break
                tried = [x.lr for x in attempts if x.lr]
                if all(abs(math.log(lr / t)) > math.log(self.retry_factor) for t in tried):
                    attempts.append(self._attempt(session, subset, lr, why))
        # the attempt that passed, or else the one that got furthest
        final = next((x for x in attempts if x.passed), None) or min(
            attempts, key=lambda x: x.reduction if math.isfinite(x.reduction) else math.inf)
        metrics = {"examples": n, "start_loss": final.start, "best_loss": final.best, "floor": final.floor,
                   "reduction": final.reduction, "accuracy": final.accuracy, "steps": final.steps, "lr": final.lr,
                   "lr_source": final.why_lr, "attempts": len(attempts)}
        if final.decay:
            notes.append("weight decay set to zero for the probe: " + ", ".join(final.decay))
        notes.append("dropout switched off (modules, F.dropout calls, attention and recurrent dropout); "
                     "BatchNorm kept in training mode")
        plots = (self._plot(attempts, final.floor + self.pass_fraction * (final.reference - final.floor)),)
        table = Table("attempts", "Attempts", ("lr", "lr source", "steps", "start loss", "best loss", "reduction",
                                               "accuracy", "passed"),
                      [(x.lr, x.why_lr, x.steps, x.start, x.best, x.reduction, x.accuracy, x.passed) for x in attempts])
        acc = f", accuracy {final.accuracy:.0%}" if final.accuracy is not None else ""
        if final.passed:
            summary = (f"loss on {n} examples fell from {final.start:.4g} to {final.best:.4g} "
                       f"({max(final.reduction, 0.0):.1%} of its {self._ref_name(final)}){acc} in {final.steps} steps at {final.why_lr}")
            advice = []
            if final is not attempts[0]:
                a0 = attempts[0]
                advice.append(f"At {a0.why_lr} the subset was not fit in {a0.steps} steps (loss {a0.best:.4g}, "
                              f"{a0.reduction:.0%} of its start); at {final.lr:.3g} it was: your LR is slow for "
                              f"this, see lr_range.")
            return self.result("pass", summary, metrics=metrics, advice=tuple(advice), tables=(table,), plots=plots,
                               notes=tuple(notes))
        causes = self._causes(session, final, attempts, verdict, n, subset)
        metrics["likely_cause"] = causes[0][1] if causes else None
        summary = (f"could not overfit {n} examples: best loss {final.best:.4g} is {final.reduction:.0%} of its "
                   f"{self._ref_name(final)}{acc} after {final.steps} steps")
        if causes:
            summary += f"; likely: {causes[0][1]}"
        causes_table = Table("causes", "Likely causes, ranked", ("score", "cause", "evidence"), causes)
        return self.result("fail", summary, metrics=metrics, advice=tuple(c[2] for c in causes),
                           tables=(table, causes_table), plots=plots, notes=tuple(notes))

    # -- the probe --------------------------------------------------------------------------------
    @staticmethod
    def _retry_lrs(verdict, first: Attempt) -> list[tuple[float, str]]:
        """LRs to retry at when the user's failed: lr_range's suggestion, then the top of its good range (the
        largest LR at which the sweep's loss was still at its lowest: memorising a few examples wants a large
        step). Without a suggestion (a flat sweep), 10x and 100x the user's LR when its loss did not blow up."""
        if verdict is None or not verdict.suggested_lr:
            blew_up = not all(math.isfinite(v) for v in first.losses) or first.losses[-1] > first.start
            if first.lr and not blew_up:
                return [(first.lr * k, f"{k}x your LR ({first.lr * k:.3g}; lr_range has no suggestion)")
                        for k in (10, 100)]
            return []
        unusable = f" (it judged your LR unusable: {verdict.summary})" if verdict.status == "fail" else ""
        out = [(verdict.suggested_lr, f"lr_range's suggestion {verdict.suggested_lr:.3g}{unusable}")]
        if verdict.lr_high:
            out.append((verdict.lr_high, f"the top of lr_range's good range {verdict.lr_high:.3g}"))
        return out

    @staticmethod
    def _lr_verdict(session):
        try:
            sweep = session.evidence("lr_sweep")
            return None if sweep.skipped else session.evidence("lr_reading")
        except Exception:
            return None

    def _attempt(self, session, subset, lr: Optional[float], why: str) -> Attempt:
        loss_model = session.evidence("loss_facts").model  # before training: computing it resets the model
        session.reset()
        model = session.model
        model.train()
        losses, checks = [], []
        with regularization_off(model):
            optimizer = session.make_optimizer()
            decay = zero_decay(optimizer)
            if lr is not None:
                ref, scales = group_scales(optimizer)
                if ref and ref > 0:
                    set_lr(optimizer, lr, scales)
            family = floor = ref = None
            passed, steps = False, 0
            for step in range(max(self.max_steps, self.extend_to)):
                optimizer.zero_grad(set_to_none=True)
                loss, outputs, targets = session.forward_loss(subset)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach().float())
                steps = step + 1
                if family is None:
                    family, floor, constant = self._understand(session, loss_model, outputs, targets)
                    ref = self._reference(float(losses[0]), floor, constant)
                if steps % self.check_every and steps != self.max_steps:
                    continue
                acc = accuracy(family, outputs.detach(), targets, getattr(session.loss_fn, "ignore_index", -100)) \
                    if isinstance(outputs, torch.Tensor) else None
                now = float(losses[-1])
                checks.append(acc)
                red = (now - floor) / (ref - floor) if ref > floor else math.inf
                if not math.isfinite(now):
                    break
                if red <= self.pass_fraction and (acc is None or float(acc) >= 1.0):
                    passed = True
                    break
                if steps >= self.max_steps and not self._still_falling(losses, floor):
                    break
        host = torch.stack(losses).cpu().tolist()
        start = host[0]
        finite = [v for v in host if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        ref = self._reference(start, floor, math.nan) if ref is None else ref
        reduction = (best - floor) / (ref - floor) if ref > floor and finite else math.inf
        last_acc = checks[-1] if checks else None
        return Attempt(lr=lr, why_lr=why, losses=host, best=best, start=start, reduction=reduction,
                       accuracy=None if last_acc is None else float(last_acc), passed=passed, steps=steps,
                       floor=floor, reference=ref, family=family, decay=tuple(decay),
                       outputs=outputs.detach() if isinstance(outputs, torch.Tensor) else None)

    def _still_falling(self, losses, floor) -> bool:
        """Past the budget: did the excess loss (best of the last few steps) fall by extend_progress over the last
        extend_window steps?"""
        w, k = self.extend_window, self.check_every
        if len(losses) < w + k:
            return False
        recent = torch.stack(losses[-w - k:]).cpu()
        before, now = float(recent[:k].min()) - floor, float(recent[-k:].min()) - floor
        return math.isfinite(now) and before > 0 and now <= (1 - self.extend_progress) * before

    @staticmethod
    def _understand(session, model, outputs, targets) -> tuple[Optional[str], float, float]:
        if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            return None, 0.0, math.nan
        out = outputs.detach()
        family = model.family if model is not None else None
        return family, loss_floor(session.loss_fn, family, out, targets), constant_loss(session.loss_fn, model, out,
                                                                                        targets)

    @staticmethod
    def _ref_name(a: Attempt) -> str:
        if math.isfinite(a.reference) and a.reference < a.start:
            return f"reference {a.reference:.4g} (the loss of the best constant prediction, below the start {a.start:.4g})"
        return f"start {a.start:.4g}"

    def _reference(self, start: float, floor: float, constant: float) -> float:
        """What reductions are measured from: the start, or the loss of the best input-ignoring prediction when
        lower (uncentred regression targets, a class prior): learning the offset or the prior alone is no
        evidence that the input reaches the output. A subset that a constant already fits nearly to the floor
        keeps the start."""
        if math.isfinite(constant) and constant < start and constant - floor > self.min_constant_excess * (start - floor):
            return constant
        return start

    # -- diagnosis --------------------------------------------------------------------------------
    def _causes(self, session, final: Attempt, attempts, verdict, n: int, subset) -> list[tuple]:
        """Likely causes with a score in [0, 1] from the evidence, best first."""
        out, family = final.outputs, final.family
        causes = []
        if out is not None and out.ndim >= 2 and family in ("ce", "bce_logits"):
            o = out.float()
            in_unit = bool(((o >= 0) & (o <= 1)).all())
            sums_to_one = family == "ce" and bool(((o.sum(1) - 1).abs() < 1e-3).all())
            if family == "ce" and in_unit and sums_to_one:
                causes.append((1.0, "softmax fed into CrossEntropyLoss",
                               "The outputs are probabilities (non-negative, summing to 1 per example), but "
                               "CrossEntropyLoss applies log_softmax itself: remove the softmax from the model's "
                               "forward (keep it for inference only). The loss cannot fall below "
                               f"ln(1 + (C-1)/e) = {math.log(1 + (o.shape[1] - 1) / math.e):.3g}."))
            elif family == "bce_logits" and in_unit:
                causes.append((0.9, "sigmoid fed into BCEWithLogitsLoss",
                               "The outputs all lie in [0, 1]: BCEWithLogitsLoss applies the sigmoid itself; "
                               "remove the model's final sigmoid."))
        if out is not None and out.ndim >= 1 and out.shape[0] > 1:
            o = out.float().reshape(out.shape[0], -1)
            spread = float((o - o[:1]).abs().max()) / max(float(o.abs().max()), 1e-12)
            if spread < 1e-5:
                causes.append((0.95, "the output ignores the input",
                               f"All {n} examples get the same output (relative spread {spread:.1e}) after training: "
                               "the input does not reach the output (a detached or constant tensor, a wrong "
                               "variable in forward, a layer whose output is overwritten)."))
        lr = final.lr
        diverged = not math.isfinite(final.best) or any(not math.isfinite(v) for v in final.losses) or \
            final.losses[-1] > 1.5 * final.start
        if verdict is not None and lr:
            if diverged or (verdict.lr_high and lr > verdict.lr_high):
                causes.append((0.8 if diverged else 0.5, "learning rate too high",
                               f"At LR {lr:.3g} the loss " + ("diverged" if diverged else "did not settle") +
                               (f"; lr_range's good range is [{verdict.lr_low:.3g}, {verdict.lr_high:.3g}]"
                                if verdict.lr_low else "") + ": lower the LR."))
            elif verdict.lr_low and lr < verdict.lr_low:
                causes.append((0.7 if final.reduction > 0.9 else 0.4, "learning rate too low",
                               f"At LR {lr:.3g} the loss barely moved; lr_range's good range starts at "
                               f"{verdict.lr_low:.3g}: raise the LR."))
        elif diverged:
            causes.append((0.8, "learning rate too high", f"The loss diverged at LR {lr}: lower the LR."))
        params = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
        outputs = out[0].numel() if out is not None and out.ndim >= 1 else 1
        small = params < n * outputs
        causes.append((0.6 if small else 0.2, "too little capacity",
                       f"The model has {params} trainable parameters for {n} examples x {outputs} outputs"
                       + (": fewer than the values to fit; make it wider or deeper." if small else
                          "; if none of the causes above applies, try a wider or deeper model.")))
        causes.sort(key=lambda c: -c[0])
        return [(round(s, 2), c, e) for s, c, e in causes]

    @staticmethod
    def _plot(attempts, target: float) -> Plot:
        series = tuple(Series(f"LR {a.lr:.3g}" if a.lr else "LR (optimizer's)", tuple(range(1, len(a.losses) + 1)),
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
