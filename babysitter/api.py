"""The Python API: ``babysitter.check(...)`` in one call, or ``babysitter.wrap(model, ...)`` then ``.check()``."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from torch import nn

from .report import Report
from .target import Target


class Sitter:
    """A model wrapped with its data, loss and optimizer; ``check()`` runs the checklist on it, ``watch(steps)`` a
    short watched training."""

    def __init__(self, target: Target):
        self.target = target

    def check(self, *, device: str = "auto", seed: int = 0, select: Optional[Iterable[str]] = None,
              ignore: Optional[Iterable[str]] = None, options: Optional[Mapping[str, Mapping]] = None,
              max_batches: Optional[int] = None) -> Report:
        """Run the checklist (or the ``select``-ed items) and return the report; the model is left untouched."""
        from .runner import run_target

        return run_target(self.target, device=device, seed=seed, select=select, ignore=ignore, options=options,
                          max_batches=max_batches)

    def watch(self, steps: int, *, every: int = 50, device: str = "auto", seed: int = 0) -> Report:
        """Train the wrapped model ``steps`` optimizer steps the way the target trains, under the watcher, and
        return the watch's report; the model is left untouched (see :mod:`babysitter.watching.target`)."""
        from .watching.target import watch_target

        return watch_target(self.target, steps=steps, every=every, device=device, seed=seed)


def wrap(model: nn.Module, data: Any = None, *, loss_fn: Callable, optimizer: Any = None,
         forward: Optional[Callable] = None, batch_size: Optional[int] = None,
         name: Optional[str] = None, step: Any = None) -> Sitter:
    """Wrap a model with the target fields (see :class:`babysitter.Target`)."""
    return Sitter(Target(model=model, data=data, loss_fn=loss_fn, optimizer=optimizer, forward=forward,
                         batch_size=batch_size, name=name or type(model).__name__, step=step))


def check(model: nn.Module, data: Any = None, *, loss_fn: Callable, optimizer: Any = None,
          forward: Optional[Callable] = None, batch_size: Optional[int] = None, name: Optional[str] = None,
          device: str = "auto", seed: int = 0, select: Optional[Iterable[str]] = None,
          ignore: Optional[Iterable[str]] = None, options: Optional[Mapping[str, Mapping]] = None,
          max_batches: Optional[int] = None, step: Any = None) -> Report:
    """Run the checklist on a model with its data, loss and optimizer settings; returns the :class:`Report`."""
    return wrap(model, data, loss_fn=loss_fn, optimizer=optimizer, forward=forward, batch_size=batch_size,
                name=name, step=step).check(device=device, seed=seed, select=select, ignore=ignore, options=options,
                                 max_batches=max_batches)
