"""lr_range: a stable suggestion and a generous range on healthy models; an LR far above divergence or far too
low fails; a flat curve gives no invented suggestion; the sweep costs plain steps and restores everything."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import babysitter
import zoo
from babysitter.analysis.lr_curve import LrSweep, ReadingRules, SweepRun, SweepSettings, analyse_run, read_sweep
from babysitter.analysis import fmt
from babysitter.analysis.status import Status
from babysitter.checklist.lr_range import LrRange, SweepMeasured
from babysitter.passes.lr_sweep import lr_sweep, sweep_once
from babysitter.session import Session
from babysitter.target import Target

FAST = {"steps": 60, "repeats": 2}  # a shorter sweep for the cases that do not depend on its resolution


def check(options=None, **fields):
    opts = {"lr_range": options} if options else None
    return babysitter.check(**fields, select=["lr_range"], options=opts)["lr_range"]


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    m = result.metrics
    assert result.status == "pass", result.summary
    assert m["lr_low"] <= m["suggested_lr"] <= m["lr_high"]
    assert m["lr_low"] <= m["user_lr"] <= m["lr_high"]
    assert m["spread"] < 10
    plot = result.plots[0]
    assert plot.log_x and len(plot.series) == m["repeats"]
    assert {mk.label.split(" ")[0] for mk in plot.markers} >= {"suggested", "range", "your"}


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.05),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
], ids=["sgd", "sgd-momentum", "adam", "adamw"])
def test_optimizers_get_a_suggestion(make):
    fields = zoo.mlp_target()
    fields["optimizer"] = make
    result = check(**fields, options=FAST)
    assert result.status == "pass", result.summary
    assert 1e-4 < result.metrics["suggested_lr"] < 1.0


def test_lr_far_above_divergence_fails():
    fields = zoo.mlp_target()
    fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=100.0, momentum=0.9)
    result = check(**fields)
    assert result.status == "fail" and "diverged" in result.summary
    assert result.metrics["user_lr"] > result.metrics["diverged_at"]
    assert any("Lower the LR" in a for a in result.advice)


def test_lr_so_low_that_the_loss_does_not_move_fails():
    fields = zoo.regression_target()
    fields["optimizer"] = lambda p: torch.optim.Adam(p, lr=1e-8)
    result = check(**fields)
    assert result.status == "fail" and "does not move" in result.summary
    assert any("Raise the LR" in a for a in result.advice)


def test_lr_somewhat_above_the_range_warns():
    fields = zoo.regression_target()
    fields["optimizer"] = lambda p: torch.optim.Adam(p, lr=0.5)
    result = check(**fields)
    assert result.status in ("warn", "fail")
    assert result.metrics["user_lr"] > result.metrics["lr_high"]


class Constant(nn.Module):
    """Ignores its input: the loss can only fall to the label entropy, which is where it starts (ln 3)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(3))
        self.unused = nn.Linear(2, 3)

    def forward(self, x):
        return self.logits.expand(x.shape[0], 3)


def test_flat_curve_gives_no_suggestion_and_says_why():
    result = check(model=Constant(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-3),
                   options=FAST)
    assert result.status == "skip"
    assert result.metrics["suggested_lr"] is None  # the race around your LR moved nothing: no LR to keep either
    assert "never fell" in result.summary


