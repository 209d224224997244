"""batch_independence in both directions: models that mix examples fail, healthy ones of every kind pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo

CE = nn.CrossEntropyLoss()


def check(**fields):
    return babysitter.check(**fields, select=["batch_independence"])["batch_independence"]


# -- models that mix examples -----------------------------------------------------------------------------
class TransposeReshapeMLP(nn.Module):
    """h.t().reshape(N, -1): meant to reorder, it scrambles the batch."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc2(h.t().reshape(x.shape[0], -1))


class ViewLastStepGRU(nn.Module):
    """out.reshape(L, N, H)[-1] where out.transpose(0, 1)[-1] was meant."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(8, 32, batch_first=True), nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        n, length, h = out.shape
        return self.head(out.reshape(length, n, h)[-1])


class ViewCNN(nn.Module):
    """Channels pooled through h.view(C, N, -1): the batch and channel dimensions are swapped by a view."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))
        n, c = h.shape[:2]
        return self.head(h.view(c, n, -1).mean(-1).transpose(0, 1))


class BatchCentred(nn.Module):
    """Centres features over the batch, in eval mode too."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc2(h - h.mean(0, keepdim=True))


class NotBatchFirstTransformer(nn.Module):
    """(N, L, D) fed to an encoder built without batch_first=True: attention runs along the batch."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1), 1,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


class TokenViewLeak(nn.Module):
    """Token model pooling over h.view(L, N, D).mean(0) where h.mean(1) was meant."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, 2)

    def forward(self, ids):
        h = torch.tanh(self.fc(self.embed(ids)))
        n, length, d = h.shape
        return self.head(h.view(length, n, d).mean(0))


# -- healthy models beyond the zoo ------------------------------------------------------------------------
class PaddedAttention(nn.Module):
    """batch_first attention with a key padding mask and positions from their own nn.Embedding."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(16, d)
        self.attn, self.norm = nn.MultiheadAttention(d, 4, batch_first=True), nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)

    def forward(self, ids):
        h = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        a, _ = self.attn(h, h, h, key_padding_mask=ids == 0)
        return self.head(self.norm(h + a).mean(1))


class TimeMajorLSTM(nn.Module):
    """A batch_first=False LSTM fed correctly: (N, L, F) transposed to (L, N, F)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(0, 1))
        return self.head(out[-1])


class SequenceFirstLSTM(nn.Module):
    """Batches come as (L, N, F), the way batch_first=False modules take them."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


