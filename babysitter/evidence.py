"""Shared evidence: passes over the model that several checks read, each computed once per session.

A provider is a function ``session -> value`` registered under a name with :func:`provider`. The session
resets the model to the user's state before and after each provider, so providers never see each other's
training. Instruments that want to ride along on a shared pass register a factory in
``INIT_INSTRUMENTS`` or ``TRAIN_INSTRUMENTS``: ``factory(session) -> context manager`` with a
``result()`` method, read back by checks as ``evidence.instruments[name]``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .session import batch_size_of, lr_of, named_tensors

PROVIDERS: dict[str, Callable] = {}
INIT_INSTRUMENTS: dict[str, Callable] = {}
TRAIN_INSTRUMENTS: dict[str, Callable] = {}

#: batches in the instrumented pass at initialization
INIT_BATCHES = 4
#: optimizer steps in the shared training probe
TRAIN_STEPS = 24


def provider(name: str):
    def register(fn):
        PROVIDERS[name] = fn
        return fn

    return register


def _cpu_capped(obj: Any, limit: int = 1 << 22) -> Any:
    """A detached host copy of a tensor (or structure), None when it is larger than ``limit`` elements."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu") if obj.numel() <= limit else None
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_capped(v, limit) for v in obj) if not hasattr(obj, "_fields") else obj
    if isinstance(obj, dict):
        return {k: _cpu_capped(v, limit) for k, v in obj.items()}
    return obj


def dense_values(t: torch.Tensor) -> torch.Tensor:
    """The stored values of a sparse tensor (an ``nn.Embedding(sparse=True)`` gradient), or the tensor itself:
    element-wise tests such as ``isfinite`` have no sparse kernel."""
    return t.coalesce().values() if t.is_sparse else t


@contextlib.contextmanager
def _instruments(factories: dict, session) -> Any:
    active = {}
    with contextlib.ExitStack() as stack:
        for name, factory in factories.items():
            active[name] = stack.enter_context(factory(session))
        yield active


@dataclass
class InitPass:
    """Forward and backward passes at initialization (train mode), over the first batches of the pool."""

    losses: list[float]
    outputs: list  # host copies of each batch's outputs (None where too large)
    targets: list
    batch_sizes: list[int]
    grads_finite: bool
    instruments: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return float(sum(self.losses) / len(self.losses))


@provider("init_pass")
def init_pass(session, batches: int = INIT_BATCHES) -> InitPass:
    model = session.model
    model.train()
    losses, outputs_kept, targets_kept, sizes = [], [], [], []
    n = min(batches, len(session.pool))
    finite = torch.ones((), dtype=torch.bool, device=session.device)
    with _instruments(INIT_INSTRUMENTS, session) as active:
        for i in range(n):
            batch = session.batch(i)
            model.zero_grad(set_to_none=True)
            loss, outputs, targets = session.forward_loss(batch)
            if loss.requires_grad:
                loss.backward()
            losses.append(loss.detach())
            outputs_kept.append(_cpu_capped(outputs))
            targets_kept.append(_cpu_capped(targets))
            sizes.append(batch_size_of(targets) or batch_size_of(batch) or 0)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            finite = torch.stack([torch.isfinite(dense_values(g)).all() for g in grads]).all()
        results = {name: inst.result() for name, inst in active.items()}
    model.zero_grad(set_to_none=True)
    return InitPass(losses=torch.stack(losses).float().cpu().tolist(), outputs=outputs_kept, targets=targets_kept,
                    batch_sizes=sizes, grads_finite=bool(finite), instruments=results)


@dataclass
class TrainProbe:
    """A short real training run with the user's optimizer and learning rate, from the user's state."""

    steps: int
    lr: Optional[float]
    losses: list[float]
    grad_norm: list[float]  # total gradient norm per step (before the optimizer step)
    param_names: list[str]
    param_grad_norms: list[list[float]]  # [step][param]; nan where the parameter got no gradient
    update_steps: list[int]  # steps at which update ratios were measured
    update_ratios: list[list[float]]  # [measured step][param]: ||delta w|| / ||w||
    no_grad: list[str]  # trainable parameters that never received a gradient
    not_in_optimizer: list[str]  # trainable parameters the optimizer does not hold
    frozen: list[str]  # parameters with requires_grad=False
    trained_state: dict = field(default_factory=dict)  # name -> host tensor after the probe
    instruments: dict = field(default_factory=dict)
    param_finite: list[list[bool]] = field(default_factory=list)  # [step][param]: finite after the step
    skipped_steps: list[int] = field(default_factory=list)  # optimizer steps skipped as GradScaler would
    precision: str = "float32"  # "float16 (autocast)", "float16 parameters", "bfloat16", ...
    weight_norms: list[list[float]] = field(default_factory=list)  # [measured step][param]: ||w|| before the step

    def first_nonfinite(self) -> Optional[tuple[int, str]]:
        """The first step at which the probe saw a non-finite value, and where: loss, gradient or parameters.

        Steps skipped as GradScaler would skip them (non-finite gradients in float16) do not count.
        """
        for step in range(len(self.losses)):
            if not math.isfinite(self.losses[step]):
                return step, "loss"
            if not math.isfinite(self.grad_norm[step]) and step not in self.skipped_steps:
                return step, "gradient"
            if step < len(self.param_finite) and not all(self.param_finite[step]):
                return step, "parameters"
        return None


