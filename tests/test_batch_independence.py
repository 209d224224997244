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


# -- issue 18: where the examples are in real language models ----------------------------------------------
import step_zoo  # noqa: E402


def test_pytorch_word_language_model_passes_with_its_hidden_state_read_along_dimension_1():
    # (T, B) token batches, the hidden state (layers, B, H) given to the model, log-probs flattened time-major
    result = check(**step_zoo.lm_target())
    assert result.status == "pass", result.summary
    assert result.metrics["batch_size"] == 16 and result.metrics["example_dim"] == 1
    assert result.metrics["flatten_order"] == "time-major" and not result.metrics["layout_assumed"]
    assert result.metrics["gradient_at"] == ["hidden[0]", "hidden[1]", "output of encoder (Embedding)"]
    assert any("next tokens" in n for n in result.notes), result.notes


class CachedStateLM(step_zoo.RNNModel):
    """The word-language-model with its state kept one row per sequence, (B, layers, H), as a per-sequence cache
    keeps it, and turned into the LSTM's (layers, B, H) by a view (``fault``) or a transpose."""

    def __init__(self, fault: bool):
        super().__init__(nhid=32, ninp=32)
        self.fault = fault

    def forward(self, input, cache):
        bsz = input.shape[1]
        to_lstm = (lambda s: s.view(self.nlayers, bsz, -1)) if self.fault else (lambda s: s.transpose(0, 1))
        return super().forward(input, tuple(to_lstm(s).contiguous() for s in cache))


def cached_forward(model, batch):
    inputs, targets = batch
    cache = tuple(torch.zeros(inputs.shape[1], model.nlayers, model.nhid) for _ in range(2))
    return model(inputs, cache)[0], targets


@pytest.mark.parametrize("fault", [False, True])
def test_a_language_model_whose_state_is_reshaped_across_the_batch_fails(fault):
    result = check(model=CachedStateLM(fault), data=step_zoo.lm_batches(), loss_fn=nn.NLLLoss(),
                   forward=cached_forward)
    assert result.status == ("fail" if fault else "pass"), result.summary
    assert result.metrics["example_dim"] == 1 and "cache[0]" in result.metrics["gradient_at"]
    if fault:
        assert result.metrics["leaked_examples"] >= 1 and result.metrics["mixing_after"] == "the model's input"


class BatchMajorDecoderLM(step_zoo.RNNModel):
    """Log-probs flattened batch-major (decoder on output.transpose(0, 1)) against the example's time-major
    targets: each prediction is scored against another sequence's next token."""

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(output.transpose(0, 1)).reshape(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden


def test_outputs_flattened_in_another_order_than_the_targets_fail():
    torch.manual_seed(0)
    result = check(model=BatchMajorDecoderLM(nhid=32, ninp=32), data=step_zoo.lm_batches(), loss_fn=nn.NLLLoss(),
                   forward=step_zoo.lm_forward)
    assert result.status == "fail", result.summary
    assert result.metrics["flatten_order"] == "time-major" and result.metrics["mixing_after"] == "decoder"


def test_flattened_logits_are_not_read_by_a_dimension_that_matches_their_row_count():
    # 2 sequences of 17 tokens: 2 * 16 = 32 target rows, the size of the embeddings (the old rule read it as the batch)
    ids = torch.randint(1, 50, (8, 17), generator=torch.Generator().manual_seed(0))
    result = check(model=CausalLM(d=32), data=[(ids[i:i + 2],) for i in range(0, 8, 2)], loss_fn=CE,
                   forward=lambda m, b: (m(b[0])[:, :-1].reshape(-1, 50), b[0][:, 1:].reshape(-1)))
    assert result.status == "pass", result.summary
    assert result.metrics["batch_size"] == 2 and result.metrics["flatten_order"] == "example-major"


class CellTagger(nn.Module):
    """A recurrence written by hand over dimension 0 of (L, N) tokens (nn.LSTMCell has no batch_first to read), one
    tag per token, flattened time-major."""

    def __init__(self, vocab: int = 50, dim: int = 16, tags: int = 5):
        super().__init__()
        self.tags = tags
        self.embed, self.cell, self.head = nn.Embedding(vocab, dim), nn.LSTMCell(dim, dim), nn.Linear(dim, tags)

    def forward(self, ids):
        h = c = torch.zeros(ids.shape[1], self.cell.hidden_size)
        steps = []
        for x in self.embed(ids):
            h, c = self.cell(x, (h, c))
            steps.append(h)
        return self.head(torch.stack(steps)).view(-1, self.tags)


def test_a_layout_nothing_decides_is_assumed_and_never_fails_when_the_other_reading_is_independent():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 50, (12, 10), generator=g), torch.randint(0, 5, (120,), generator=g))
            for _ in range(4)]
    result = check(model=CellTagger(), data=data, loss_fn=CE)
    assert result.status == "warn", result.summary
    assert result.summary.startswith("the batch dimension is not known: read along dimension 0")
    assert result.metrics["layout_assumed"] and result.metrics["other_reading_leak"] == 0.0
    assert any("assumed" in n for n in result.notes) and any("dimension 1" in a for a in result.advice)


