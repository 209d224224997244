"""activation_scale in both directions: a wrong init std makes activations vanish or explode with depth;
Kaiming/Xavier, normalized and healthy zoo models pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.activations import LayerStats, Producer
from babysitter.checklist.activation_scale import ActivationScale, ScaleMeasured


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
    import xml.etree.ElementTree as ET

    from babysitter.render import svg
    from babysitter.report import Report

    torch.manual_seed(0)
    report = babysitter.check(**zoo.blobs_fields(deep_mlp(nn.Tanh, depth=4, init="normal", std=0.01)),
                              select=["activation_scale", "saturation"])
    heatmaps = [p for c in report.checks for p in c.plots if p.kind == "heatmap"]
    assert len(heatmaps) == 2
    assert all(ET.fromstring(svg.render(p)).tag == "{http://www.w3.org/2000/svg}svg" for p in heatmaps)
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()
    paths = report.save(tmp_path)
    assert (tmp_path / "activation_scale.activation_scale.csv").exists()  # the per-layer table as CSV
    assert (tmp_path / "saturation.saturation.csv").exists()
    assert paths["html"].read_text().count("<svg xmlns=") >= 2


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


# -- the judgment alone, on synthetic measurements (no model) -----------------------------------------------------
def act(name, std, op="relu", pre_std=1.0, producer="", order=0, producer_type="Linear"):
    family = {"relu": "rectifier", "selu": "rectifier", "tanh": "tanh", "sigmoid": "sigmoid"}[op]
    return LayerStats(name=name, module="", module_type="Model", op=op, family=family, order=order, calls=4,
                      units=8, per_unit=256, active=[0.5] * 8, saturated=None, mean=0.0, std=std, pre_mean=0.0,
                      pre_std=pre_std, log_hist=[1.0] * 40, value_hist=None, value_range=None, pinned=None,
                      producer=producer, producer_type=producer_type)


def depth(first, last, producers=None, producer_type="Linear"):
    """Two rectifier layers with these output stds (the second fed by 'fc')."""
    chain = (act("a", first, producer_type=producer_type), act("b", last, producer="fc", order=1,
                                                                producer_type=producer_type))
    return ScaleMeasured(chain=chain, bounded=(), producers=producers or {})


def test_judge_depth_ratio_thresholds_at_their_edges():
    judge = ActivationScale().judge
    assert judge(depth(1.0, 100.0)).status == "pass"  # a factor of 100 is not above warn_ratio
    grows = judge(depth(1.0, 101.0))
    assert grows.status == "warn" and grows.summary == \
        "activation std grows 101x through 2 layers at init: 1 (a) -> 101 (b)"
    assert judge(depth(1.0, 1000.0)).status == "warn"  # not above fail_ratio
    assert judge(depth(1.0, 1001.0)).status == "fail"
    collapses = judge(depth(1.0, 1e-4))
    assert collapses.status == "fail" and "collapses 1e+04x" in collapses.summary
    assert ActivationScale(warn_ratio=1e5, fail_ratio=1e6).judge(depth(1.0, 1e-4)).status == "pass"


def test_judge_pass_summaries():
    assert ActivationScale().judge(depth(0.5, 0.25)).summary == \
        "activation std through 2 layers at init: 0.5 -> 0.25 (0.5x)"
    one = ScaleMeasured(chain=(act("a", 0.5),), bounded=(act("t", 0.4, "tanh", pre_std=0.6),), producers={})
    assert ActivationScale().judge(one).summary == \
        "2 activation layers at init, no depth to compare; tanh/sigmoid input std at most 0.6 (t)"


def test_judge_tanh_and_sigmoid_input_std_thresholds():
    def judged(op, pre_std):
        layer = act("t", 0.9, op, pre_std=pre_std)
        return ActivationScale().judge(ScaleMeasured(chain=(), bounded=(layer,), producers={}))

    assert judged("tanh", 2.5).status == "pass" and judged("tanh", 2.6).status == "warn"
    assert judged("tanh", 5.0).status == "warn" and judged("tanh", 5.1).status == "fail"
    assert judged("sigmoid", 5.0).status == "pass" and judged("sigmoid", 5.2).status == "warn"  # twice for sigmoid
    assert judged("sigmoid", 10.2).status == "fail"
    assert judged("tanh", 6.0).summary == "the input of t (tanh) has std 6 at init: its units start in the flat region"


def test_judge_a_worse_depth_verdict_is_not_replaced_by_a_milder_input_warning():
    m = ScaleMeasured(chain=(act("a", 1.0), act("b", 1e-4, order=1)), bounded=(act("t", 0.9, "tanh", pre_std=3.0),),
                      producers={})
    assert "collapses" in ActivationScale().judge(m).summary


def test_judge_advice_gives_the_init_for_the_activation_that_follows():
    small = Producer("fc", "Linear", weight_shape=(64, 64), weight_std=0.01)
    result = ActivationScale().judge(depth(1.0, 1e-4, producers={"fc": small}))
    assert result.advice[0] == ("fc, feeding b: weight std 0.01 is 0.057x the Kaiming value 0.177 (too small); "
                                "re-initialise it with nn.init.kaiming_normal_(model.get_submodule('fc').weight, "
                                "nonlinearity='relu') and a zero bias.")
    assert "Alternatively add BatchNorm/LayerNorm" in result.advice[-1]
    normed = ActivationScale().judge(depth(1.0, 1e-4, producer_type="BatchNorm1d"))
    assert normed.advice[0].startswith("The weights look like the standard inits, yet the scale drifts (the std "
                                       "changes most at b)") and len(normed.advice) == 1
    fine = Producer("fc", "Linear", weight_shape=(64, 64), weight_std=0.2)  # within 2x of 0.177: not named
    assert "The weights look like" in ActivationScale().judge(depth(1.0, 1e-4, producers={"fc": fine})).advice[0]


def test_judge_selu_gets_the_lecun_init():
    m = ScaleMeasured(chain=(act("a", 1.0, "selu"), act("b", 1e4, "selu", producer="fc", order=1)), bounded=(),
                      producers={"fc": Producer("fc", "Linear", weight_shape=(64, 64), weight_std=1.0)})
    assert "8x the LeCun value 0.125 (too large)" in ActivationScale().judge(m).advice[0]


def test_prose_states_the_ratios_in_use():
    what = ActivationScale.prose(ActivationScale.what)
    assert "more than 100x warns, by more than 1000x fails" in what and "above 2.5 warns and above 5 fails" in what
    assert what.startswith("On the 4 batches")


def test_layers_of_a_sequential_are_named_with_their_type():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(deep_mlp(nn.Tanh, init="normal", std=0.01)))
    assert result.status == "fail"
    assert "(model.1 (Tanh)) -> " in result.summary and result.summary.endswith("(model.19 (Tanh))"), result.summary
    assert any(a.startswith("model.0 (Linear), feeding model.1 (Tanh): weight std") for a in result.advice), \
        result.advice
    assert result.plots[0].x_label.endswith("(0 = model.1 (Tanh))")
    assert "std_by_layer" in result.metrics and "1" in result.metrics["std_by_layer"]  # metrics: qualified names
    hot = check(**zoo.blobs_fields(deep_mlp(nn.Tanh, init="normal", std=1.0)))
    assert "the input of model.9 (Tanh) has std" in hot.summary, hot.summary
