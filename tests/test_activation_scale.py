"""activation_scale in both directions: a wrong init std makes activations vanish or explode with depth;
Kaiming/Xavier, normalized and healthy zoo models pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo


def check(**fields):
    return babysitter.check(**fields, select=["activation_scale"])["activation_scale"]


def deep_mlp(act, depth=10, width=64, init="default", std=None, norm=False):
    layers, d = [], 16
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        elif init == "xavier":
            nn.init.xavier_normal_(lin.weight)
        elif init == "normal":
            nn.init.normal_(lin.weight, std=std)
        if init != "default":
            nn.init.zeros_(lin.bias)
        layers += [lin] + ([nn.BatchNorm1d(width)] if norm else []) + [act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 4))


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status in ("pass", "skip"), result.summary


@pytest.mark.parametrize("act,init,norm", [(nn.ReLU, "kaiming", False), (nn.Tanh, "xavier", False),
                                           (nn.ReLU, "default", False), (nn.GELU, "default", False),
                                           (nn.ReLU, "normal", True)])
def test_deep_well_initialised_or_normalized_mlps_pass(act, init, norm):
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(act, depth=8, init=init, std=0.01, norm=norm)))
    assert result.status == "pass", result.summary
    assert result.metrics["layers"] == 8


def test_ten_layer_tanh_with_std_001_vanishes_and_fails():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(nn.Tanh, init="normal", std=0.01)))
    assert result.status == "fail" and "collapses" in result.summary
    assert result.metrics["depth_ratio"] < 1e-3
    assert any("Xavier" in a and "xavier_normal_" in a and "too small" in a for a in result.advice)
    kinds = [p.kind for p in result.plots]
    assert kinds == ["line", "heatmap"] and len(result.plots[1].series) == 10


def test_ten_layer_tanh_with_std_1_saturates_and_fails():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(nn.Tanh, init="normal", std=1.0)))
    assert result.status == "fail" and "flat region" in result.summary
    assert any("too large" in a for a in result.advice)


def test_ten_layer_relu_with_std_1_explodes_and_fails():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(nn.ReLU, init="normal", std=1.0)))
    assert result.status == "fail" and "grows" in result.summary
    assert result.metrics["depth_ratio"] > 1e3
    assert any("Kaiming" in a and "kaiming_normal_" in a for a in result.advice)


def test_shallower_relu_with_std_001_warns():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(nn.ReLU, depth=3, init="normal", std=0.01)))
    assert result.status in ("warn", "fail")


def test_functional_cnn_without_normalization_collapsing_is_flagged():
    class Cnn(nn.Module):
        def __init__(self, std):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1) for i in range(6))
            for c in self.convs:
                nn.init.normal_(c.weight, std=std)
                nn.init.zeros_(c.bias)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            for conv in self.convs:
                x = F.relu(conv(x))
            return self.head(x.mean((2, 3)))

    x, y = zoo.images(n=128)
    torch.manual_seed(0)
    bad = check(model=Cnn(0.01), data=(x, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32)
    assert bad.status == "fail" and bad.metrics["layers"] == 6
    torch.manual_seed(0)
    good = check(model=Cnn((2 / (9 * 16)) ** 0.5), data=(x, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32)
    assert good.status == "pass", good.summary


def test_histograms_through_depth_render_and_round_trip(tmp_path):
    from babysitter.render.figures import to_png
    from babysitter.report import Report

    torch.manual_seed(0)
    report = babysitter.check(**zoo.blobs_fields(deep_mlp(nn.Tanh, depth=4, init="normal", std=0.01)),
                              select=["activation_scale", "saturation"])
    heatmaps = [p for c in report.checks for p in c.plots if p.kind == "heatmap"]
    assert len(heatmaps) == 2
    assert all(to_png(p).startswith(b"\x89PNG") for p in heatmaps)
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()
    paths = report.save(tmp_path)
    assert (tmp_path / "activation_scale.activation_scale.csv").exists()  # the per-layer table as CSV
    assert (tmp_path / "saturation.saturation.csv").exists()
    assert "data:image/png" in paths["html"].read_text()


def test_a_small_final_layer_before_an_output_tanh_is_not_a_collapse():
    """RL policies and generators end in tanh after a last layer initialised small on purpose."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4), nn.Tanh())
    with torch.no_grad():
        model[4].weight.mul_(0.001)
        model[4].bias.zero_()
    result = check(model=model, data=(x, torch.rand(256, 4) * 2 - 1), loss_fn=nn.MSELoss())
    assert result.status == "pass", result.summary
    assert result.metrics["layers"] == 2
