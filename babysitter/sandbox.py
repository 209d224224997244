"""The sandbox: a snapshot of everything a check may change, restored bitwise.

Captured: parameter and buffer values (and gradients), every module's train/eval flag, every parameter's
``requires_grad``, the optimizer's state and hyper-parameters, and the torch, CUDA, numpy and Python RNG
states (and, before CUDA is initialized, the CUDA seed queued for its first use). The copies live in host memory,
so checking a large model does not double its GPU memory. A restore runs to its end even if Ctrl-C is pressed
during it; the interrupt follows.
"""
from __future__ import annotations

import contextlib
import copy
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn


def _cpu_clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def _tree_to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _cpu_clone(obj)
    if isinstance(obj, dict):
        return {k: _tree_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def seed_everything(seed: int) -> None:
    """Seed every RNG the sandbox restores: Python's, numpy's, torch's (CUDA's too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


@dataclass
class RngState:
    """The global RNGs: torch's CPU generator, every CUDA generator, numpy's and Python's.

    Before CUDA is initialized there is no CUDA state to copy; what decides the state CUDA will start with is the
    seed torch queues for its first use (``torch.manual_seed`` queues one, even on a machine without CUDA). That
    queue is kept instead, and put back; if the run initialized CUDA, each generator is set to the state the user's
    first CUDA use would have found: a fresh generator's, with their queued seeds applied.
    """

    torch_cpu: torch.Tensor
    cuda: Optional[list]
    numpy: Any
    python: Any
    cuda_pending: Optional[tuple] = None  # the queued CUDA seeds, when CUDA was not initialized

    @classmethod
    def capture(cls) -> "RngState":
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda, pending = torch.cuda.get_rng_state_all(), None
        else:
            cuda, pending = None, _pending_cuda_seeds()
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate(), pending)

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        else:
            _restore_pending_cuda_seeds(self.cuda_pending)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def _seed_tracker() -> Any:
    # private: torch keeps the seeds queued before CUDA's initialization here (torch >= 2.1)
    return getattr(torch.cuda, "_lazy_seed_tracker", None)


def _pending_cuda_seeds() -> Optional[tuple]:
    tracker = _seed_tracker()
    if tracker is None:
        return None
    return tracker.manual_seed_all_cb, tracker.manual_seed_cb, list(tracker.call_order)


def _restore_pending_cuda_seeds(pending: Optional[tuple]) -> None:
    """Put the queue back; if CUDA was initialized meanwhile, replay what its initialization would have done."""
    tracker = _seed_tracker()
    if tracker is None or pending is None:
        return
    tracker.manual_seed_all_cb, tracker.manual_seed_cb, tracker.call_order = pending[0], pending[1], list(pending[2])
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    for i in range(torch.cuda.device_count()):
        torch.cuda.default_generators[i].set_state(torch.Generator(device=f"cuda:{i}").get_state())
    for queued in pending[2]:
        if queued:
            queued[0]()  # (seed callback, traceback)


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it as KeyboardInterrupt at its end, so that a
    restore is never left half done. Only in the main thread, and only while Python's own handler is installed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


@dataclass
class ModelState:
    """Values, gradients, flags and devices of a module tree, held on the host."""

    tensors: dict = field(default_factory=dict)  # id -> (tensor object, cpu copy, device, grad copy or None)
    slots: list = field(default_factory=list)  # (module, dict name, attribute name, tensor object)
    training: list = field(default_factory=list)  # (module, flag)
    requires_grad: list = field(default_factory=list)  # (param, flag)

    @classmethod
    def capture(cls, model: nn.Module) -> "ModelState":
        state = cls()
        for m in model.modules():
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(m, kind).items():
                    if t is None:
                        continue
                    state.slots.append((m, kind, name, t))
                    if id(t) not in state.tensors:  # tied weights are captured once
                        grad = t.grad if isinstance(t, nn.Parameter) else None
                        state.tensors[id(t)] = (t, _cpu_clone(t), t.device,
                                                None if grad is None else _cpu_clone(grad))
        state.training = [(m, m.training) for m in model.modules()]
        state.requires_grad = [(t, t.requires_grad) for t, *_ in state.tensors.values() if isinstance(t, nn.Parameter)]
        return state

    def restore(self, onto: Optional[torch.device] = None) -> None:
        """Put every value, gradient, device and flag back. Tensors keep their identity (in-place copies).

        ``onto`` puts the values on that device instead of each tensor's original one (the session's
        resets between probes, which keep the model on the accelerator).
        """
        for m, kind, name, t in self.slots:  # a tensor that a check replaced is bound again
            if getattr(m, kind).get(name) is not t:
                getattr(m, kind)[name] = t
        with torch.no_grad():
            for t, saved, device, grad in self.tensors.values():
                device = onto or device
                if t.device != device or t.dtype != saved.dtype or t.shape != saved.shape:
                    t.data = saved.to(device, copy=True)
                else:
                    t.copy_(saved)
                if isinstance(t, nn.Parameter):
                    t.grad = None if grad is None else grad.to(device, copy=True)
        for m, flag in self.training:
            m.training = flag
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


class Snapshot:
    """Capture model, optimizer and RNG state; ``restore()`` puts all of it back, bitwise."""

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        self.model = model
        self.optimizer = optimizer
        self.model_state = ModelState.capture(model)
        self.optimizer_state = _tree_to_cpu(optimizer.state_dict()) if optimizer is not None else None
        self.rng = RngState.capture()

    def restore_model(self, onto: Optional[torch.device] = None) -> None:
        self.model_state.restore(onto)

    def restore_optimizer(self) -> None:
        """Load a copy of the saved state (load_state_dict may alias the tensors it is given)."""
        if self.optimizer is not None:
            # load_state_dict casts state tensors onto each parameter's device; bitwise for equal dtypes
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))

    def restore(self) -> None:
        """Everything back; a Ctrl-C pressed meanwhile is raised once all of it is back."""
        with _ctrl_c_deferred():
            try:
                self.restore_model()
                self.restore_optimizer()
            finally:
                self.rng.restore()
