"""The session owns the model while checks run.

It moves the model to the device, seeds every RNG, takes the sandbox's snapshot and restores it on exit
(success, error or Ctrl-C alike), draws the batch pool, validates the first batch, and keeps the evidence cache,
the run's facts and its timings. The parts it composes do the rest: :class:`~babysitter.pool.BatchPool` (the
batches), :class:`~babysitter.usercode.UserCode` (calling the user's forward, loss and optimizer) and
:class:`~babysitter.evidence.EvidenceCache` (passes computed once).
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Mapping, Optional

import torch

from . import memory
from .analysis.batches import batch_size_of
from .distributed import Ranks
from .errors import SkipCheck, TargetError, UsageError
from .evidence import EvidenceCache
from .memory import release_host_memory
from .optim import lr_of
from .pool import DEFAULT_MAX_BATCHES, BatchPool, draw
from .sandbox import Snapshot, seed_everything  # noqa: F401  (seed_everything re-exported)
from .target import Target, validate_first_batch, validate_pool
from .usercode import ModelInputs, UserCode


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) is CUDA when available, else the CPU; an unavailable CUDA is a usage error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    return dev


def _step_fact(step: Any) -> Optional[str]:
    """The user's step as the report states it: None for a plain step."""
    from .step import Step

    if step is None:
        return None
    if isinstance(step, Step):
        return ", ".join(step.parts()) or None
    return f"step function {getattr(step, '__qualname__', type(step).__name__)}"


