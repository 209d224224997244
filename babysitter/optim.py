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


#: optimizers whose ``lr`` multiplies an update that corrects its own units, with the range of ``lr`` that trains in
#: practice: Adadelta (Zeiler 2012) scales each step by the RMS of past updates over the RMS of gradients, so its
#: step grows from sqrt(eps) by itself and ``lr`` is a multiplier around 1 (PyTorch's default and its MNIST
#: example's 1.0; 0.1 to 10 all train on the models measured); torch's Adafactor takes a step relative to each
#: parameter's RMS, capped by min(lr, 1/sqrt(step)), around its default 1e-2
MULTIPLIER_RANGES = {"Adadelta": (0.1, 10.0), "Adafactor": (1e-3, 0.1)}


def lr_multiplier_range(optimizer: Any) -> Optional[tuple[float, float]]:
    """The range of ``lr`` that trains for torch's optimizers whose ``lr`` is a multiplier of a unit-correcting
    update (``MULTIPLIER_RANGES``), None for an optimizer whose ``lr`` is a step size. A range test reads such an
    ``lr`` poorly: the update's scale builds up over many more steps than the sweep spends at one LR."""
    opts = getattr(optimizer, "optimizers", (optimizer,))
    ranges = {MULTIPLIER_RANGES.get(type(o).__name__) if type(o) is getattr(torch.optim, type(o).__name__, None)
              else None for o in opts}
    return ranges.pop() if len(ranges) == 1 else None


def lr_unused(optimizer: Any) -> Optional[str]:
    """Why setting ``lr`` cannot steer this optimizer (a range test of it means nothing), or None when it can."""
    for o in getattr(optimizer, "optimizers", (optimizer,)):
        name = type(o).__name__
        if isinstance(o, torch.optim.LBFGS):
            return "LBFGS searches its own step size (its lr scales a line search); an LR range test does not apply"
        if isinstance(o, torch.optim.Rprop):
            return ("Rprop's lr is only each weight's first step size, which it then adapts by itself every step "
                    "(x1.2 or x0.5, within its step_sizes): setting the LR during a sweep changes nothing")
        if name == "Adafactor" and any(g.get("relative_step") for g in o.param_groups):
            return ("Adafactor with relative_step=True computes its own step size (lr is None and unused); an LR "
                    "range test does not apply")
    return None


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
