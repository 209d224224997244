"""The watcher: the checklist's instruments inside the user's own training loop, cheaply.

    with babysitter.watch(model, optimizer, out="reports/run1") as w:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            w.after_backward(loss)
            optimizer.step()
            optimizer.zero_grad()

Hooks on the optimizer's step (``register_step_pre_hook``/``register_step_post_hook``) do the work, so gradient
accumulation (several backwards per step), a ``GradScaler`` (its ``step`` unscales before it calls the optimizer, and
skips the call on a non-finite gradient), param groups and LR schedulers need nothing from the user; the only call
in the loop hands over the loss.

Per optimizer step, on the device: one fused norm over all gradients (``torch._foreach_norm``), stacked into a row
of a ring buffer; the losses handed over (and the scaler's scale) are kept as device scalars. Both are read to the
host once every ``sync_every`` steps, in two transfers; the host records are updated a block at a time. On sampled steps (every ``every`` steps, and the first): the update/weight ratio of every
parameter (a copy of the parameters before the step, freed after it) and the activation instrument of the
checklist over that step's forward. On the first non-finite value, the next forwards are run with a finiteness
probe on every module's output (detail switched on), which names the first module that produces one. Everything
kept on the host is bounded (see :mod:`babysitter.analysis.run`): a run of a million steps holds what a run of a
thousand does. Nothing random is drawn, no mode is changed, every hook is removed on exit.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..analysis.activations import DEAD_UNIT
from ..analysis.run import Downsampled, LossTracker, RecentWindow, ZClip
from ..errors import UsageError
from ..instruments.activations import ActivationInstrument
from ..instruments.hooks import HookSet
from .record import ActivationSample, RunRecord, WatchRules

#: activation samples kept (the first always; the rest thinned by halves when full)
SAMPLES_KEPT = 64


class Watcher:
    """Records a training run from inside the user's loop; :func:`watch` makes one. Use it as a context manager:
    on leaving the block (normally, on an exception or on Ctrl-C) its hooks are removed and, when ``out`` is given,
    the report is written there."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, out: Any = None, every: int = 50,
                 name: Optional[str] = None, scaler: Any = None, sync_every: int = 32,
                 write_every_s: Optional[float] = None, live: Optional[bool] = None,
                 rules: WatchRules = WatchRules()):
        optimizer = _unwrapped(optimizer)
        _validate(model, optimizer, every, sync_every, scaler)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.out, self.every, self.sync_every, self.rules = out, int(every), int(sync_every), rules
        self.name = name or type(model).__name__
        self.write_every_s = write_every_s
        self.live = sys.stderr.isatty() if live is None else bool(live)
        self.state = "new"
        self.hooks = HookSet()
        self.report_ = None

    # -- entering and leaving ------------------------------------------------------------------------
    def __enter__(self) -> "Watcher":
        if self.state != "new":
            raise UsageError(f"this watcher was already {self.state}: make a new one with babysitter.watch(...)")
        self.params, self.names = _optimizer_params(self.model, self.optimizer)
        self._open_records()
        self.hooks.add(self.model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True))
        self.hooks.add(self.optimizer.register_step_pre_hook(self._before_step))
        self.hooks.add(self.optimizer.register_step_post_hook(self._after_step))
        self.hooks.on_close(self._close_sample)
        self.state = "open"
        self._open_sample()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    def close(self, error: Optional[BaseException] = None) -> None:
        """Stop watching: read what is left on the device, remove every hook, write the report (when ``out`` was
        given). Called on leaving the ``with`` block; calling it again does nothing."""
        if self.state != "open":
            return
        try:
            self._flush()
        except Exception as exc:  # the last read failed (the device is gone): the report says so, and is written
            error = error or exc
        finally:
            self.hooks.close()
            self.state = "closed"
            self.elapsed = time.perf_counter() - self.started
        self._finish(error)

    def _open_records(self) -> None:
        p = len(self.params)
        device = self.params[0].device
        self.ring = torch.full((self.sync_every, p), math.nan, device=device)
        self._rows = list(self.ring.unbind(0))
        self.same_dtype = all(q.dtype == torch.float32 for q in self.params)
        self.slot, self.steps, self.backwards = 0, 0, 0
        self._losses: list = []  # this step's losses (device scalars)
        self._scalars: list = []  # per step of the block: (its losses, the given norm, the scale)
        self._given: Optional[Any] = None
        self._recorded_for = -1
        self._lrs: list = []
        self._snapshot: Optional[list] = None
        self._ratio_rows: list = []
        self._sample: Optional[tuple[int, ActivationInstrument]] = None
        self._detail: Optional[_FiniteProbe] = None
        self._inputs: Optional[tuple] = None  # the last forward's (args, kwargs): references, not copies
        self.checks_each_step = device.type == "cpu"
        self.record = RunRecord.empty(self.name, self.names, [len(g["params"]) for g in self.optimizer.param_groups],
                                      self.rules)
        self.started = self._last_write = time.perf_counter()

    # -- what the loop calls --------------------------------------------------------------------------
    def after_backward(self, loss: Any, grad_norm: Any = None) -> None:
        """Hand over the loss of this backward (a scalar tensor or number; with gradient accumulation, call it
        after every backward: the step's loss is their mean). ``grad_norm``: the total gradient norm your loop
        measured before clipping (what ``clip_grad_norm_`` returns), used instead of the norm the optimizer sees."""
        self._require_open("after_backward")
        self.record_loss(loss)
        self.backwards += 1
        if grad_norm is not None:
            self._given = grad_norm.detach() if isinstance(grad_norm, torch.Tensor) else float(grad_norm)

    def record_loss(self, loss: Any) -> None:
        """The loss of a forward of this step, without counting a backward (the framework adapters' entry)."""
        self._require_open("record_loss")
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise UsageError(f"babysitter.watch: the loss must be a scalar, got a tensor of shape "
                                 f"{tuple(loss.shape)} (reduce it with .mean() or .sum() first)")
            self._losses.append(loss.detach().reshape(()))
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            self._losses.append(torch.tensor(float(loss)))
        else:
            raise UsageError(f"babysitter.watch: the loss must be a scalar tensor or a number, got "
                             f"{type(loss).__name__}")

    def record_gradients(self) -> None:
        """Read this step's gradient norms now (a framework calls it where gradients are unscaled and not yet
        clipped, as Lightning's ``on_before_optimizer_step``); otherwise the optimizer's step reads them."""
        self._require_open("record_gradients")
        row = self._rows[self.slot]
        grads = [p.grad for p in self.params]
        if self.same_dtype and all(g is not None and g.layout == torch.strided for g in grads):
            torch.stack(torch._foreach_norm(grads), out=row)
        else:
            _norms_slowly(grads, row)
        self._recorded_for = self.steps

    def _require_open(self, what: str) -> None:
        if self.state != "open":
            raise UsageError(f"babysitter.watch: {what}() called outside the `with babysitter.watch(...)` block "
                             f"(the watcher is {self.state})")

    # -- the optimizer's hooks ------------------------------------------------------------------------
    def _keep_inputs(self, module, args, kwargs) -> None:
        if module.training:
            self._inputs = (args, kwargs)

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self._sampled(self.steps):  # the parameters before the step, for its update/weight ratios
            self._snapshot = [p.detach().clone() for p in self.params]
        if self.checks_each_step and len(args) <= 1 and kwargs.get("closure") is None:  # args: (optimizer,)
            self.record_gradients()
            if self.record.nonfinite is None and self.record.forward_site is None and not self._loss_finite():
                self._replay()

    def _loss_finite(self) -> bool:
        """Whether this step's losses are finite: read at once where reading is free (on the CPU, where no device
        queue runs ahead), before the step writes a non-finite value into the weights. A finite loss with
        non-finite gradients broke in the backward pass: the 32-step read names its parameters."""
        if not self._losses:
            return True
        return bool(torch.isfinite(torch.stack([loss.float().reshape(()) for loss in self._losses])).all())

    def _replay(self) -> None:
        """The first non-finite step, seen before it is applied: run its forward again on the inputs it had, with
        the finiteness probe on every module, no gradient, every RNG and buffer as they were (so the run is not
        changed), to name the first module whose output is not finite."""
        if self._inputs is None:
            return
        args, kwargs = self._inputs
        probe = _FiniteProbe(self.model, 1, self.record, replay=True)
        try:
            with torch.no_grad(), _kept(self.model):
                self.model(*args, **kwargs)
        except Exception:  # a replay that fails says nothing; the probe on later forwards still runs
            pass
        finally:
            probe.close()
        if self.record.forward_site is None:
            self.record.forward_site = ("the loss function", "the model's outputs were finite")

    def _after_step(self, optimizer, args, kwargs) -> None:
        """Everything of the step is read after it: a step with a closure (LBFGS, Lightning) runs the forward and
        backward inside ``step()``, after the pre-hook; the optimizer leaves the gradients as they were."""
        if self._recorded_for != self.steps:
            self.record_gradients()
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        self._scalars.append((self._losses, self._given, None if scale is None else scale.detach().clone()))
        self._losses, self._given = [], None
        # a tensor LR (capturable optimizers) is read with the block, not synced here every step
        self._lrs.append(tuple(g["lr"].detach().clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                               for g in optimizer.param_groups))
        if self._snapshot is not None:
            self._ratio_rows.append((self.steps, _update_norms(self.params, self._snapshot)))
            self._snapshot = None
        self._close_sample()
        self.steps += 1
        self.slot += 1
        if self.slot == self.sync_every:
            self._flush()
        if self._sampled(self.steps):
            self._open_sample()

    def _sampled(self, step: int) -> bool:
        return step % self.every == 0

    # -- activation samples ---------------------------------------------------------------------------
    def _open_sample(self) -> None:
        instrument = ActivationInstrument(self.model)
        instrument.__enter__()
        self._sample = (self.steps, instrument)

    def _close_sample(self) -> None:
        if self._sample is None:
            return
        step, instrument = self._sample
        self._sample = None
        instrument.__exit__(None, None, None)
        if instrument.forwards:
            self.record.add_sample(ActivationSample.of(step, instrument.result(), DEAD_UNIT), SAMPLES_KEPT)

    # -- reading the device ---------------------------------------------------------------------------
    def _flush(self) -> None:
        """The ring's rows, the block's scalars and the sampled ratios to the host (one transfer each), then the
        bounded records."""
        n = self.slot
        if n == 0 and not self._ratio_rows:
            return
        norms = self.ring[:n].cpu().numpy().astype(float)
        losses, has_loss, given, scale = _scalars(self._scalars[:n], self.ring.device)
        ratios = [(s, r.cpu().numpy().astype(float)) for s, r in self._ratio_rows]
        first, lrs = self.steps - n, [tuple(_lr(v) for v in row) for row in self._lrs[:n]]
        self.ring[:n].fill_(math.nan)
        self.slot, self._lrs, self._scalars, self._ratio_rows = 0, self._lrs[n:], self._scalars[n:], []
        event = self.record.add_steps(first, losses, has_loss, given, scale, norms, lrs, self._backoff())
        for step, (moved, weights) in ratios:
            event = self.record.add_ratios(step, moved, weights) or event
        if event is not None and self._detail is None and self.record.forward_site is None:
            self._detail = _FiniteProbe(self.model, self.rules.detail_forwards, self.record)
            self.hooks.on_close(self._detail.close)
        self._on_flush()

    def _backoff(self) -> float:
        return float(getattr(self.scaler, "_backoff_factor", 0.5)) if self.scaler is not None else 0.5

    def _on_flush(self) -> None:
        if self.live:
            sys.stderr.write("\r" + self.record.status_line() + "\033[K")
            sys.stderr.flush()
        if self.write_every_s is not None and self.out is not None \
                and time.perf_counter() - self._last_write >= self.write_every_s:
            self._last_write = time.perf_counter()
            self.elapsed = self._last_write - self.started
            self._write(self.report(running=True))

    # -- the report -----------------------------------------------------------------------------------
    def report(self, *, running: bool = False, error: Optional[BaseException] = None):
        """The run's report so far (the same :class:`babysitter.Report` as ``babysit check`` writes)."""
        from .verdicts import build_report

        return build_report(self.record, run=self._run_facts(running, error),
                            interrupted=isinstance(error, KeyboardInterrupt))

    def _run_facts(self, running: bool, error: Optional[BaseException]) -> dict:
        facts = {"mode": "watch", "running": running, "optimizer_steps": self.steps, "backwards": self.backwards,
                 "every": self.every, "device": str(self.params[0].device), "optimizer": type(self.optimizer).__name__,
                 "param_groups": len(self.optimizer.param_groups), "scaler": self.scaler is not None,
                 "duration_s": round(getattr(self, "elapsed", time.perf_counter() - self.started), 3)}
        if error is not None:
            facts["stopped_by"] = f"{type(error).__name__}: {error}"[:300]
        return facts

    def _finish(self, error: Optional[BaseException]) -> None:
        if self.live:
            sys.stderr.write("\n")
        self.report_ = self.report(error=error)
        if self.out is not None:
            self._write(self.report_)

    def _write(self, report) -> None:
        try:
            report.save(self.out)
        except Exception as exc:  # a report that cannot be written must not hide the user's own error
            sys.stderr.write(f"babysitter.watch: could not write the report to {self.out}: {exc}\n")

    def state_size(self) -> int:
        """How many numbers the watcher keeps (host records and device buffers): bounded, whatever the run's
        length (a test runs 2,000 steps against it)."""
        return self.record.size() + self.ring.numel() + len(self._lrs) * len(self.optimizer.param_groups)