class Session:
    """Lifecycle: ``with Session(target) as s:`` moves and snapshots the model, seeds, draws and validates the
    first batch; ``s.reset()`` returns to the user's state between checks; leaving restores everything.
    Composes the batch pool (``s.pool``, ``s.batch(i)``), the user's code (``s.forward``, ``s.loss``,
    ``s.make_optimizer``) and the evidence cache (``s.evidence(name)``); ``s.options`` holds the checks'
    threshold overrides, which the evidence that a check's readings come from uses too.

    On an accelerator the session keeps to a memory budget (``babysitter.memory``): the pool's device copies fit in
    a share of the free memory, and with ``guard_memory`` (the runner's sessions) a pass that would not fit is
    skipped before it starts.
    """

    def __init__(self, target: Target, *, device: str | torch.device | None = "auto", seed: int = 0,
                 max_batches: int = DEFAULT_MAX_BATCHES, where: Optional[str] = None,
                 options: Optional[Mapping[str, Mapping]] = None, guard_memory: bool = False,
                 ranks: Optional[Ranks] = None):
        self.target, self.code = target, UserCode(target)
        self.ranks = ranks or Ranks()  # under torchrun: the collectives that keep the ranks' passes in step
        self.model, self.loss_fn = target.model, target.loss_fn
        self.device, self.seed, self.max_batches = resolve_device(device), int(seed), int(max_batches)
        self.where = where or (f"target '{target.name}'" if target.name else None)
        self.options: Mapping[str, Mapping] = dict(options or {})
        self.pool = BatchPool([], self.device)
        self.facts: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._evidence = EvidenceCache(self.reset, self.timings)
        self._snapshot: Optional[Snapshot] = None
        self._guard_memory, self._guarding = guard_memory, False

    # -- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        self._snapshot = Snapshot(self.model, self.code.instance)
        try:
            self._move_model()
            seed_everything(self.seed)
            self.prepare()
        except BaseException:
            self.close()
            raise
        self._guarding = self._guard_memory
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot = None
        self._evidence.clear()
        self.pool.release()
        release_host_memory()

    def _move_model(self) -> None:
        devices = {t.device for t in itertools.chain(self.model.parameters(), self.model.buffers())}
        self.model_device = next(iter(devices)) if len(devices) == 1 else None
        if len(devices) > 1:  # a model spread over devices stays where it is
            self.device = torch.device("cuda") if any(d.type == "cuda" for d in devices) else self.device
            self.pool.device = self.device
            return
        if devices and self.model_device != self.device:
            self.model.to(self.device)
        self._snapshot.restore_optimizer()  # puts a user optimizer's state on the parameters' device

    def reset(self) -> None:
        """Back to the state the user handed over (model, optimizer, modes), on the session's device, reseeded."""
        self._snapshot.restore_model(onto=self.device if self.model_device is not None else None)
        self._snapshot.restore_optimizer()
        seed_everything(self.seed)

    def prepare(self) -> None:
        """Draw the batch pool and run the user's code once on the first batch (see target.validate_first_batch)."""
        t0 = time.perf_counter()
        try:
            batches = draw(self.target.data, batch_size=self.target.batch_size, seed=self.seed,
                           max_batches=self.max_batches, where=self.where)
        except TargetError:
            raise
        except Exception as exc:  # any failure of the user's data is a target error
            raise TargetError(f"iterating it raised {type(exc).__name__}: {exc}", where=self.where,
                              field="data") from exc
        validate_pool(batches, self.target.data, self.where)
        self.pool = BatchPool(batches, self.device, device_bytes=self._pool_budget(batches))
        batch = self.batch(0)
        optimizer = validate_first_batch(self.code, batch, self.make_optimizer, self.where)
        self.facts.update(self._facts(optimizer, batch))
        self.reset()
        self.timings["prepare"] = time.perf_counter() - t0

    def _pool_budget(self, batches: list) -> int:
        """The bytes of batches the pool may keep on the device (see ``memory.pool_budget``); on an accelerator the
        device's memory is a fact of the run."""
        budget, fact = memory.pool_budget(self.device, batches)
        if fact:
            self.facts["device_memory"] = fact
        return budget

    def memory_shortfall(self) -> Optional[str]:
        """Why a training pass starting now would not fit in the accelerator's free memory, or None (see
        ``memory.shortfall``)."""
        return memory.shortfall(self.device, self.model, self.code.instance)

    def _facts(self, optimizer: torch.optim.Optimizer, batch: Any) -> dict[str, Any]:
        params = list(self.model.parameters())
        return dict(optimizer=type(optimizer).__name__, optimizer_source=self.code.optimizer_source,
                    user_lr=lr_of(optimizer), batches=len(self.pool), batch_size=batch_size_of(batch),
                    parameters=sum(p.numel() for p in params),
                    trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
                    loss_fn=getattr(self.loss_fn, "__qualname__", None) or type(self.loss_fn).__name__,
                    model=type(self.model).__name__, step=_step_fact(self.code.step))

    # -- the parts, as checks use them ----------------------------------------------------------------------
    def batch(self, i: int) -> Any:
        """Batch ``i`` of the pool (cycling), on the session's device."""
        return self.pool.batch(i)

    def forward(self, batch: Any) -> tuple[Any, Any]:
        return self.code.forward(batch)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.code.loss(outputs, targets)

    def forward_loss(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        return self.code.forward_loss(batch)

    def inputs_of(self, batch: Any) -> Optional[ModelInputs]:
        return self.code.inputs_of(batch)

    def make_optimizer(self, params=None) -> torch.optim.Optimizer:
        """A fresh optimizer with the user's settings, over ``params`` (default: the model's parameters). With a
        user-provided optimizer instance, it is that instance, reset to its original state. Every pass that trains
        starts here: in a guarded session, one that would not fit in the device's memory is skipped
        (:class:`SkipCheck` with ``memory_shortfall``'s reason)."""
        if self._guarding:
            short = self.ranks.first_found(self.memory_shortfall() or None)  # under torchrun: all ranks skip
            if short:
                raise SkipCheck(short)
        if params is None and self.code.instance is not None:
            self._snapshot.restore_optimizer()
            return self.code.instance
        return self.code.optimizer_factory(list(self.model.parameters()) if params is None else params)

    @property
    def user_lr(self) -> Optional[float]:
        return self.facts.get("user_lr")

    def evidence(self, name: str) -> Any:
        """Shared evidence (see babysitter.evidence), computed once per session from the user's state."""
        return self._evidence.get(name, self)
