"""saturation in both directions: large weights saturate tanh/sigmoid and pin softmax; healthy models pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.activations import LayerStats, Producer
from babysitter.checklist.saturation import Saturation, SaturationMeasured


def check(**fields):
    return babysitter.check(**fields, select=["saturation"])["saturation"]


def mlp(act, depth=3, width=32, std=None, d_in=16, classes=4):
    layers, d = [], d_in
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if std is not None:
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)
        else:
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, classes))


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status in ("pass", "skip"), result.summary


def test_deep_xavier_tanh_and_sigmoid_mlps_pass():
    torch.manual_seed(0)
    assert check(**zoo.blobs_fields(mlp(nn.Tanh, depth=8, width=64))).status == "pass"
    assert check(**zoo.blobs_fields(mlp(nn.Sigmoid, depth=4, width=64))).status == "pass"


def test_tanh_with_large_weights_fails_and_names_the_xavier_value():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(mlp(nn.Tanh, depth=10, width=64, std=1.0)))
    assert result.status == "fail"
    assert result.metrics["worst_saturated_fraction"] > 0.4
    assert any("Xavier" in a and "xavier_uniform_" in a for a in result.advice)
    assert {p.kind for p in result.plots} == {"bar", "heatmap"}
    assert len(result.tables[0].rows) == 10


def test_functional_sigmoid_with_large_weights_fails():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(torch.sigmoid(self.fc(x)))

    torch.manual_seed(0)
    model = Gated()
    with torch.no_grad():
        model.fc.weight.mul_(30)
    result = check(**zoo.blobs_fields(model))
    assert result.status == "fail" and result.metrics["worst_layer"] == "model#sigmoid"


def test_moderately_scaled_tanh_warns():
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=64, std=0.5)  # pre-activation std ~3 in the second layer
    result = check(**zoo.blobs_fields(model))
    assert result.status in ("warn", "fail")
    assert 0.1 < result.metrics["worst_saturated_fraction"]


class SoftmaxClassifier(nn.Module):
    """Outputs log-probabilities (for NLLLoss) through a functional log_softmax."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            self.head.weight.mul_(scale)

    def forward(self, x):
        return F.log_softmax(self.head(self.body(x)), dim=1)


def test_softmax_pinned_at_init_fails_and_healthy_softmax_passes():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(SoftmaxClassifier(scale=100.0), loss_fn=nn.NLLLoss()))
    assert result.status == "fail" and "pinned" in result.summary
    torch.manual_seed(0)
    assert check(**zoo.blobs_fields(SoftmaxClassifier(), loss_fn=nn.NLLLoss())).status == "pass"


class Attention(nn.Module):
    """Hand-written causal self-attention: the softmax is seen by the instrument."""

    def __init__(self, d=64, scaled=True, vocab=50, classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, classes)
        self.scale = 1 / math.sqrt(d) if scaled else 1.0
        if not scaled:
            with torch.no_grad():
                self.embed.weight.mul_(3)

    def forward(self, ids):
        q, k, v = self.qkv(self.embed(ids)).chunk(3, -1)
        n = ids.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1)
        att = F.softmax((q @ k.transpose(1, 2) * self.scale).masked_fill(mask, float("-inf")), dim=-1)
        return self.head((att @ v).mean(1))


