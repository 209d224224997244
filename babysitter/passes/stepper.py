"""One training step the way the user trains, for every pass that trains (the probe, the LR sweep, the overfit
probe, the NaN replay).

A declared :class:`~babysitter.step.Step` is run with every part in its place: micro-batches under autocast,
the (scaled) backward, unscaling, the gradients read (before clipping: the gradient checks and the suggested clip
are about raw norms), clipping, ``optimizer.step`` (with a closure for LBFGS), the scaler's update and the
scheduler. A user's own step function is called as it is; its gradients are read as each optimizer receives
them (a step pre-hook), so after the user's own clipping, and a step whose optimizer never stepped is known as
skipped.

Under ``torchrun`` (``session.ranks`` active) every step is a data-parallel one: the stepper starts from rank 0's
weights and averages each step's gradients and loss over the ranks before the gradients are read, so every rank
trains the same model on the effective batch and reads the same numbers (see
:class:`babysitter.distributed.Ranks`). ``reduce=False`` leaves each rank on its own (the ``ddp_grads`` check
compares what the user's code does by itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from ..distributed import averages_itself
from ..step import AUTOCAST_DTYPES, Step

#: called with the step's loss (None inside a user's step function) and the parameters whose gradients are final
#: for this step (unscaled, before clipping); returns True to skip the optimizer step (float16 overflow)
GradReader = Callable[[Optional[torch.Tensor], list], Optional[bool]]


@dataclass
class Outcome:
    """What one step produced: the loss (mean over micro-batches, unscaled, on the device), the last micro-batch's
    outputs and targets, and whether the optimizer step was skipped (None when that is not known without a host
    read: a plain step is never skipped)."""

    loss: torch.Tensor
    outputs: Any
    targets: Any
    skipped: Optional[bool] = None
    trained: bool = True  # False when the loss did not require grad: nothing could be trained


def closure_optimizer(optimizer: Any) -> bool:
    """Optimizers whose ``step`` needs a closure that re-evaluates the loss."""
    return isinstance(optimizer, torch.optim.LBFGS)


class Stepper:
    """Steps of the user's kind on ``optimizer`` (a torch optimizer, or an OptimizerGroup of several)."""

    def __init__(self, session, optimizer: Any, *, scheduler: bool = True, clip: bool = True, reduce: bool = True):
        self.session, self.optimizer = session, optimizer
        self.ranks = session.ranks if reduce and session.ranks.active else None
        self.own_average = not averages_itself(session.model)  # DDP and FSDP models average the gradients themselves
        self._unsynced = self.ranks is not None and self.own_average  # rank 0's weights go out at the first step
        custom = session.code.step
        self.custom: Optional[Callable] = custom if callable(custom) and not isinstance(custom, Step) else None
        self.spec: Step = custom if isinstance(custom, Step) else Step()
        self.clip = clip
        device = session.device.type
        self.autocast = AUTOCAST_DTYPES.get(self.spec.autocast) if self.spec.autocast else None
        self.device_type = device
        self.scaler = torch.amp.GradScaler(device) if self.spec.grad_scaler and self.custom is None else None
        closure = self.spec.closure
        self.closure = closure_optimizer(optimizer) if closure is None else bool(closure)
        make = self.spec.scheduler
        #: the user declared a scheduler (run only when ``scheduler`` is True)
        self.scheduler_declared = make is not None and self.custom is None
        self.scheduler = make(optimizer) if scheduler and self.scheduler_declared else None
        self.accumulate = 1 if self.custom is not None or self.closure else self.spec.accumulate

    def local(self) -> None:
        """From now on, this rank's own steps: no collective (under torchrun, a step that a hook may stop half-way
        must not leave the other ranks waiting in an all-reduce)."""
        self._sync()
        self.ranks = None

    def _sync(self) -> None:
        """Rank 0's weights onto every rank before the first step (a stepper made only to read its facts, its
        autocast or accumulation, broadcasts nothing)."""
        if self._unsynced:
            self.ranks.broadcast_state(self.session.model)
            self._unsynced = False

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.ranks.mean(t) if self.ranks is not None else t

    # -- what the report says about it -------------------------------------------------------------------------
    def kept(self) -> list[str]:
        """The parts of the user's step this stepper runs (for notes)."""
        if self.custom is not None:
            return ["your step function"]
        parts = [p for p in self.spec.parts() if not p.startswith("scheduler") or self.scheduler is not None]
        if self.closure and "closure" not in " ".join(parts):
            parts.append("closure")
        if not self.clip:
            parts = [p for p in parts if not p.startswith("clip")]
        return parts

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, batches: Sequence[Any], on_grads: Optional[GradReader] = None) -> Outcome:
        """One optimizer step over ``batches`` (the micro-batches: ``accumulate`` of them, or one)."""
        self._sync()
        if self.custom is not None:
            return self._custom(batches[0], on_grads)
        if self.closure:
            return self._closure(batches[0], on_grads)
        return self._plain(batches, on_grads)

    def _forward(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        if self.autocast is None:
            return self.session.forward_loss(batch)
        with torch.autocast(self.device_type, dtype=self.autocast):
            return self.session.forward_loss(batch)

    def _params(self) -> list:
        """The model's trainable parameters: what the user's ``clip_grad_norm_(model.parameters(), ...)`` clips,
        and what the gradient checks read (a parameter the optimizer leaves out included)."""
        return [p for p in self.session.model.parameters() if p.requires_grad]

    def _clip(self) -> None:
        if not self.clip:
            return
        params = self._params()
        if self.spec.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.spec.clip_grad_norm)
        if self.spec.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.spec.clip_grad_value)

    def _plain(self, batches: Sequence[Any], on_grads: Optional[GradReader]) -> Outcome:
        self.optimizer.zero_grad(set_to_none=True)
        losses, outputs, targets, trained = [], None, None, False
        for batch in batches:
            loss, outputs, targets = self._forward(batch)
            trained = trained or loss.requires_grad
            if loss.requires_grad:
                scaled = loss / len(batches) if len(batches) > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            losses.append(loss.detach().float())
        loss = self._averaged(losses[0] if len(losses) == 1 else torch.stack(losses).mean())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if on_grads is not None and on_grads(loss, self._params()):
            return Outcome(loss, outputs, targets, True, trained)  # skipped as a GradScaler would: float16 overflow
        self._clip()
        skipped = self._optimizer_step()
        return Outcome(loss, outputs, targets, skipped, trained)

    def _average_after_backward(self) -> list:
        """Hooks that average every trainable gradient over the ranks when a backward pass ends (one callback per
        backward, queued by the first gradient accumulated), as DDP's reducer does: the user's own clipping and
        GradScaler then see the same gradients on every rank, and a scaler skips a step on all of them or none."""
        params, queued = self._params(), []

        def finish() -> None:
            queued.clear()
            self.ranks.average_grads(params)

        def on_grad(p) -> None:
            if not queued:
                queued.append(True)
                torch.autograd.Variable._execution_engine.queue_callback(finish)
        return [p.register_post_accumulate_grad_hook(on_grad) for p in params]

    def _averaged(self, loss: torch.Tensor) -> torch.Tensor:
        """Under torchrun: the gradients and ``loss`` averaged over the ranks (the loss returned)."""
        if self.ranks is None:
            return loss
        if not self.own_average:
            return self.ranks.mean(loss)
        return self.ranks.average_grads(self._params(), loss)[0]

    def _optimizer_step(self) -> Optional[bool]:
        skipped = None
        if self.scaler is None:
            self.optimizer.step()
        else:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < before  # the scaler backs off only when it skipped the step
        if self.scheduler is not None and not skipped:
            self.scheduler.step()
        return skipped

    def _closure(self, batch: Any, on_grads: Optional[GradReader]) -> Outcome:
        first: dict = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss, outputs, targets = self._forward(batch)
            if loss.requires_grad:
                loss.backward()
            mean = self._averaged(loss.detach().float())
            if not first:
                first.update(loss=mean, outputs=outputs, targets=targets, trained=loss.requires_grad)
                if on_grads is not None:
                    on_grads(first["loss"], self._params())
            self._clip()
            return mean if self.ranks is not None else loss  # the line search reads the loss of every rank

        self.optimizer.step(closure)
        if self.scheduler is not None:
            self.scheduler.step()
        return Outcome(first["loss"], first["outputs"], first["targets"], None, first["trained"])

    def _custom(self, batch: Any, on_grads: Optional[GradReader]) -> Outcome:
        """The user's own step; gradients read as each optimizer is about to step (under torchrun, averaged over
        the ranks at the end of each backward first, as DDP averages them)."""
        stepped = []
        handles = self._average_after_backward() if self.ranks is not None and self.own_average else []
        for opt in getattr(self.optimizer, "optimizers", (self.optimizer,)):
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]

            def hook(optimizer, args, kwargs, params=params):
                stepped.append(optimizer)
                if on_grads is not None:
                    on_grads(None, params)

            handles.append(opt.register_step_pre_hook(hook))
        try:
            loss = self.custom(self.session.model, batch, getattr(self.optimizer, "user_view", self.optimizer))
        finally:
            for h in handles:
                h.remove()
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"the target's step(model, batch, optimizer) must return the loss as a tensor, it "
                            f"returned {type(loss).__name__}")
        return Outcome(self._mean(loss.detach().float()), None, None, skipped=not stepped,
                       trained=bool(stepped) or loss.requires_grad)
