"""The training probe: a short real training run with the user's optimizer and learning rate, from the user's
state, recording per step the loss, every parameter's gradient norm and finiteness, and every few steps the
update/weight ratios."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from ..analysis.batches import named_tensors
from ..distributed import local, whole
from ..instruments.hooks import attached
from ..optim import lr_of
from .stepper import Stepper

#: optimizer steps in the shared training probe
TRAIN_STEPS = 24
#: float16 under autocast: the probe skips a step whose gradients overflow, as a GradScaler would
AUTOCAST_FP16 = "float16 (autocast)"
#: a measured step's update is read against the weights kept from before it; a parameter of more entries than
#: this keeps about this many, on a stride prime to its last dimension, and its update norm is estimated from
#: them (relative error about 1/sqrt(2 * UPDATE_SAMPLE) for dense updates): a full copy of every parameter would
#: be one more copy of the model held beside the snapshot
UPDATE_SAMPLE = 1 << 16


@dataclass(frozen=True)
class TrainProbe:
    """A short real training run with the user's optimizer and learning rate, from the user's state."""

    steps: int
    lr: Optional[float]
    losses: tuple[float, ...]
    grad_norm: tuple[float, ...]  # total gradient norm per step (before the optimizer step)
    param_names: tuple[str, ...]
    param_grad_norms: tuple  # [step][param]; nan where the parameter got no gradient
    update_ratios: tuple  # [measured step][param]: ||delta w|| / ||w||, every few steps and at the last
    weight_norms: tuple  # [measured step][param]: ||w|| before the step
    param_finite: tuple  # [step][param]: finite after the step
    no_grad: tuple[str, ...]  # trainable parameters that never received a gradient
    not_in_optimizer: tuple[str, ...]  # trainable parameters the optimizer does not hold
    frozen: tuple[str, ...]  # parameters with requires_grad=False
    skipped_steps: tuple[int, ...] = ()  # optimizer steps skipped as GradScaler would
    precision: str = "float32"  # "float16 (autocast)", "float16 parameters", "bfloat16", ...
    instruments: Mapping[str, Any] = field(default_factory=dict)
    step: tuple[str, ...] = ()  # the parts of the user's step the probe ran (clipping, accumulation, ...)
    closure: bool = False  # a closure optimizer (LBFGS): one step is many evaluations and a line search

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


def param_precision(params: list) -> str:
    """The floating-point precision the parameters train in ("float32" when mixed or unknown)."""
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if dtypes == {torch.float16}:
        return "float16 parameters"
    if dtypes == {torch.bfloat16}:
        return "bfloat16"
    return "float32" if not dtypes or torch.float32 in dtypes else str(next(iter(dtypes))).replace("torch.", "")


class _Recorder:
    """Device tensors of the probe's measurements, read to the host once at the end."""

    def __init__(self, params: list, device: torch.device):
        self.params, self.device = params, device
        self.index = {id(p): i for i, p in enumerate(params)}
        self.zero = torch.zeros((), device=device)
        self.losses, self.totals, self.per_param, self.masks, self.finite = [], [], [], [], []
        self.ratios, self.norms = [], []
        self.got_grad = [False] * len(params)
        self.row: list = []

    def begin(self) -> None:
        self.row = [None] * len(self.params)

    def read(self, params: list) -> torch.Tensor:
        """The gradient norms of ``params`` (final for this step); returns the step's total norm so far (NaN when
        a gradient is NaN)."""
        for p in params:
            i = self.index.get(id(p))
            if i is not None and p.grad is not None:
                self.row[i] = whole(p.grad.detach().float().norm())  # FSDP2: the whole gradient's norm
        norms = [v for v in self.row if v is not None]
        return torch.stack(norms).pow(2).sum().sqrt() if norms else self.zero

    def end(self, loss: torch.Tensor) -> None:
        """Close the step: its loss and gradient norms (a parameter never read got no gradient)."""
        has = [v is not None for v in self.row]
        norms = torch.stack([v if h else self.zero for v, h in zip(self.row, has)]) if self.params \
            else self.zero.new_zeros(0)
        self.got_grad = [g or h for g, h in zip(self.got_grad, has)]
        self.masks.append(has)
        self.losses.append(loss.detach().float().reshape(()))
        self.totals.append(norms.pow(2).sum().sqrt())
        self.per_param.append(norms)

    def after_step(self, before: Optional[list]) -> None:
        """Record the parameters' finiteness, and the update ratios when ``before`` holds what was kept of their
        old values (see ``Kept``)."""
        self.finite.append(torch.stack([whole(torch.isfinite(p.detach()).all()) for p in self.params]) if self.params
                           else torch.ones(0, dtype=torch.bool, device=self.device))
        if before is None:
            return
        updates = [k.update(p) for p, k in zip(self.params, before)]
        self.ratios.append(torch.stack([d / k.norm.clamp_min(1e-12) for d, k in zip(updates, before)])
                           if self.params else torch.zeros(0))
        self.norms.append(torch.stack([k.norm for k in before]) if self.params else torch.zeros(0))

    @staticmethod
    def host(xs: list) -> tuple:
        return tuple(map(tuple, torch.stack(xs).cpu().tolist())) if xs and xs[0].ndim else \
            tuple(torch.stack(xs).cpu().tolist()) if xs else ()


