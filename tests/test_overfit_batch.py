"""overfit_batch: healthy models of every kind (also with heavy dropout and weight decay) fit a tiny subset;
a softmax before CrossEntropyLoss and an output that ignores its input do not, and the cause is named."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.lr_curve import LrReading
from babysitter.analysis.status import Status
from babysitter.checklist.overfit_batch import (SAME_OUTPUT_SPREAD, Attempt, OutputFacts, OverfitBatch,
                                                OverfitMeasured, regularization_off)


def check(options=None, **fields):
    opts = {"overfit_batch": options} if options else None
    return babysitter.check(**fields, select=["overfit_batch"], options=opts)["overfit_batch"]


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert result.metrics["reduction"] <= 0.1 and result.metrics["examples"] == 32
    assert result.plots[0].kind == "line" and result.plots[0].series[0].y


class DropoutMLP(nn.Module):
    """Heavy dropout both as modules and as a functional call on the module's training flag."""

    def __init__(self, d_in=2, hidden=64, classes=3):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x)))
        x = F.dropout(F.relu(self.fc2(x)), 0.5, self.training)
        return self.head(x)


def test_heavy_dropout_and_weight_decay_are_switched_off_for_the_probe():
    torch.manual_seed(0)
    result = check(model=DropoutMLP(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5))
    assert result.status == "pass", result.summary
    assert any("weight_decay=0.5" in n for n in result.notes)


def test_transformer_and_gru_with_dropout_half_pass():
    fields = zoo.transformer_target()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.5, batch_first=True)
    fields["model"].encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    assert check(**fields).status == "pass"
    fields = zoo.gru_target()
    fields["model"].rnn = nn.GRU(8, 32, num_layers=2, dropout=0.5, batch_first=True)
    fields["optimizer"] = lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2)
    assert check(**fields).status == "pass"


def test_regularization_off_is_undone_and_batchnorm_keeps_training():
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 8, num_layers=2, dropout=0.3)
    bn = nn.BatchNorm1d(4)
    x = torch.ones(16, 4)
    with regularization_off(nn.ModuleList([rnn, bn])):
        assert torch.equal(F.dropout(x, 0.5, True), x) and torch.equal(nn.Dropout(0.9)(x), x)
        assert rnn.dropout == 0.0 and bn.training
    assert rnn.dropout == 0.3
    assert not torch.equal(F.dropout(x, 0.5, True), x)


class SoftmaxMLP(zoo.FunctionalMLP):
    def forward(self, x):
        return super().forward(x).softmax(-1)  # CrossEntropyLoss applies log_softmax itself


def test_softmax_before_cross_entropy_fails_and_is_named_first():
    torch.manual_seed(0)
    result = check(model=SoftmaxMLP(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-2),
                   options={"max_steps": 150})
    assert result.status == "fail", result.summary
    assert result.metrics["likely_cause"] == "softmax fed into CrossEntropyLoss"
    assert "remove the softmax" in result.advice[0]


def test_softmax_before_cross_entropy_fails_on_a_cnn():
    fields = zoo.cnn_target()
    fields["model"] = nn.Sequential(fields["model"], nn.Softmax(dim=1))
    result = check(**fields, options={"max_steps": 40})
    assert result.status == "fail" and result.metrics["likely_cause"] == "softmax fed into CrossEntropyLoss"


class IgnoresInput(nn.Module):
    """Computes a feature of the input but returns a learned constant: the output ignores the input."""

    def __init__(self, d_in=2, classes=3):
        super().__init__()
        self.body = nn.Linear(d_in, 32)
        self.const = nn.Parameter(torch.zeros(1, 32))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.body(x)  # noqa: F841 (computed and dropped)
        return self.head(torch.relu(self.const)).expand(x.shape[0], -1) + 0 * self.body.bias.sum()


def test_output_that_ignores_its_input_fails_and_is_named():
    torch.manual_seed(0)
    result = check(model=IgnoresInput(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-2),
                   options={"max_steps": 100})
    assert result.status == "fail"
    assert result.metrics["likely_cause"] == "the output ignores the input"
    assert result.metrics["reduction"] > 0.5