# -- GPT-2 (Hugging Face), tiny random config ---------------------------------------------------------------
VOCAB = 100


def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def shifted(model, batch):
    """The usual forward: logits without the last step, flattened with the next tokens."""
    ids = batch[0]
    logits = model(input_ids=ids).logits
    return logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)


def whole(model, batch):
    ids = batch[0]
    return model(input_ids=ids[:, :-1]).logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)


@pytest.mark.parametrize("forward", [shifted, whole])
@pytest.mark.parametrize("bsz, length", [(4, 9), (16, 17)])
def test_gpt2_with_logits_flattened_with_time_passes(forward, bsz, length):
    model = gpt2()
    ids = torch.randint(0, VOCAB, (4 * bsz, length), generator=torch.Generator().manual_seed(0))
    result = check(model=model, data=[(ids[i:i + bsz],) for i in range(0, 4 * bsz, bsz)], loss_fn=CE,
                   forward=forward)
    assert result.status == "pass", result.summary
    assert result.metrics["batch_size"] == bsz and result.metrics["flatten_order"] == "example-major"
    assert result.metrics["gradient_at"] == ["output of transformer.wte (Embedding)"]


def time_major_logits(fault: bool):
    """Time-major next-token targets, as PyTorch's word-language-model makes them, for a batch-first model: the
    (B, T, V) logits turned time-major by a transpose, or (``fault``) by .view(T, B, V)."""

    def forward(model, batch):
        ids = batch[0]
        n, length = ids.shape
        logits = model(input_ids=ids).logits
        logits = logits.view(length, n, VOCAB) if fault else logits.transpose(0, 1)
        return logits[:-1].reshape(-1, VOCAB), ids.t()[1:].reshape(-1)

    return forward


def transposed_or_not(fault: bool):
    """(T, B) chunks of batchify'd data (sequence-first) given to batch-first GPT-2 transposed, or (``fault``) as
    they come, so that its causal attention runs across the examples."""

    def forward(model, batch):
        ids, targets = batch
        if fault:
            return model(input_ids=ids).logits.reshape(-1, VOCAB), targets
        return model(input_ids=ids.t()).logits.transpose(0, 1).reshape(-1, VOCAB), targets

    return forward


@pytest.mark.parametrize("tensors", [False, True])
@pytest.mark.parametrize("fault", [False, True])
def test_gpt2_logits_reshaped_instead_of_transposed_fail(fault, tensors):
    # a list of batches, or a tuple of tensors cut along dimension 0 (the targets still tell the flattening order)
    ids = torch.randint(0, VOCAB, (16, 12), generator=torch.Generator().manual_seed(0))
    data = dict(data=(ids, ids), batch_size=4) if tensors else dict(data=[(ids[i:i + 4],) for i in range(0, 16, 4)])
    result = check(model=gpt2(), **data, loss_fn=CE, forward=time_major_logits(fault))
    assert result.status == ("fail" if fault else "pass"), result.summary
    assert result.metrics["flatten_order"] == "time-major" and result.metrics["example_dim"] == 0
    if fault:
        assert result.metrics["mixing_after"] == "lm_head"


@pytest.mark.parametrize("fault", [False, True])
def test_gpt2_fed_sequence_first_chunks_untransposed_attends_across_examples_and_fails(fault):
    data = step_zoo.lm_batches(vocab=VOCAB, bsz=8, bptt=10, n_batches=4)
    result = check(model=gpt2(), data=data, loss_fn=CE, forward=transposed_or_not(fault))
    assert result.status == ("fail" if fault else "pass"), result.summary
    # the model's inputs are (B, T) when transposed: the targets' order tells the examples either way
    assert result.metrics["example_dim"] == (1 if fault else 0) and result.metrics["batch_size"] == 8
    assert result.metrics["flatten_order"] == "time-major"
    if fault:
        assert result.metrics["leaked_fraction"] > 0.5


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