class _FiniteProbe:
    """Detail switched on after a non-finite value: a forward hook on every module notes whether its output is
    finite (on the device), and at the end of each forward one transfer names the first module, in call order,
    whose output was not. Removed after ``forwards`` forwards or once a module is named."""

    def __init__(self, model: nn.Module, forwards: int, record: RunRecord, replay: bool = False):
        self.record, self.left, self.replay = record, forwards, replay
        self.flags: list = []
        self.hooks = HookSet()
        self.names = {m: n or "model" for n, m in model.named_modules()}
        for module in self.names:
            self.hooks.add(module.register_forward_hook(self._hook))
        self.hooks.add(model.register_forward_hook(self._done))

    def _hook(self, module, args, output) -> None:
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            self.flags.append((module, torch.isfinite(out.detach()).all()))

    def _done(self, model, args, output) -> None:
        flags, self.flags = self.flags, []
        self.left -= 1
        if flags:
            good = torch.stack([f for _, f in flags]).cpu().tolist()
            bad = [m for (m, _), ok in zip(flags, good) if not ok]
            if bad:
                self.record.forward_site = (self.names[bad[0]], _what_of(bad[0], self.replay))
        if self.left <= 0 or self.record.forward_site is not None:
            self.close()

    def close(self) -> None:
        self.hooks.close()


