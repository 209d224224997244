"""dead_relu in both directions: negative biases and a high learning rate kill units; healthy models pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo


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
