"""The checklist: an explicit registry whose order is the order in which items run and are reported."""
from __future__ import annotations

from .base import Check
from .initial_loss import InitialLoss
from .lr_range import LrRange
from .overfit_batch import OverfitBatch

#: stable ids, in checklist order (DESIGN.md)
CHECKLIST: tuple[type[Check], ...] = (
    InitialLoss,
    OverfitBatch,
    LrRange,
)


def by_id(check_id: str) -> type[Check]:
    for cls in CHECKLIST:
        if cls.id == check_id:
            return cls
    raise KeyError(check_id)


__all__ = ["CHECKLIST", "Check", "by_id"]
