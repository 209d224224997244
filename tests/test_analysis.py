"""The analysis layer: pure functions over plain data, tested without a model or a session."""
from __future__ import annotations

import collections
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from babysitter.analysis import fmt
from babysitter.analysis.batches import (batch_size_of, concat_batches, describe, float_tensors, host_copy,
                                         map_tensors, named_tensors, slice_batch)
from babysitter.analysis.loss import (batch_factor, class_prior, constant_loss, identify_loss, loss_floor,
                                      reference_losses)
from babysitter.analysis.lr_curve import LrSweep, ReadingRules, SweepRun, judge_user_lr, read_sweep
from babysitter.analysis.params import fans, init_std, is_weight_matrix, reference_norm
from babysitter.analysis.status import Status, failing, level, report_status, worst


# -- one walker over nested batches ----------------------------------------------------------------------------
class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


class Encoding(collections.UserDict):
    """A mapping that is not a dict, like Hugging Face's BatchEncoding."""


def test_the_walker_keeps_every_container_type():
    batch = [Pair(torch.zeros(4, 2), torch.ones(4)), {"ids": torch.arange(4)},
             collections.OrderedDict(m=torch.ones(4, 3)), Encoding(ids=torch.arange(4)), 7]
    doubled = map_tensors(lambda t: t * 2, batch)
    assert isinstance(doubled[0], Pair) and torch.equal(doubled[0].y, torch.full((4,), 2.0))
    assert type(doubled[2]) is collections.OrderedDict and type(doubled[3]) is Encoding and doubled[4] == 7
    assert [n for n, _ in named_tensors(batch, "b")] == ["b[0][0]", "b[0][1]", "b[1]['ids']", "b[2]['m']",
                                                         "b[3]['ids']"]
    assert [n for n, _ in float_tensors(batch)] == ["[0][0]", "[0][1]", "[2]['m']"]


def test_batch_size_slicing_and_concatenation():
    batch = {"x": torch.randn(8, 3), "scale": torch.tensor(2.0), "mask": torch.ones(5)}
    assert batch_size_of((torch.tensor(1.0), batch)) == 8  # a scalar has no batch dimension
    half = slice_batch(batch, slice(0, 4), 8)
    assert half["x"].shape == (4, 3) and half["mask"].shape == (5,)  # a tensor of another length is kept whole
    both = concat_batches([half, half])
    assert both["x"].shape == (8, 3) and both["scale"].ndim == 0
    assert host_copy(batch, limit=10) is None and host_copy(batch)["x"].device.type == "cpu"
    assert describe(Pair(torch.zeros(2, 3), torch.ones(2))) == "Pair(tensor(2, 3) float32, tensor(2,) float32)"


# -- the loss model ---------------------------------------------------------------------------------------------
def test_a_summed_loss_doubles_on_a_doubled_batch_and_a_mean_does_not():
    assert batch_factor(once=3.0, twice=6.0, batch=32) == 32
    assert batch_factor(once=3.0, twice=3.0, batch=32) == 1
    assert batch_factor(once=3.0, twice=6.3, batch=32) == 1  # neither: not a sum over examples
    assert batch_factor(once=float("nan"), twice=6.0, batch=32) == 1


def test_the_class_prior_leaves_out_what_the_loss_ignores():
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    assert class_prior(targets, 3).tolist() == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    assert class_prior(targets, 3, ignore_index=0).tolist() == pytest.approx([0, 0.25, 0.75])  # padding id 0
    assert class_prior(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), 2).tolist() == pytest.approx([0.75, 0.25])


def test_losses_are_recognised_by_type_or_by_their_numbers():
    out, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    model, _ = identify_loss(nn.CrossEntropyLoss(ignore_index=3), out, y)
    assert model.family == "ce" and model.how == "module" and model.ignore_index == 3
    model, _ = identify_loss(lambda o, t: F.cross_entropy(o, t, reduction="sum"), out, y)
    assert model.family == "ce" and model.how == "matched numerically"
    model, reason = identify_loss(lambda o, t: (o ** 4).mean(), out, y)
    assert model is None and "not one babysitter can reason about" in reason


def test_reference_losses_floor_and_constant_prediction():
    out, y = torch.zeros(400, 10), torch.arange(400) % 10
    model, _ = identify_loss(nn.CrossEntropyLoss(), out, y)
    refs = reference_losses(model, out, y)
    assert refs["chance"] == pytest.approx(math.log(10)) and refs["prior"] == pytest.approx(math.log(10))
    smooth = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert 0 < loss_floor(smooth, "ce", out, y) < 0.6 and loss_floor(nn.CrossEntropyLoss(), "ce", out, y) == 0.0
    assert constant_loss(nn.CrossEntropyLoss(), model, out, y) == pytest.approx(math.log(10), rel=1e-5)
    reg, t = torch.zeros(100, 1), torch.randn(100, 1) * 3 + 5
    mse, _ = identify_loss(nn.MSELoss(), reg, t)
    refs = reference_losses(mse, reg, t)
    assert refs["chance"] == pytest.approx(float(t.var(unbiased=False)), rel=1e-4) and refs["zero"] > 25