def test_slow_user_lr_is_retried_at_the_suggestion_and_said_so():
    fields = zoo.mlp_target()
    fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=1e-5)
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["attempts"] >= 2 and "lr_range" in result.metrics["lr_source"]
    assert any("your LR is slow" in a for a in result.advice)


def test_label_smoothing_floor_is_taken_into_account():
    fields = zoo.mlp_target()
    fields["loss_fn"] = nn.CrossEntropyLoss(label_smoothing=0.2)
    result = check(**fields)
    assert result.status == "pass"
    assert result.metrics["floor"] > 0.3


def test_model_is_left_as_found():
    fields = zoo.cnn_target()
    model = fields["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check(**fields)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


class ZeroedInputRegressor(nn.Module):
    def __init__(self, d_in=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(torch.zeros_like(x))


def test_output_ignoring_input_fails_on_uncentred_regression_targets():
    # learning the targets' offset takes the loss far below its start: it is measured from the best constant
    # prediction's loss instead, which an input-ignoring model cannot beat
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = 3 * x[:, :2].sum(1, keepdim=True) + 20
    fields = dict(data=(x, y), loss_fn=nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, 1e-2))
    result = check(model=ZeroedInputRegressor(), **fields)
    assert result.status == "fail" and "ignores the input" in result.summary
    healthy = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    assert check(model=healthy, **fields).status == "pass"


def _blob_images(n=64, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.rand(n, 2, 2, generator=g)
    img = sum(torch.exp(-((xx - c[:, k, 0, None, None]) ** 2 + (yy - c[:, k, 1, None, None]) ** 2) / 0.01)
              for k in range(2))
    return img.clamp(0, 1).flatten(1)


def test_slow_but_learning_autoencoder_passes_past_the_budget():
    # a sigmoid autoencoder trained with MSE at Adam 1e-3 is healthy but slow: still falling at 200 steps
    x = _blob_images()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 144), nn.Sigmoid())
    fields = dict(model=model, data=(x, x), loss_fn=nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert check(options={"extend_to": 200}, **fields).status == "fail"


def test_lr_range_options_reach_overfit_batchs_reading():
    # the LR sweep and its reading are evidence read under lr_range's options: a wider band moves the top of the
    # range, so the suggestion (for SGD, between the minimum and that top), and overfit_batch retries there
    def run(band):
        fields = zoo.mlp_target()
        fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=1e-5)  # too slow: overfit_batch retries
        report = babysitter.check(**fields, select=["lr_range", "overfit_batch"],
                                  options={"lr_range": {"steps": 60, "repeats": 2, "band": band}})
        return report["lr_range"].metrics, report["overfit_batch"].metrics

    (narrow, fit_narrow), (wide, fit_wide) = run(0.1), run(0.5)
    assert wide["lr_high"] > narrow["lr_high"] and wide["suggested_lr"] != narrow["suggested_lr"]
    assert fit_narrow["lr"] == narrow["suggested_lr"] and fit_wide["lr"] == wide["suggested_lr"]
    assert "lr_range's suggestion" in fit_wide["lr_source"]


# -- the judgment alone, on synthetic attempts (no model) ----------------------------------------------------
SPREAD_OUT = OutputFacts(per_example=3, classes=3, in_unit=False, sums_to_one=False, spread=0.8)


def attempt(best, passed=False, lr=1e-2, start=1.1, floor=0.0, outputs=SPREAD_OUT, losses=None, **fields):
    losses = losses or (start, best)
    return Attempt(lr=lr, why_lr=f"your LR {lr}", losses=tuple(losses), best=best, start=start,
                   reduction=(best - floor) / (start - floor), accuracy=1.0 if passed else 0.5, passed=passed,
                   steps=len(losses), floor=floor, reference=start, family=fields.pop("family", "ce"),
                   outputs=outputs, **fields)


