"""What the checklist costs in memory: one copy of the state it protects, an out-of-memory error inside a check made a
skip with the user's state intact, the device-memory budget, and the parts that keep it so (the optimizer's state
put back in place, the probe's sampled copy of the weights)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import babysitter
import babysitter.evidence as evidence
import babysitter.memory as memory
from babysitter.passes.train_probe import UPDATE_SAMPLE, Kept
from babysitter.sandbox import Snapshot

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent

# -- the resident-memory bound, in fresh processes ------------------------------------------------------------------
#: the fixed part of the slack: a process that runs the checklist for the first time touches library code and imports
#: modules a plain step does not (measured on a 100K-parameter MLP: 11-16 MiB, 6 MiB of it library pages)
SLACK_FIXED = 16 * MiB
#: the proportional part: page rounding of the allocations and the probe's sampled copy of the weights
SLACK_SHARE = 0.01
#: glibc hands large freed tensors back at once, so that the resident set follows what the process holds, not what
#: the allocator keeps for reuse (a plain loop of 300 steps of the benchmark's MLP grows by several times its
#: parameters under glibc's own settings: benchmarks/memory.py --malloc default --modes plain:300)
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
#: the checklist's passes, shortened: each kind of pass runs and reaches its peak in its first steps (the race trains
#: from your state as the sweep does, so it is left out)
SHORT = {"lr_range": {"steps": 24, "repeats": 1, "race_candidates": 0},
         "overfit_batch": {"max_steps": 24, "extend_to": 24}}


class Lookup(nn.Module):
    """A frozen 256 MiB embedding table feeding a trainable 8M-parameter MLP (32 MiB): a few hundred MiB of state
    to protect, with gradients and Adam's moments big enough that a second copy of any of them shows, and steps
    cheap enough for a test."""

    def __init__(self, rows: int = 1 << 20, dim: int = 64, hidden: int = 2048, classes: int = 10):
        super().__init__()
        self.table = nn.Embedding(rows, dim)
        self.table.weight.requires_grad_(False)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, classes))

    def forward(self, ids):
        return self.body(self.table(ids).mean(1))


def _protected(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of what the sandbox protects: parameters and buffers, the gradients that exist, the optimizer's state."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in [*tensors.values(), *grads, *state])


def _child(mode: str, grads: str) -> None:
    """One measurement in a fresh process: a plain training step, or the whole (shortened) checklist, from a model
    that has trained one step; prints the growth of the peak resident set and the protected bytes."""
    import resource

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Lookup()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids, y = torch.randint(0, 1 << 20, (512, 8)), torch.randint(0, 10, (512,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(ids[:32]), y[:32]).backward()
        optimizer.step()

    step()
    if grads == "none":
        optimizer.zero_grad(set_to_none=True)
    protected = _protected(model, optimizer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode == "plain":
        step()
    else:
        report = babysitter.check(model, (ids, y), loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                                  batch_size=32, options=SHORT)
        assert not [c.id for c in report.checks if c.status == "error"], [c.traceback for c in report.checks]
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"growth": growth, "protected": protected}))


@pytest.fixture(scope="module")
def measured() -> dict:
    """The four measurements (plain step and checklist, gradients kept or let go), each in its own process, run at
    once: resident-set figures are not disturbed by the load."""
    env = {**os.environ, **RETURNING_MALLOC, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    runs = {(mode, grads): subprocess.Popen([sys.executable, __file__, mode, grads], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            for mode in ("plain", "all") for grads in ("keep", "none")}
    out = {}
    for key, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        out[key] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-set figures of Linux and glibc")
@pytest.mark.parametrize("grads", ["keep", "none"])
def test_the_checklist_holds_one_copy_of_the_protected_state(measured, grads):
    """The whole checklist's peak resident set grows by at most a plain step's growth plus one copy of the state the
    sandbox protects (parameters, buffers, optimizer state, and the gradients when the user has some), plus the
    slack above; a second copy of the gradients, of Adam's state or of the weights would not fit in it."""
    plain, whole = measured[("plain", grads)], measured[("all", grads)]
    protected = whole["protected"]
    bound = plain["growth"] + protected + SLACK_FIXED + SLACK_SHARE * protected
    assert protected > 300 * MiB
    assert whole["growth"] <= bound, (f"checklist {whole['growth'] / MiB:.0f} MiB above the start, bound "
                                      f"{bound / MiB:.0f} MiB (plain step {plain['growth'] / MiB:.0f}, protected "
                                      f"state {protected / MiB:.0f})")


