"""The model, optimizer, RNG states, modes and hooks are exactly as before any run: success, crash or Ctrl-C."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import babysitter
import babysitter.runner as runner
from babysitter.checklist import CHECKLIST
from babysitter.checklist.base import Check

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
               "_load_state_dict_pre_hooks")


class Awkward(nn.Module):
    """BatchNorm, Dropout, a frozen layer in the middle, tied weights, a registered buffer, eval-mode submodule."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16, bias=False)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.frozen = nn.Linear(16, 16)
        self.frozen.requires_grad_(False)
        self.mid = nn.Linear(16, 8)
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = nn.Parameter(self.embed.weight.t().contiguous().t())  # a separate parameter...
        self.tied = nn.Linear(16, 8, bias=False)
        self.tied.weight = self.mid.weight  # ...and a truly tied one
        self.register_buffer("counter", torch.zeros(()))
        self.head = nn.Linear(16, 3)
        self.drop.eval()  # a submodule left in eval mode on purpose must stay so

    def forward(self, x):
        self.counter += 1
        h = self.drop(torch.relu(self.bn(self.embed(x))))
        h = torch.relu(self.frozen(h))
        h = self.out(torch.tanh(self.mid(h)) + self.tied(h))
        return self.head(h)


def _state(model: nn.Module, optimizer=None) -> dict:
    out = {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "ids": [id(p) for p in model.parameters()],
        "hooks": [len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS],
        "torch_rng": torch.get_rng_state().clone(),
        "np_rng": np.random.get_state()[1].copy(),
        "py_rng": random.getstate(),
        "function_modes": torch._C._len_torch_function_stack(),
        "global_forward_hooks": len(nn.modules.module._global_forward_hooks),
    }
    if optimizer is not None:
        sd = optimizer.state_dict()
        out["opt_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        out["opt_state"] = {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()}
                            for k, s in sd["state"].items()}
    return out


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if key in ("tensors", "grads"):
            assert a.keys() == b.keys()
            for name in a:
                if a[name] is None or b[name] is None:
                    assert a[name] is None and b[name] is None, f"{key} {name}"
                else:
                    assert a[name].dtype == b[name].dtype and a[name].device == b[name].device
                    assert torch.equal(a[name], b[name]), f"{key} {name} changed"
        elif key == "torch_rng":
            assert torch.equal(a, b)
        elif key == "np_rng":
            assert np.array_equal(a, b)
        elif key == "opt_state":
            assert a.keys() == b.keys()
            for k in a:
                for n in a[k]:
                    va, vb = a[k][n], b[k][n]
                    assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, f"optimizer state {k}.{n}"
        else:
            assert a == b, key


def _awkward_target():
    torch.manual_seed(1)
    model = Awkward()
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    # the user has already trained a step: gradients, optimizer momentum and a BN update exist
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    model.train()
    loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
    loss.backward()
    opt.step()
    return model, opt, (x, y)


@pytest.mark.parametrize("optimizer_kind", ["instance", "factory"])
def test_full_run_leaves_everything_as_found(optimizer_kind):
    model, opt, data = _awkward_target()
    np.random.seed(3)
    random.seed(4)
    before = _state(model, opt)
    optimizer = opt if optimizer_kind == "instance" else (lambda p: torch.optim.Adam(p, lr=1e-3))
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer)
    assert report.checks, "no check ran"
    assert all(c.status != "error" for c in report.checks), [(c.id, c.traceback) for c in report.checks]
    _assert_same(before, _state(model, opt))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_crash_and_interrupt_restore_state(monkeypatch, exc):
    model, opt, data = _awkward_target()
    monkeypatch.setattr(runner, "CHECKLIST", (CHECKLIST[0], _VandalFactory(exc)))
    before = _state(model, opt)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt)
    _VandalFactory.remove_leaked()  # the hook the vandal leaked on purpose is its own, not ours
    _assert_same(before, _state(model, opt))
    if exc is KeyboardInterrupt:
        assert report.interrupted and [c.id for c in report.checks] == ["initial_loss"]
    else:
        assert report["vandal"].status == "error" and "boom" in report["vandal"].traceback
        assert report["initial_loss"].status == "pass"
        assert report.status == "fail"


class _VandalFactory:
    """Builds a Check class raising ``exc``; remembers the hook it leaks so the test can tell it apart."""

    leaked: list = []

    def __new__(cls, exc):
        leaked = cls.leaked

        @dataclass
        class V(Check):
            id = "vandal"
            title = "vandal"
            what = why = todo = "test only"

            def run(self, session):
                session.evidence("init_pass")
                model = session.model
                opt = session.make_optimizer()
                for i in range(3):
                    opt.zero_grad()
                    loss, _, _ = session.forward_loss(session.batch(i))
                    loss.backward()
                    opt.step()
                model.eval()
                for p in model.parameters():
                    p.requires_grad_(not p.requires_grad)
                torch.manual_seed(1234)
                np.random.seed(99)
                random.seed(7)
                leaked.append(model.register_forward_hook(lambda *a: None))
                raise exc("boom")

        return V

    @classmethod
    def remove_leaked(cls):
        while cls.leaked:
            cls.leaked.pop().remove()


def test_no_hook_or_mode_left_after_checks_on_zoo():
    import zoo

    for name in ("mlp", "transformer", "dict_batch"):
        fields = zoo.HEALTHY[name]()
        model = fields["model"]
        before = _state(model)
        babysitter.check(**fields)
        _assert_same(before, _state(model))


def test_snapshot_lives_on_host():
    from babysitter.sandbox import Snapshot

    model, opt, _ = _awkward_target()
    snap = Snapshot(model, opt)
    assert all(saved.device.type == "cpu" for _, saved, _, _ in snap.model_state.tensors.values())


def test_sparse_embedding_gradients_are_checked_and_restored():
    """nn.Embedding(sparse=True) gives sparse gradients, which have no element-wise kernels such as isfinite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 16, sparse=True), nn.Flatten(), nn.Linear(160, 3))
    ids, y = torch.randint(0, 100, (256, 10)), torch.randint(0, 3, (256,))
    before = _state(model)
    report = babysitter.check(model, (ids, y), loss_fn=nn.CrossEntropyLoss(),
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert all(c.status != "error" for c in report.checks), [(c.id, c.traceback) for c in report.checks]
    _assert_same(before, _state(model))
