"""A Hugging Face ``TrainerCallback`` that watches ``Trainer.train`` with :func:`babysitter.watch`::

    from babysitter.hf import BabysitterTrainerCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[BabysitterTrainerCallback(out="reports/run1")])

The loss is read from the model's output (``outputs.loss``, a forward hook, in training mode only), the gradients
at the optimizer's step (the torch optimizer inside accelerate's wrapper), and the report is written by the
world's process zero (``state.is_world_process_zero``) when training ends. The Trainer clips gradients before
any callback sees them (``max_grad_norm``, 1.0 by default), so the norms the watch reads are clipped ones: the
report says so, and its clip suggestion is meaningful with ``max_grad_norm=0``. Callbacks hear of no exception:
to keep the partial report of a run that fails, use the callback as a context manager around ``train()``::

    with BabysitterTrainerCallback(out="reports/run1") as watch:
        Trainer(model, args, train_dataset=ds, callbacks=[watch]).train()
"""
from __future__ import annotations

from typing import Any, Optional

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover
    raise ImportError("babysitter.hf needs transformers: pip install 'babysitter[hf]'") from exc

from .watching import Watcher


class BabysitterTrainerCallback(TrainerCallback):
    """Watch a Trainer run; ``options`` are :class:`babysitter.Watcher`'s (``every``, ``sync_every``, ...)."""

    def __init__(self, out: Any = "reports/watch", **options: Any):
        self.out, self.options = out, options
        self.watcher: Optional[Watcher] = None
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        if model is None or optimizer is None:
            return
        self.watcher = Watcher(model, optimizer, out=self.out if state.is_world_process_zero else None,
                               name=type(model).__name__, **{"live": False, **self.options}).__enter__()
        self._hook = model.register_forward_hook(self._loss_of)

    def _loss_of(self, module, args, output) -> None:
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if module.training and loss is not None and self.watcher is not None and self.watcher.state == "open":
            self.watcher.record_loss(loss)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._close(None)

    def __enter__(self) -> "BabysitterTrainerCallback":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(exc)

    def _close(self, error) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.watcher is not None:
            self.watcher.close(error)

    @property
    def report(self):
        """The run's report once training ended (None before)."""
        return self.watcher.report_ if self.watcher is not None else None
