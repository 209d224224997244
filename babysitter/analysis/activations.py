"""Reading the activation instrument's statistics: the families, what it could and could not see, and the modules
that feed the activations (their weight and bias, as plain numbers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from ..instruments.activations import RECTIFIER, SIGMOID, SOFTMAX, TANH, ActivationResult, LayerStats

#: a rectifier unit positive on under this fraction of its outputs is dead; a layer with more than DEAD_LAYER of its
#: units dead is a problem (dead_relu's default thresholds, and what overfit_batch names as a likely cause)
DEAD_UNIT, DEAD_LAYER = 0.01, 0.6

__all__ = ["DEAD_LAYER", "DEAD_UNIT", "RECTIFIER", "SIGMOID", "SOFTMAX", "TANH", "ActivationResult", "LayerStats", "ref", "hidden_clause",
           "visibility_notes", "of_family", "Producer", "producers"]

#: the layers whose weight sets the scale of the activation they feed (their weight std is compared with an init)
FEEDING_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def ref(module: str, attr: str) -> str:
    """Python that reaches a parameter of a submodule by its qualified name, for advice the user can paste."""
    return f"model.get_submodule('{module}').{attr}" if module else f"model.{attr}"


def of_family(result: Optional[ActivationResult], *families: str) -> list[LayerStats]:
    """The layers of these families that produced units, in depth order ([] without a result)."""
    return [l for l in result.family(*families) if l.units] if result else []


def hidden_clause(result: Optional[ActivationResult]) -> str:
    """' (not visible inside fused kernels: ...)' for skip reasons, or ''."""
    if not result or not result.hidden:
        return ""
    return f" (not visible inside fused kernels: {', '.join(result.hidden)})"


def visibility_notes(result: Optional[ActivationResult]) -> tuple[str, ...]:
    """What the instrument saw and what it could not see, for a check's notes."""
    if result is None:
        return ()
    out = []
    if result.layers:
        kinds = sorted({l.op for l in result.layers})
        out.append(f"{len(result.layers)} activation sites seen (modules and functional calls: {', '.join(kinds)})")
    if result.hidden:
        out.append("not visible, computed inside fused kernels: " + "; ".join(result.hidden) +
                   ". The gates of LSTM/GRU/RNN and the attention softmax of nn.MultiheadAttention or "
                   "F.scaled_dot_product_attention never reach Python.")
    broken = [l.name for l in result.layers if not l.finite]
    if broken:
        out.append(f"non-finite values (NaN/Inf) in {', '.join(broken[:6])}: their statistics are not meaningful "
                   f"(see the nonfinite check)")
    if result.skipped:
        out.append(f"{result.skipped} activation calls could not be reduced (their shape changed between calls)")
    return tuple(out)


@dataclass(frozen=True)
class Producer:
    """The module that fed an activation (``LayerStats.producer``), as plain numbers for a check's advice."""

    name: str
    type: str
    weight_shape: Optional[tuple[int, ...]] = None  # a Linear's or a convolution's weight of >= 2 dimensions
    weight_std: Optional[float] = None
    bias_mean: Optional[float] = None  # a non-empty bias tensor's mean and std (0 for a single element)
    bias_std: Optional[float] = None


def producers(model: nn.Module, layers: Iterable[LayerStats]) -> dict[str, Producer]:
    """The modules that fed ``layers``, by qualified name ('' is the model itself); names that are not a module of
    ``model`` are left out."""
    modules = dict(model.named_modules())
    out = {}
    for name in dict.fromkeys(l.producer for l in layers):
        if name in modules:
            out[name] = _producer(name, modules[name])
    return out


def _producer(name: str, module: nn.Module) -> Producer:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    shape = std = mean = spread = None
    with torch.no_grad():
        if isinstance(module, FEEDING_LAYERS) and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            shape, std = tuple(weight.shape), float(weight.detach().float().std())
        if isinstance(bias, torch.Tensor) and bias.numel():
            b = bias.detach().float()
            mean, spread = float(b.mean()), float(b.std()) if b.numel() > 1 else 0.0
    return Producer(name, type(module).__name__, shape, std, mean, spread)
