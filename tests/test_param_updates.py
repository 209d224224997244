"""param_updates in both directions: orphaned, cut, stuck and frozen parameters are found; healthy models pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
from babysitter.analysis.params import InitFit, init_fit
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


def test_frozen_layer_between_trainable_layers_warns_when_its_init_cannot_be_read():
    # a frozen middle layer scaled by hand to a std no standard init has: not a draw the check knows, nor trained
    fields = zoo.mlp_target()
    with torch.no_grad():
        fields["model"].layers[1].weight.mul_(0.5)
    fields["model"].layers[1].requires_grad_(False)
    result = check(**fields)
    assert result.status == "warn" and result.metrics["frozen_between_trainable"] == 2
    assert any("layers.1" in a for a in result.advice)


def test_frozen_layer_of_a_model_trained_from_scratch_fails_as_random_init():
    fields = zoo.mlp_target()
    fields["model"].layers[1].requires_grad_(False)  # still at PyTorch's default init
    result = check(**fields)
    assert result.status == "fail" and result.metrics["frozen_random_init"] == 2, result.summary
    assert "1 frozen weight still at its random initialization: layers.1 (weight, bias)" in result.summary
    assert any("PyTorch's default init" in a and "requires_grad=True" in a for a in result.advice)


def test_frozen_backbone_prefix_is_a_note_not_a_warning():
    fields = stripes_target(pretrained_mlp())
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


# -- frozen weights: still a fresh random draw, or trained? (issue 18) ---------------------------------------
def stripes(classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8 x 8 images of stripes whose orientation is the class, flattened: 64 inputs with the spatial correlations
    real data has (so that training leaves structure in the first layer)."""
    x, y = zoo.images(n=1024, channels=1, size=8, classes=classes, seed=seed)
    return x.flatten(1), y


def stripes_target(model: nn.Module) -> dict:
    """``model`` (64 inputs, 4 classes) fine-tuned on 4-class stripes with Adam."""
    return dict(model=model, data=stripes(4, seed=0), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(3e-3))


def pretrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 1e-2) -> nn.Module:
    """Train ``model`` on (x, y) with Adam, as a pretraining run would (long enough to leave learned structure)."""
    opt, g = torch.optim.Adam(model.parameters(), lr=lr), torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def pretrained_mlp(seed: int = 0) -> zoo.FunctionalMLP:
    """An MLP whose hidden layers were pretrained on 8-class stripes (300 Adam steps at 1e-2, the loss near 0),
    with a new 4-class head for fine-tuning."""
    torch.manual_seed(seed)
    model = pretrain(zoo.FunctionalMLP(d_in=64, hidden=64, d_out=8), *stripes(8, seed=1))
    model.head = nn.Linear(64, 4)
    return model


class TinyViT(nn.Module):
    """A Vision Transformer after Dosovitskiy et al., shrunk: a 4 x 4 patch-embedding convolution (the stem), a
    class token, learned positions, one pre-norm encoder layer and a linear head."""

    def __init__(self, d: int = 64, classes: int = 4, patch: int = 4, size: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.encoder(h))[:, 0])


def vit_target() -> dict:
    torch.manual_seed(0)
    return dict(model=TinyViT(), data=zoo.images(), batch_size=32, loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05))


def test_vit_from_scratch_with_its_stem_frozen_by_mistake_fails_naming_the_stem():
    assert check(**vit_target()).status == "pass"
    fields = vit_target()
    fields["model"].stem.requires_grad_(False)  # before the first trainable layer: a note until now
    result = check(**fields)
    assert result.status == "fail" and result.metrics["frozen_random_init"] == 2, result.summary
    assert "still at its random initialization: stem (weight, bias)" in result.summary
    assert any("stem.weight has std" in a and "PyTorch's default init" in a for a in result.advice)
    frozen = result.tables[1]
    assert [r[0] for r in frozen.rows] == ["stem.weight"] and frozen.rows[0][-1] == "fresh random draw"


def test_vit_from_scratch_whose_freezing_loop_froze_the_new_head_too_fails():
    fields = vit_target()
    model = fields["model"]
    for name, p in model.named_parameters():  # meant: freeze the (pretrained) stem and positions; froze the head
        if not name.startswith("encoder"):
            p.requires_grad_(False)
    result = check(**fields)
    assert result.status == "fail", result.summary
    assert "stem (weight, bias)" in result.summary and "head (weight, bias)" in result.summary
    # the learned positions too (normal(0, 0.02), frozen at their draw); not the class token (zeros) nor the norm
    assert result.metrics["frozen_random_init"] == 5 and "pos" in result.summary


