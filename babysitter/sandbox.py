"""The sandbox: a snapshot of everything a check may change, restored bitwise.

Captured: parameter and buffer values (and gradients), every module's train/eval flag, every parameter's
``requires_grad``, the optimizer's state and hyper-parameters, and the torch, CUDA, numpy and Python RNG
states. The copies live in host memory, so checking a large model does not double its GPU memory.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, Optional

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


@dataclass
class RngState:
    torch_cpu: torch.Tensor
    cuda: Optional[list]
    numpy: Any
    python: Any

    @classmethod
    def capture(cls) -> "RngState":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


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
        self.restore_model()
        self.restore_optimizer()
        self.rng.restore()