class Kept:
    """What a measured step keeps of a parameter before its update: all of it (up to ``UPDATE_SAMPLE`` entries), or
    every ``stride``-th entry of its flattened values, with the stride prime to its last dimension so that every
    column is read (and every row, when rows are longer than the stride)."""

    def __init__(self, p: torch.Tensor):
        w = local(p.detach())  # FSDP2: this rank's shard
        n = w.numel()
        self.stride = 1 if n <= UPDATE_SAMPLE else _stride(n, w.shape[-1])
        self.values = w.clone() if self.stride == 1 else w.reshape(-1)[::self.stride].clone()
        self.norm = self.values.float().norm() if self.stride == 1 else w.float().norm()

    def update(self, p: torch.Tensor) -> torch.Tensor:
        """||p - p_before||: exact for a parameter kept whole; else from the kept entries, scaled to the whole
        parameter, and, when none of them moved, the change of the norm (a lower bound, so that a parameter that
        moved elsewhere is not read as still)."""
        w = local(p.detach())  # FSDP2: this rank's shard
        if self.stride == 1:
            return (w - self.values).float().norm()
        d = (w.reshape(-1)[::self.stride] - self.values).float().norm() * math.sqrt(w.numel() / self.values.numel())
        return torch.where(d == 0, (w.float().norm() - self.norm).abs(), d)


def _stride(n: int, last: int) -> int:
    """The smallest stride that keeps at most ``UPDATE_SAMPLE`` of ``n`` entries and is prime to ``last``."""
    stride = -(-n // UPDATE_SAMPLE)
    while math.gcd(stride, last) != 1:
        stride += 1
    return stride


def _precision(outputs: Any, params: list, stepper: Stepper) -> str:
    """float16 under autocast (declared in the step, or done by the user's forward: the outputs at init were
    float16), or the parameters' own precision."""
    if stepper.autocast is torch.float16:
        return AUTOCAST_FP16
    precision = param_precision(params)
    if precision == "float32" and any(t.dtype == torch.float16 for _, t in named_tensors(outputs)):
        return AUTOCAST_FP16
    return precision


def train_probe(session, instruments: Mapping, steps: int = TRAIN_STEPS,
                measure_every: Optional[int] = None) -> TrainProbe:
    """``steps`` training steps the way the user trains (their Step or step function, their scheduler), with
    ``instruments`` attached."""
    init_outputs = session.evidence("init_pass").outputs[0]  # before anything here changes the model
    model = session.model
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    rec = _Recorder([p for _, p in trainable], session.device)
    optimizer = session.make_optimizer()
    user_lr = lr_of(optimizer)  # the user's LR, before a scheduler changes it
    stepper = Stepper(session, optimizer)
    precision = _precision(init_outputs, rec.params, stepper)
    measure_every = measure_every or max(1, steps // 6)
    skipped: list[int] = []
    model.train()
    with attached(instruments, model) as active:
        for step in range(steps):
            measure = step % measure_every == 0 or step == steps - 1
            out, before = _step(session, stepper, rec, step, measure, precision)
            if out.skipped:
                skipped.append(step)
            rec.after_step(before)
        results = {name: inst.result(reduce=session.ranks.mean_if_same) for name, inst in active.items()}
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return _probe(rec, steps, user_lr, trainable, named, in_opt, skipped, precision, results, stepper)


def _step(session, stepper: Stepper, rec: _Recorder, step: int, measure: bool, precision: str):
    """One probe step: the gradients read where the user's step would clip them, the weights copied before the
    update on measured steps."""
    k = stepper.accumulate
    rec.begin()
    before: list = []

    def on_grads(loss, params) -> bool:
        total = rec.read(params)
        if measure and not before:
            before.extend(Kept(p) for p in rec.params)
        return stepper.scaler is None and loss is not None and _overflowed(precision, loss, total)

    out = stepper.step([session.batch(step * k + j) for j in range(k)], on_grads)
    rec.end(out.loss)
    if measure and not before:  # a step function whose optimizers never stepped: nothing moved
        before.extend(Kept(p) for p in rec.params)
    return out, (before if measure else None)


def _overflowed(precision: str, loss: torch.Tensor, total: torch.Tensor) -> bool:
    """Mixed precision: a GradScaler skips the step whose gradients overflow float16 (found_inf) and lowers its
    scale; the probe does the same, at the cost of one host sync per step in that mode only."""
    return precision == AUTOCAST_FP16 and bool(torch.isfinite(loss.detach())) and not bool(torch.isfinite(total))


def _probe(rec: _Recorder, steps, lr, trainable, named, in_opt, skipped, precision, results,
           stepper: Stepper) -> TrainProbe:
    """Everything recorded on the device to the host, in one transfer per series."""
    names = tuple(n for n, _ in trainable)
    per_param = rec.host(rec.per_param)
    return TrainProbe(
        steps=steps, lr=lr, losses=rec.host(rec.losses), grad_norm=rec.host(rec.totals), param_names=names,
        param_grad_norms=tuple(tuple(v if h else math.nan for v, h in zip(row, m))
                               for row, m in zip(per_param, rec.masks)),
        update_ratios=rec.host(rec.ratios), weight_norms=rec.host(rec.norms),
        param_finite=rec.host(rec.finite), no_grad=tuple(n for n, g in zip(names, rec.got_grad) if not g),
        not_in_optimizer=tuple(n for n, p in trainable if id(p) not in in_opt),
        frozen=tuple(n for n, p in named if not p.requires_grad), skipped_steps=tuple(skipped),
        precision=precision, instruments=results, step=tuple(stepper.kept()), closure=stepper.closure)
