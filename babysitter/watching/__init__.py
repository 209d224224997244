"""Watching a training run from inside the user's own loop (``babysitter.watch``), and the framework adapters
(``babysitter.lightning``, ``babysitter.hf``) that wrap the same watcher."""
from .record import RunRecord, WatchRules
from .watcher import Watcher, watch

__all__ = ["watch", "Watcher", "WatchRules", "RunRecord"]