def test_judge_warns_instead_of_failing_when_an_assumed_layout_leaks_and_the_other_does_not():
    from babysitter.checklist.batch_independence import OtherReading
    bi, leaking = BatchIndependence(), probe([0.5, 0.5, 0.5])
    undecided = bi.judge(measured(leaking, assumed=True, layout="no module tells", other=OtherReading(1, 8, 0.0)))
    assert undecided.status == "warn", undecided.summary
    assert undecided.summary.startswith("the batch dimension is not known: read along dimension 0 of the inputs")
    assert "read along dimension 1 (8 examples), no gradient crosses examples" in undecided.summary
    assert "no module tells" in undecided.advice[0] and "statistic over the batch" in undecided.advice[0]
    # the other reading leaks too, or the layout was decided: the failure stands
    assert bi.judge(measured(leaking, assumed=True, other=OtherReading(1, 8, 0.5))).status == "fail"
    assert bi.judge(measured(leaking, assumed=False, other=OtherReading(1, 8, 0.0))).status == "fail"


def test_judge_points_at_the_flattening_order_when_the_examples_mix_after_the_last_module():
    m = measured(probe([0.5] * 9, records={"head": 0.0, "out": 0.0}), modules=(("head", "Linear"),),
                 flattened="time-major")
    assert not any("flatten" in a for a in BatchIndependence().judge(m).advice)  # mixed inside the model
    m = measured(probe([0.5] * 9, records={"head": 0.5}), modules=(("head", "Linear"),), flattened="time-major")
    advice = BatchIndependence().judge(m).advice
    assert "read time-major" in advice[0] and "flatten outputs and targets the same way" in advice[0]


# -- where the examples are, without a model -----------------------------------------------------------------
from babysitter.checklist.batch_independence import _by_modules, _by_targets, _Layout, _Rows  # noqa: E402


def stream(length, n, seed=0):
    return torch.randint(0, 100, (length, n), generator=torch.Generator().manual_seed(seed))


def test_next_tokens_decide_the_example_dimension_and_the_flattening_order():
    data = stream(21, 6)  # batchify'd: (L, B)
    x = data[:-1]
    cases = {(1, "time-major"): data[1:].reshape(-1),                 # word_language_model's get_batch
             (1, "example-major"): data[1:].t().reshape(-1),
             (0, "example-major"): x.t()[:, 1:].reshape(-1),          # batch-first: ids[:, 1:].reshape(-1)
             (0, "time-major"): x.t()[:, 1:].t().reshape(-1)}
    for (d, split), targets in cases.items():
        first = x if d == 1 else x.t()
        layout = _by_targets(first, targets)
        assert (layout.dim, layout.split, layout.n) == (d, split, 6), (d, split)
        assert "next tokens" in layout.reason and not layout.assumed


def test_targets_decide_by_rows_unless_they_are_shaped_like_the_inputs():
    x = torch.randn(12, 8, 3)
    assert (_by_targets(x, torch.zeros(8)).dim, _by_targets(x, torch.zeros(12)).dim) == (1, 0)
    assert _by_targets(x, torch.zeros(12, 8)) is None  # a tag per step: same layout as the inputs, either way
    assert _by_targets(torch.randn(8, 8), torch.zeros(8)) is None  # square: nothing to tell
    assert _by_targets(stream(10, 4), torch.zeros(40, dtype=torch.long)) is None  # constant: every reading fits


def test_modules_only_suggest_a_layout_unless_the_model_transposes():
    x = stream(10, 4)
    seq = _by_modules(x, [("rnn", (10, 4, 16))])
    assert (seq.dim, seq.n, seq.assumed) == (1, 4, True)
    transposed = _by_modules(x, [("rnn", (4, 10, 16))])
    assert (transposed.dim, transposed.n, transposed.assumed) == (0, 10, False)
    plain = _by_modules(x, [])
    assert (plain.dim, plain.n, plain.assumed) == (0, 10, True)


def test_rows_of_each_tensor_in_a_layout():
    seq = _Layout(16, 1, "time-major")
    assert seq.rows((20, 16, 30)) == _Rows(1) and seq.rows((16, 3)) == _Rows(0)
    assert seq.rows((320, 30), flattened=True) == _Rows(0, "time-major") and seq.rows((320, 30)) is None
    assert seq.rows((2, 16, 128), hidden=True) == _Rows(1)
    first = _Layout(2, 0)
    assert first.rows((3, 2, 8), hidden=True) == _Rows(1)  # (layers, N, H) with 3 layers
    assert first.rows((32, 100), flattened=True) == _Rows(0, "example-major")
    t = torch.arange(12).reshape(6, 2)  # (k*N, C) rows of N = 3 examples, time-major
    assert _Rows(0, "time-major").examples(t, 3)[1].tolist() == [[2, 3], [8, 9]]
    assert _Rows(0, "example-major").examples(t, 3)[1].tolist() == [[4, 5], [6, 7]]
