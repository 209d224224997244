"""The checklist: an explicit registry whose order is the order in which items run and are reported."""
from __future__ import annotations

from .activation_scale import ActivationScale
from .base import Check
from .batch_independence import BatchIndependence
from .dead_relu import DeadRelu
from .grad_norms import GradNorms
from .initial_loss import InitialLoss
from .input_scale import InputScale
from .lr_range import LrRange
from .nonfinite import NonFinite
from .overfit_batch import OverfitBatch
from .param_updates import ParamUpdates
from .saturation import Saturation

#: stable ids, in checklist order (DESIGN.md)
CHECKLIST: tuple[type[Check], ...] = (
    InitialLoss,
    OverfitBatch,
    LrRange,
    DeadRelu,
    Saturation,
    ActivationScale,
    GradNorms,
    ParamUpdates,
    InputScale,
    NonFinite,
    BatchIndependence,
)


def by_id(check_id: str) -> type[Check]:
    """A check of the checklist, or one of the distributed checks (run under torchrun only)."""
    from .ddp import DISTRIBUTED

    for cls in CHECKLIST + DISTRIBUTED:
        if cls.id == check_id:
            return cls
    raise KeyError(check_id)


__all__ = ["CHECKLIST", "Check", "by_id"]