class InPlaceSoftmax(nn.Module):
    """Scales its input in place and returns probabilities (whose plain sum has zero gradient)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))

    def forward(self, x):
        x.mul_(0.5)
        return self.net(x).softmax(-1)


class CausalLM(nn.Module):
    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 64, batch_first=True), 2,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.encoder(self.embed(ids), mask=mask, is_causal=True))


# -- tests ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_zoo_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert result.metrics["leak"] == 0.0 and len(result.metrics["probes"]) == 3


def test_attention_and_batchnorm_models_pass_in_eval_mode():
    # the zoo's cnn has BatchNorm2d and its transformer attention: they pass because of running statistics
    assert check(**zoo.cnn_target()).status == "pass"
    ids, y = zoo.tokens()
    result = check(model=PaddedAttention(), data=(ids, y), loss_fn=CE, batch_size=32)
    assert result.status == "pass", result.summary
    assert result.metrics["gradient_at"] == ["output of embed (Embedding)"]  # not the position embedding
    x, y = zoo.blobs()
    bn = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    assert check(model=bn, data=(x, y), loss_fn=CE).status == "pass"


@pytest.mark.parametrize("model", [TimeMajorLSTM, SequenceFirstLSTM])
def test_recurrent_models_in_either_layout_pass(model):
    x, y = zoo.sequences()
    if model is SequenceFirstLSTM:
        data = [(x[i:i + 32].transpose(0, 1), y[i:i + 32]) for i in range(0, 256, 32)]
        result = check(model=model(), data=data, loss_fn=CE)
    else:
        result = check(model=model(), data=(x, y), loss_fn=CE, batch_size=32)
    assert result.status == "pass", result.summary


def test_probabilities_and_in_place_input_ops_pass():
    x, y = zoo.blobs()
    result = check(model=InPlaceSoftmax(), data=(x, y), loss_fn=lambda p, t: F.nll_loss(p.log(), t))
    assert result.status == "pass", result.summary


def test_language_model_with_flattened_outputs_passes():
    ids, _ = zoo.tokens()
    data = [(ids[i:i + 16], ids[i:i + 16].roll(-1, 1)) for i in range(0, 128, 16)]
    result = check(model=CausalLM(), data=data, loss_fn=CE,
                   forward=lambda m, b: (m(b[0]).reshape(-1, 50), b[1].reshape(-1)))
    assert result.status == "pass", result.summary
    assert result.metrics["flattened_outputs"] is True


def test_wrong_view_in_mlp_fails_and_is_located():
    x, y = zoo.blobs()
    result = check(model=TransposeReshapeMLP(), data=(x, y), loss_fn=CE)
    assert result.status == "fail"
    assert result.metrics["leak"] > 1e-3
    assert result.metrics["mixing_after"] == "fc1" and result.metrics["mixing_before"] == "fc2"
    assert "`fc1`" in result.summary
    assert any("view/reshape" in a for a in result.advice)


def test_reshape_instead_of_transpose_in_a_gru_fails():
    x, y = zoo.sequences()
    result = check(model=ViewLastStepGRU(), data=(x, y), loss_fn=CE, batch_size=32)
    assert result.status == "fail"
    assert result.metrics["mixing_after"] == "rnn"


def test_view_swapping_batch_and_channels_in_a_cnn_fails():
    x, y = zoo.images()
    result = check(model=ViewCNN(), data=(x, y), loss_fn=CE, batch_size=32)
    assert result.status == "fail" and result.metrics["mixing_after"] == "conv"


def test_normalizing_over_the_batch_fails_even_in_eval_mode():
    x, y = zoo.blobs()
    result = check(model=BatchCentred(), data=(x, y), loss_fn=CE)
    assert result.status == "fail"
    assert result.metrics["leaked_fraction"] == 1.0  # every other example
    assert any("statistic over the batch" in a for a in result.advice)


def test_batchnorm_without_running_statistics_fails_with_the_module_named():
    x, y = zoo.blobs()
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32, track_running_stats=False), nn.ReLU(),
                          nn.Linear(32, 4))
    result = check(model=model, data=(x, y), loss_fn=CE)
    assert result.status == "fail" and result.metrics["mixing_before"] == "1"
    assert any("track_running_stats" in a for a in result.advice)


@pytest.mark.parametrize("model", [NotBatchFirstTransformer, TokenViewLeak])
def test_token_models_that_mix_examples_fail_through_the_embedding(model):
    ids, y = zoo.tokens()
    result = check(model=model(), data=(ids, y), loss_fn=CE, batch_size=32)
    assert result.status == "fail", result.summary
    assert result.metrics["gradient_at"] == ["output of embed (Embedding)"]
    if model is NotBatchFirstTransformer:
        assert any("batch_first=True" in a for a in result.advice)


def test_a_small_leak_warns():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x + 1e-2 * x.mean(0))  # each other example weighs 1.6e-4

    x, y = zoo.blobs()
    result = check(model=Leaky(), data=(x, y), loss_fn=CE)
    assert result.status == "warn", result.summary
    assert 1e-6 < result.metrics["leak"] <= 1e-3


def test_integer_inputs_without_embedding_skip_with_the_reason():
    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(50, 2)

        def forward(self, ids):
            return self.fc(F.one_hot(ids, 50).float().mean(1))

    ids, y = zoo.tokens()
    result = check(model=OneHot(), data=(ids, y), loss_fn=CE)
    assert result.status == "skip" and "no nn.Embedding" in result.summary


def test_model_is_left_untouched():
    fields = zoo.cnn_target()
    model = fields["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check(**fields)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_report_tables_the_probed_examples_and_the_worst_leak_and_plots_every_example():
    x, y = zoo.blobs()
    result = check(model=TransposeReshapeMLP(), data=(x, y), loss_fn=CE)
    tables = {t.id: t for t in result.tables}
    assert "examples" not in tables and "modules" in tables  # no 64 rows, most of them zeros
    probes = tables["probes"]
    assert [r[0] for r in probes.rows] == result.metrics["probes"] and len(probes.rows) == 3
    worst = max(probes.records(), key=lambda r: r["largest leak"])
    assert worst["largest leak"] == result.metrics["leak"] and worst["into example"] is not None
    assert f"example {worst['probed example']}" in probes.title
    assert result.plots[0].log_y and len(result.plots[0].series) == 3
    assert all(len(s.x) == 64 for s in result.plots[0].series)  # every example is in the plot


def test_the_table_of_a_model_without_leaks_says_so():
    result = check(**zoo.mlp_target())
    probes = {t.id: t for t in result.tables}["probes"]
    assert result.status == "pass" and all(r["largest leak"] == 0 and r["into example"] is None
                                           and r["examples reached"] == 0 for r in probes.records())


class MixingSequential(nn.Module):
    def forward(self, h):
        return h.t().reshape(h.shape[0], -1)


def test_modules_of_a_sequential_are_named_from_the_model():
    x, y = zoo.blobs()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), MixingSequential(), nn.Linear(32, 4))
    result = check(model=model, data=(x, y), loss_fn=CE)
    assert result.status == "fail"
    assert "mixed after `model.1` (ReLU) and at or before `model.2` (MixingSequential)" in result.summary, \
        result.summary
    assert result.metrics["mixing_after"] == "1"  # metrics keep the qualified names


class WordLanguageModel(nn.Module):
    """PyTorch's examples/word_language_model: (L, N) token batches, a batch_first=False LSTM, and the outputs
    flattened time-major with .view(-1, V) for targets flattened the same way."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.vocab = vocab
        self.encoder, self.rnn, self.decoder = nn.Embedding(vocab, dim), nn.LSTM(dim, dim), nn.Linear(dim, vocab)

    def forward(self, ids):
        out, _ = self.rnn(self.encoder(ids))
        return self.decoder(out).view(-1, self.vocab)