# -- parameter facts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4), (8, 3, 3, 3), (5, 2, 7)])
def test_fans_are_torchs(shape):
    assert fans(shape) == nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_standard_init_scales():
    linear = nn.Linear(256, 64)
    assert init_std("default", tuple(linear.weight.shape)) == pytest.approx(float(linear.weight.detach().std()), rel=0.05)
    assert init_std("kaiming", (64, 256)) == pytest.approx(math.sqrt(2 / 256))
    assert init_std("xavier", (64, 256)) == pytest.approx(math.sqrt(2 / 320))
    assert reference_norm((64, 256)) == pytest.approx(math.sqrt(64 * 256 / (3 * 256)))
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert not is_weight_matrix(model, "0.weight") and is_weight_matrix(model, "1.weight")
    assert not is_weight_matrix(model, "1.bias")


# -- statuses and numbers -----------------------------------------------------------------------------------------
def test_one_order_of_statuses():
    assert worst(["pass", "skip", "warn"]) is Status.WARN and worst([]) is Status.PASS
    assert report_status(["pass", "error"]) is Status.FAIL and report_status(["skip"]) is Status.PASS
    assert level("warn") == 1 and level("skip") == 0
    assert failing("error") and not failing("warn") and failing("warn", strict=True)
    assert "fail" in {Status.FAIL} and Status.FAIL == "fail" and str(Status.FAIL) == "fail"


def test_numbers_read_the_same_everywhere():
    assert fmt.lr(3e-4) == "0.0003" and fmt.lr(0.1) == "0.1" and fmt.lr(1.23456e-7) == "1.23e-07"
    assert fmt.num(2.302585) == "2.303" and fmt.num(None) == "n/a" and fmt.num(float("inf")) == "inf"
    assert fmt.pct(0.6) == "60%" and fmt.ratio(2.345) == "2.3x" and fmt.ratio(123.4) == "123x"
    assert fmt.plural(1, "layer") == "1 layer" and fmt.plural(3, "matrix", "matrices") == "3 matrices"
    assert fmt.listed("abcdefgh", 3) == "a, b, c and 5 more"


# -- the LR curve reading -----------------------------------------------------------------------------------------
def _sweep(loss_of_x, user_lr: float, stopped_at=None, repeats: int = 3) -> LrSweep:
    lrs = np.logspace(-7, 1, 100)
    runs = []
    for r in range(repeats):
        noise = 1 + 0.01 * np.sin(np.arange(100) * (r + 1))
        loss = loss_of_x(np.log10(lrs)) * noise
        n = 100 if stopped_at is None else int(np.searchsorted(lrs, stopped_at)) + 1
        runs.append(SweepRun(r, tuple(lrs[:n]), tuple(loss[:n]), (), "end" if stopped_at is None else "diverged",
                             stopped_at))
    return LrSweep(runs=tuple(runs), user_lr=user_lr, group_scales=(1.0,), optimizer="SGD", steps=300, seconds=0.0)


def _valley(x):  # falls between 1e-4 and 1e-2, bottoms out near 3e-2, rises past 1e-1
    return 1.0 - 0.9 / (1 + np.exp(-(x + 3) * 3)) + 0.05 * np.maximum(0, x + 1.5) ** 3


def test_a_reading_suggests_inside_its_range_and_judges_the_users_lr():
    reading = read_sweep(_sweep(_valley, user_lr=1e-2))
    assert reading.lr_low < reading.suggested_lr < reading.lr_high and reading.status is Status.PASS
    assert read_sweep(_sweep(_valley, user_lr=1e-8)).status is Status.FAIL  # far below where the loss moved
    assert read_sweep(_sweep(_valley, user_lr=5.0)).status is Status.WARN  # above the range


def test_a_flat_curve_supports_no_suggestion_and_a_rising_one_warns():
    flat = read_sweep(_sweep(lambda x: np.ones_like(x), user_lr=1e-3))
    assert flat.status is Status.SKIP and flat.suggested_lr is None and "never fell" in flat.summary
    rising = read_sweep(_sweep(lambda x: 1 + np.exp(x), user_lr=1e-3, stopped_at=3e-7))
    assert rising.status is Status.WARN and "diverges from the start" in rising.summary


def test_the_users_lr_against_range_and_divergence_at_the_edges():
    rules = ReadingRules()
    judge = lambda user: judge_user_lr(user, 1e-2, 1e-3, 1e-1, 1.0, rules)[0]  # noqa: E731
    assert judge(1e-3) is Status.PASS and judge(0.99e-3) is Status.WARN
    assert judge(1e-3 * rules.fail_below * 1.01) is Status.WARN and judge(1e-3 * rules.fail_below * 0.99) is Status.FAIL
    assert judge(0.1) is Status.PASS and judge(0.11) is Status.WARN
    assert judge(1.0) is Status.WARN and judge(1.01) is Status.FAIL  # above the divergence point
    assert judge_user_lr(None, 1e-2, 1e-3, 1e-1, None, rules)[0] is Status.PASS
