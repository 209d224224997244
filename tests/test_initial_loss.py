"""initial_loss in both directions: faulty setups warn or fail, healthy models of every kind pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo


def check(**fields):
    return babysitter.check(**fields, select=["initial_loss"])["initial_loss"]


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert result.metrics["observed"] > 0 and result.metrics["expected"] > 0


def test_classifier_with_final_layer_scaled_100x_fails():
    fields = zoo.mlp_target()
    with torch.no_grad():
        fields["model"].head.weight.mul_(100)
    result = check(**fields)
    assert result.status == "fail"
    assert result.metrics["observed"] > 5 * result.metrics["expected"]
    assert math.isclose(result.metrics["expected"], math.log(3), rel_tol=1e-5)
    assert any("final layer" in a for a in result.advice)


def test_cnn_with_final_layer_scaled_100x_fails():
    fields = zoo.cnn_target()
    with torch.no_grad():
        fields["model"].head.weight.mul_(100)
    assert check(**fields).status == "fail"


def test_sum_reduction_on_batch_of_256_fails_and_says_so():
    fields = zoo.mlp_target()
    x, y = zoo.spirals(n=768)
    result = check(model=fields["model"], data=(x, y), batch_size=256, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
    assert result.status == "fail"
    assert "reduction='sum'" in result.summary
    assert result.metrics["reduction_scale"] == pytest.approx(256, rel=1e-3)


def test_sum_reduction_recognised_in_a_plain_function():
    fields = zoo.binary_target()
    fields["loss_fn"] = lambda o, t: F.binary_cross_entropy_with_logits(o, t, reduction="sum")
    result = check(**fields)
    assert result.status == "fail" and result.metrics["recognised"] == "matched numerically"


def test_loss_recognised_numerically_in_a_lambda():
    fields = zoo.mlp_target()
    fields["loss_fn"] = lambda o, t: -o.log_softmax(1).gather(1, t[:, None]).mean()
    result = check(**fields)
    assert result.status == "pass" and result.metrics["loss_family"] == "ce"
    assert result.metrics["recognised"] == "matched numerically"


def test_nll_on_raw_logits_is_below_chance_and_warns():
    fields = zoo.mlp_target()
    fields["loss_fn"] = nn.NLLLoss()  # the model outputs raw logits, not log-probabilities
    result = check(**fields)
    assert result.status == "warn" and "below chance" in result.summary
    assert any("log_softmax" in a for a in result.advice)


def test_uncentred_regression_targets_pass_with_the_bias_to_use():
    # an offset between the outputs' mean and the targets' is the final bias's first steps, not a fault
    fields = zoo.regression_target()
    x, y = fields["data"]
    fields["data"] = (x, y + 50.0)
    result = check(**fields)
    assert result.status == "pass"
    assert any("standardize" in a and "50" in a for a in result.advice)


def test_sigmoid_output_with_mse_on_unit_targets_passes():
    torch.manual_seed(0)
    x = torch.rand(128, 64) * (torch.rand(128, 64) < 0.2)  # sparse images in [0, 1]: the outputs start at 0.5
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 64), nn.Sigmoid())
    assert check(model=model, data=(x, x), loss_fn=nn.MSELoss()).status == "pass"


def test_uncentred_regression_with_outputs_too_spread_fails():
    fields = zoo.regression_target()
    x, y = fields["data"]
    fields["data"] = (x, y + 50.0)
    with torch.no_grad():
        fields["model"][-1].weight.mul_(100)
    assert check(**fields).status == "fail"


def test_regression_outputs_far_too_large_fail():
    fields = zoo.regression_target()
    with torch.no_grad():
        fields["model"][-1].weight.mul_(100)
    assert check(**fields).status == "fail"


def test_imbalanced_labels_pass_with_prior_bias_advice():
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (torch.rand(512) < 0.05).long()  # 5% positives
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    result = check(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss())
    assert result.status == "pass"
    assert result.metrics["expected_prior"] < 0.5 * result.metrics["expected"]
    assert any("log prior" in a for a in result.advice)


def test_label_smoothing_and_class_weights_are_taken_into_account():
    fields = zoo.mlp_target()
    fields["loss_fn"] = nn.CrossEntropyLoss(label_smoothing=0.1, weight=torch.tensor([1.0, 2.0, 0.5]))
    result = check(**fields)
    assert result.status == "pass"


def test_unknown_loss_is_skipped_with_the_reason():
    fields = zoo.mlp_target()
    fields["loss_fn"] = lambda o, t: F.multi_margin_loss(o, t)
    result = check(**fields)
    assert result.status == "skip" and "not one babysitter can reason about" in result.summary


def test_figure_and_zeroed_input_baseline_are_reported():
    result = check(**zoo.mlp_target())
    assert result.plots and result.plots[0].kind == "hist" and len(result.plots[0].series[0].y) > 100
    assert result.metrics["zeroed_input_loss"] > 0
    assert result.tables[0].rows