@provider("train_probe")
def train_probe(session, steps: int = TRAIN_STEPS, measure_every: Optional[int] = None) -> TrainProbe:
    model = session.model
    model.train()
    named = [(n, p) for n, p in model.named_parameters()]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    names = [n for n, _ in trainable]
    params = [p for _, p in trainable]
    optimizer = session.make_optimizer()
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    measure_every = measure_every or max(1, steps // 6)
    losses, totals, per_param, ratio_rows, ratio_steps, norm_rows = [], [], [], [], [], []
    got_grad = [False] * len(params)
    zero = torch.zeros((), device=session.device)
    masks: list[list[bool]] = []
    finite_rows: list[torch.Tensor] = []
    skipped: list[int] = []
    precision = _param_precision(params)
    with _instruments(TRAIN_INSTRUMENTS, session) as active:
        for step in range(steps):
            batch = session.batch(step)
            optimizer.zero_grad(set_to_none=True)
            loss, outputs, _ = session.forward_loss(batch)
            if step == 0 and precision == "float32" and any(t.dtype == torch.float16 for _, t in named_tensors(outputs)):
                precision = "float16 (autocast)"
            if loss.requires_grad:
                loss.backward()
            has = [p.grad is not None for p in params]
            norms = torch.stack([p.grad.detach().float().norm() if h else zero for p, h in zip(params, has)]) \
                if params else zero.new_zeros(0)
            got_grad = [g or h for g, h in zip(got_grad, has)]
            masks.append(has)
            losses.append(loss.detach().float())
            total = norms.pow(2).sum().sqrt()  # a NaN gradient makes the total NaN
            totals.append(total)
            per_param.append(norms)
            measure = step % measure_every == 0 or step == steps - 1
            if measure:
                before = [p.detach().clone() for p in params]
            # mixed precision: a GradScaler skips the step whose gradients overflow float16 (found_inf) and
            # lowers its scale; the probe does the same, at the cost of one host sync per step in that mode only
            skip = precision == "float16 (autocast)" and bool(torch.isfinite(loss.detach())) \
                and not bool(torch.isfinite(total))
            if skip:
                skipped.append(step)
            else:
                optimizer.step()
            finite_rows.append(torch.stack([torch.isfinite(p.detach()).all() for p in params]) if params
                               else torch.ones(0, dtype=torch.bool, device=session.device))
            if measure:
                ratio_steps.append(step)
                ratio_rows.append(torch.stack([
                    (p.detach() - b).float().norm() / b.float().norm().clamp_min(1e-12)
                    for p, b in zip(params, before)]) if params else torch.zeros(0))
                norm_rows.append(torch.stack([b.float().norm() for b in before]) if params else torch.zeros(0))
                del before
        results = {name: inst.result() for name, inst in active.items()}
    # one host transfer for everything recorded on the device
    host = lambda xs: torch.stack(xs).cpu().tolist() if xs else []  # noqa: E731
    trained = {n: p.detach().to("cpu", copy=True) for n, p in named}
    got = got_grad
    return TrainProbe(
        steps=steps, lr=lr_of(optimizer), losses=host(losses), grad_norm=host(totals), param_names=names,
        param_grad_norms=[[v if h else float("nan") for v, h in zip(row, m)]
                          for row, m in zip(host(per_param), masks)], update_steps=ratio_steps, update_ratios=host(ratio_rows),
        no_grad=[n for n, g in zip(names, got) if not g],
        not_in_optimizer=[n for n, p in trainable if id(p) not in in_opt],
        frozen=[n for n, p in named if not p.requires_grad],
        trained_state=trained, instruments=results, param_finite=host(finite_rows), skipped_steps=skipped,
        precision=precision, weight_norms=host(norm_rows))


def _param_precision(params: list) -> str:
    """The floating-point precision the parameters train in ("float32" when mixed or unknown)."""
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if dtypes == {torch.float16}:
        return "float16 parameters"
    if dtypes == {torch.bfloat16}:
        return "bfloat16"
    return "float32" if not dtypes or torch.float32 in dtypes else str(next(iter(dtypes))).replace("torch.", "")
