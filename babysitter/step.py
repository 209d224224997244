"""How the user trains: the parts of a training step that are not plain ``zero_grad, backward, step``.

A target's optional ``step`` field is either a :class:`Step` (or a dict of its fields), which babysitter runs
itself with every part in its place, or a function ``step(model, batch, optimizer) -> loss`` that does the whole
step the user's way (several optimizers, a GAN's alternating updates), which babysitter calls as it is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

#: autocast precisions a Step may name
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Step:
    """The user's training step, declared.

    Attributes:
        clip_grad_norm: ``torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)`` between backward and
            step. The gradient checks read the gradients before it (the suggested clip is about raw norms).
        clip_grad_value: ``torch.nn.utils.clip_grad_value_(model.parameters(), clip_grad_value)``, likewise.
        accumulate: micro-batches per optimizer step; each micro-batch's loss is divided by it, as usual.
        autocast: ``"bfloat16"`` or ``"float16"``: forward and loss under ``torch.autocast`` on the session's device.
        grad_scaler: a ``torch.amp.GradScaler`` (float16): the loss is scaled, the gradients unscaled before they are
            read or clipped, and a step whose gradients overflowed is skipped and known as skipped.
        scheduler: ``optimizer -> LRScheduler``, stepped after every optimizer step. The training probe follows it;
            the LR sweep and the overfit probe set the LR themselves and leave it out (the report says so).
        closure: call ``optimizer.step(closure)`` (LBFGS and other closure optimizers); None decides from the
            optimizer (LBFGS takes one).
    """

    clip_grad_norm: Optional[float] = None
    clip_grad_value: Optional[float] = None
    accumulate: int = 1
    autocast: Optional[str] = None
    grad_scaler: bool = False
    scheduler: Optional[Callable[[torch.optim.Optimizer], Any]] = None
    closure: Optional[bool] = None

    def problems(self) -> list[tuple[str, Any, str]]:
        """(field, value, what is wrong) for each field that is not usable."""
        out = []
        for name in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                out.append((name, value, "a positive number"))
        if isinstance(self.accumulate, bool) or not isinstance(self.accumulate, int) or self.accumulate < 1:
            out.append(("accumulate", self.accumulate, "a positive int"))
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            out.append(("autocast", self.autocast, f"one of {', '.join(map(repr, AUTOCAST_DTYPES))} or None"))
        if self.scheduler is not None and not callable(self.scheduler):
            out.append(("scheduler", self.scheduler, "a function optimizer -> LRScheduler"))
        return out

    def parts(self) -> list[str]:
        """The declared parts, for the report: 'clip_grad_norm 0.25', 'accumulate 4', ..."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value not in (None, False) and value != f.default:
                out.append(f.name if value is True or callable(value) else f"{f.name} {value}")
        return out


def coerce_step(value: Any) -> Optional[Step | Callable]:
    """A target's ``step`` field as a Step, a function, or None; raises TypeError/ValueError with the reason."""
    if value is None or isinstance(value, Step) or (callable(value) and not isinstance(value, type)):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(Step)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; a Step takes {', '.join(sorted(names))}")
        return Step(**value)
    raise TypeError("expected a babysitter.Step, a dict of its fields, or a function step(model, batch, optimizer) "
                    "-> loss")
