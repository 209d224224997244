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

from .distributed import fsdp2_modules


def _cpu_clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def tree_to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _cpu_clone(obj)
    if isinstance(obj, dict):
        return {k: tree_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _tree_copy(obj: Any, device: Optional[torch.device], key: Any = None) -> Any:
    """A copy of a saved optimizer state entry: tensors copied onto ``device`` (the parameter's), except a
    ``step`` counter, which stays where it was saved (load_state_dict's own rule, which also moves it when the
    optimizer wants it on the device); containers rebuilt, other values deep-copied."""
    if isinstance(obj, torch.Tensor):
        return obj.to(obj.device if key == "step" or device is None else device, copy=True)
    if isinstance(obj, dict):
        return {k: _tree_copy(v, device, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_copy(v, device) for v in obj)
    return copy.deepcopy(obj)


def _optimizer_copy(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A state dict for ``optimizer.load_state_dict``: the saved one, each parameter's state copied straight onto
    that parameter's device (no second host copy on the way)."""
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = {i: p.device for i, p in zip(ids, params)}
    return {**saved, "state": {k: _tree_copy(v, device.get(k)) for k, v in saved["state"].items()},
            "param_groups": copy.deepcopy(saved["param_groups"])}


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
    sharded: list = field(default_factory=list)  # FSDP2 modules (fully_shard), resharded before a capture or restore

    @classmethod
    def capture(cls, model: nn.Module) -> "ModelState":
        state = cls(sharded=fsdp2_modules(model))
        _reshard(state.sharded)
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
        _reshard(self.sharded)  # FSDP2 registers its sharded parameters again: the ones captured
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
                    _restore_grad(t, grad, device)
        for m, flag in self.training:
            m.training = flag
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


def _reshard(modules: list) -> None:
    """FSDP2 leaves a root's parameters unsharded after a forward without backward (a no_grad pass): resharding
    registers the sharded parameters again, so the module holds the tensors the snapshot knows and the next forward
    unshards them as FSDP expects."""
    for m in modules:
        m.reshard()


def _restore_grad(param: nn.Parameter, saved: Optional[torch.Tensor], device: torch.device) -> None:
    """The saved gradient copied into the one the parameter holds when they match (no allocation), else the
    parameter's gradient let go before a copy of the saved one is made: the two never coexist."""
    live = param.grad
    if saved is None:
        param.grad = None
    elif live is not None and live.layout == torch.strided and live.device == device and live.dtype == saved.dtype \
            and live.shape == saved.shape:
        live.copy_(saved)
    else:
        param.grad = None
        param.grad = saved.to(device, copy=True)


def _placement(param: torch.Tensor, value: torch.Tensor, key: Any, device_step: bool) -> tuple:
    """Where ``Optimizer.load_state_dict`` puts a state tensor of ``param`` (torch's own rule): a ``step`` counter
    stays as it is unless the optimizer is fused or capturable (then float32 on the parameter's device); anything
    else goes to the parameter's device, cast to its dtype when the parameter is floating-point."""
    if key == "step":
        return (param.device, torch.float32) if device_step else (value.device, value.dtype)
    return param.device, (param.dtype if param.is_floating_point() else value.dtype)


def _into(live: Any, value: Any, param: torch.Tensor, device_step: bool, key: Any = None) -> Any:
    """``value`` (saved) as ``load_state_dict`` would place it, copied into ``live`` (the optimizer's current
    entry) where the tensors match in device, dtype and shape; a fresh copy where they do not."""
    if isinstance(value, torch.Tensor):
        device, dtype = _placement(param, value, key, device_step)
        if isinstance(live, torch.Tensor) and live.device == device and live.dtype == dtype \
                and live.shape == value.shape and live.layout == torch.strided:
            live.copy_(value)
            return live
        return value.to(device=device, dtype=dtype, copy=True)
    if isinstance(value, dict):
        live = live if isinstance(live, dict) else {}
        return {k: _into(live.get(k), v, param, device_step, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        live = list(live) if isinstance(live, (list, tuple)) and len(live) == len(value) else [None] * len(value)
        return type(value)(_into(x, v, param, device_step) for x, v in zip(live, value))
    return copy.deepcopy(value)


def in_place_loadable(optimizer: torch.optim.Optimizer, saved: dict) -> bool:
    """Whether putting ``saved`` back needs nothing ``load_state_dict`` alone does: torch's own method, no load
    hooks, the same groups with as many parameters each."""
    return type(optimizer).load_state_dict is torch.optim.Optimizer.load_state_dict \
        and isinstance(optimizer.state, dict) \
        and not getattr(optimizer, "_optimizer_load_state_dict_pre_hooks", None) \
        and not getattr(optimizer, "_optimizer_load_state_dict_post_hooks", None) \
        and len(optimizer.param_groups) == len(saved["param_groups"]) \
        and all(len(g["params"]) == len(s["params"]) for g, s in zip(optimizer.param_groups, saved["param_groups"]))


def load_in_place(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """What ``optimizer.load_state_dict(saved)`` leaves, reached by copying into the tensors the optimizer holds:
    no second state is allocated beside the one a check trained, and the user's own state tensors stay theirs."""
    entries = {}
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        device_step = bool(saved_group.get("fused") or saved_group.get("capturable"))
        for p, i in zip(group["params"], saved_group["params"]):
            entries[i] = (p, device_step)
    held = {id(p) for p, _ in entries.values()}
    for key in [k for k in optimizer.state if id(k) not in held]:  # load_state_dict keeps only the saved entries
        del optimizer.state[key]
    for i, (p, device_step) in entries.items():
        if i not in saved["state"]:
            optimizer.state.pop(p, None)
        else:
            optimizer.state[p] = _into(optimizer.state.get(p), saved["state"][i], p, device_step)
    for k, v in saved["state"].items():  # state not assigned to a parameter is loaded as it is
        if k not in entries:
            optimizer.state[k] = _tree_copy(v, None)
    order = [entries[k][0] if k in entries else k for k in saved["state"]]
    if list(map(id, optimizer.state)) != list(map(id, order)):  # the saved order, as load_state_dict leaves it
        kept = [(k, optimizer.state[k]) for k in order]
        optimizer.state.clear()
        optimizer.state.update(kept)
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        for k in [k for k in group if k not in saved_group and k not in ("params", "param_names")]:
            del group[k]
        group.update({k: copy.deepcopy(v) for k, v in saved_group.items() if k != "params"})


class Snapshot:
    """Capture model, optimizer and RNG state; ``restore()`` puts all of it back, bitwise."""

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        self.model = model
        self.optimizer = optimizer
        self.model_state = ModelState.capture(model)
        self.optimizer_state = tree_to_cpu(optimizer.state_dict()) if optimizer is not None else None
        self.rng = RngState.capture()

    def restore_model(self, onto: Optional[torch.device] = None) -> None:
        self.model_state.restore(onto)

    def restore_optimizer(self) -> None:
        """The saved state and hyper-parameters back, as ``load_state_dict`` would put them: copied into the
        optimizer's own state tensors when it is a plain torch optimizer; otherwise its state is let go first and
        a copy made on each parameter's device is loaded (load_state_dict keeps the tensors it is given when they
        are already where it would cast them). Either way a check's state and a second copy never coexist."""
        if self.optimizer is None:
            return
        if in_place_loadable(self.optimizer, self.optimizer_state):
            load_in_place(self.optimizer, self.optimizer_state)
            return
        if isinstance(getattr(self.optimizer, "state", None), dict):
            self.optimizer.state.clear()
        self.optimizer.load_state_dict(_optimizer_copy(self.optimizer_state, self.optimizer))

    def restore(self) -> None:
        """Everything back; a Ctrl-C pressed meanwhile is raised once all of it is back."""
        with _ctrl_c_deferred():
            try:
                self.restore_model()
                self.restore_optimizer()
            finally:
                self.rng.restore()
