"""Reading the activation instrument's statistics: the families, and what it could and could not see."""
from __future__ import annotations

from typing import Optional

from ..instruments.activations import RECTIFIER, SIGMOID, SOFTMAX, TANH, ActivationResult, LayerStats

__all__ = ["RECTIFIER", "SIGMOID", "SOFTMAX", "TANH", "ActivationResult", "LayerStats", "ref", "hidden_clause",
           "visibility_notes", "of_family"]


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
