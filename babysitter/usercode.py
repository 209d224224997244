"""Calling the user's code: the forward (the target's or ``model(*inputs)``), the loss, the optimizer, and
what the forward passes to the model."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .analysis.batches import named_tensors
from .distributed import fsdp2_modules
from .optim import as_optimizer, default_optimizer, rebuilder
from .target import Target


class _Seen(BaseException):
    """Stops a forward once the model's inputs are seen. A BaseException, so that a broad ``except Exception``
    in a user's forward cannot swallow it."""


@dataclass(frozen=True)
class ModelInputs:
    """The tensors that the forward passes to the model on its first call, by name: the parameter names of
    ``model.forward`` for positional arguments (``input 0`` when unknown), keyword names for the others, and
    ``name['key']`` / ``name[i]`` inside dicts and sequences."""

    named: tuple[tuple[str, torch.Tensor], ...]

    def floats(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, t) for n, t in self.named if t.is_floating_point() and t.ndim >= 1 and t.numel() > 1]

    def integers(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, t) for n, t in self.named if not t.is_floating_point() and not t.is_complex()
                and t.dtype != torch.bool and t.ndim >= 1]


def positional_names(model: nn.Module, count: int) -> list[str]:
    """The names of the first ``count`` positional parameters of ``model.forward`` (``input i`` when unknown)."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + [f"input {i}" for i in range(len(names), count)]


class UserCode:
    """The target's model, forward, loss and optimizer settings, called the way the user calls them."""

    def __init__(self, target: Target):
        self.target = target
        self.model = target.model
        self.loss_fn = target.loss_fn
        opt = target.optimizer
        #: the user's own optimizer instance (restored by the sandbox), None for a factory or the default
        self.instance: Optional[torch.optim.Optimizer] = opt if isinstance(opt, torch.optim.Optimizer) else None
        self.optimizer_source = "default" if opt is None else "instance" if self.instance is not None else "factory"
        factory = default_optimizer if opt is None else rebuilder(opt) if self.instance is not None else opt
        #: ``params -> optimizer`` (several optimizers returned by the factory come as one OptimizerGroup)
        self.optimizer_factory: Callable[..., Any] = lambda params: as_optimizer(factory(params))
        #: the user's step: a Step, a function step(model, batch, optimizer) -> loss, or None (a plain step)
        self.step = target.step
        #: which of the user's functions forward_loss is running: 'forward', 'loss', or '' between calls
        self.calling = ""

    def forward(self, batch: Any) -> tuple[Any, Any]:
        """``(outputs, targets)`` for one batch, through the target's ``forward`` or ``model(*inputs)``."""
        if self.target.forward is not None:
            return self.target.forward(self.model, batch)
        *inputs, targets = batch
        return self.model(*inputs), targets

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.loss_fn(outputs, targets)

    def forward_loss(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """The loss, outputs and targets of one batch; ``calling`` says meanwhile which of the user's functions
        runs ('forward' or 'loss'), for a watcher that names where an op outside the model's modules ran."""
        self.calling = "forward"
        try:
            outputs, targets = self.forward(batch)
            self.calling = "loss"
            return self.loss(outputs, targets), outputs, targets
        finally:
            self.calling = ""

    def inputs_of(self, batch: Any) -> Optional[ModelInputs]:
        """The tensors the forward passes to the model on ``batch``, seen by a forward pre-hook on the model's
        first call, which then stops the forward: the model itself does not run.

        This is what counts for a custom ``forward`` too (dict batches, HuggingFace models), after whatever the
        forward does to the batch. None when the forward never calls the model (it calls ``model.forward`` or
        submodules directly), so that the inputs cannot be seen.
        """
        seen: dict = {}

        def hook(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, kwargs
            raise _Seen

        # an FSDP2 root: first of its pre-hooks, so that FSDP does not begin a forward that stops here (otherwise after
        # the user's own pre-hooks: the inputs the model receives, as those hooks transform them)
        first = self.model in fsdp2_modules(self.model)
        handle = self.model.register_forward_pre_hook(hook, with_kwargs=True, prepend=first)
        try:
            with torch.no_grad():
                self.forward(batch)
        except _Seen:
            pass
        finally:
            handle.remove()
        if not seen:
            return None
        names = positional_names(self.model, len(seen["args"]))
        named = [item for n, a in zip(names, seen["args"]) for item in named_tensors(a, n)]
        named += [item for k, v in seen["kwargs"].items() for item in named_tensors(v, k)]
        return ModelInputs(tuple(named))
