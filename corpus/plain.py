"""The plain-loop evidence: each case and fault trained by an ordinary PyTorch loop at its own settings.

No babysitter code runs here (only the declared ``babysitter.Step`` fields are read, to clip or accumulate as the
user's loop would; a declared scheduler is left out, so the LR stays the optimizer's). A healthy case must train: its loss over the whole data set, in eval mode, falls well below the
loss at initialization. A fault must hurt: after the same number of steps its eval loss is worse than the healthy
case's (or not finite).

    python -m corpus.plain            # the table for every case and fault
    python -m corpus.plain bert       # the cases and faults whose names contain 'bert'
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .data import batches as split_batches

#: a healthy case trains when its final eval loss is at most this fraction of its initial eval loss
TRAINS_BELOW = 0.8
#: a fault hurts when its final eval loss exceeds the healthy case's by this factor (or is not finite)
HURTS_ABOVE = 1.1


@dataclass(frozen=True)
class PlainRun:
    """Eval loss over the whole data set at initialization and after ``steps`` optimizer steps."""

    steps: int
    initial: float
    final: float

    @property
    def trains(self) -> bool:
        return math.isfinite(self.final) and self.final <= TRAINS_BELOW * self.initial


def _batches(fields: dict) -> list:
    data = fields["data"]
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return split_batches(*data, size=fields.get("batch_size") or 32)
    return list(data)


def _loss(fields: dict, batch: Any) -> torch.Tensor:
    model = fields["model"]
    if fields.get("forward") is not None:
        outputs, targets = fields["forward"](model, batch)
    else:
        inputs, targets = batch
        outputs = model(inputs)
    return fields["loss_fn"](outputs, targets)


def eval_loss(fields: dict, batches: Iterable) -> float:
    """The mean loss over ``batches`` in eval mode, without gradients; inf when not finite."""
    model = fields["model"]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = [float(_loss(fields, b)) for b in batches]
    finally:
        model.train(was)
    value = sum(losses) / len(losses)
    return value if math.isfinite(value) else math.inf


def _step_settings(fields: dict) -> tuple[Any, Any, int]:
    step = fields.get("step")
    if step is None:
        return None, None, 1
    if not hasattr(step, "clip_grad_norm"):
        raise ValueError(f"the plain loop runs declared babysitter.Steps only, not {type(step).__name__}")
    return step.clip_grad_norm, step.clip_grad_value, step.accumulate or 1


def train(fields: dict, steps: int, seed: int = 0) -> PlainRun:
    """Train ``fields`` (target fields) in place for ``steps`` optimizer steps, cycling over its batches."""
    torch.manual_seed(seed)
    model, batches = fields["model"], _batches(fields)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = fields["optimizer"](params) if fields.get("optimizer") else torch.optim.SGD(params, lr=1e-2)
    clip_norm, clip_value, accumulate = _step_settings(fields)
    initial = eval_loss(fields, batches)
    model.train()
    i = 0
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(accumulate):
            loss = _loss(fields, batches[i % len(batches)]) / accumulate
            i += 1
            if not torch.isfinite(loss):
                return PlainRun(steps, initial, math.inf)
            loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if clip_value:
            torch.nn.utils.clip_grad_value_(params, clip_value)
        opt.step()
    return PlainRun(steps, initial, eval_loss(fields, batches))


def evidence(names: str = "") -> list[dict]:
    """One row per case and fault whose name contains ``names``: the plain runs and whether each shows what it
    must (a case trains; a fault's final loss is worse than its healthy case's)."""
    import corpus

    healthy = {c.name: c for c in corpus.cases()}
    runs, rows = {}, []
    for case in healthy.values():
        if names in case.name or any(names in f.name for f in corpus.faults() if f.base == case.name):
            runs[case.name] = train(case.build(0), case.plain_steps)
            if names in case.name:
                r = runs[case.name]
                rows.append(dict(name=case.name, kind="healthy", initial=r.initial, final=r.final, shows=r.trains))
    for fault in corpus.faults():
        if names in fault.name:
            base = runs[fault.base]
            r = train(fault.build(0), healthy[fault.base].plain_steps)
            hurts = not math.isfinite(r.final) or r.final > HURTS_ABOVE * base.final
            rows.append(dict(name=fault.name, kind=f"fault ({fault.check})", initial=r.initial, final=r.final,
                             healthy_final=base.final, shows=hurts))
    return rows


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    rows = evidence(argv[0] if argv else "")
    print(f"{'name':28} {'kind':28} {'initial':>9} {'final':>9} {'healthy':>9}  shows")
    for r in rows:
        healthy = f"{r['healthy_final']:9.4g}" if "healthy_final" in r else " " * 9
        print(f"{r['name']:28} {r['kind']:28} {r['initial']:9.4g} {r['final']:9.4g} {healthy}  "
              f"{'yes' if r['shows'] else 'NO'}", flush=True)
    return 0 if all(r["shows"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
