"""A Lightning callback that watches ``Trainer.fit`` with :func:`babysitter.watch` (the same watcher)::

    from babysitter.lightning import BabysitterCallback
    trainer = lightning.Trainer(callbacks=[BabysitterCallback(out="reports/run1")])

It takes the loss where Lightning hands it to backward (``on_before_backward``, scaled back by
``accumulate_grad_batches``), the gradients in ``on_before_optimizer_step`` (unscaled by a 16-bit precision plugin,
before Lightning clips them), and writes the report on the global-zero process when training ends or fails
(``on_exception``: the partial report is written). The first optimizer is watched.
"""
from __future__ import annotations

from typing import Any, Optional

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("babysitter.lightning needs Lightning: pip install 'babysitter[lightning]'") from exc

from .watching import Watcher


class BabysitterCallback(Callback):
    """Watch a Lightning run; ``options`` are :class:`babysitter.Watcher`'s (``every``, ``sync_every``, ...)."""

    def __init__(self, out: Any = "reports/watch", **options: Any):
        self.out, self.options = out, options
        self.watcher: Optional[Watcher] = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.optimizers:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.watcher = Watcher(pl_module, trainer.optimizers[0], out=self.out if trainer.is_global_zero else None,
                               scaler=scaler, name=type(pl_module).__name__,
                               **{"live": False, **self.options}).__enter__()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._open():
            self.watcher.record_loss(loss.detach() * trainer.accumulate_grad_batches)
            self.watcher.backwards += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._open():
            self.watcher.record_gradients()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.watcher is not None:
            self.watcher.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.watcher is not None:
            self.watcher.close(exception)

    def _open(self) -> bool:
        return self.watcher is not None and self.watcher.state == "open"

    @property
    def report(self):
        """The run's report once training ended (None before)."""
        return self.watcher.report_ if self.watcher is not None else None
