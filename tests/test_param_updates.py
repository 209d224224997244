"""param_updates in both directions: orphaned, cut, stuck and frozen parameters are found; healthy models pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
from babysitter.checklist.param_updates import Param, ParamUpdates, UpdatesMeasured
import zoo


def check(**fields):
    return babysitter.check(**fields, select=["param_updates"])["param_updates"]


class DetachedMLP(zoo.FunctionalMLP):
    """The first layer's output is detached: it runs but never learns."""

    def forward(self, x):
        x = F.relu(self.layers[0](x)).detach()
        return self.head(F.relu(self.layers[1](x)))


class UnusedHeadMLP(zoo.FunctionalMLP):
    def __init__(self):
        super().__init__()
        self.aux_head = nn.Linear(64, 5)  # defined, never called


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert 1e-5 < result.metrics["ratio_median"] < 1e-1


def test_more_healthy_setups_pass():
    torch.manual_seed(0)
    wide = dict(model=zoo.FunctionalMLP(hidden=512, depth=3), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(),
                optimizer=zoo.adam(1e-3))
    assert check(**wide).status == "pass"
    plain_sgd = zoo.cnn_target()
    plain_sgd["optimizer"] = zoo.sgd(0.01, momentum=0.0)
    assert check(**plain_sgd).status == "pass"


def test_layer_missing_from_the_optimizer_fails_by_name():
    fields = zoo.mlp_target()
    model = fields["model"]
    fields["optimizer"] = lambda params: torch.optim.Adam(model.layers.parameters(), lr=1e-2)
    result = check(**fields)
    assert result.status == "fail" and "not in the optimizer" in result.summary
    assert result.metrics["not_in_optimizer"] == 2
    assert any("head (weight, bias)" in a for a in result.advice)


def test_detached_layer_fails_as_a_cut_gradient_path():
    fields = zoo.mlp_target()
    fields["model"] = DetachedMLP()
    result = check(**fields)
    assert result.status == "fail" and result.metrics["no_grad_path"] == 2
    assert any("layers.0 (weight, bias)" in a and ".detach()" in a for a in result.advice)


def test_unused_module_warns():
    fields = zoo.mlp_target()
    fields["model"] = UnusedHeadMLP()
    result = check(**fields)
    assert result.status == "warn" and result.metrics["unused"] == 2
    assert any("aux_head" in a for a in result.advice)


def test_frozen_layer_between_trainable_layers_warns():
    fields = zoo.mlp_target()
    fields["model"].layers[1].requires_grad_(False)
    result = check(**fields)
    assert result.status == "warn" and result.metrics["frozen_between_trainable"] == 2
    assert any("layers.1" in a for a in result.advice)


def test_frozen_backbone_prefix_is_a_note_not_a_warning():
    fields = zoo.mlp_target()
    fields["model"].layers.requires_grad_(False)
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["frozen_prefix"] == 4 and any("frozen backbone" in n for n in result.notes)


def test_param_group_with_zero_lr_never_moves_and_fails():
    fields = zoo.mlp_target()
    model = fields["model"]
    fields["optimizer"] = lambda params: torch.optim.Adam(
        [{"params": model.layers.parameters()}, {"params": model.head.parameters(), "lr": 0.0}], lr=1e-2)
    result = check(**fields)
    assert result.status == "fail" and "never move" in result.summary
    assert any("head (weight)" in a for a in result.advice)


def test_everything_frozen_fails():
    fields = zoo.mlp_target()
    fields["model"].requires_grad_(False)
    assert check(**fields).status == "fail"


def test_tiny_learning_rate_gives_a_low_ratio_warning():
    fields = zoo.mlp_target()
    fields["optimizer"] = zoo.sgd(1e-6, momentum=0.0)
    result = check(**fields)
    assert result.status == "warn" and result.metrics["ratio_low"] == 3
    assert result.metrics["ratio_median"] < 1e-5


def test_huge_learning_rate_gives_a_high_ratio_warning():
    fields = zoo.mlp_target()
    fields["optimizer"] = zoo.adam(1.0)
    result = check(**fields)
    assert result.status == "warn" and result.metrics["ratio_high"] >= 1
    assert result.metrics["ratio_peak"] > 1


def test_table_lists_every_parameter_and_the_figure_has_the_reference_lines():
    fields = zoo.transformer_target()
    result = check(**fields)
    table = result.tables[0]
    assert len(table.rows) == len(list(fields["model"].parameters()))
    plot = result.plots[0]
    assert plot.log_y and [m.value for m in plot.markers] == [1e-5, 1e-3, 1e-1]
    assert "embed.weight" not in plot.series[0].x  # embeddings are not judged


class SmallInitHead(nn.Module):
    """A classifier head initialised at std 1e-3 (a common choice for heads and policy outputs)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 3)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.body(x))


def test_small_init_layer_is_measured_against_the_standard_scale():
    # Adam's first step moves every weight by ~lr = 2x the head's init std: not a rewrite of a trained weight
    torch.manual_seed(0)
    fields = dict(model=SmallInitHead(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(2e-3))
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["ratio_peak"] < 0.2
    # a learning rate far too high for that scale still warns
    torch.manual_seed(0)
    fields.update(model=SmallInitHead(), optimizer=zoo.adam(0.5))
    result = check(**fields)
    assert result.status == "warn" and result.metrics["ratio_high"] >= 1


class FixedTemperature(nn.Module):
    """A projection head with a frozen temperature scalar between trainable layers (CLIP-style, fixed)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 32)
        self.scale = nn.Module()
        self.scale.temperature = nn.Parameter(torch.tensor(0.5), requires_grad=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)) / self.scale.temperature)


