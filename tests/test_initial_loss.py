"""initial_loss in both directions: faulty setups warn or fail, healthy models of every kind pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.status import Status
from babysitter.checklist.initial_loss import InitialLoss, InitMeasured


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
    assert "nothing to be compared with" in result.summary


def test_the_pytorch_vae_example_with_its_summed_elbo_is_skipped_with_the_reason():
    from test_overfit_batch import vae_target  # the PyTorch VAE example, shrunk, on grey-level 8 x 8 images

    result = check(**vae_target())
    assert result.status == "skip", result.summary  # a summed custom loss: no chance level to fail it against
    assert "a tuple of 3 ((32, 64), (32, 8), (32, 8)), which the loss (vae_loss) takes whole" in result.summary
    assert "value at chance is unknown" in result.summary and "summed over the batch" in result.summary


def test_a_summed_bce_on_an_autoencoder_fails_per_output_not_per_example():
    x = torch.rand(128, 16)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16), nn.Sigmoid())
    result = check(model=model, data=(x, x), batch_size=32, loss_fn=nn.BCELoss(reduction="sum"))
    assert result.status == "fail" and "= 512 x 0.70" in result.summary and "per output" in result.summary


def test_figure_and_zeroed_input_baseline_are_reported():
    result = check(**zoo.mlp_target())
    assert result.plots and result.plots[0].kind == "hist" and len(result.plots[0].series[0].y) > 100
    assert result.metrics["zeroed_input_loss"] > 0
    assert result.tables[0].rows


# -- the judgment alone, on synthetic measurements (no model) ------------------------------------------------
def measured_ce(observed, chance=1.0, prior=None, **fields):
    refs = {"chance": chance, "prior": chance if prior is None else prior, "classes": 3,
            "prior_bias": [-0.1, -2.3, -2.3]}
    base = dict(observed=observed, refs=refs, family="ce", how="module", classification=True,
                expected=f"ln 3 = {chance}", scale=1.0, summed=False, output_std=1.0, batches=4)
    return InitMeasured(**{**base, **fields})


def measured_mse(observed, var=1.0, constant=None):
    refs = {"chance": var, "zero": var, "constant": var if constant is None else constant, "target_mean": 50.0,
            "target_std": 1.0}
    return InitMeasured(observed=observed, refs=refs, family="mse", how="module", classification=False,
                        expected=f"Var(y) = {var}", scale=1.0, summed=False, output_std=0.1, batches=4)


def test_judge_warn_and_fail_ratios_on_either_side():
    judge = InitialLoss().judge
    assert judge(measured_ce(1.49)).status == Status.PASS
    assert judge(measured_ce(1.51)).status == Status.WARN
    assert judge(measured_ce(2.49)).status == Status.WARN
    fail = judge(measured_ce(2.51))
    assert fail.status == Status.FAIL and "2.5x chance" in fail.summary and "final layer" in fail.advice[0]
    assert InitialLoss(warn_ratio=2.0).judge(measured_ce(1.51)).status == Status.PASS


def test_judge_below_ratio_of_the_lowest_reference():
    judge = InitialLoss().judge
    assert judge(measured_ce(0.51)).status == Status.PASS
    low = judge(measured_ce(0.49))
    assert low.status == Status.WARN and "below chance" in low.summary and "log_softmax" in low.advice[0]
    assert judge(measured_ce(0.39, prior=0.8)).status == Status.WARN  # below half the prior's 0.8
    assert judge(measured_ce(0.41, prior=0.8)).status == Status.PASS


def test_judge_imbalance_ratio_gives_the_prior_bias():
    judge = InitialLoss().judge
    assert any("log prior" in a for a in judge(measured_ce(1.0, prior=0.84)).advice)
    assert not judge(measured_ce(1.0, prior=0.86)).advice
    assert not any("log prior" in a for a in judge(measured_ce(3.0, prior=0.5)).advice)  # not on a failure


def test_judge_summed_and_nonfinite_losses_fail():
    summed = InitialLoss().judge(measured_ce(281.2, chance=1.0986, summed=True, scale=256.0))
    assert summed.status == Status.FAIL and "reduction='sum'" in summed.summary and "256 x 1.098" in summed.summary
    assert InitialLoss().judge(measured_ce(math.nan)).status == Status.FAIL


def test_judge_regression_against_var_and_an_offset():
    judge = InitialLoss().judge
    assert judge(measured_mse(1.49)).status == Status.PASS
    assert judge(measured_mse(1.51)).status == Status.WARN
    assert judge(measured_mse(2.51)).status == Status.FAIL
    # outputs offset from the targets (the loss of their mean is 50 Var(y)): only the spread's excess counts
    offset = judge(measured_mse(50.4, constant=50.0))
    assert offset.status == Status.PASS and "standardize" in offset.advice[0] and "50" in offset.advice[0]
    assert judge(measured_mse(51.6, constant=50.0)).status == Status.FAIL  # 1 + 1.6 = 2.6x Var(y)


class RefusesZeros(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        if not bool(x.any()):
            raise ValueError("all-zero input")
        return self.fc(x)


def test_zeroed_input_loss_that_fails_is_a_note_not_an_error():
    torch.manual_seed(0)
    result = check(model=RefusesZeros(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss())
    assert result.status == "pass" and "zeroed_input_loss" not in result.metrics
    assert any(n.startswith("zeroed-input loss unavailable: ValueError: all-zero input") for n in result.notes)