def measured(*attempts, reading=None, parameters=10_000):
    return OverfitMeasured(examples=32, attempts=attempts, parameters=parameters, reading=reading)


def reading(low=1e-3, high=1e-1):
    return LrReading(analyses=(), user_lr=None, status=Status.PASS, summary="", suggested_lr=1e-2, lr_low=low,
                     lr_high=high)


def test_judge_passes_the_attempt_that_passed_and_says_when_a_retry_did():
    first = attempt(0.05, passed=True)
    j = OverfitBatch().judge(measured(first))
    assert j.status == Status.PASS and not j.advice and "fell from 1.1 to 0.05 (4.5% of its start 1.1)" in j.summary
    retried = OverfitBatch().judge(measured(attempt(0.9, lr=1e-5), attempt(0.05, passed=True, lr=0.3)))
    assert retried.status == Status.PASS and "your LR is slow" in retried.advice[0] and "at 0.3 it was" in \
        retried.advice[0]


def test_judge_fails_on_the_attempt_that_got_furthest():
    m = measured(attempt(1.0, lr=1e-5), attempt(0.5, lr=1e-2), attempt(0.8, lr=1e-1))
    j = OverfitBatch().judge(m)
    assert m.final.lr == 1e-2 and j.status == Status.FAIL
    assert "best loss 0.5 is 45% of its start 1.1, accuracy 50% after 2 steps; likely:" in j.summary


def test_judge_names_a_softmax_before_cross_entropy_first():
    probs = OutputFacts(per_example=3, classes=3, in_unit=True, sums_to_one=True, spread=0.5)
    j = OverfitBatch().judge(measured(attempt(0.7, outputs=probs)))
    assert j.causes[0].cause == "softmax fed into CrossEntropyLoss" and j.causes[0].score == 1.0
    assert "ln(1 + (C-1)/e) = 0.551" in j.advice[0]
    logits_in_unit = OutputFacts(per_example=3, classes=3, in_unit=True, sums_to_one=False, spread=0.5)
    assert OverfitBatch().judge(measured(attempt(0.7, outputs=logits_in_unit))).causes[0].cause != \
        "softmax fed into CrossEntropyLoss"
    sig = OverfitBatch().judge(measured(attempt(0.6, family="bce_logits", outputs=logits_in_unit)))
    assert sig.causes[0].cause == "sigmoid fed into BCEWithLogitsLoss"


def test_judge_same_output_for_every_example_below_the_spread_edge():
    def first_cause(spread):
        facts = OutputFacts(per_example=3, classes=3, spread=spread)
        return OverfitBatch().judge(measured(attempt(1.0, outputs=facts))).causes[0].cause

    assert first_cause(0.9 * SAME_OUTPUT_SPREAD) == "the output ignores the input"
    assert first_cause(1.1 * SAME_OUTPUT_SPREAD) != "the output ignores the input"


def test_judge_ranks_learning_rate_causes_from_lr_ranges_reading():
    def top(a, r=reading()):
        c = OverfitBatch().judge(measured(a, reading=r)).causes[0]
        return c.cause, c.score

    assert top(attempt(1.05, lr=1e-5)) == ("learning rate too low", 0.7)  # kept 95% of its excess: barely moved
    assert top(attempt(0.5, lr=1e-5)) == ("learning rate too low", 0.4)
    assert top(attempt(0.5, lr=1.0)) == ("learning rate too high", 0.5)  # above the range's top
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.7))) == ("learning rate too high", 0.8)  # rose 1.5x
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.6))) == ("too little capacity", 0.2)
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.7)), None) == ("learning rate too high", 0.8)


def test_judge_too_little_capacity_for_the_values_to_fit():
    def capacity(parameters):
        causes = OverfitBatch().judge(measured(attempt(0.5), parameters=parameters)).causes
        return next(c.score for c in causes if c.cause == "too little capacity")

    assert capacity(32 * 3 - 1) == 0.6 and capacity(32 * 3) == 0.2
