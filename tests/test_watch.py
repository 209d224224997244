"""babysitter.watch in a hand-written loop: verdicts in both directions, training unchanged, bounded memory, bad use,
the partial report on Ctrl-C; the pure judgments of a run on synthetic records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import babysitter
from babysitter.analysis.run import (Downsampled, LossRules, LossTracker, ZClip, clipped_share, judge_loss)
from babysitter.errors import UsageError
from babysitter.watching import RunRecord, WatchRules
from babysitter.watching.verdicts import judge_dead_relu, judge_grad_norms, judge_nonfinite
from babysitter.watching.record import ActivationSample, NonfiniteEvent

X = torch.randn(1024, 20, generator=torch.Generator().manual_seed(1))
Y = (X[:, :3].sum(1) > 0).long()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def train(model, opt, steps=300, watch=True, scaler=None, accumulate=1, inject=None, scheduler=None, **options):
    """The user's loop: ``inject(step, model)`` changes the model at a step (the fault)."""
    loss_fn = nn.CrossEntropyLoss()
    watcher = babysitter.watch(model, opt, live=False, scaler=scaler, **options) if watch else None
    if watcher is not None:
        watcher.__enter__()
    error = None
    try:
        for step in range(steps):
            for micro in range(accumulate):
                start = (step * accumulate + micro) * 32 % 1024
                if inject is not None:
                    inject(step, model)
                with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                    loss = loss_fn(model(X[start:start + 32]), Y[start:start + 32])
                (scaler.scale(loss) if scaler is not None else loss / accumulate).backward()
                if watcher is not None:
                    watcher.after_backward(loss)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
            if scheduler is not None:
                scheduler.step()
    except BaseException as exc:  # as a `with` block hands it to the watcher
        error = exc
        raise
    finally:
        if watcher is not None:
            watcher.close(error)
    return watcher


def statuses(watcher) -> dict:
    return {c.id: c.status for c in watcher.report_.checks}


def test_a_healthy_run_passes_every_verdict_and_writes_the_report(tmp_path):
    model = mlp()
    w = train(model, torch.optim.SGD(model.parameters(), 0.05, momentum=0.9), out=tmp_path / "run")
    s = statuses(w)
    assert set(s) == {"loss_trend", "grad_norms", "param_updates", "dead_relu", "saturation", "activation_scale",
                      "nonfinite", "amp_scaler"}
    assert all(v in ("pass", "skip") for v in s.values()), w.report_.checks
    assert s["loss_trend"] == s["grad_norms"] == s["nonfinite"] == s["dead_relu"] == "pass"
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert data["run"]["mode"] == "watch" and data["run"]["optimizer_steps"] == 300
    clip = w.report_["grad_norms"].metrics["suggested_clip"]
    assert 0.05 < clip < 5 and (tmp_path / "run" / "report.html").exists()


def test_watching_never_changes_training():
    """Same seeded loop with and without the watcher: bitwise the same weights, optimizer state and RNG, no hook
    left, the same modes and flags."""
    def run(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.Dropout(0.2), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 2))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        train(model, opt, steps=120, watch=watch, every=7)
        return model, opt, torch.random.get_rng_state()

    (m1, o1, r1), (m2, o2, r2) = run(False), run(True)
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    for a, b in zip(o1.state_dict()["state"].values(), o2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(r1, r2)
    for m in m2.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert not o2._optimizer_step_pre_hooks and not o2._optimizer_step_post_hooks
    assert m2.training and all(p.requires_grad for p in m2.parameters())
    assert torch._C._len_torch_function_stack() == 0


def test_memory_stays_bounded_over_2000_steps():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    sizes = {}
    with babysitter.watch(model, opt, live=False, every=5) as w:
        for step in range(1, 2001):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.after_backward(loss)
            opt.step()
            opt.zero_grad()
            if step in (1000, 2000):
                sizes[step] = w.state_size()
    assert sizes[2000] <= sizes[1000] * 1.1 + 64, sizes
    assert sizes[2000] < 20_000, sizes


def test_a_too_high_lr_kills_relu_units_during_training():
    model = mlp()
    w = train(model, torch.optim.SGD(model.parameters(), 5.0, momentum=0.9), steps=300)
    r = w.report_["dead_relu"]
    assert r.status in ("warn", "fail") and "died during training" in r.summary


def test_a_tiny_lr_is_a_stalled_loss_and_weights_that_barely_move():
    model = mlp()
    w = train(model, torch.optim.SGD(model.parameters(), 1e-7), steps=300)
    assert w.report_["loss_trend"].status == "warn" and "has not fallen" in w.report_["loss_trend"].summary
    assert w.report_["param_updates"].status == "warn" and "barely move" in w.report_["param_updates"].summary


class LogHead(nn.Module):
    """A real bug: log of a value that can go negative, which it does from the 100th forward on."""

    def __init__(self):
        super().__init__()
        self.body, self.calls = nn.Linear(20, 2), 0

    def forward(self, x):
        self.calls += 1
        h = self.body(x)
        return torch.log(h.abs() + 1 - (0 if self.calls < 100 else 10))


def test_the_first_nonfinite_value_is_found_at_its_step_and_localised_by_a_replay():
    model = LogHead()
    w = train(model, torch.optim.SGD(model.parameters(), 0.01), steps=150)
    r = w.report_["nonfinite"]
    assert r.status == "fail" and r.metrics["step"] == 99 and r.metrics["what"] == "loss"
    assert r.metrics["module"] == "model" and "replay" in r.summary
    assert w.report_["loss_trend"].status == "skip"


def test_gradient_accumulation_param_groups_and_a_scheduler():
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                           {"params": [*model[2].parameters(), *model[4].parameters()]}], lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 50, 0.5)
    w = train(model, opt, steps=120, accumulate=3, scheduler=sched)
    assert w.report_.run["optimizer_steps"] == 120 and w.report_.run["backwards"] == 360
    lrs = w.report_["loss_trend"].metrics["lr_final"]
    assert lrs == pytest.approx([0.01 * 0.25, 0.05 * 0.25])