def test_frozen_pretrained_layer_in_the_middle_is_not_a_random_init_failure():
    fields = stripes_target(pretrained_mlp())
    fields["model"].layers[1].requires_grad_(False)  # a pretrained layer between trainable ones
    result = check(**fields)
    assert result.status != "fail" and result.metrics["frozen_random_init"] == 0, result.summary
    scratch = stripes_target(zoo.FunctionalMLP(d_in=64, hidden=64, d_out=4))
    scratch["model"].layers.requires_grad_(False)  # the same freezing on a model trained from scratch
    result = check(**scratch)
    assert result.status == "fail" and result.metrics["frozen_random_init"] == 4, result.summary


class TopicBag(nn.Module):
    """Mean of token embeddings, linear head: pretrains embeddings on tokens that each belong to one of 4 topics."""

    def __init__(self, vocab: int = 50, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02)  # as BERT's embeddings start (Hugging Face's _init_weights)
        self.head = nn.Linear(d, 4)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def pretrained_embedding(vocab: int = 50, d: int = 32) -> nn.Embedding:
    """An embedding table pretrained to tell the topic of a bag of tokens (200 Adam steps at 1e-2)."""
    g = torch.Generator().manual_seed(0)
    topic = torch.randint(0, 4, (vocab,), generator=g)
    ids = torch.randint(0, vocab, (4096, 8), generator=g)
    return pretrain(TopicBag(vocab, d), ids, topic[ids].mode(1).values, steps=200).embed


def test_frozen_embedding_at_random_init_fails_and_a_pretrained_one_is_a_note():
    fields = zoo.transformer_target()
    fields["model"].embed.requires_grad_(False)
    result = check(**fields)
    assert result.status == "fail" and "embed (weight)" in result.summary, result.summary
    assert any("nn.Embedding's normal(0, 1)" in a for a in result.advice)
    fields = zoo.transformer_target()
    fields["model"].embed = pretrained_embedding()
    fields["model"].embed.requires_grad_(False)
    result = check(**fields)
    # registered after the root's positions, the table counts as frozen between trainable layers: a warning until
    # now; its learned structure makes it a note
    assert result.status == "pass" and result.metrics["frozen_random_init"] == 0, result.summary
    assert result.metrics["frozen_pretrained"] == 1 and any("learned structure" in n for n in result.notes)


# -- the reading of a frozen weight, on weights built in a few lines ------------------------------------------------
def reading(w: torch.Tensor) -> str:
    """'random', 'structured' or '' for ``w`` as a frozen weight."""
    return ParamUpdates().init_reading(Param("w", tuple(w.shape), trainable=False, init=init_fit(w)))[0]


def _init(fn, *shape):
    return lambda: fn(torch.empty(*shape))


FRESH = {  # fresh draws of the inits people use, as PyTorch, Hugging Face and timm make them
    "Linear": lambda: nn.Linear(64, 32).weight,
    "Linear head": lambda: nn.Linear(128, 4).weight,
    "Conv2d": lambda: nn.Conv2d(16, 32, 3).weight,
    "Conv2d stem": lambda: nn.Conv2d(3, 64, 7).weight,
    "Embedding": lambda: nn.Embedding(100, 16).weight,
    "Embedding with padding_idx": lambda: nn.Embedding(1000, 32, padding_idx=0).weight,
    "LSTM input weights": lambda: nn.LSTM(16, 32).weight_ih_l0,
    "GRU recurrent weights": lambda: nn.GRU(16, 32).weight_hh_l0,
    "MultiheadAttention in_proj": lambda: nn.MultiheadAttention(64, 4).in_proj_weight,
    "normal(0, 0.02)": _init(lambda w: nn.init.normal_(w, std=0.02), 768, 768),
    "trunc_normal(0, 0.02)": _init(lambda w: nn.init.trunc_normal_(w, std=0.02), 64, 256),
    "normal(0, 0.01)": _init(lambda w: nn.init.normal_(w, std=0.01), 10, 512),
    "xavier_uniform": _init(nn.init.xavier_uniform_, 128, 32),
    "kaiming_normal fan_out": _init(lambda w: nn.init.kaiming_normal_(w, mode="fan_out"), 64, 32, 3, 3),
    "orthogonal": _init(nn.init.orthogonal_, 64, 256),
}


@pytest.mark.parametrize("name", sorted(FRESH))
def test_fresh_draws_of_standard_inits_read_as_random(name):
    for seed in range(5):
        torch.manual_seed(seed)
        assert reading(FRESH[name]()) == "random", (name, seed)


