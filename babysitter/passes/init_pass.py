"""The instrumented pass at initialization: forward and backward on the first batches, in training mode."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..analysis.batches import host_copy
from ..instruments.hooks import attached

#: batches in the instrumented pass at initialization
INIT_BATCHES = 4


@dataclass(frozen=True)
class InitPass:
    """Forward and backward passes at initialization (train mode), over the first batches of the pool."""

    losses: tuple[float, ...]
    outputs: tuple  # host copies of each batch's outputs (None where too large)
    targets: tuple
    instruments: Mapping[str, Any] = field(default_factory=dict)  # each instrument's result, by name

    @property
    def loss(self) -> float:
        return float(sum(self.losses) / len(self.losses))


def init_pass(session, instruments: Mapping, batches: int = INIT_BATCHES) -> InitPass:
    """``batches`` forward and backward passes from the user's state, with ``instruments`` attached."""
    model = session.model
    model.train()
    losses, outputs_kept, targets_kept = [], [], []
    with attached(instruments, model) as active:
        for i in range(min(batches, len(session.pool))):
            batch = session.batch(i)
            model.zero_grad(set_to_none=True)
            loss, outputs, targets = session.forward_loss(batch)
            if loss.requires_grad:
                loss.backward()
            losses.append(loss.detach())
            outputs_kept.append(host_copy(outputs))
            targets_kept.append(host_copy(targets))
        results = {name: inst.result(reduce=session.ranks.mean_if_same) for name, inst in active.items()}
    model.zero_grad(set_to_none=True)
    return InitPass(losses=tuple(session.ranks.mean(torch.stack(losses).float()).cpu().tolist()),
                    outputs=tuple(outputs_kept),
                    targets=tuple(targets_kept), instruments=results)