def test_a_grad_scaler_s_skipped_steps_are_counted_not_called_nonfinite():
    model = mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=10_000)
    w = train(model, torch.optim.SGD(model.parameters(), 0.05), steps=120, scaler=scaler)
    assert w.report_["amp_scaler"].metrics["skipped"] >= 1
    assert w.report_["nonfinite"].status == "pass"


def test_an_unused_parameter_is_named():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.spare = mlp(), nn.Linear(3, 3)

        def forward(self, x):
            return self.net(x)

    model = Unused()
    w = train(model, torch.optim.SGD(model.parameters(), 0.05), steps=60)
    r = w.report_["param_updates"]
    assert r.status == "warn" and "spare.weight" in r.summary


def test_ctrl_c_writes_a_partial_report_and_removes_every_hook(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05)

    def interrupt(step, model):
        if step == 80:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, opt, steps=200, inject=interrupt, out=tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["interrupted"] and data["run"]["optimizer_steps"] == 80
    assert "KeyboardInterrupt" in data["run"]["stopped_by"]
    assert not opt._optimizer_step_pre_hooks and all(not m._forward_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_bad_use_gets_a_clear_error():
    model, other = mlp(), mlp()
    with pytest.raises(UsageError, match="none of the optimizer's 6 parameters belongs to the model"):
        babysitter.watch(model, torch.optim.SGD(other.parameters(), 0.1)).__enter__()
    w = babysitter.watch(model, torch.optim.SGD(model.parameters(), 0.1), live=False)
    with pytest.raises(UsageError, match="outside the `with babysitter.watch"):
        w.after_backward(torch.tensor(1.0))
    with w:
        with pytest.raises(UsageError, match=r"scalar, got a tensor of shape \(32,\)"):
            w.after_backward(torch.ones(32))
    with pytest.raises(UsageError, match="outside"):
        w.after_backward(torch.tensor(1.0))
    with pytest.raises(UsageError, match="every must be a positive integer"):
        babysitter.watch(model, torch.optim.SGD(model.parameters(), 0.1), every=0)


# -- pure judgments on synthetic records ----------------------------------------------------------------
def _tracker(values) -> LossTracker:
    t = LossTracker(LossRules())
    for i in range(0, len(values), 32):
        t.add_block(i, np.asarray(values[i:i + 32], float))
    return t


def test_judge_loss_in_both_directions():
    rng = np.random.default_rng(0)
    falling = [2.0 * math.exp(-i / 30) + 0.1 + 0.02 * rng.standard_normal() for i in range(600)]
    assert judge_loss(_tracker(falling), 0.1, 0.1).kind == "plateau"  # flat for its last third at an undecayed LR
    assert judge_loss(_tracker(falling), 0.01, 0.1).kind == "ok"  # ... a decayed LR ends on a plateau: healthy
    diverging = falling[:300] + [0.3 * 1.02 ** i for i in range(300)]
    assert judge_loss(_tracker(diverging), 0.1, 0.1).kind == "diverged"
    flat = [0.7 + 0.01 * rng.standard_normal() for _ in range(400)]
    assert judge_loss(_tracker(flat), 0.1, 0.1).kind == "stalled"
    spiky = [v * (20 if i % 40 == 39 else 1) for i, v in enumerate(falling[300:])]
    assert judge_loss(_tracker(spiky), 0.01, 0.1).kind == "spiky"
    assert judge_loss(_tracker(falling[:20]), 0.1, 0.1).kind == "too_short"


def test_downsampled_series_and_zclip_are_bounded_and_right():
    d = Downsampled(capacity=16)
    for i in range(10_000):
        d.add(i, float(i))
    steps, means, maxes = d.points()
    assert len(steps) <= 17 and steps[0] == 0 and maxes[-1] == 9999
    assert means[0] == pytest.approx(np.mean(range(d.width)))
    z = ZClip()
    for i in range(300):
        z.update(i, 1.0 + 0.01 * (i % 7))
    assert z.spikes == 0
    z.update(300, 50.0)
    assert z.spikes == 1 and z.first_spikes == [300] and z.threshold < 2
    assert clipped_share([0.3, 1.0, 1.0, 1.0, 0.5]) == (0.6, 1.0)


def _record(**changes) -> RunRecord:
    r = RunRecord.empty("m", ["a.weight", "b.weight"], [2], WatchRules())
    for k, v in changes.items():
        setattr(r, k, v)
    return r


def test_judge_dead_relu_and_nonfinite_on_records():
    alive = ActivationSample(0, (("relu1", "rectifier", 0.05, None, 1.0, False),))
    dying = ActivationSample(500, (("relu1", "rectifier", 0.8, None, 1.0, False),))
    dead = ActivationSample(500, (("relu1", "rectifier", 1.0, None, 0.0, False),))
    assert judge_dead_relu(_record(samples=[alive, alive])).status == "pass"
    assert judge_dead_relu(_record(samples=[alive, dying])).status == "warn"
    assert judge_dead_relu(_record(samples=[alive, dead])).status == "fail"
    assert judge_dead_relu(_record(samples=[alive])).status == "skip"
    assert judge_nonfinite(_record(steps=10)).status == "pass"
    bad = judge_nonfinite(_record(nonfinite=NonfiniteEvent(7, "gradient", ("b.weight",), 0.1)))
    assert bad.status == "fail" and "step 7" in bad.summary and "b.weight" in bad.summary


def test_judge_grad_norms_notes_spikes_and_warns_on_growth():
    from babysitter.watching.verdicts import grad_norms

    r = _record(steps=400)
    for v in [1.0 + 0.1 * (i % 5) for i in range(400)]:
        r.recent.add(v)
    assert judge_grad_norms(r).status == "pass"
    r.big_spikes, r.first_big_spikes = 12, [50]
    assert judge_grad_norms(r).status == "pass" and "12 gradient spikes" in grad_norms(r)[1]["notes"][0]
    grown = _record(steps=3000, first_norms=[0.01] * 100)
    for v in [5.0] * 1024:
        grown.recent.add(v)
    assert judge_grad_norms(grown).status == "warn" and "grew" in judge_grad_norms(grown).summary
    assert judge_grad_norms(_record()).status == "skip"


class SqrtOfMasked(nn.Module):
    """A real bug: sqrt of a value masked to zero by a multiplication: a finite forward, and at the masked zeros an
    infinite derivative times the mask's 0, NaN, in the backward."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(20, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = self.first(x)
        return self.second(torch.sqrt(h * (h > 0).float()))


def test_a_nonfinite_gradient_under_a_finite_loss_is_placed_in_the_backward_pass():
    model = SqrtOfMasked()
    w = train(model, torch.optim.SGD(model.parameters(), 0.01), steps=40)
    r = w.report_["nonfinite"]
    assert r.status == "fail" and r.metrics["what"] == "gradient" and r.metrics["step"] == 0
    assert "first.weight" in r.metrics["params"] and "second.weight" not in r.metrics["params"]
    assert "backward pass broke: first is the last layer" in r.summary


def test_the_report_is_written_while_the_run_goes_on(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05)
    with babysitter.watch(model, opt, out=tmp_path, live=False, write_every_s=0.0, sync_every=8) as w:
        for step in range(20):
            loss = nn.functional.cross_entropy(model(X[:32]), Y[:32])
            loss.backward()
            w.after_backward(loss)
            opt.step()
            opt.zero_grad()
        running = json.loads((tmp_path / "report.json").read_text())
    assert running["run"]["running"] and running["run"]["optimizer_steps"] == 16  # the last 8-step read
    assert json.loads((tmp_path / "report.json").read_text())["run"]["optimizer_steps"] == 20


def test_judge_saturation_activation_scale_and_amp_scaler_in_both_directions():
    from babysitter.watching.verdicts import judge_activation_scale, judge_amp_scaler, judge_saturation

    calm = ActivationSample(0, (("tanh1", "tanh", None, 0.02, 1.0, False),))
    pinned = ActivationSample(400, (("tanh1", "tanh", None, 0.7, 1.0, False),))
    output = ActivationSample(400, (("tanh1", "tanh", None, 0.7, 1.0, True),))  # a confident output layer
    assert judge_saturation(_record(samples=[calm, calm])).status == "pass"
    assert judge_saturation(_record(samples=[calm, pinned])).status == "warn"
    assert judge_saturation(_record(samples=[calm, output])).status == "skip"
    grown = ActivationSample(400, (("tanh1", "tanh", None, 0.02, 500.0, False),))
    assert judge_activation_scale(_record(samples=[calm, calm])).status == "pass"
    assert judge_activation_scale(_record(samples=[calm, grown])).status == "warn"
    assert judge_amp_scaler(_record(steps=500)).status == "skip"
    assert judge_amp_scaler(_record(steps=500, scale_last=65536.0, skipped=3)).status == "pass"
    assert judge_amp_scaler(_record(steps=500, scale_last=1.0, skipped=60, skipped_after_warmup=55)).status == "warn"
