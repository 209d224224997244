"""Shared measurement helpers for the benchmarks: A/B alternation, medians and spreads, counters."""
from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from typing import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch import nn


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int = 5, warmup: int = 1
              ) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately (A B A B ...) so that drift in the machine hits both alike."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    return ta, tb


class CpuTimed:
    """Wraps a callable to record the process's CPU time per call: unlike wall time, it does not count the turns
    of other processes, so it stays meaningful on a machine shared with other work (CPU runs only)."""

    def __init__(self, fn: Callable[[], object]):
        self.fn, self.times = fn, []

    def __call__(self):
        t0 = time.process_time()
        out = self.fn()
        self.times.append(time.process_time() - t0)
        return out


def bare_work(model: nn.Module, optimizer, loss_of: Callable[[int], torch.Tensor], steps: int, backwards: int,
              forwards: int) -> Callable[[], None]:
    """The training work a checklist needs, bare: ``steps`` steps of zero_grad/loss/backward/step, the backwards
    beyond them without a step, and the forwards beyond those without gradients (``loss_of(i)``: batch i's loss)."""
    def run():
        model.train()
        for i in range(max(steps, backwards)):
            optimizer.zero_grad(set_to_none=True)
            loss_of(i).backward()
            if i < steps:
                optimizer.step()
        with torch.no_grad():
            for i in range(max(forwards - max(steps, backwards), 0)):
                loss_of(i)
    return run


def ratio_stats(ta: list[float], tb: list[float]) -> dict:
    """Median ratio A/B over paired repeats, with the min and max of the paired ratios as the spread."""
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"median_a_s": statistics.median(ta), "median_b_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


@contextlib.contextmanager
def count_work(model: nn.Module):
    """Count the root model's forward and backward passes and every optimizer step taken while the block runs."""
    counts = {"forwards": 0, "backwards": 0, "steps": 0}

    def on_forward(module, args):
        if module is model:
            counts["forwards"] += 1

    def on_backward(module, grad_input, grad_output):
        if module is model:
            counts["backwards"] += 1

    def on_step(optimizer, args, kwargs):
        counts["steps"] += 1

    h1 = nn.modules.module.register_module_forward_pre_hook(on_forward)
    h2 = register_optimizer_step_post_hook(on_step)
    h3 = nn.modules.module.register_module_full_backward_hook(on_backward)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks warn when no input requires grad
            yield counts
    finally:
        h1.remove()
        h2.remove()
        h3.remove()