def test_attention_softmax_scaled_passes_and_unscaled_is_flagged():
    ids, y = zoo.tokens()
    torch.manual_seed(0)
    ok = check(model=Attention(scaled=True), data=(ids, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32)
    assert ok.status == "pass", ok.summary
    torch.manual_seed(0)
    bad = check(model=Attention(scaled=False), data=(ids, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32)
    assert bad.status in ("warn", "fail") and bad.metrics["worst_layer"] == "model#softmax"
    assert any("sqrt(d_head)" in a for a in bad.advice)


def test_fused_attention_and_recurrent_gates_are_said_to_be_invisible():
    result = check(**zoo.transformer_target())
    assert result.status == "skip" and "MultiheadAttention" in result.summary


# -- the judgment alone, on synthetic measurements (no model) -----------------------------------------------------
def bounded(name="act", family="tanh", saturated=0.0, units=10, pre_std=1.0, producer="fc", pinned=None):
    """A tanh or sigmoid layer whose units are saturated on ``saturated`` of their outputs, or a softmax with
    ``pinned`` of its distributions pinned."""
    softmax = family == "softmax"
    return LayerStats(name=name, module="", module_type="Model", op=family, family=family, order=0, calls=4,
                      units=0 if softmax else units, per_unit=256, active=[] if softmax else [0.5] * units,
                      saturated=None if softmax else [saturated] * units, mean=0.0, std=0.5, pre_mean=0.0,
                      pre_std=None if softmax else pre_std, log_hist=[], value_hist=None, value_range=None,
                      pinned=pinned, producer=producer, producer_type="Linear")


def measured(*layers, producers=None):
    return SaturationMeasured(layers=layers, trained=(), producers=producers or {})


def test_judge_warn_and_fail_thresholds_at_their_edges():
    judge = Saturation().judge
    assert judge(measured(bounded(saturated=0.10))).status == "pass"  # not above warn_layer
    assert judge(measured(bounded(saturated=0.11))).status == "warn"
    assert judge(measured(bounded(saturated=0.40))).status == "warn"  # not above fail_layer
    result = judge(measured(bounded(saturated=0.41)))
    assert result.status == "fail" and result.summary == "41.0% of the outputs of act are saturated at init (threshold 40%)"
    assert Saturation(fail_layer=0.5).judge(measured(bounded(saturated=0.41))).status == "warn"


def test_judge_names_the_worst_layer_and_a_pinned_softmax():
    result = Saturation().judge(measured(bounded("a", saturated=0.2), bounded("probs", "softmax", pinned=0.5)))
    assert result.status == "fail" and result.summary == \
        "50.0% of the outputs of probs are pinned at init (threshold 40%)"
    assert [a.split(":")[0] for a in result.advice] == ["probs", "a"]  # worst first
    assert "sqrt(d_head)" in result.advice[0]


def test_judge_pass_summary():
    assert Saturation().judge(measured(bounded(saturated=0.05))).summary == \
        "1 tanh/sigmoid/softmax layer at init, at most 5.0% saturated (act)"
    two = Saturation().judge(measured(bounded("a"), bounded("b", "sigmoid", saturated=0.02)))
    assert two.summary == "2 tanh/sigmoid/softmax layers at init, at most 2.0% saturated (b)" and not two.advice


def test_judge_advice_compares_the_feeding_weights_with_xavier():
    fc = Producer("fc", "Linear", weight_shape=(64, 64), weight_std=1.0)
    result = Saturation().judge(measured(bounded(saturated=0.7, pre_std=7.8), producers={"fc": fc}))
    assert result.advice == ("act: 70% saturated at init (pre-activation std 7.8): the weights of fc have std 1, 8x "
                             "the Xavier value 0.125. Use nn.init.xavier_uniform_(model.get_submodule('fc').weight, "
                             "gain=nn.init.calculate_gain('tanh')) and standardize the inputs; or switch the hidden "
                             "activation to ReLU/GELU.",)
    norm = Saturation().judge(measured(bounded(saturated=0.7), producers={"fc": Producer("fc", "LayerNorm")}))
    assert "scale down what feeds it" in norm.advice[0]


def test_prose_states_the_saturation_limits_in_use():
    doc = Saturation.prose(Saturation.what)
    assert "|tanh| > 0.99" in doc and "[0.01, 0.99]" in doc and "more than 10%" in doc and "above 40%" in doc
    assert "last 6 of the probe's 24 training steps" in doc


def test_a_saturated_layer_of_a_sequential_is_named_with_its_type():
    torch.manual_seed(0)
    result = check(**zoo.blobs_fields(mlp(nn.Tanh, depth=2, width=64, std=1.0)))
    assert result.status == "fail" and "of model.3 (Tanh) are saturated" in result.summary, result.summary
    assert result.metrics["worst_layer"] == "3"
    assert any(a.startswith("model.3 (Tanh):") and "the weights of model.2 (Linear)" in a for a in result.advice)
    healthy = check(**zoo.blobs_fields(mlp(nn.Tanh, depth=1)))
    assert healthy.status == "pass" and healthy.summary.endswith("(model.1 (Tanh))"), healthy.summary


def test_hardsigmoid_gates_are_seen_and_judged_both_ways():
    """MobileNetV3's squeeze-excite gates (nn.Hardsigmoid, flat beyond |x| >= 3) are a sigmoid family."""
    healthy = check(**zoo.blobs_fields(mlp(nn.Hardsigmoid), optimizer=zoo.sgd(0.05)))
    assert healthy.status == "pass" and "hardsigmoid" in healthy.summary.lower()
    saturated = check(**zoo.blobs_fields(mlp(nn.Hardsigmoid, std=1.0), optimizer=zoo.sgd(0.05)))
    assert saturated.status in ("warn", "fail"), saturated.summary