def test_frozen_scalar_between_trainable_layers_is_a_note():
    torch.manual_seed(0)
    result = check(model=FixedTemperature(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss())
    assert result.status == "pass", result.summary
    assert any("temperature" in n for n in result.notes)


# -- the judgment on synthetic parameter records, without a model -------------------------------------------------
def weight(name: str, ratio: float = 1e-3, peak=None, **fields) -> Param:
    """A trainable weight matrix whose update/weight ratio is ``ratio`` at every measured step but one (``peak``)."""
    fields = {"ratios": (ratio,) * 6 + (ratio if peak is None else peak,), "weight_norms": (1.0,) * 7, **fields}
    return Param(name, (8, 8), matrix=True, reference=1.0, **fields)


def bias(name: str, ratio: float = 1e-3, **fields) -> Param:
    return Param(name, (8,), ratios=(ratio,) * 7, weight_norms=(1.0,) * 7, **fields)


def judge(*params: Param, **thresholds):
    return ParamUpdates(**thresholds).judge(UpdatesMeasured(params, lr=1e-3))


def test_judge_passes_parameters_that_get_a_gradient_and_move():
    j = judge(weight("fc1.weight"), bias("fc1.bias"), weight("fc2.weight", ratio=2e-3))
    assert j.status == "pass" and "all 3 trainable parameters" in j.summary and "0.0015" in j.summary


def test_judge_low_ratio_at_its_threshold():
    j = judge(weight("fc1.weight", ratio=0.9e-5))
    assert j.status == "warn" and "1 weight matrix with update/weight below 1e-05" in j.summary
    assert judge(weight("fc1.weight", ratio=1.1e-5)).status == "pass"
    assert judge(bias("fc1.bias", ratio=1e-9)).status == "pass"  # only weight matrices are judged


def test_judge_high_median_and_one_step_rewrite_at_their_thresholds():
    assert judge(weight("fc1.weight", ratio=0.11)).status == "warn"
    assert judge(weight("fc1.weight", ratio=0.09)).status == "pass"
    assert judge(weight("fc1.weight", peak=1.01)).status == "warn"
    assert judge(weight("fc1.weight", peak=0.99)).status == "pass"


def test_judge_measures_a_small_init_against_the_standard_scale():
    # ||w|| = 0.01 against a standard-init norm of 1: a step of 2 x ||w|| is 0.02 of the standard scale
    small = Param("head.weight", (8, 8), matrix=True, reference=1.0, ratios=(2.0,) * 7, weight_norms=(0.01,) * 7)
    assert judge(small).status == "pass"
    assert judge(Param("head.weight", (8, 8), matrix=True, reference=0.01, ratios=(2.0,) * 7,
                       weight_norms=(0.01,) * 7)).status == "warn"
    assert judge(weight("head.weight", ratio=5.0, zero_init=True)).status == "pass"  # zero init: not judged


def test_judge_fails_parameters_that_cannot_train():
    orphan = judge(weight("fc1.weight"), weight("head.weight", in_optimizer=False))
    assert orphan.status == "fail" and "not in the optimizer" in orphan.summary
    cut = judge(weight("fc1.weight", got_grad=False, ratios=()), weight("head.weight"))
    assert cut.status == "fail" and "get no gradient" in cut.summary
    assert judge(weight("fc1.weight", ratio=0.0)).status == "fail"  # a matrix that never moves
    assert judge(bias("fc1.bias", ratio=0.0), weight("fc2.weight")).status == "pass"  # a bias with a tiny gradient
    assert judge(bias("fc1.bias", ratio=0.0, grad_always_zero=True), weight("fc2.weight")).status == "fail"
    assert judge(Param("w", (2, 2), trainable=False)).summary.startswith("no trainable parameter")


def test_judge_warns_on_unused_modules_and_frozen_layers_in_a_trained_stack():
    assert judge(weight("aux.weight", got_grad=False, called=False), weight("fc.weight")).status == "warn"
    assert judge(weight("box.weight", got_grad=False, leaf=False), weight("fc.weight")).status == "warn"
    middle = Param("mid.weight", (8, 8), trainable=False, matrix=True)
    assert judge(weight("a.weight"), middle, weight("b.weight")).status == "warn"
    assert judge(middle, weight("a.weight"), weight("b.weight")).status == "pass"  # a frozen prefix
    temperature = Param("scale.t", (), trainable=False)
    assert judge(weight("a.weight"), temperature, weight("b.weight")).status == "pass"  # a constant by design


# -- the text people read (issue 13) -------------------------------------------------------------------------
def test_judge_pass_summary_cites_cs231n_with_the_ratio_not_as_a_dangling_tail():
    j = judge(weight("fc1.weight", ratio=0.03), bias("fc1.bias"))
    assert j.summary == ("all 2 trainable parameters get a gradient and move; median update/weight 0.03, within "
                         "[1e-05, 0.1] around CS231n's ~1e-3"), j.summary
    no_ratio = judge(bias("fc1.bias"))  # nothing judged: no ratio, no citation
    assert no_ratio.summary == "the 1 trainable parameter gets a gradient and moves", no_ratio.summary
    assert not any(s.summary.rstrip().endswith(")") for s in (j, no_ratio))


def test_parameters_of_a_sequential_are_named_from_the_model():
    j = judge(weight("0.weight"), weight("2.weight", in_optimizer=False), weight("3.weight", ratio=0.5))
    assert j.status == "fail"
    assert any("model.2 (weight)" in a for a in j.advice), j.advice
    assert any("model.3.weight 0.5" in a for a in j.advice), j.advice
