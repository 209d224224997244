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
        "np_rng": _np_state(),
        "py_rng": random.getstate(),
        "cuda_rng": _cuda_rng(),
        "function_modes": torch._C._len_torch_function_stack(),
        "global_forward_hooks": len(nn.modules.module._global_forward_hooks),
    }
    if optimizer is not None:
        sd = optimizer.state_dict()
        out["opt_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        out["opt_state"] = {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()}
                            for k, s in sd["state"].items()}
    return out


def _np_state() -> tuple:
    """numpy's whole global state: the key array, its position and the cached Gaussian."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, keys.copy(), pos, has_gauss, cached


def _cuda_rng() -> tuple:
    """Every CUDA generator's state once CUDA is initialized; before that, the seeds torch queued for CUDA's first
    use (``torch.manual_seed`` queues one even on a machine without CUDA), which decide the state it will have."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return "state", [s.clone() for s in torch.cuda.get_rng_state_all()]
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    if tracker is None:
        return "pending", None
    return "pending", (tracker.manual_seed_all_cb, tracker.manual_seed_cb, list(tracker.call_order))


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
            assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:], "numpy RNG changed"
        elif key == "cuda_rng":
            assert a[0] == b[0], "CUDA was initialized by the run"
            if a[0] == "state":
                assert len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1])), "CUDA RNG changed"
            else:
                assert a[1] == b[1], "the CUDA seed queued for CUDA's first use changed"
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
        assert report.interrupted and [c.id for c in report.checks] == ["initial_loss", "vandal"]
        assert report.not_run == ("vandal",) and report["vandal"].summary == "not run: interrupted while it ran"
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


# -- issue 13: Ctrl-C (or a crash) inside the model's forward, through the Python API ------------------------------


class _Stops(nn.Module):
    """Dropout and BatchNorm (they draw random numbers and update buffers); forward raises ``exc`` on call ``at``."""

    def __init__(self, at: int, exc: type = KeyboardInterrupt):
        super().__init__()
        self.at, self.exc, self.calls = at, exc, 0
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc("stopped inside forward")
        return self.net(x)


def _stopping_target(at: int, exc: type, data_kind: str):
    torch.manual_seed(2)
    model = _Stops(at, exc)
    x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
    if data_kind == "loader":  # iterating a DataLoader draws its base seed from the global torch RNG
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    else:
        data = (x, y)
    # the user's own RNG states, none of them the session's seed
    torch.manual_seed(11)
    np.random.seed(12)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    random.seed(13)
    return model, data


#: a DataLoader: its iterator draws its base seed from the global torch RNG, so target validation must not call
#: iter(data) outside the snapshot (issue 13: target._is_iterable asks the type instead)
_LOADER = "loader"


#: calls of forward: 1 is the first-batch validation, 3 the init pass (no check ran), 40 a training probe
@pytest.mark.parametrize("at", [1, 3, 40])
@pytest.mark.parametrize("data_kind", ["tensors", _LOADER])
def test_ctrl_c_inside_forward_leaves_every_rng_as_found(at, data_kind):
    model, data = _stopping_target(at, KeyboardInterrupt, data_kind)
    before = _state(model)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), device="cpu",
                              select=["initial_loss", "overfit_batch", "dead_relu"])
    assert model.calls == at and report.interrupted and report.status == "interrupted"
    _assert_same(before, _state(model))


@pytest.mark.parametrize("data_kind", ["tensors", _LOADER])
def test_a_crash_inside_forward_leaves_every_rng_as_found(data_kind):
    model, data = _stopping_target(3, RuntimeError, data_kind)
    before = _state(model)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), device="cpu",
                              select=["initial_loss", "dead_relu"])
    assert not report.interrupted and report["initial_loss"].status == "error"
    _assert_same(before, _state(model))


def test_a_second_ctrl_c_during_the_restore_waits_until_everything_is_back(monkeypatch):
    """Ctrl-C pressed again while the snapshot is being put back: the restore finishes, then the interrupt comes."""
    import signal

    from babysitter import sandbox

    model, opt, _ = _awkward_target()
    before = _state(model, opt)
    snap = sandbox.Snapshot(model, opt)
    real = sandbox.ModelState.restore

    def interrupted_restore(self, onto=None):
        signal.raise_signal(signal.SIGINT)  # as if pressed now: Python raises KeyboardInterrupt at the next bytecode
        real(self, onto)

    monkeypatch.setattr(sandbox.ModelState, "restore", interrupted_restore)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.eval()
    torch.manual_seed(99)
    np.random.seed(98)
    random.seed(97)
    with pytest.raises(KeyboardInterrupt):
        snap.restore()
    _assert_same(before, _state(model, opt))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("user_seed", [None, 123])
def test_cuda_rng_is_as_found_when_the_run_initialized_cuda(user_seed, tmp_path):
    """In a fresh process (CUDA not initialized), a run on the GPU initializes CUDA; afterwards the CUDA RNG is in the
    state the user's first CUDA use would have found: the default seed, or the seed they had set."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys, torch
from torch import nn
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_sandbox import _Stops
import babysitter
if {user_seed!r} is not None:
    torch.manual_seed({user_seed!r})
assert not torch.cuda.is_initialized()
model = _Stops(40)
x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
report = babysitter.check(model, (x, y), loss_fn=nn.CrossEntropyLoss(), device="cuda", select=["overfit_batch"])
assert report.interrupted and torch.cuda.is_initialized()
fresh = torch.Generator(device="cuda")
if {user_seed!r} is not None:
    fresh.manual_seed({user_seed!r})
assert torch.equal(torch.cuda.get_rng_state(), fresh.get_state()), "CUDA RNG changed"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_is_as_found_after_an_interrupted_gpu_run():
    torch.cuda.init()
    model, data = _stopping_target(40, KeyboardInterrupt, "tensors")
    torch.cuda.manual_seed_all(21)
    torch.randn(3, device="cuda")  # the user has drawn from it: a non-zero offset
    before = _state(model)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), device="cuda", select=["overfit_batch"])
    assert report.interrupted
    _assert_same(before, _state(model))


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_a_stop_inside_the_lr_race_leaves_everything_as_found(monkeypatch, exc):
    import babysitter.passes.lr_race as lr_race

    real, calls = lr_race.run_candidate, []

    def stops_after_the_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise exc("stopped inside the race")
        return real(*args, **kwargs)

    model, opt, data = _awkward_target()
    np.random.seed(3)
    random.seed(4)
    monkeypatch.setattr(lr_race, "run_candidate", stops_after_the_first)
    monkeypatch.setattr(runner, "CHECKLIST", tuple(c for c in CHECKLIST if c.id == "lr_range"))
    before = _state(model, opt)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt)
    assert len(calls) == 2, "the race did not reach its second candidate"
    _assert_same(before, _state(model, opt))
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), type(m).__name__
    if exc is KeyboardInterrupt:
        assert report.interrupted and report.not_run == ("lr_range",)
    else:
        assert report["lr_range"].status == "error" and "stopped inside the race" in report["lr_range"].traceback