def test_sequence_first_language_model_passes_along_dimension_1():
    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, 50, (4, 13, 10), generator=g)  # 4 batches of 12 steps (+1) x 10 sequences
    data = [(b[:-1], b[1:].reshape(-1)) for b in source]
    result = check(model=WordLanguageModel(), data=data, loss_fn=CE)
    assert result.status == "pass", result.summary
    assert result.metrics["batch_size"] == 10 and any("sequence-first" in n for n in result.notes)


def test_batch_first_tensors_fed_to_a_sequence_first_lstm_still_fail():
    # a tuple of tensors is cut along dimension 0: (N, L, F) it is, whatever the model's modules expect
    torch.manual_seed(0)
    x, _ = zoo.sequences(length=12)
    result = check(model=WordLanguageModel(), data=((x[..., 0].abs() * 10).long() % 50, x[:, :, 0].long() % 50),
                   loss_fn=lambda out, t: CE(out, t.reshape(-1)))
    assert result.status == "fail", result.summary


# -- judge on synthetic probes, without a model ------------------------------------------------------------
from babysitter.checklist.batch_independence import (  # noqa: E402
    BatchIndependence, BatchIndependenceMeasured, Probe)


def probe(leaks, example=0, own=1.0, records=None):
    """A probe of ``example`` whose gradient on the other examples is ``leaks`` (relative to the largest)."""
    relative = list(leaks)
    relative.insert(example, own)
    return Probe(example, tuple(relative), max(leaks), records or {})


def measured(*probes, n=None, **fields):
    return BatchIndependenceMeasured(probes=probes, n=n or len(probes[0].relative), gradient_at=("x",), **fields)


@pytest.mark.parametrize("leak, status", [(0.0, "pass"), (1e-6, "pass"), (1.1e-6, "warn"), (1e-3, "warn"),
                                          (1.1e-3, "fail")])
def test_judge_leak_against_pass_leak_and_fail_leak(leak, status):
    j = BatchIndependence().judge(measured(probe([0.0, leak, 0.0])))
    assert j.status == status, j.summary
    if status == "pass":
        assert j.summary.startswith("no gradient crosses examples") and "(gradient at x)" in j.summary
    else:
        assert "depend on 1 of 3 other examples" in j.summary and j.advice


def test_judge_reads_the_worst_probe():
    j = BatchIndependence().judge(measured(probe([0.0, 0.0, 0.0]), probe([0.0, 0.5, 0.0], example=3)))
    assert j.status == "fail" and j.summary.startswith("example 3's outputs")


def test_judge_locates_the_mixing_between_two_traced_modules():
    modules = (("fc1", "Linear"), ("flat", "Flatten"), ("fc2", "Linear"))
    bi = BatchIndependence()
    m = measured(probe([0.2, 0.0, 0.0], records={"fc1": 0.3, "flat": 0.1, "fc2": 0.0}), modules=modules)
    assert "mixed after `flat` (Flatten) and at or before `fc2` (Linear)" in bi.judge(m).summary
    m = measured(probe([0.2, 0.0, 0.0], records={"fc1": 0.0, "fc2": 0.0}), modules=modules)
    assert "mixed between the model's input and `fc1` (Linear)" in bi.judge(m).summary
    assert (bi.reading(m).after, bi.reading(m).before) == ("the model's input", "fc1")


def test_judge_advice_tells_a_batch_statistic_from_a_reshape():
    bi = BatchIndependence()
    everyone = bi.judge(measured(probe([0.5] * 9), sequence_modules=("encoder.layers.0.self_attn",)))
    assert "statistic over the batch" in everyone.advice[0] and "batch_first=True" in everyone.advice[0]
    some = bi.judge(measured(probe([0.5] * 8 + [0.0])))  # 8 of 9 others: below 90%
    assert "view/reshape" in some.advice[0]
    norm = bi.judge(measured(probe([0.5] * 9, records={"0": 0.5, "1": 0.0}), modules=(("0", "Linear"),
                                                                                  ("1", "BatchNorm1d")),
                             batch_norms=("1",)))
    assert "track_running_stats=False" in norm.advice[0]


def test_judge_says_when_the_examples_own_input_does_not_reach_its_outputs():
    j = BatchIndependence().judge(measured(probe([1.0, 0.0, 0.0], own=0.0)))
    assert j.status == "fail" and j.summary.endswith("its own input does not reach them")
