"""dead_relu in both directions: negative biases and a high learning rate kill units; healthy models pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.activations import LayerStats, Producer
from babysitter.checklist.dead_relu import DeadRelu, DeadReluMeasured


def check(**fields):
    return babysitter.check(**fields, select=["dead_relu"])["dead_relu"]


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status in ("pass", "skip"), result.summary
    if name in ("gru", "lstm"):  # gates are fused: nothing to see, and the report says why
        assert result.status == "skip" and "fused" in result.summary


def test_deep_kaiming_mlp_passes():
    torch.manual_seed(0)
    layers = []
    for i in range(8):
        lin = nn.Linear(16 if i == 0 else 64, 64)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    x, y = zoo.blobs()
    result = check(model=nn.Sequential(*layers, nn.Linear(64, 4)), data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=zoo.sgd(0.05))
    assert result.status == "pass", result.summary
    assert result.metrics["layers"] == 8


def test_negative_bias_kills_a_functional_relu_layer_at_init():
    fields = zoo.mlp_target()
    with torch.no_grad():
        fields["model"].layers[1].bias.fill_(-10.0)
    result = check(**fields)
    assert result.status == "fail"
    assert result.metrics["worst_layer"] == "model#relu1"
    assert result.metrics["dead_fraction_by_layer_init"]["model#relu1"] == 1.0
    assert result.metrics["dead_fraction_by_layer_init"]["model#relu0"] < 0.5
    assert "at init" in result.summary
    assert any("layers.1" in a and "bias" in a and "-10" in a for a in result.advice)
    table = result.tables[0]
    assert [r[0] for r in table.rows] == ["model#relu0", "model#relu1"]
    assert result.plots[0].kind == "bar" and len(result.plots[0].series) == 2


def test_dead_conv_channels_are_found():
    fields = zoo.cnn_target()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        model[2].bias.fill_(-10.0)
    fields["model"] = model
    result = check(**fields)
    assert result.status == "fail" and result.metrics["worst_layer"] == "3"


def test_leaky_relu_with_negative_bias_is_inactive_too():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(F.leaky_relu(self.fc(x), 0.01))

    model = Leaky()
    with torch.no_grad():
        model.fc.bias.fill_(-20.0)
    x, y = zoo.blobs()
    result = check(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss())
    assert result.status == "fail" and result.metrics["worst_layer"] == "model#leaky_relu"


def test_units_killed_by_a_high_learning_rate_are_found_after_training():
    torch.manual_seed(0)
    x, y = zoo.blobs()
    result = check(model=zoo.FunctionalMLP(d_in=16, hidden=32, d_out=4), data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=zoo.sgd(3.0))
    assert result.status == "fail"
    assert "after training" in result.summary
    assert result.metrics["max_dead_fraction_init"] < 0.5
    assert any("learning rate" in a and "3" in a for a in result.advice)


def test_thresholds_are_options():
    fields = zoo.mlp_target()
    result = babysitter.check(**fields, select=["dead_relu"], options={"dead_relu": {"warn_layer": 0.01,
                                                                                    "fail_layer": 0.02,
                                                                                    "chance_z": -20.0}})
    assert result["dead_relu"].status in ("warn", "fail")


def test_deep_default_init_stack_near_half_dead_by_chance_passes():
    # with the signal faded through 8 default-init layers, each unit's sign is its bias's: a coin flip per unit,
    # and 61% of 128 is within 3 binomial standard deviations of 1/2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 32, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    torch.manual_seed(0)
    layers, c = [], 32
    for _ in range(8):
        layers += [nn.Linear(c, 128), nn.ReLU()]
        c = 128
    model = nn.Sequential(*layers, nn.Linear(c, 2))
    fields = dict(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                  optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["worst_dead_fraction"] > 0.6  # the plain 60% threshold alone would have warned


# -- the judgment alone, on synthetic measurements (no model) -----------------------------------------------------
def relu_layer(name="fc#relu", units=1000, dead=0, active=0.5, pre=(0.0, 1.0), producer="fc", order=0):
    """A rectifier layer with ``dead`` units never positive and the others positive on ``active`` of outputs."""
    return LayerStats(name=name, module="fc", module_type="Linear", op="relu", family="rectifier", order=order,
                      calls=4, units=units, per_unit=256, active=[0.0] * dead + [active] * (units - dead),
                      saturated=None, mean=0.4, std=0.6, pre_mean=pre[0], pre_std=pre[1], log_hist=[],
                      value_hist=None, value_range=None, pinned=None, producer=producer, producer_type="Linear")


def measured(init=(), trained=(), producers=None, lr=0.1):
    return DeadReluMeasured(init=tuple(init), trained=tuple(trained), train_forwards=6 if trained else 0,
                            producers=producers or {}, user_lr=lr)


def test_judge_warn_and_fail_thresholds_at_their_edges():
    judge = DeadRelu().judge  # 1000 units: the coin-flip guard (54.7%) is below the thresholds
    assert judge(measured([relu_layer(dead=600)])).status == "pass"  # 60%: not above warn_layer
    assert judge(measured([relu_layer(dead=601)])).status == "warn"
    assert judge(measured([relu_layer(dead=700)])).status == "warn"  # 70%: not above fail_layer
    result = judge(measured([relu_layer(dead=701)]))
    assert result.status == "fail" and result.summary == \
        "70.1% of the units of layer fc#relu are dead at init (threshold 70%)"


def test_judge_a_narrow_layer_half_dead_by_chance_passes():
    # 100 units: chance = 1/2 + 3 * 0.5 / 10 = 65%, above warn_layer
    assert DeadRelu().judge(measured([relu_layer(units=100, dead=65)])).status == "pass"
    assert DeadRelu().judge(measured([relu_layer(units=100, dead=66)])).status == "warn"
    assert DeadRelu(chance_z=0.0).judge(measured([relu_layer(units=100, dead=65)])).status == "warn"


def test_judge_a_small_layer_wholly_dead_fails_despite_the_chance_guard():
    # 4 units: chance = min(1/2 + 3 * 0.5 / 2, 1 - 1.5 / 4) = 62.5%, so all but one unit dead is flagged too
    assert DeadRelu().judge(measured([relu_layer(units=4, dead=4)])).status == "fail"
    assert DeadRelu().judge(measured([relu_layer(units=4, dead=3)])).status == "fail"
    assert DeadRelu().judge(measured([relu_layer(units=4, dead=2)])).status == "pass"


def test_judge_unit_threshold_decides_which_units_are_dead():
    judge = DeadRelu().judge
    assert judge(measured([relu_layer(units=10, dead=0, active=0.01)])).status == "pass"  # 1% is alive
    assert judge(measured([relu_layer(units=10, dead=0, active=0.0099)])).status == "fail"
    assert DeadRelu(unit_threshold=0.001).judge(measured([relu_layer(units=10, active=0.0099)])).status == "pass"


def test_judge_pass_summary_counts_units_at_both_moments():
    result = DeadRelu().judge(measured([relu_layer(dead=10)], [relu_layer(dead=30)]))
    assert result.status == "pass" and not result.advice
    assert result.summary == "10 of 1000 rectifier units dead at init, 30 after 24 training steps; " \
                             "worst layer fc#relu 3% dead"


def test_judge_advice_names_a_negative_bias_a_shifted_input_or_the_init():
    dead = relu_layer(units=32, dead=32, pre=(-10.0, 0.3))
    bias = DeadRelu().judge(measured([dead], producers={"fc": Producer("fc", "Linear", bias_mean=-10.0,
                                                                        bias_std=0.0)}))
    assert "the bias of fc has mean -10" in bias.advice[0]
    assert "nn.init.constant_(model.get_submodule('fc').bias, 0.01)" in bias.advice[0]
    shifted = DeadRelu().judge(measured([dead], producers={"fc": Producer("fc", "Linear", bias_mean=0.0,
                                                                           bias_std=0.1)}))
    assert "shifted far below zero" in shifted.advice[0]
    init = DeadRelu().judge(measured([relu_layer(units=32, dead=32, pre=(-0.1, 0.3))]))
    assert "Use Kaiming init of fc" in init.advice[0]


def test_judge_units_dying_during_training_point_at_the_learning_rate():
    result = DeadRelu().judge(measured([relu_layer(dead=0)], [relu_layer(dead=1000)], lr=3.0))
    assert result.status == "fail" and "after training" in result.summary
    assert result.advice == ("Units die during training in fc#relu (100%): they were alive at init, so the updates "
                             "kill them. Lower the learning rate (now 3) or add warmup; LeakyReLU or GELU keep a "
                             "gradient for negative inputs.",)
    assert "now" not in DeadRelu().judge(measured([relu_layer()], [relu_layer(dead=1000)], lr=None)).advice[0]


def test_prose_states_the_thresholds_and_constants_in_use():
    what = DeadRelu.prose(DeadRelu.what)
    assert "under 1% of the elements" in what and "warns above 60%" in what and "fails above 70%" in what
    assert "the 4 batches at initialization, and the last 6 of the probe's 24 training steps" in what
    assert "(0.01)" in DeadRelu.prose(DeadRelu.todo)


# -- layers of an nn.Sequential named as people do (issue 13) --------------------------------------------------
from babysitter.analysis.params import display  # noqa: E402


def test_display_names_sequential_children_with_their_type():
    assert display("1") == "1" and display("") == "(root)"  # as stored, for metrics
    assert display("1", "ReLU") == "model.1 (ReLU)"
    assert display("layers.0", "Linear") == "layers.0 (Linear)"
    assert display("head", "Linear") == "head"  # a name says enough
    assert display("layers.0#relu", "Block") == "layers.0#relu"  # a functional call names its op
    assert display("1#1", "ReLU") == "model.1#1 (ReLU)"  # the second call of a reused module
    assert display("0.weight", "") == "model.0.weight"


def test_a_dead_layer_of_a_sequential_is_named_with_its_type():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].bias.fill_(-10.0)
    result = check(**zoo.blobs_fields(model))
    assert result.status == "fail"
    assert "layer model.3 (ReLU) are dead" in result.summary, result.summary
    assert result.metrics["worst_layer"] == "3"  # metrics keep the qualified name
    assert any(a.startswith("model.3 (ReLU):") and "the bias of model.2 (Linear)" in a for a in result.advice), \
        result.advice


def test_a_healthy_sequential_names_its_worst_layer_with_its_type():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    result = check(**zoo.blobs_fields(model))
    assert result.status == "pass" and "worst layer model.1 (ReLU) " in result.summary, result.summary