def test_synthetic_curve_readings():
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    # a loss that falls between 1e-4 and 1e-2, bottoms out at 3e-2, and blows up beyond 1
    loss = 1.0 - 0.9 / (1 + np.exp(-(x + 3) * 3)) + 0.05 * np.maximum(0, x + 1.5) ** 3
    run = SweepRun(0, tuple(lrs.tolist()), tuple(loss.tolist()), (), "end", None)
    rules = ReadingRules(sigma_decades=0.25, min_drop=0.1, onset=0.02, band=0.1, low_margin=10)
    sgd = analyse_run(run, rules)
    adam = analyse_run(run, rules, adaptive=True)
    assert 1e-4 < sgd.steepest < 1e-2 and 1e-2 < sgd.minimum < 1e-1 and sgd.minimum < sgd.high < 1
    assert sgd.low < 1e-4  # 10x below the onset of the descent
    assert sgd.minimum <= sgd.suggestion <= sgd.high  # SGD: the bottom of the curve
    assert adam.steepest / 3 < adam.suggestion < adam.minimum  # adaptive: below the bottom


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_model_optimizer_and_rng_are_restored_bitwise():
    fields = zoo.cnn_target()
    model = fields["model"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = fields["data"]
    model(x[:8]).sum().backward()
    opt.step()  # the user's optimizer has state
    opt.zero_grad()
    before, opt_before = _state(model), {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    rng = torch.get_rng_state()
    check(model=model, data=fields["data"], loss_fn=fields["loss_fn"], optimizer=opt, batch_size=32, options=FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(opt_before[k], v) for k, v in opt.state[next(model.parameters())].items())
    assert opt.param_groups[0]["lr"] == 1e-3
    assert torch.equal(rng, torch.get_rng_state())


def test_param_groups_are_scaled_together():
    fields = zoo.mlp_target()
    model = fields["model"]
    opt = torch.optim.SGD([{"params": model.layers.parameters(), "lr": 0.01},
                           {"params": model.head.parameters(), "lr": 0.1}], momentum=0.9)
    target = Target(model=model, data=fields["data"], loss_fn=fields["loss_fn"], optimizer=opt)
    with Session(target, device="cpu") as session:
        run = sweep_once(session, SweepSettings(steps=20))
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[1] == pytest.approx(10 * lrs[0]) and lrs[0] >= run.lrs[-1] > 1e-3


def test_a_sweep_step_is_one_forward_and_one_optimizer_step():
    fields = zoo.mlp_target()
    model = fields["model"]
    calls = {"forward": 0}
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__("forward", calls["forward"] + 1))
    target = Target(model=model, data=fields["data"], loss_fn=fields["loss_fn"], optimizer=fields["optimizer"])
    with Session(target, device="cpu") as session:
        calls["forward"] = 0
        sweep = lr_sweep(session, SweepSettings(repeats=2, steps=30))
    assert calls["forward"] == sweep.steps == sum(r.taken for r in sweep.runs)
    assert all(r.taken - len(r.losses) < 8 for r in sweep.runs)  # at most sync_every - 1 steps past a stop


def test_divergence_stops_the_sweep_early():
    fields = zoo.regression_target()
    target = Target(model=fields["model"], data=fields["data"], loss_fn=fields["loss_fn"],
                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with Session(target, device="cpu") as session:
        run = sweep_once(session, SweepSettings())
    assert run.stop in ("diverged", "nonfinite") and len(run.losses) < 100
    assert run.stopped_at is not None and run.stopped_at < 10


def test_thresholds_are_documented():
    doc = LrRange.doc()
    for name, _, text in LrRange.thresholds():
        assert name in doc and text
    assert math.isclose(LrRange().start_lr, 1e-7)


def test_small_but_common_lr_is_not_flagged():
    fields = zoo.transformer_target()
    fields["optimizer"] = lambda p: torch.optim.Adam(p, lr=1e-4)  # fine-tuning practice
    result = check(**fields, options=FAST)
    assert result.status == "pass", result.summary


@pytest.mark.parametrize("lr,expected", [(1e-6, ("warn", "fail")), (1e-4, ("pass",)), (3e-4, ("pass",))])
def test_adam_far_below_the_descent_warns_common_lrs_do_not(lr, expected):
    # Adam 100x below its usual 1e-3 on a small MLP is slow enough to flag; 1e-4 and 3e-4 are practice
    torch.manual_seed(0)
    x, y = zoo.blobs()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    result = check(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    assert result.status in expected, result.summary


# -- the judgment alone, on a synthetic sweep (no model) -----------------------------------------------------
LRS = np.logspace(-7, 1, 100)
# falls between 1e-4 and 1e-2, bottoms out near 3e-2 and rises beyond 0.1
CURVE = 1.0 - 0.9 / (1 + np.exp(-(np.log10(LRS) + 3) * 3)) + 0.05 * np.maximum(0, np.log10(LRS) + 1.5) ** 3


def judged(user_lr, curve=CURVE, stop_at=None, **rules):
    """lr_range's judgment of ``user_lr`` on three repeats of ``curve`` (cut where the sweep diverged), read under
    ``rules`` as the ``lr_reading`` evidence reads it under the options given to lr_range."""
    n = stop_at or len(LRS)
    runs = tuple(SweepRun(i, tuple(LRS[:n].tolist()), tuple(curve[:n].tolist()), (),
                          "diverged" if stop_at else "end", float(LRS[n - 1]) if stop_at else None) for i in range(3))
    reading = read_sweep(LrSweep(runs, user_lr, (1.0,), "SGD", 3 * n, 0.0), ReadingRules(**rules))
    measured = SweepMeasured(reading=reading, repeats=3, steps=3 * n, optimizer="SGD", seconds=0.0)
    return LrRange().judge(measured), reading


def test_judge_passes_inside_the_range_and_warns_above_it():
    inside, r = judged(1e-2)
    assert inside.status == Status.PASS and r.lr_low < 1e-2 < r.lr_high and not inside.advice
    above, r = judged(1.2 * r.lr_high)
    assert above.status == Status.WARN and "above the good range" in above.summary


def test_judge_fail_above_the_divergence_point():
    _, r = judged(None, stop_at=90)
    diverged = r.diverged_at
    assert judged(1.01 * diverged, stop_at=90)[0].status == Status.FAIL
    assert judged(0.99 * diverged, stop_at=90)[0].status == Status.WARN  # above the range, below divergence
    assert judged(1.01 * diverged, stop_at=90, fail_above=2.0)[0].status == Status.WARN


def test_judge_fail_below_the_ranges_low_end():
    low = judged(None)[1].lr_low
    assert judged(0.9 * low)[0].status == Status.WARN
    edge = ReadingRules().fail_below * low
    assert judged(1.05 * edge)[0].status == Status.WARN
    fail = judged(0.95 * edge)[0]
    assert fail.status == Status.FAIL and "does not move" in fail.summary and "Raise the LR" in fail.advice[0]


def test_judge_band_sets_the_top_of_the_range():
    narrow, wide = judged(None, band=0.1)[1], judged(None, band=0.5)[1]
    assert wide.lr_high > narrow.lr_high
    between = (narrow.lr_high * wide.lr_high) ** 0.5
    assert judged(between, band=0.1)[0].status == Status.WARN and judged(between, band=0.5)[0].status == Status.PASS


def test_judge_min_drop_decides_whether_a_flat_curve_gives_a_suggestion():
    shallow = 1.0 - 0.08 / (1 + np.exp(-(np.log10(LRS) + 3) * 3))  # falls 8%
    skip, r = judged(1e-2, curve=shallow)
    assert skip.status == Status.SKIP and r.suggested_lr is None and "never fell by 10%" in skip.summary
    assert judged(1e-2, curve=shallow, min_drop=0.05)[1].suggested_lr is not None
    measured = SweepMeasured(reading=r, repeats=3, steps=300, optimizer="SGD", seconds=0.0)
    assert LrRange().present(measured, skip).tables == ()  # no readings table without a suggestion


def test_doc_states_the_suggestion_rule_and_the_defaults():
    doc = " ".join(LrRange.doc().split())
    assert "median of three readings" not in doc and "minimum / 10" in doc
    assert "1e-07 to 10 over 100 steps" in doc and "30x below the range's low end" in doc


# -- the range never reaches past divergence; the descent shown apart (issue 13) --------------------------------
# falls between 1e-5 and 1e-2 and stays low up to the sweep's end (a curve that never turns back up)
FALL = 1.0 - 0.9 / (1 + np.exp(-(np.log10(LRS) + 3.5) * 2))


def _runs(curves_and_stops):
    """SweepRuns over LRS: each (curve, index of the step where the sweep diverged or None)."""
    out = []
    for i, (curve, stop) in enumerate(curves_and_stops):
        n = len(LRS) if stop is None else stop + 1
        out.append(SweepRun(i, tuple(LRS[:n].tolist()), tuple(curve[:n].tolist()), (),
                            "end" if stop is None else "diverged", None if stop is None else float(LRS[stop])))
    return tuple(out)


def test_the_range_top_never_exceeds_where_one_repeat_diverged():
    # the report: range [1.28e-06, 10] with diverged_at 5.72 (one repeat diverged, two ran to the end)
    stop = int(np.searchsorted(LRS, 5.72))
    reading = read_sweep(LrSweep(_runs([(FALL, stop), (FALL, None), (FALL, None)]), 1e-3, (1.0,), "SGD", 300, 0.0))
    assert reading.diverged_at == pytest.approx(LRS[stop])
    assert reading.lr_high <= reading.diverged_at, (reading.lr_high, reading.diverged_at)
    assert reading.lr_low <= reading.suggested_lr <= reading.lr_high
    assert reading.status == Status.PASS
    measured = SweepMeasured(reading=reading, repeats=3, steps=300, optimizer="SGD", seconds=0.0)
    notes = " ".join(LrRange().present(measured, LrRange().judge(measured)).notes)
    assert f"the range stops at {fmt.lr(reading.lr_high)}, where the sweep diverged" in notes, notes


def test_each_repeats_top_is_below_where_it_diverged():
    # a sweep stopped by the divergence test while the smoothed curve had not yet risen by `band`
    stop = int(np.searchsorted(LRS, 0.5))
    a = analyse_run(_runs([(FALL, stop)])[0], ReadingRules())
    assert a.diverged_at == pytest.approx(LRS[stop])
    assert a.high < a.diverged_at and a.suggestion <= a.high


def test_the_descent_is_shown_apart_from_the_range():
    reading = read_sweep(LrSweep(_runs([(FALL, None)] * 3), 1e-3, (1.0,), "SGD", 300, 0.0))
    # where the sweep's loss fell: from its onset to its minimum; the range starts low_margin below the onset
    assert reading.lr_low < reading.descent_low < reading.descent_high <= reading.lr_high
    assert reading.descent_low == pytest.approx(reading.lr_low * ReadingRules().low_margin)
    assert reading.open_top  # the loss never turned back up: the top is the sweep's end, not a measured bound
    measured = SweepMeasured(reading=reading, repeats=3, steps=300, optimizer="SGD", seconds=0.0)
    result = LrRange().present(measured, LrRange().judge(measured))
    assert result.metrics["descent_low"] == reading.descent_low and result.metrics["descent_high"] is not None
    assert result.metrics["open_top"] is True
    assert "onset" in result.tables[0].columns
    notes = " ".join(result.notes)
    assert "low end" in notes and "30x below" in notes and "began to fall" in notes
    assert "never turned back up" in notes and "end_lr" in notes
    assert "end of the sweep" in result.summary


def test_a_curve_that_turned_up_has_a_measured_top():
    reading = judged(1e-2)[1]
    assert not reading.open_top and reading.descent_high < reading.lr_high


def test_doc_says_how_the_low_end_is_read():
    doc = " ".join(LrRange.doc().split())
    assert "not an LR to aim for" in doc and "never beyond the point where the sweep diverged" in doc


# -- optimizers whose lr is not a step size (issue 18, part 4) --------------------------------------------------
class MnistNet(nn.Module):
    """The PyTorch MNIST example's Net, shrunk (conv-conv-maxpool-dropout-fc-fc, log_softmax + NLL)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.drop, self.fc1, self.fc2 = nn.Dropout(0.25), nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 4)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        x = torch.relu(self.fc1(torch.flatten(self.drop(x), 1)))
        return torch.log_softmax(self.fc2(x), 1)


def _mnist_like(lr):
    torch.manual_seed(0)
    x, y = zoo.images(n=256, size=12)
    return dict(model=MnistNet(), data=(x, y), loss_fn=nn.NLLLoss(), batch_size=32,
                optimizer=lambda p: torch.optim.Adadelta(p, lr=lr))


def test_adadelta_at_its_default_lr_is_not_warned_about():
    # PyTorch's MNIST example trains with Adadelta(lr=1.0): lr multiplies an update that corrects its own units
    result = check(**_mnist_like(1.0), options=FAST)
    assert result.status == "pass", result.summary
    assert result.metrics["lr_low"] <= 0.1 and result.metrics["lr_high"] >= 10  # its usual range is in the range
    assert any("Adadelta's lr multiplies" in n for n in result.notes)
    raced = [r["lr"] for t in result.tables if t.id == "race" for r in t.records()]
    assert min(raced) == pytest.approx(0.1) and max(raced) == pytest.approx(10.0)


def test_adadelta_far_too_low_is_still_flagged():
    result = check(**_mnist_like(1e-4), options=FAST)
    assert result.status in ("warn", "fail"), result.summary
    assert result.metrics["user_lr"] < result.metrics["lr_low"]


@pytest.mark.parametrize("make,words", [
    (lambda p: torch.optim.Rprop(p, lr=0.01), "first step size"),
    (lambda p: __import__("transformers").optimization.Adafactor(p), "relative_step"),
], ids=["rprop", "hf-adafactor"])
def test_optimizers_whose_lr_a_sweep_cannot_steer_are_skipped(make, words):
    fields = zoo.regression_target()
    fields["optimizer"] = make
    result = check(**fields, options=FAST)
    assert result.status == "skip" and words in result.summary, result.summary


def test_the_race_figure_shows_every_round_the_race_ran_and_the_effective_batch_is_noted():
    from babysitter.analysis.lr_curve import LrRace, LrReading, RaceEntry

    entries = (RaceEntry(1e-3, 0.69, "final", steps=48), RaceEntry(3e-3, 0.68, "final", steps=48),
               RaceEntry(1e-2, 0.6, "climb", steps=48), RaceEntry(1e-3, 0.689, "longer", steps=192))
    race = LrRace(entries=entries, winner=1e-2, steps=336, held_out=4, start_loss=0.7, around=1e-3)
    reading = LrReading(analyses=(), user_lr=1e-3, status=Status.WARN, summary="", suggested_lr=1e-2, race=race)
    labels = [s.name for s in LrRange()._race_plot(reading, race).series]
    assert labels == ["final round (48 steps)", "climbing above it (48 steps)", "your LR, longer (192 steps)"]
    one = SweepMeasured(reading=reading, repeats=3, steps=100, optimizer="SGD", seconds=1.0, batch=32)
    assert not any("torchrun" in n for n in LrRange()._notes(one))
    two = SweepMeasured(reading=reading, repeats=3, steps=100, optimizer="SGD", seconds=1.0, ranks=2, batch=32)
    assert any("effective batch of 64 (2 ranks x 32)" in n for n in LrRange()._notes(two))
