"""The GPU path: models moved for the run and back, state restored bitwise, the snapshot off the accelerator.

Skipped where CUDA is not available (CI has no GPU); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""
from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import babysitter
import zoo
from test_sandbox import _assert_same, _awkward_target, _state

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _no_errors(report):
    assert all(c.status != "error" for c in report.checks), [(c.id, c.traceback) for c in report.checks]


def test_cpu_model_is_checked_on_cuda_and_moved_back_unchanged():
    model, opt, data = _awkward_target()
    before = _state(model, opt)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, device="cuda")
    _no_errors(report)
    assert report.run["device"].startswith("cuda")
    _assert_same(before, _state(model, opt))
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_cuda_model_stays_put_and_the_snapshot_costs_no_gpu_memory():
    model, opt, (x, y) = _awkward_target()
    model.cuda()
    opt.load_state_dict(opt.state_dict())  # moves the momentum buffers beside the parameters
    data = (x.cuda(), y.cuda())
    before = _state(model, opt)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, device="auto")
    _no_errors(report)
    gc.collect()  # tensors in reference cycles are freed by the collector, not by reference counting
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= resident, "the run left memory allocated on the GPU"
    _assert_same(before, _state(model, opt))
    assert all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_zoo_on_cuda_matches_cpu_verdicts(name):
    cpu = babysitter.check(**zoo.HEALTHY[name](), device="cpu")
    gpu = babysitter.check(**zoo.HEALTHY[name](), device="cuda")
    _no_errors(gpu)
    assert {c.id: c.status for c in gpu.checks} == {c.id: c.status for c in cpu.checks}
