"""The Stepper and the passes that train through it: the LR the probe reports, the sweep covering the user's LR,
what each pass says it kept of the user's step (issue 12)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zoo
from babysitter.analysis.lr_curve import SweepSettings
from babysitter.optim import OptimizerGroup, as_optimizer, lr_of
from babysitter.passes.lr_sweep import covering
from babysitter.session import Session
from babysitter.step import Step
from babysitter.target import Target


def test_the_sweep_reaches_ten_times_the_users_lr_at_the_same_density():
    base = SweepSettings()
    assert covering(base, 0.1) is base and covering(base, None) is base
    wide = covering(base, 20.0)
    assert wide.end_lr == pytest.approx(200.0) and wide.start_lr == base.start_lr
    per_decade = (base.steps - 1) / math.log10(base.end_lr / base.start_lr)
    assert (wide.steps - 1) / math.log10(wide.end_lr / wide.start_lr) == pytest.approx(per_decade, rel=0.02)


def _session(**kw) -> Session:
    return Session(Target(**{**zoo.mlp_target(), **kw}), device="cpu")


def test_the_probe_reports_the_users_lr_not_the_schedulers():
    step = Step(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 4, 0.5))
    with _session(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), step=step) as session:
        probe = session.evidence("train_probe")
        sweep = session.evidence("lr_sweep")
    assert probe.lr == pytest.approx(0.1)
    assert probe.step == ("scheduler",) and sweep.scheduler_left_out and sweep.step == ()


def test_each_pass_says_which_parts_of_the_step_it_kept():
    step = Step(clip_grad_norm=0.5, accumulate=2, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 4))
    with _session(step=step) as session:
        probe = session.evidence("train_probe")
        sweep = session.evidence("lr_sweep")
    assert probe.step == ("clip_grad_norm 0.5", "accumulate 2", "scheduler")
    assert sweep.step == ("clip_grad_norm 0.5", "accumulate 2")  # the sweep sets the LR: no scheduler


def test_several_optimizers_are_steered_as_one():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    group = as_optimizer((torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.01)))
    assert isinstance(group, OptimizerGroup) and lr_of(group) == 0.1 and len(group.param_groups) == 2
    for g in group.param_groups:
        g["lr"] *= 2
    assert [o.param_groups[0]["lr"] for o in group.optimizers] == [0.2, 0.02]
    single = torch.optim.SGD(a.parameters(), lr=0.1)
    assert as_optimizer(single) is single and as_optimizer(42) == 42