def _what_of(module: nn.Module, replay: bool) -> str:
    """A module with a non-finite output: its type, and whether its own parameters were already non-finite (a
    past update wrote them, so the module only carries the fault on)."""
    own = list(module.parameters(recurse=False))
    broken = bool(own) and not all(bool(torch.isfinite(p).all()) for p in own)
    when = "in a replay of the step" if replay else "on a later forward"
    return f"{type(module).__name__}, {when}" + (", its own parameters already non-finite" if broken else "")


@contextlib.contextmanager
def _kept(model: nn.Module):
    """Every RNG and every buffer of ``model`` as they were, after the block (a replayed forward draws dropout
    masks and updates BatchNorm's running statistics)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[d for d in _cuda_devices(model)]):
        yield
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)


def _cuda_devices(model: nn.Module) -> list:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _unwrapped(optimizer: Any) -> Any:
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer.optimizer``,
    Lightning's ``LightningOptimizer._optimizer``): its step is the one whose hooks run."""
    for attr in ("optimizer", "_optimizer"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            return _unwrapped(inner)
    return optimizer


# -- validation ------------------------------------------------------------------------------------------
def _validate(model, optimizer, every, sync_every, scaler) -> None:
    if not isinstance(model, nn.Module):
        raise UsageError(f"babysitter.watch: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(f"babysitter.watch: optimizer must be a torch.optim.Optimizer, got "
                         f"{type(optimizer).__name__}")
    for key, value in (("every", every), ("sync_every", sync_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"babysitter.watch: {key} must be a positive integer, got {value!r}")
    if scaler is not None and not hasattr(scaler, "unscale_"):
        raise UsageError(f"babysitter.watch: scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")


def _optimizer_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list, list[str]]:
    """The optimizer's parameters in its order, with their names in ``model`` (the optimizer's position for one
    that is not the model's, such as a loss's own temperature); an error when none is the model's."""
    names = {p: n for n, p in model.named_parameters(remove_duplicate=False)}
    params, labels, seen = [], [], set()
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if p in seen:
                continue
            seen.add(p)
            params.append(p)
            labels.append(names.get(p, f"param_groups[{g}].params[{i}]"))
    if not params:
        raise UsageError("babysitter.watch: the optimizer has no parameters")
    if not any(p in names for p in params):
        raise UsageError(f"babysitter.watch: none of the optimizer's {len(params)} parameters belongs to the model "
                         f"{type(model).__name__}: pass the model the optimizer trains")
    return params, labels


def _scalars(block: list, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A block's per-step (losses, given norm, scale) to host arrays in one transfer: each step's loss (the mean
    of its losses), whether it had one, the given norm and the scale (NaN when absent)."""
    values, where = [], []
    for i, (losses, given, scale) in enumerate(block):
        for column, value in ((0, torch.stack(losses).float().mean() if len(losses) > 1 else
                               losses[0] if losses else None), (1, given), (2, scale)):
            if value is not None:
                values.append(torch.as_tensor(value, dtype=torch.float32).to(device).reshape(()))
                where.append((i, column))
    out = np.full((3, len(block)), np.nan)
    if values:
        for (i, column), v in zip(where, torch.stack(values).cpu().tolist()):
            out[column, i] = v
    has_loss = np.array([bool(losses) for losses, _, _ in block], bool)
    return out[0], has_loss, out[1], out[2]


def _norms_slowly(grads: list, row: torch.Tensor) -> None:
    """The norms of gradients that are missing (0), sparse (of their values) or of mixed dtypes, into ``row``."""
    row.zero_()
    present = [i for i, g in enumerate(grads) if g is not None]
    if present:
        dense = [grads[i].coalesce().values() if grads[i].is_sparse else grads[i] for i in present]
        norms = torch.stack([n.float().to(row.device) for n in torch._foreach_norm(dense)])
        row[torch.tensor(present, device=row.device)] = norms


def _update_norms(params: list, before: list) -> torch.Tensor:
    """(2, P): the norm of each parameter's update and of the parameter after it."""
    current = [p.detach() for p in params]
    moved = torch._foreach_norm(torch._foreach_sub(current, before))
    weights = torch._foreach_norm(current)
    return torch.stack([torch.stack([m.float() for m in moved]), torch.stack([w.float() for w in weights])])


def _lr(value: Any) -> float:
    return float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, **options) -> Watcher:
    """Watch a training run from inside your own loop (see :class:`Watcher` for the options)::

        with babysitter.watch(model, optimizer, out="reports/run1", every=50) as w:
            ...
            loss.backward()
            w.after_backward(loss)
            optimizer.step()
    """
    return Watcher(model, optimizer, **options)