def _sinusoids(n: int, d: int) -> torch.Tensor:
    pos, i = torch.arange(n)[:, None].float(), torch.arange(d // 2)[None].float()
    angle = pos / 10000 ** (2 * i / d)
    return torch.cat([angle.sin(), angle.cos()], 1)[None]  # (1, n, d), as MAE's fixed position table


def test_learned_structure_and_tables_set_by_design_do_not_read_as_random():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(256, 256, generator=g) * 2 - 1) / 16  # PyTorch's default draw: U(+-1/sqrt(256))
    # what long training leaves (Martin & Mahoney): a low-rank part beside the bulk, and heavy tails
    low_rank = torch.randn(256, 4, generator=g) @ torch.randn(4, 256, generator=g) * 0.5 / math.sqrt(3 * 256 * 4)
    assert reading(noise) == "random" and reading(noise + low_rank) == "structured"
    assert reading(torch.distributions.StudentT(4.0).sample((256, 256)) * 0.02) == "structured"
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    for fixed in (_sinusoids(64, 64), torch.eye(64), torch.stack([sobel, sobel.T] * 48).reshape(32, 3, 3, 3)):
        assert reading(fixed) != "random"
    for name, p in pretrained_mlp().named_parameters():  # trained, now pretrained: not a fresh draw
        if name.startswith("layers") and p.ndim == 2:
            assert reading(p) != "random", name
    assert reading(nn.Linear(16, 8).weight) == ""  # 128 entries: too few to read


def fit(spike: float = 1.0, kurtosis: float = 1.8, std: float = 1 / math.sqrt(3 * 64), mean_z: float = 0.5,
        entries: int = 4096) -> InitFit:
    """A frozen 64 x 64 weight's statistics; by default those of PyTorch's default draw."""
    return InitFit(entries=entries, spike=spike, spike_z=(spike - 1) * entries ** (1 / 3), kurtosis=kurtosis,
                   mean_z=mean_z, std=std, distinct=1.0)


def frozen(name: str, init: InitFit = None) -> Param:
    return Param(name, (64, 64), trainable=False, matrix=True, init=init)


def test_judge_reads_frozen_weights_at_its_thresholds():
    stack = lambda middle: judge(weight("a.weight"), middle, weight("b.weight"))  # noqa: E731
    j = stack(frozen("mid.weight", fit()))
    assert j.status == "fail" and "1 frozen weight still at its random initialization: mid (weight)" in j.summary
    assert judge(frozen("stem.weight", fit()), weight("b.weight")).status == "fail"  # a frozen prefix too
    assert stack(frozen("mid.weight")).status == "warn"  # not read (too small, or a vector): as before
    # one statistic off is enough not to be a fresh draw: the spike, the mean, the scale, the kurtosis
    unit = 4096 ** (-1 / 3)
    assert stack(frozen("mid.weight", fit(spike=1 + 1.4 * unit))).status == "fail"
    assert stack(frozen("mid.weight", fit(spike=1 + 1.6 * unit))).status == "warn"
    assert stack(frozen("mid.weight", fit(mean_z=5.5))).status == "warn"
    assert stack(frozen("mid.weight", fit(std=0.5 / math.sqrt(3 * 64)))).status == "warn"
    uniform_se = 1.15 / 64
    assert stack(frozen("mid.weight", fit(kurtosis=1.8 + 4.9 * uniform_se))).status == "fail"
    assert stack(frozen("mid.weight", fit(kurtosis=1.8 + 5.5 * uniform_se))).status == "warn"
    # learned structure (a spike of 4 units or more, heavy tails) between trainable layers is a note, not a warning
    pretrained = stack(frozen("mid.weight", fit(spike=1 + 4.1 * unit, std=0.3)))
    assert pretrained.status == "pass", pretrained.summary
    assert stack(frozen("mid.weight", fit(kurtosis=3 + 10.5 * 4.9 / 64, std=0.3))).status == "pass"
    assert stack(frozen("mid.weight", fit(spike=1 + 3.9 * unit, std=0.3))).status == "warn"


def test_judge_a_slow_matrix_in_a_model_that_trains_is_flagged_only_when_it_lags_the_median_far():
    # a healthy MobileNetV3 under RMSprop: squeeze-excite layers at 1e-5, the rest around 1.4e-4 (15x faster)
    rest = [weight(f"conv{i}.weight", ratio=1.4e-4) for i in range(6)]
    assert judge(weight("se.fc1.weight", ratio=0.9e-5), *rest).status == "pass"
    j = judge(weight("se.fc1.weight", ratio=1.3e-6), *rest)  # 108x below the median: left behind
    assert j.status == "warn" and "1 weight matrix with update/weight below 1e-05" in j.summary
    assert judge(weight("se.fc1.weight", ratio=1.3e-6), *rest, lag_ratio=1000).status == "pass"
    # the whole model that slow: every low matrix is flagged, whatever the lag
    slow = [weight(f"conv{i}.weight", ratio=5e-6) for i in range(6)]
    assert "7 weight matrices with update/weight below" in judge(weight("se.fc1.weight", ratio=4e-6), *slow).summary
