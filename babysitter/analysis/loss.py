"""The loss model: what babysitter understands of the user's loss, and the reference losses that follow.

Given outputs and targets (host or device tensors, no model), it recognises the loss (by its module type, or by
computing the same numbers as a known loss), and computes the losses of reference predictions with the user's
own settings: chance (uniform logits, the mean), the label prior, the best prediction that ignores the input,
the floor (the lowest reachable loss: label smoothing and soft labels keep it above zero; binary cross-entropy on
soft targets, such as an autoencoder's grey levels, keeps their entropy), and accuracy. How a loss is reduced over
the batch is read from two values of it (:func:`batch_factor`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

#: loss families: cross-entropy, negative log-likelihood, binary cross-entropy on logits or probabilities,
#: mean squared error, mean absolute error
CLASSIFICATION = ("ce", "nll", "bce_logits", "bce")
#: the relative tolerance within which two values of a loss are taken as equal
CLOSE = 1e-3
#: a loss whose value on a batch repeated twice is 2x (within this) its value on the batch is summed over it
SUMMED_TOLERANCE = 0.01


@dataclass(frozen=True)
class LossModel:
    """What babysitter understood of the user's loss: its family, a mean-reduced reference, how it was known."""

    family: str  # ce, nll, bce_logits, bce, mse, l1
    reference: Callable  # (outputs, targets) -> mean-reduced scalar, same settings as the user's loss
    how: str  # "module" or "matched numerically"
    ignore_index: int = -100

    @property
    def classification(self) -> bool:
        return self.family in CLASSIFICATION


_MODULES = {nn.CrossEntropyLoss: "ce", nn.NLLLoss: "nll", nn.BCEWithLogitsLoss: "bce_logits", nn.BCELoss: "bce",
            nn.MSELoss: "mse", nn.L1Loss: "l1"}
_CANDIDATES = (
    ("ce", F.cross_entropy), ("nll", F.nll_loss), ("bce_logits", F.binary_cross_entropy_with_logits),
    ("bce", F.binary_cross_entropy), ("mse", F.mse_loss), ("l1", F.l1_loss),
)


