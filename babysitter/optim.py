"""The user's optimizer: rebuilding it with the user's settings, and reading or setting its learning rate."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch

#: hyper-parameters that only per-parameter adaptive optimizers have
_ADAPTIVE_KEYS = ("betas", "alpha", "rho", "initial_accumulator_value", "beta1", "beta2", "eps_root")
_ADAPTIVE_NAMES = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "SparseAdam",
                   "Adafactor", "LAMB", "Lamb", "Lion")
#: param-group keys set to zero when regularization is switched off
DECAY_KEYS = ("weight_decay",)


def default_optimizer(params) -> torch.optim.Optimizer:
    """The optimizer used when a target gives none: Adam with PyTorch's default settings."""
    return torch.optim.Adam(params, lr=1e-3)


def rebuilder(optimizer: torch.optim.Optimizer) -> Callable[..., torch.optim.Optimizer]:
    """A factory ``params -> optimizer`` of the same class with the first group's hyper-parameters, limited to
    what the constructor takes: torch adds keys of its own to param groups (AdamW's 'decoupled_weight_decay',
    'initial_lr' from schedulers)."""
    cls, groups = type(optimizer), optimizer.param_groups
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}

    def rebuild(params):
        return cls(list(params), **{k: v for k, v in groups[0].items() if k in accepted})

    return rebuild


def lr_of(optimizer: torch.optim.Optimizer) -> Optional[float]:
    """The first param group's LR (a tensor LR read as a float), None when the optimizer has none."""
    lr = optimizer.param_groups[0].get("lr")
    return float(lr) if isinstance(lr, torch.Tensor) else lr


def group_scales(optimizer: torch.optim.Optimizer) -> tuple[Optional[float], list[float]]:
    """The first group's LR, and every group's LR relative to it (all groups are scaled together)."""
    lrs = [float(g.get("lr", 0.0)) for g in optimizer.param_groups]
    ref = lrs[0] if lrs else None
    if not ref or ref <= 0:
        return ref, [1.0] * len(lrs)
    return ref, [v / ref for v in lrs]


def set_lr(optimizer: torch.optim.Optimizer, lr: float, scales: list[float]) -> None:
    """Set the first group's LR to ``lr`` and every other group's to ``lr`` times its scale."""
    for g, s in zip(optimizer.param_groups, scales):
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr * s)
        else:
            g["lr"] = lr * s


def zero_decay(optimizer: torch.optim.Optimizer) -> list[str]:
    """Set weight decay to zero in every param group; returns what was changed, for the report."""
    changed = []
    for i, g in enumerate(optimizer.param_groups):
        for key in DECAY_KEYS:
            if g.get(key):
                changed.append(f"group {i} {key}={g[key]:g}")
                g[key] = 0.0
    return changed


def is_adaptive(optimizer: torch.optim.Optimizer) -> bool:
    """Adam-like optimizers normalise each step by a running gradient scale; SGD-like ones do not."""
    return any(k in optimizer.param_groups[0] for k in _ADAPTIVE_KEYS) or type(optimizer).__name__ in _ADAPTIVE_NAMES


class OptimizerGroup:
    """Several optimizers (a GAN's generator and discriminator) seen as one: their param groups together, so that
    an LR set through them scales every optimizer alike; ``user_view`` is what the target's factory returned,
    handed to the target's own step function as it is."""

    def __init__(self, optimizers: list, user_view: Any):
        self.optimizers, self.user_view = list(optimizers), user_view

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]


def as_optimizer(value: Any) -> Any:
    """What a target's optimizer factory returned, as one optimizer: a torch optimizer as it is, a list, tuple or
    dict of them as an :class:`OptimizerGroup`; anything else unchanged (the caller reports it)."""
    if isinstance(value, torch.optim.Optimizer):
        return value
    items = list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, (list, tuple)) \
        else None
    if items and all(isinstance(o, torch.optim.Optimizer) for o in items):
        return OptimizerGroup(items, value)
    return value
