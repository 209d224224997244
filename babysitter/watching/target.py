"""A watch of a target: its model trained a number of steps the way the target trains (its data, loss, optimizer
and step: clipping, accumulation, autocast, a scaler, a scheduler), under the watcher, inside the session's
sandbox, so the model is left as it was found. ``babysit check --watch N`` and ``wrap(...).watch(N)`` run it.

The batches are the session's pool (up to ``MAX_BATCHES``, cycled): a watch of a target is a short rehearsal of
the run, not the run; in the real run, ``babysitter.watch`` goes inside your own loop.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import UsageError
from ..passes.stepper import Stepper
from ..report import Report
from ..session import Session
from ..target import Target
from .watcher import Watcher

#: the most batches a watch of a target draws from its data (then it cycles through them)
MAX_BATCHES = 256


def watch_target(target: Target, *, steps: int, every: int = 50, device: str = "auto", seed: int = 0,
                 where: Optional[str] = None, ranks: Any = None) -> Report:
    """Train ``target`` for ``steps`` optimizer steps under the watcher and return the watch's report (under
    torchrun, ``ranks`` makes it one data-parallel run: see :class:`babysitter.distributed.Ranks`)."""
    session = Session(target, device=device, seed=seed, where=where, max_batches=MAX_BATCHES, ranks=ranks)
    with session:
        stepper = Stepper(session, session.make_optimizer())
        if not isinstance(stepper.optimizer, torch.optim.Optimizer):
            raise UsageError(f"a watch of {where or 'the target'} needs one torch optimizer, got "
                             f"{type(stepper.optimizer).__name__}: watch each in your own loop with "
                             f"babysitter.watch(model, optimizer)")
        watcher = Watcher(session.model, stepper.optimizer, every=every, scaler=stepper.scaler,
                          name=target.name or type(session.model).__name__, live=False)
        with watcher:
            _train(session, stepper, watcher, steps)
    report = watcher.report_
    return Report(target=report.target, checks=report.checks, run={**report.run, "device": str(session.device),
                                                                   **session.facts},
                  interrupted=report.interrupted)


def _train(session: Session, stepper: Stepper, watcher: Watcher, steps: int) -> None:
    def on_grads(loss, params) -> None:  # unscaled and before clipping, as the Stepper hands them over
        if loss is not None:
            watcher.record_loss(loss)
        watcher.record_gradients()

    n = stepper.accumulate
    for step in range(steps):
        outcome = stepper.step([session.batch(step * n + i) for i in range(n)], on_grads=on_grads)
        watcher.backwards += n
        if stepper.custom is not None:  # a step function hands its loss back after its step: one step late
            watcher.record_loss(outcome.loss)