# -- an out-of-memory error inside a check -----------------------------------------------------------------------------
def _warm_target():
    """A small MLP and the user's Adam, mid-training: its state and gradients exist."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
    optimizer.step()
    return model, optimizer, (x, y)


def _state(model, optimizer) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "grads": [p.grad.clone() for p in model.parameters()], "training": [m.training for m in model.modules()]}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, z) for x, z in zip(a, b))
    return a == b


OOM = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.80 GiB\nthe allocator's tips"
PROBE_READERS = ("grad_norms", "param_updates", "nonfinite")


def test_an_out_of_memory_error_in_a_pass_skips_its_readers_and_restores_the_state(monkeypatch):
    """torch.cuda.OutOfMemoryError (raised here on the CPU) inside the shared training probe, after it trained a
    step: every check that reads the probe is skipped with the reason, the device cache is emptied, the other checks
    run, and the model and optimizer are as they were, bitwise."""
    model, optimizer, data = _warm_target()
    before = _state(model, optimizer)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def probe_out_of_memory(session, instruments, **kwargs):
        opt = session.make_optimizer()
        loss = session.forward_loss(session.batch(0))[0]
        loss.backward()
        opt.step()  # the model and the optimizer's state have moved
        session.model.eval()
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(evidence, "train_probe", probe_out_of_memory)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                              select=["initial_loss", "dead_relu", *PROBE_READERS, "input_scale"])
    status = {c.id: c for c in report.checks}
    for cid in PROBE_READERS:
        assert status[cid].status == "skip", status[cid]
        assert status[cid].summary.startswith("out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"), \
            status[cid].summary
        assert "tips" not in status[cid].summary and "restored" in status[cid].summary
    assert status["initial_loss"].status == "pass" and status["input_scale"].status not in ("skip", "error")
    assert "after-training statistics unavailable: OutOfMemoryError" in " ".join(status["dead_relu"].notes)
    assert emptied  # when the probe failed, and after each skipped check
    assert _same(_state(model, optimizer), before)


@pytest.mark.parametrize("error", [
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. "
                 "Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_a_failed_host_allocation_in_a_check_is_a_skip(monkeypatch, error):
    from babysitter.checklist.input_scale import InputScale

    def measure(self, session):
        session.model.train(False)
        raise error

    monkeypatch.setattr(InputScale, "measure", measure)
    model, optimizer, data = _warm_target()
    before = _state(model, optimizer)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                              select=["initial_loss", "input_scale"])
    status = {c.id: c for c in report.checks}
    assert status["input_scale"].status == "skip", status["input_scale"]
    assert status["input_scale"].summary.startswith("out of memory: "), status["input_scale"]
    assert status["initial_loss"].status == "pass"
    assert _same(_state(model, optimizer), before)


def test_other_errors_are_still_errors(monkeypatch):
    from babysitter.checklist.input_scale import InputScale

    def measure(self, session):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (out of range)")

    monkeypatch.setattr(InputScale, "measure", measure)
    model, optimizer, data = _warm_target()
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                              select=["input_scale"])
    assert report.checks[0].status == "error"


def test_out_of_memory_in_evidence_keeps_no_frames():
    """The cache keeps an out-of-memory error without its traceback (whose frames hold what the pass allocated) and
    hands each reader a copy."""
    cache = evidence.EvidenceCache(lambda: None, {})
    held = []

    def provider(session):
        big = torch.zeros(1 << 16)
        held.append(big)
        raise torch.cuda.OutOfMemoryError(OOM)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(evidence.PROVIDERS, "init_pass", provider)
        errors = []
        for _ in range(2):
            with pytest.raises(torch.cuda.OutOfMemoryError) as info:
                cache.get("init_pass", None)
            errors.append(info.value)
    kind, stored = cache._values["init_pass"]
    assert kind == "oom" and stored.__traceback__ is None and stored.__context__ is None
    assert errors[0] is not errors[1] and str(errors[0]) == OOM


# -- the device-memory budget --------------------------------------------------------------------------------------
def _budget(monkeypatch, free: int) -> None:
    monkeypatch.setattr(memory, "device_memory", lambda device: (free, 80 << 30))


def test_a_pass_that_would_not_fit_is_skipped_before_it_starts(monkeypatch):
    _budget(monkeypatch, 1 << 10)  # less than the model's Adam state would take
    model, optimizer, data = _warm_target()
    optimizer.state.clear()  # fresh: a pass would allocate Adam's two moments
    before = _state(model, optimizer)
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                              select=["initial_loss", "dead_relu", "param_updates", "input_scale"])
    status = {c.id: c for c in report.checks}
    for cid in ("dead_relu", "param_updates"):
        assert status[cid].status == "skip" and status[cid].summary.startswith("device memory: 0 MiB free"), \
            status[cid]
    assert status["initial_loss"].status == "pass" and status["input_scale"].status != "skip"  # no training
    assert "batch pool keeps 0 MiB" in report.run["device_memory"]["note"]
    assert _same(_state(model, optimizer), before)


def test_the_shortfall_counts_gradients_and_optimizer_state_not_yet_allocated(monkeypatch):
    from babysitter.memory import MEMORY_MARGIN, STATE_PER_PARAM
    from babysitter.session import Session
    from babysitter.target import Target

    model, optimizer, data = _warm_target()
    trainable = sum(p.numel() * 4 for p in model.parameters())
    fresh = int((trainable + STATE_PER_PARAM * trainable) * (1 + MEMORY_MARGIN))
    _budget(monkeypatch, 10 << 30)
    with Session(Target(model=model, data=data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer),
                 device="cpu") as s:
        for free, short in [(0, False), (fresh - 1, False)]:  # gradients and state exist: nothing to allocate
            _budget(monkeypatch, free)
            assert (s.memory_shortfall() is not None) is short
        optimizer.state.clear()
        for p in model.parameters():
            p.grad = None
        for free, short in [(fresh - 1, True), (fresh, False)]:
            _budget(monkeypatch, free)
            assert (s.memory_shortfall() is not None) is short, free


def test_no_budget_on_the_cpu():
    model, optimizer, data = _warm_target()
    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                              select=["initial_loss"])
    assert "device_memory" not in report.run


# -- the parts that keep the bound ---------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, 0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, 0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, 1e-3),
    "adamw-amsgrad-foreach": lambda p: torch.optim.AdamW(p, 1e-3, amsgrad=True, foreach=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p),
    "adagrad": lambda p: torch.optim.Adagrad(p),
    "lbfgs": lambda p: torch.optim.LBFGS(p, history_size=3),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("before, after", [(0, 2), (2, 3), (3, 0)])
def test_the_optimizer_is_put_back_in_place_as_load_state_dict_would(name, before, after):
    """The saved state is copied into the optimizer's own tensors (no second state beside a check's), and what it
    leaves is what load_state_dict leaves: values, dtypes, devices, entry order, hyper-parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)
    opt = OPTIMIZERS[name](model.parameters())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def loss():
        opt.zero_grad()
        out = nn.functional.cross_entropy(model(x), y)
        out.backward()
        return out

    def step():
        opt.step(loss) if name == "lbfgs" else (loss(), opt.step())

    for _ in range(before):
        step()
    saved = copy.deepcopy(opt.state_dict())
    snapshot = Snapshot(model, opt)
    ids = {id(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    for _ in range(after):
        step()
    opt.param_groups[0]["lr"], opt.param_groups[0]["initial_lr"] = 9.0, 1.0  # as a sweep and a scheduler leave it
    snapshot.restore()
    assert _same(opt.state_dict(), saved)
    if name != "lbfgs":  # its history lists change length: those entries are new copies
        kept = {id(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
        assert ids <= kept


def test_a_measured_step_keeps_a_sample_of_large_parameters():
    torch.manual_seed(0)
    small = torch.randn(64, 64)
    assert Kept(small).stride == 1 and torch.equal(Kept(small).values, small)
    big = torch.randn(2048, 2048) * 0.02
    kept = Kept(big)
    assert kept.values.numel() <= UPDATE_SAMPLE and torch.gcd(torch.tensor(kept.stride), torch.tensor(2048)) == 1
    moved = big + 1e-3 * torch.sign(torch.randn_like(big))
    exact = float((moved - big).norm())
    assert abs(float(kept.update(moved)) / exact - 1) < 0.01
    assert float(kept.norm) == pytest.approx(float(big.norm()))
    one = big.clone()
    one[5, 7] += 1.0  # outside the sample (stride > 1): still read as moved
    assert float(kept.update(one)) > 0 and float(kept.update(big.clone())) == 0.0


def test_the_snapshot_is_taken_once(monkeypatch):
    taken = []
    init = Snapshot.__init__
    monkeypatch.setattr(Snapshot, "__init__", lambda self, *a, **k: (taken.append(1), init(self, *a, **k))[1])
    model, optimizer, data = _warm_target()
    babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, device="cpu",
                     select=["initial_loss", "dead_relu", "input_scale"])
    assert len(taken) == 1


if __name__ == "__main__":
    _child(*sys.argv[1:3])
