"""Facts about the user's setup that several checks read, each computed once from the pass at initialization.

``loss_facts``: which loss it is (the loss model) and how it is reduced over the batch. ``call_order``: the
modules that run in the forward, in the order of their first call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..analysis.batches import batch_size_of, concat_batches, map_tensors
from ..analysis.loss import LossModel, batch_factor, identify_loss


@dataclass(frozen=True)
class LossFacts:
    """What babysitter knows of the user's loss."""

    model: Optional[LossModel]  # None when the loss is not one it can reason about
    unknown: str  # why the model is None
    batch_factor: int  # N when the loss is a sum over the batch's N examples, else 1
    scale: Optional[float]  # the user's loss over its mean-reduced reference on the same outputs (N for a sum)

    @property
    def summed(self) -> bool:
        return self.batch_factor > 1


def _first_outputs(session) -> tuple[Any, Any]:
    """The first batch's outputs and targets on the session's device: the pass at init's host copies, or one
    forward without gradients when they were too large to keep."""
    ev = session.evidence("init_pass")
    outputs, targets = ev.outputs[0], ev.targets[0]
    if outputs is None or targets is None:
        session.model.train()
        with torch.no_grad():
            return session.forward(session.batch(0))
    to = lambda t: t.to(session.device)  # noqa: E731
    return map_tensors(to, outputs), map_tensors(to, targets)


def _reduction(session, outputs, targets) -> int:
    """The loss on the batch repeated twice against the loss on the batch: the outputs are computed once and
    repeated, so dropout or sampling do not count."""
    n = batch_size_of(targets) or batch_size_of(outputs)
    if not n or n < 2:
        return 1
    with torch.no_grad():
        try:
            once = float(session.loss(outputs, targets))
            twice = float(session.loss(concat_batches([outputs, outputs]), concat_batches([targets, targets])))
        except (RuntimeError, ValueError, IndexError, TypeError):  # a loss that cannot take a doubled batch
            return 1
    return batch_factor(once, twice, n)


def _scale(session, model: Optional[LossModel], outputs, targets) -> Optional[float]:
    if model is None or not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return None
    with torch.no_grad():
        user = float(session.loss(outputs, targets))
        o = outputs.float().cpu()
        ref = float(model.reference(o, targets.cpu() if model.family in ("ce", "nll") else targets.float().cpu()))
    return user / ref if ref else None


def loss_facts(session) -> LossFacts:
    outputs, targets = _first_outputs(session)
    model, unknown = None, "the outputs or targets are not tensors"
    if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor):
        model, unknown = identify_loss(session.loss_fn, outputs.detach().float().cpu(), targets.cpu())
    return LossFacts(model=model, unknown=unknown, batch_factor=_reduction(session, outputs, targets),
                     scale=_scale(session, model, outputs, targets))


def call_order(session) -> tuple[str, ...]:
    """The modules that run in the forward, by qualified name, in the order of their first call."""
    return session.evidence("init_pass").instruments["calls"]