def _cpu(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().cpu()


def _module_reference(loss_fn: nn.Module, family: str) -> Callable:
    if family == "ce":
        return lambda o, t: F.cross_entropy(o, t, weight=_cpu(loss_fn.weight), ignore_index=loss_fn.ignore_index,
                                            label_smoothing=loss_fn.label_smoothing)
    if family == "nll":
        return lambda o, t: F.nll_loss(o, t, weight=_cpu(loss_fn.weight), ignore_index=loss_fn.ignore_index)
    if family == "bce_logits":
        return lambda o, t: F.binary_cross_entropy_with_logits(o, t, weight=_cpu(loss_fn.weight),
                                                               pos_weight=_cpu(loss_fn.pos_weight))
    if family == "bce":
        return lambda o, t: F.binary_cross_entropy(o, t, weight=_cpu(loss_fn.weight))
    return F.mse_loss if family == "mse" else F.l1_loss


def close(a: float, b: float, rel: float = CLOSE) -> bool:
    """Two finite values equal within ``rel`` of the larger."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b), 1e-8)


def identify_loss(loss_fn: Callable, outputs: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[Optional[LossModel], str]:
    """Recognise the loss by its type, or else by computing the same numbers as a known loss on these outputs.
    Returns the model, or None with the reason."""
    ignore_index = int(getattr(loss_fn, "ignore_index", -100))
    for cls, family in _MODULES.items():
        if type(loss_fn) is cls:
            return LossModel(family, _module_reference(loss_fn, family), "module", ignore_index), ""
    with torch.no_grad():
        try:
            value = float(loss_fn(outputs, targets))
        except Exception as exc:  # any failure of user code on host copies: the loss stays unknown, and says why
            return None, f"calling loss_fn on host copies of the outputs failed ({type(exc).__name__}: {exc})"
        for family, fn in _CANDIDATES:
            if family not in ("ce", "nll") and outputs.shape != targets.shape:
                continue  # element-wise losses would only match through accidental broadcasting
            try:
                mean = float(fn(outputs, targets))
                total = float(fn(outputs, targets, reduction="sum"))
            except (RuntimeError, ValueError, IndexError, TypeError):  # outputs of the wrong kind for this family
                continue
            if close(value, mean) or close(value, total):
                return LossModel(family, fn, "matched numerically", ignore_index), ""
    name = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    return None, (f"loss_fn ({name}) is not one babysitter can reason about: it is not CrossEntropy, NLL, BCE, "
                  f"BCEWithLogits, MSE or L1, as a module or as a function computing the same numbers")


def batch_factor(once: float, twice: float, batch: int) -> int:
    """How a loss is reduced over the batch, from its value on a batch (``once``) and on that batch repeated twice
    (``twice``): ``batch`` when the loss is a sum over the examples (it doubles), 1 for a mean (it stays)."""
    if batch >= 2 and math.isfinite(once) and math.isfinite(twice) and abs(once) > 1e-12 \
            and abs(twice / once - 2.0) < SUMMED_TOLERANCE * 2:
        return int(batch)
    return 1


def class_prior(targets: torch.Tensor, n_classes: int, ignore_index: int = -100) -> torch.Tensor:
    """The mean label distribution over the examples: soft labels (class dimension 1) averaged, hard labels
    counted, positions at ``ignore_index`` or outside [0, C) left out (as the loss leaves them out)."""
    if targets.dtype.is_floating_point:
        return targets.float().movedim(1, -1).reshape(-1, n_classes).mean(0)
    t = targets.reshape(-1)
    t = t[(t != ignore_index) & (t >= 0) & (t < n_classes)]
    counts = torch.bincount(t, minlength=n_classes).float()
    return counts / counts.sum().clamp_min(1)


def _class_references(model: LossModel, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    ref, c = model.reference, outputs.shape[1]
    prior = class_prior(targets, c, model.ignore_index)
    shape = [1, c] + [1] * (outputs.ndim - 2)
    uniform = torch.full_like(outputs, -math.log(c)) if model.family == "nll" else torch.zeros_like(outputs)
    log_prior = prior.clamp_min(1e-12).log().reshape(shape).expand_as(outputs).to(outputs.dtype)
    return {"chance": float(ref(uniform, targets)), "prior": float(ref(log_prior, targets)),
            "classes": c, "prior_max": float(prior.max()),
            "prior_bias": [round(v, 4) for v in prior.clamp_min(1e-12).log().tolist()]}


def _binary_references(model: LossModel, outputs: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
    rate = t.reshape(t.shape[0], -1).mean(0).clamp(1e-6, 1 - 1e-6).reshape((1,) + t.shape[1:])
    if model.family == "bce_logits":
        chance, prior = torch.zeros_like(outputs), torch.logit(rate).expand_as(outputs)
    else:
        chance, prior = torch.full_like(outputs, 0.5), rate.expand_as(outputs)
    return {"chance": float(model.reference(chance, t)), "prior": float(model.reference(prior, t)), "classes": 2,
            "positive_rate": float(rate.mean()),
            "prior_bias": [round(v, 4) for v in torch.logit(rate).reshape(-1)[:10].tolist()]}


def _regression_references(model: LossModel, outputs: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
    ref = model.reference
    centre = t.mean(0, keepdim=True) if model.family == "mse" else t.median(0, keepdim=True).values
    # the model's own average output as a constant prediction: the offset between the outputs' and the targets'
    # means (a sigmoid's 0.5, zero outputs against uncentred targets) is the final bias's first few steps,
    # not a fault; outputs that vary more than the targets are
    o = outputs.reshape(t.shape) if outputs.numel() == t.numel() else outputs.expand_as(t)
    constant = o.float().mean(0, keepdim=True).expand_as(t).to(t.dtype)
    return {"chance": float(ref(centre.expand_as(t), t)), "zero": float(ref(torch.zeros_like(t), t)),
            "constant": float(ref(constant, t)),
            "target_mean": float(t.mean()), "target_std": float(t.std()) if t.numel() > 1 else 0.0}


def reference_losses(model: LossModel, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """The mean-reduced loss of the chance prediction and of the label prior (classification), or of the mean,
    zero and the outputs' own mean (regression), with the user's loss settings."""
    with torch.no_grad():
        if model.family in ("ce", "nll"):
            return _class_references(model, outputs, targets)
        t = targets.to(outputs.dtype)
        t = t.expand_as(outputs) if t.shape != outputs.shape else t
        if model.family in ("bce_logits", "bce"):
            return _binary_references(model, outputs, t)
        return _regression_references(model, outputs, t)


def binary_entropy(targets: torch.Tensor) -> torch.Tensor:
    """-(t ln t + (1 - t) ln(1 - t)) per element of targets in [0, 1] (0 at 0 and 1): binary cross-entropy's value
    at its minimum, the prediction p = t, so the lowest loss BCE can reach on soft targets."""
    t = targets.detach().double()
    return -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))


def soft_targets(targets: Any) -> bool:
    """Float targets in [0, 1] that are not all 0 or 1 (grey levels, soft labels): BCE on them has a floor above
    zero."""
    if not isinstance(targets, torch.Tensor) or not targets.dtype.is_floating_point or not targets.numel():
        return False
    t = targets.detach()
    return bool(((t >= 0) & (t <= 1)).all()) and not bool(((t == 0) | (t == 1)).all())


def bce_floor(targets: torch.Tensor, reduction: str = "mean", weight: Optional[torch.Tensor] = None) -> float:
    """The floor of binary cross-entropy on these targets: their binary entropy (times ``weight``, broadcast as
    the loss broadcasts it), summed (reduction='sum') or averaged over the elements (reduction='mean')."""
    h = binary_entropy(targets)
    if weight is not None:
        h = h * weight.detach().double()
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return float(h.sum() if reduction == "sum" else h.mean())


def _ideal_outputs(loss_fn: Callable, family: Optional[str], outputs: torch.Tensor, targets: torch.Tensor
                   ) -> Optional[torch.Tensor]:
    if family == "ce":
        if targets.dtype.is_floating_point:
            return targets.clamp_min(1e-12).log()
        c = outputs.shape[1]
        eps = float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0)
        q = F.one_hot(targets.clamp(0, c - 1), c).movedim(-1, 1).to(outputs.dtype)
        return (q * (1 - eps) + eps / c).clamp_min(1e-12).log()
    if family == "bce_logits":
        # with pos_weight w the loss -(w t ln p + (1 - t) ln(1 - p)) is lowest at p = w t / (w t + 1 - t)
        t = targets.to(outputs.dtype).clamp(1e-6, 1 - 1e-6)
        pos = getattr(loss_fn, "pos_weight", None)
        w = pos.detach().to(t) if isinstance(pos, torch.Tensor) else torch.ones((), dtype=t.dtype)
        return torch.log(w * t) - torch.log1p(-t)
    if family in ("bce", "mse", "l1"):
        return targets.to(outputs.dtype)
    return None


def loss_floor(loss_fn: Callable, family: Optional[str], outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The lowest loss the user's loss can reach on these targets (label smoothing and soft labels keep it
    above zero), computed with the user's loss on ideal outputs, so with its own reduction and weights: for binary
    cross-entropy on soft targets, their entropy (:func:`bce_floor`), summed or averaged as the loss is; 0 when
    unknown."""
    with torch.no_grad():
        try:
            ideal = _ideal_outputs(loss_fn, family, outputs, targets)
            if ideal is None:
                return 0.0
            floor = float(loss_fn(ideal.reshape(outputs.shape), targets))
        except Exception:  # user code on outputs it never sees in training: unknown, taken as 0 (the usual floor)
            return 0.0
    return floor if math.isfinite(floor) and floor > 0 else 0.0


def _constant_outputs(model: LossModel, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if model.family in ("ce", "nll"):
        c = outputs.shape[1]
        prior = class_prior(targets, c, model.ignore_index)
        logp = prior.clamp_min(1e-12).log().to(outputs.dtype).reshape([1, c] + [1] * (outputs.ndim - 2))
        return logp.expand_as(outputs)
    t = targets.to(outputs.dtype).reshape(outputs.shape)
    centre = t.median(0, keepdim=True).values if model.family == "l1" else t.mean(0, keepdim=True)
    if model.family == "bce_logits":
        centre = torch.logit(centre.clamp(1e-6, 1 - 1e-6))
    elif model.family == "bce":
        centre = centre.clamp(1e-6, 1 - 1e-6)
    return centre.expand_as(t)


def constant_loss(loss_fn: Callable, model: Optional[LossModel], outputs: torch.Tensor, targets: torch.Tensor
                  ) -> float:
    """The user's loss of the best prediction that ignores the input, on these targets: the class frequencies for
    cross-entropy, the positive rate for BCE, the mean (MSE) or median (L1). What a model that ignores its input
    reaches; NaN when unknown."""
    if model is None:
        return math.nan
    with torch.no_grad():
        try:
            value = float(loss_fn(_constant_outputs(model, outputs, targets), targets))
        except Exception:  # user code on outputs it never sees in training: unknown
            return math.nan
    return value if math.isfinite(value) else math.nan


def accuracy(family: Optional[str], outputs: torch.Tensor, targets: torch.Tensor,
             ignore_index: int = -100) -> Optional[torch.Tensor]:
    """Fraction of the examples classified right (a device tensor), None when the loss is not a classification
    or the targets are not labels."""
    if family in ("ce", "nll"):
        pred = outputs.argmax(1)
        if targets.dtype.is_floating_point:
            return (pred == targets.argmax(1)).float().mean()
        valid = targets != ignore_index
        return (pred == targets)[valid].float().mean()
    if family in ("bce_logits", "bce"):
        t = targets.to(outputs.dtype)
        if not bool(((t == 0) | (t == 1)).all()):
            return None
        cut = 0.0 if family == "bce_logits" else 0.5
        return ((outputs.reshape(t.shape) > cut) == (t > 0.5)).float().mean()
    return None


def expected_text(model: LossModel, refs: dict[str, Any]) -> str:
    """What chance means for this loss, for people: 'ln 10 = 2.303', 'Var(y) = 1.02'."""
    from .fmt import num

    chance = num(refs["chance"])
    return {"ce": f"ln {refs.get('classes')} = {chance}", "nll": f"ln {refs.get('classes')} = {chance}",
            "bce_logits": f"ln 2 = {chance} per output", "bce": f"ln 2 = {chance} per output",
            "mse": f"Var(y) = {chance}", "l1": f"mean |y - median| = {chance}"}[model.family]
