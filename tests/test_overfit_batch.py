"""overfit_batch: healthy models of every kind (also with heavy dropout and weight decay) fit a tiny subset;
a softmax before CrossEntropyLoss and an output that ignores its input do not, and the cause is named."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.analysis.loss import binary_entropy, bce_floor, loss_floor, soft_targets
from babysitter.analysis.lr_curve import LrReading
from babysitter.analysis.status import Status
from babysitter.checklist.overfit_batch import (SAME_OUTPUT_SPREAD, Attempt, OutputFacts, OverfitBatch,
                                                OverfitMeasured, fall_of, regularization_off)


def check(options=None, **fields):
    opts = {"overfit_batch": options} if options else None
    return babysitter.check(**fields, select=["overfit_batch"], options=opts)["overfit_batch"]


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert result.metrics["reduction"] <= 0.1 and result.metrics["examples"] == 32
    assert result.plots[0].kind == "line" and result.plots[0].series[0].y


class DropoutMLP(nn.Module):
    """Heavy dropout both as modules and as a functional call on the module's training flag."""

    def __init__(self, d_in=2, hidden=64, classes=3):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x)))
        x = F.dropout(F.relu(self.fc2(x)), 0.5, self.training)
        return self.head(x)


def test_heavy_dropout_and_weight_decay_are_switched_off_for_the_probe():
    torch.manual_seed(0)
    result = check(model=DropoutMLP(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5))
    assert result.status == "pass", result.summary
    assert any("weight_decay=0.5" in n for n in result.notes)


def test_transformer_and_gru_with_dropout_half_pass():
    fields = zoo.transformer_target()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.5, batch_first=True)
    fields["model"].encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    assert check(**fields).status == "pass"
    fields = zoo.gru_target()
    fields["model"].rnn = nn.GRU(8, 32, num_layers=2, dropout=0.5, batch_first=True)
    fields["optimizer"] = lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2)
    assert check(**fields).status == "pass"


def test_regularization_off_is_undone_and_batchnorm_keeps_training():
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 8, num_layers=2, dropout=0.3)
    bn = nn.BatchNorm1d(4)
    x = torch.ones(16, 4)
    with regularization_off(nn.ModuleList([rnn, bn])):
        assert torch.equal(F.dropout(x, 0.5, True), x) and torch.equal(nn.Dropout(0.9)(x), x)
        assert rnn.dropout == 0.0 and bn.training
    assert rnn.dropout == 0.3
    assert not torch.equal(F.dropout(x, 0.5, True), x)


class SoftmaxMLP(zoo.FunctionalMLP):
    def forward(self, x):
        return super().forward(x).softmax(-1)  # CrossEntropyLoss applies log_softmax itself


def test_softmax_before_cross_entropy_fails_and_is_named_first():
    torch.manual_seed(0)
    result = check(model=SoftmaxMLP(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-2),
                   options={"max_steps": 150})
    assert result.status == "fail", result.summary
    assert result.metrics["likely_cause"] == "softmax fed into CrossEntropyLoss"
    assert "remove the softmax" in result.advice[0]


def test_softmax_before_cross_entropy_fails_on_a_cnn():
    fields = zoo.cnn_target()
    fields["model"] = nn.Sequential(fields["model"], nn.Softmax(dim=1))
    result = check(**fields, options={"max_steps": 40})
    assert result.status == "fail" and result.metrics["likely_cause"] == "softmax fed into CrossEntropyLoss"


class IgnoresInput(nn.Module):
    """Computes a feature of the input but returns a learned constant: the output ignores the input."""

    def __init__(self, d_in=2, classes=3):
        super().__init__()
        self.body = nn.Linear(d_in, 32)
        self.const = nn.Parameter(torch.zeros(1, 32))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.body(x)  # noqa: F841 (computed and dropped)
        return self.head(torch.relu(self.const)).expand(x.shape[0], -1) + 0 * self.body.bias.sum()


def test_output_that_ignores_its_input_fails_and_is_named():
    torch.manual_seed(0)
    result = check(model=IgnoresInput(), data=zoo.spirals(), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-2),
                   options={"max_steps": 100})
    assert result.status == "fail"
    assert result.metrics["likely_cause"] == "the output ignores the input"
    assert result.metrics["reduction"] > 0.5


def test_slow_user_lr_is_retried_at_the_suggestion_and_said_so():
    fields = zoo.mlp_target()
    fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=1e-5)
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["attempts"] >= 2 and "lr_range" in result.metrics["lr_source"]
    assert any("your LR is slow" in a for a in result.advice)


def test_label_smoothing_floor_is_taken_into_account():
    fields = zoo.mlp_target()
    fields["loss_fn"] = nn.CrossEntropyLoss(label_smoothing=0.2)
    result = check(**fields)
    assert result.status == "pass"
    assert result.metrics["floor"] > 0.3


def test_model_is_left_as_found():
    fields = zoo.cnn_target()
    model = fields["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check(**fields)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


class ZeroedInputRegressor(nn.Module):
    def __init__(self, d_in=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(torch.zeros_like(x))


def test_output_ignoring_input_fails_on_uncentred_regression_targets():
    # learning the targets' offset takes the loss far below its start: it is measured from the best constant
    # prediction's loss instead, which an input-ignoring model cannot beat
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = 3 * x[:, :2].sum(1, keepdim=True) + 20
    fields = dict(data=(x, y), loss_fn=nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, 1e-2))
    result = check(model=ZeroedInputRegressor(), **fields)
    assert result.status == "fail" and "ignores the input" in result.summary
    healthy = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    assert check(model=healthy, **fields).status == "pass"


def _blob_images(n=64, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.rand(n, 2, 2, generator=g)
    img = sum(torch.exp(-((xx - c[:, k, 0, None, None]) ** 2 + (yy - c[:, k, 1, None, None]) ** 2) / 0.01)
              for k in range(2))
    return img.clamp(0, 1).flatten(1)


def test_slow_but_learning_autoencoder_passes_past_the_budget():
    # a sigmoid autoencoder trained with MSE at Adam 1e-3 is healthy but slow: still falling at 200 steps
    x = _blob_images()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 144), nn.Sigmoid())
    fields = dict(model=model, data=(x, x), loss_fn=nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert check(options={"extend_to": 200}, **fields).status == "fail"


def test_lr_range_options_reach_overfit_batchs_reading():
    # the LR sweep and its reading are evidence read under lr_range's options: a wider band moves the top of the
    # range, so the suggestion (for SGD, between the minimum and that top), and overfit_batch retries there
    def run(band):
        fields = zoo.mlp_target()
        fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=1e-5)  # too slow: overfit_batch retries
        report = babysitter.check(**fields, select=["lr_range", "overfit_batch"],
                                  options={"lr_range": {"steps": 60, "repeats": 2, "band": band}})
        return report["lr_range"].metrics, report["overfit_batch"].metrics

    (narrow, fit_narrow), (wide, fit_wide) = run(0.1), run(0.5)
    assert wide["lr_high"] > narrow["lr_high"] and wide["suggested_lr"] != narrow["suggested_lr"]
    assert fit_narrow["lr"] == narrow["suggested_lr"] and fit_wide["lr"] == wide["suggested_lr"]
    assert "lr_range's suggestion" in fit_wide["lr_source"]


# -- the judgment alone, on synthetic attempts (no model) ----------------------------------------------------
SPREAD_OUT = OutputFacts(per_example=3, classes=3, in_unit=False, sums_to_one=False, spread=0.8)


def attempt(best, passed=False, lr=1e-2, start=1.1, floor=0.0, outputs=SPREAD_OUT, losses=None, **fields):
    losses = losses or (start, best)
    return Attempt(lr=lr, why_lr=f"your LR {lr}", losses=tuple(losses), best=best, start=start,
                   reduction=(best - floor) / (start - floor), accuracy=1.0 if passed else 0.5, passed=passed,
                   steps=len(losses), floor=floor, reference=start, family=fields.pop("family", "ce"),
                   outputs=outputs, **fields)


def measured(*attempts, reading=None, parameters=10_000):
    return OverfitMeasured(examples=32, attempts=attempts, parameters=parameters, reading=reading)


def reading(low=1e-3, high=1e-1):
    return LrReading(analyses=(), user_lr=None, status=Status.PASS, summary="", suggested_lr=1e-2, lr_low=low,
                     lr_high=high)


def test_judge_passes_the_attempt_that_passed_and_says_when_a_retry_did():
    first = attempt(0.05, passed=True)
    j = OverfitBatch().judge(measured(first))
    assert j.status == Status.PASS and not j.advice and "fell from 1.1 to 0.05 (4.5% of its start 1.1)" in j.summary
    retried = OverfitBatch().judge(measured(attempt(0.9, lr=1e-5), attempt(0.05, passed=True, lr=0.3)))
    assert retried.status == Status.PASS and "your LR is slow" in retried.advice[0] and "at 0.3 it was" in \
        retried.advice[0]


def test_judge_fails_on_the_attempt_that_got_furthest():
    m = measured(attempt(1.0, lr=1e-5), attempt(0.5, lr=1e-2), attempt(0.8, lr=1e-1))
    j = OverfitBatch().judge(m)
    assert m.final.lr == 1e-2 and j.status == Status.FAIL
    assert "best loss 0.5 is 45% of its start 1.1, accuracy 50% after 2 steps; likely:" in j.summary


def test_judge_names_a_softmax_before_cross_entropy_first():
    probs = OutputFacts(per_example=3, classes=3, in_unit=True, sums_to_one=True, spread=0.5)
    j = OverfitBatch().judge(measured(attempt(0.7, outputs=probs)))
    assert j.causes[0].cause == "softmax fed into CrossEntropyLoss" and j.causes[0].score == 1.0
    assert "ln(1 + (C-1)/e) = 0.551" in j.advice[0]
    logits_in_unit = OutputFacts(per_example=3, classes=3, in_unit=True, sums_to_one=False, spread=0.5)
    assert OverfitBatch().judge(measured(attempt(0.7, outputs=logits_in_unit))).causes[0].cause != \
        "softmax fed into CrossEntropyLoss"
    sig = OverfitBatch().judge(measured(attempt(0.6, family="bce_logits", outputs=logits_in_unit)))
    assert sig.causes[0].cause == "sigmoid fed into BCEWithLogitsLoss"


def test_judge_same_output_for_every_example_below_the_spread_edge():
    def first_cause(spread):
        facts = OutputFacts(per_example=3, classes=3, spread=spread)
        return OverfitBatch().judge(measured(attempt(1.0, outputs=facts))).causes[0].cause

    assert first_cause(0.9 * SAME_OUTPUT_SPREAD) == "the output ignores the input"
    assert first_cause(1.1 * SAME_OUTPUT_SPREAD) != "the output ignores the input"


def test_judge_ranks_learning_rate_causes_from_lr_ranges_reading():
    def top(a, r=reading()):
        c = OverfitBatch().judge(measured(a, reading=r)).causes[0]
        return c.cause, c.score

    assert top(attempt(1.05, lr=1e-5)) == ("learning rate too low", 0.7)  # kept 95% of its excess: barely moved
    assert top(attempt(0.5, lr=1e-5)) == ("learning rate too low", 0.4)
    assert top(attempt(0.5, lr=1.0)) == ("learning rate too high", 0.5)  # above the range's top
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.7))) == ("learning rate too high", 0.8)  # rose 1.5x
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.6))) == ("too little capacity", 0.2)
    assert top(attempt(0.5, lr=1e-2, losses=(1.1, 0.5, 1.7)), None) == ("learning rate too high", 0.8)


def test_judge_too_little_capacity_for_the_values_to_fit():
    def capacity(parameters):
        causes = OverfitBatch().judge(measured(attempt(0.5), parameters=parameters)).causes
        return next(c.score for c in causes if c.cause == "too little capacity")

    assert capacity(32 * 3 - 1) == 0.6 and capacity(32 * 3) == 0.2


def test_judge_a_lower_lr_that_passed_says_the_users_lr_is_too_high():
    m = OverfitMeasured(examples=32, attempts=(attempt(0.9, lr=20.0), attempt(0.05, passed=True, lr=3.0)),
                        parameters=10_000)
    advice = OverfitBatch().judge(m).advice[0]
    assert "your LR is too high for this" in advice and "declare it in the target's step" in advice
    clipped = OverfitMeasured(examples=32, attempts=m.attempts, parameters=10_000, step=("clip_grad_norm 0.25",))
    assert "declare" not in OverfitBatch().judge(clipped).advice[0]


# -- the user's step (issue 12) -----------------------------------------------------------------------------
class SeqFirstLM(nn.Module):
    """pytorch/examples' word language model, small: (T, B) token ids in, (T*B, vocab) logits out."""

    def __init__(self, vocab: int = 16, emb: int = 16, hidden: int = 32):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, 2, dropout=0.2)  # batch_first=False: sequence first
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids):
        h, _ = self.rnn(self.embed(ids))
        return self.decoder(h).view(-1, self.vocab)


def lm_batches(vocab: int = 16, bsz: int = 2, bptt: int = 8, n: int = 8, seed: int = 0) -> list:
    """The example's batchify/get_batch on a stream whose next token is a function of the current one (so a
    subset can be fit exactly): inputs (bptt, bsz), targets flattened to (bptt * bsz,)."""
    g = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=g)
    stream = [int(torch.randint(0, vocab, (), generator=g))]
    for _ in range(bsz * (n * bptt + 1) - 1):
        stream.append(int(successor[stream[-1]]))
    source = torch.tensor(stream).view(bsz, -1).t().contiguous()
    return [(source[i:i + bptt], source[i + 1:i + 1 + bptt].reshape(-1)) for i in range(0, n * bptt, bptt)]


def lm_target(step: bool = True) -> dict:
    """The example's settings: SGD at lr 20, and with ``step`` its clip_grad_norm_(0.25)."""
    torch.manual_seed(0)
    fields = dict(model=SeqFirstLM(), data=lm_batches(), loss_fn=nn.CrossEntropyLoss(),
                  optimizer=lambda p: torch.optim.SGD(p, lr=20))
    if step:
        fields["step"] = babysitter.Step(clip_grad_norm=0.25)
    return fields


def test_sequence_first_lm_with_its_clipped_step_fits_whole_batches_at_its_lr():
    result = check(**lm_target())
    assert result.status == "pass", result.summary
    assert result.metrics["attempts"] == 1 and result.metrics["lr"] == 20 and result.metrics["examples"] == 32
    assert "each step on the subset was your step: clip_grad_norm 0.25" in result.notes
    assert any(n.startswith("the batch's tensors do not share a leading dimension (batch[0] (8, 2), batch[1] "
                            "(16,)): nothing is sliced, the subset is the first 2 whole batches, concatenated along "
                            "dimension 0, of 32 target rows; the loss alone decides") for n in result.notes)


def test_sequence_first_lm_without_its_step_fails_at_lr_20_and_passes_lower():
    result = check(**lm_target(step=False))  # before issue 12: "Expected input batch_size (16) to match target..."
    first = result.tables[0].rows[0]
    assert first[0] == 20 and first[-1] is False  # the plain step at lr 20 does not fit the subset
    assert result.status == "pass" and result.metrics["lr"] < 20, result.summary
    assert "your LR is too high for this" in result.advice[0]
    assert not any("your step" in n for n in result.notes)


def fibonacci_batches(vocab: int = 8, bsz: int = 16, bptt: int = 8, n: int = 4, seed: int = 0) -> list:
    """Sequence-first batches of columns x[t+1] = x[t] + x[t-1] (mod vocab): the first position of a column sees
    one token, which does not decide its target, so no model classifies every row of a whole batch right."""
    g = torch.Generator().manual_seed(seed)
    columns = []
    for _ in range(bsz):
        column = torch.randint(0, vocab, (2,), generator=g).tolist()
        while len(column) < n * bptt + 1:
            column.append((column[-1] + column[-2]) % vocab)
        columns.append(column)
    source = torch.tensor(columns).t().contiguous()
    return [(source[i:i + bptt], source[i + 1:i + 1 + bptt].reshape(-1)) for i in range(0, n * bptt, bptt)]


def test_whole_sequence_batches_are_judged_on_the_loss_not_on_100_percent_accuracy():
    torch.manual_seed(0)
    result = check(model=SeqFirstLM(vocab=8), data=fibonacci_batches(), loss_fn=nn.CrossEntropyLoss(),
                   optimizer=lambda p: torch.optim.SGD(p, lr=20), step=babysitter.Step(clip_grad_norm=0.25))
    assert result.status == "pass", result.summary
    assert result.metrics["examples"] == 128 and result.metrics["reduction"] <= 0.1
    assert result.metrics["accuracy"] < 1.0  # the first positions' targets are not decided by what they see


class SeqFirstClassifier(nn.Module):
    """(T, B, F) sequences in, (B, C) logits out: concatenating batches along dimension 0 would be wrong."""

    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 3):
        super().__init__()
        self.rnn, self.head = nn.GRU(features, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def test_sequence_first_batches_that_do_not_concatenate_use_the_first_whole_batch():
    x, y = zoo.sequences(n=64)
    batches = [(x[i:i + 8].transpose(0, 1), y[i:i + 8]) for i in range(0, 64, 8)]  # (12, 8, 8) and (8,)
    result = check(model=SeqFirstClassifier(), data=batches, loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-2))
    assert result.status == "pass", result.summary
    assert result.metrics["examples"] == 8
    assert any("(batch[0] (12, 8, 8), batch[1] (8,))" in n and "the first whole batch of 8 target rows" in n
               for n in result.notes)


def test_lbfgs_regression_fits_through_its_closure():
    fields = zoo.regression_target()
    fields["optimizer"] = lambda p: torch.optim.LBFGS(p, lr=1, max_iter=20)  # step(closure): crashed before
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert "each step on the subset was your step: closure" in result.notes


def test_the_scheduler_is_replaced_by_the_probes_lr_and_accumulation_is_moot():
    fields = zoo.mlp_target()
    fields["step"] = babysitter.Step(accumulate=4, clip_grad_value=1.0, scheduler=lambda opt: torch.optim.lr_scheduler.
                                     LambdaLR(opt, lambda s: 0.0))  # an LR of 0: nothing would fit
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert "each step on the subset was your step: clip_grad_value 1.0" in result.notes
    assert "your LR scheduler was left out: each attempt sets its LR itself and keeps it constant" in result.notes
    assert "accumulate 4 is moot on a fixed subset: each step feeds the whole subset once" in result.notes


def classify_step(model, batch, optimizer):
    x, y = batch
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def test_a_step_function_is_judged_on_its_loss_alone():
    fields = zoo.mlp_target()
    fields["step"] = classify_step
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["accuracy"] is None
    assert any(n.startswith("your step function returns only the loss") for n in result.notes)
    fields = zoo.mlp_target()
    fields.update(model=SoftmaxMLP(), step=classify_step)
    assert check(**fields, options={"max_steps": 60}).status == "fail"  # a loss that cannot fall still fails


class TinyGAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = nn.Linear(4, 2), nn.Linear(2, 1)

    def forward(self, x):
        return self.discriminator(x)


def gan_step(model, batch, optimizers):
    g_opt, d_opt = optimizers
    real = batch[0]
    fake = model.generator(torch.randn(real.shape[0], 4))
    d_opt.zero_grad()
    d_loss = F.softplus(-model(real)).mean() + F.softplus(model(fake.detach())).mean()
    d_loss.backward()
    d_opt.step()
    g_opt.zero_grad()
    g_loss = F.softplus(-model(fake)).mean()
    g_loss.backward()
    g_opt.step()
    return d_loss.detach() + g_loss.detach()


def test_a_step_function_with_several_optimizers_is_skipped():
    x = torch.randn(128, 2)
    result = check(model=TinyGAN(), data=(x, torch.ones(128, 1)), loss_fn=nn.BCEWithLogitsLoss(), step=gan_step,
                   optimizer=lambda p: (torch.optim.Adam(list(p)[:2], 1e-3), torch.optim.Adam(list(p)[2:], 1e-3)))
    assert result.status == "skip" and "2 optimizers" in result.summary, result.summary


def test_judge_a_loss_at_the_pass_level_with_a_few_wrong_predictions_blames_the_targets_not_capacity():
    """GPT-2's flattened next tokens: the loss fell to 0.5% of its start at 99.7% accuracy (issue 18)."""
    import dataclasses

    near = dataclasses.replace(attempt(0.005, start=1.1), accuracy=0.997)
    j = OverfitBatch().judge(measured(near, parameters=10))
    assert j.status == Status.FAIL and j.causes[0].cause == "targets the inputs do not determine"
    assert all(c.cause != "too little capacity" for c in j.causes)


def _gpt2_lm():
    transformers = pytest.importorskip("transformers")
    from step_zoo import markov_tokens

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    ids = markov_tokens(64 * 17).reshape(64, 17)
    batches = [(ids[i:i + 16],) for i in range(0, 64, 16)]

    def forward(model, batch):  # the usual language-model forward: logits flattened with time
        x = batch[0]
        logits = model(input_ids=x).logits[:, :-1]
        return logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)

    return dict(model=transformers.GPT2LMHeadModel(cfg), data=batches, loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), forward=forward)


def test_gpt2_with_flattened_logits_overfits_its_subset():
    result = check(**_gpt2_lm())
    assert result.status == "pass", result.summary
    assert 0.9 < result.metrics["accuracy"] < 1.0  # a few next tokens no prefix determines: the loss decides


def test_accuracy_is_asked_of_one_label_per_example_only():
    from babysitter.checklist.overfit_batch import one_prediction_each

    assert one_prediction_each(torch.zeros(32, dtype=torch.long), 32)
    assert one_prediction_each(torch.zeros(32, 5), 32)  # soft labels
    assert not one_prediction_each(torch.zeros(32 * 15, dtype=torch.long), 32)  # next tokens, flattened
    assert not one_prediction_each(torch.zeros(32, 15, dtype=torch.long), 32)  # per-position labels
    assert not one_prediction_each(None, 32)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the first-batch validation's own warning, outside the checks
def test_a_loss_that_broadcasts_outputs_against_targets_is_named_from_pytorchs_warning():
    """Issue 18: (N, 1) outputs against (N,) targets broadcast to (N, N); PyTorch says so, the report must too."""
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8)  # (N,) targets
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))  # (N, 1) outputs
    report = babysitter.check(model, (x, y), loss_fn=nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, 1e-2),
                              select=["initial_loss", "overfit_batch"])
    result = report["overfit_batch"]
    assert result.status == "fail", result.summary
    assert "different shapes" in result.summary and "Using a target size" in result.advice[0]
    assert any("Using a target size" in n for n in result.notes)
    assert any("warnings raised while this check ran" in n and "Using a target size" in n
               for n in report["initial_loss"].notes)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_warnings_are_kept_in_the_report_and_the_users_filters_restored():
    import warnings

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            warnings.warn("noisy forward", UserWarning)
            return self.fc(x)

    before = list(warnings.filters)
    report = babysitter.check(Noisy(), (torch.randn(64, 4), torch.randint(0, 3, (64,))),
                              loss_fn=nn.CrossEntropyLoss(), select=["initial_loss"])
    assert warnings.filters == before
    assert any("UserWarning: noisy forward (x" in n for n in report["initial_loss"].notes)


# -- the loss the subset can reach: soft targets and losses of the user's own (issue 18) ---------------------
def grey_images(n: int = 256, size: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) images of a soft blob of random place and width: grey levels in [0, 1], not binary."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centre, width = torch.rand(n, 2, generator=g), 0.02 + 0.08 * torch.rand(n, generator=g)
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    return torch.exp(-d2 / width[:, None, None])[:, None].clamp(0, 1)


class VAE(nn.Module):
    """The PyTorch VAE example (examples/vae/main.py), shrunk from 784-400-20 to 64-32-8 for 8 x 8 images:
    forward returns (reconstruction, mu, logvar)."""

    def __init__(self, detach_decoder: bool = False):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(64, 32), nn.Linear(32, 8), nn.Linear(32, 8)
        self.fc3, self.fc4 = nn.Linear(8, 32), nn.Linear(32, 64)
        self.detach_decoder = detach_decoder  # the fault: the reconstruction reaches the loss detached

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        recon = torch.sigmoid(self.fc4(F.relu(self.fc3(z))))
        return recon.detach() if self.detach_decoder else recon

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 64))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(outputs, x):
    """The example's loss_function, as a loss_fn(outputs, targets): reconstruction BCE + KL, both summed."""
    recon, mu, logvar = outputs
    bce = F.binary_cross_entropy(recon, x.view(-1, 64), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def vae_target(detach_decoder: bool = False) -> dict:
    torch.manual_seed(0)
    x = grey_images()
    return dict(model=VAE(detach_decoder), data=(x, x), batch_size=32, loss_fn=vae_loss,
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))


def test_the_pytorch_vae_example_on_grey_images_passes_on_the_fall_of_its_loss():
    # its summed ELBO cannot approach 0 (the KL term, the targets' entropy): it failed here before
    result = check(**vae_target())
    assert result.status == "pass", result.summary
    assert "its floor is unknown" in result.summary and result.metrics["floor_known"] is False
    assert result.metrics["fall"] > 0.3 and result.metrics["steps"] == 200
    assert any("verdict is about how far the loss fell" in n for n in result.notes)
    assert any("cannot go below their entropy" in n for n in result.notes)


def test_a_vae_whose_reconstruction_reaches_the_loss_detached_fails():
    result = check(**vae_target(detach_decoder=True))
    assert result.status == "fail", result.summary
    assert "barely fell" in result.summary and result.metrics["fall"] < 0.02
    assert result.metrics["likely_cause"] == "the loss's main term gets no gradient"
    assert ".detach()" in result.advice[0]


def test_bce_on_soft_targets_is_judged_against_their_entropy():
    # a sigmoid autoencoder on grey images with a summed BCE: the floor is the targets' entropy, summed
    torch.manual_seed(0)
    x = grey_images(n=32).flatten(1)  # the subset is the whole data
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())
    result = check(model=model, data=(x, x), batch_size=32, loss_fn=nn.BCELoss(reduction="sum"),
                   optimizer=lambda p: torch.optim.Adam(p, 3e-3))
    assert result.status == "pass", result.summary
    assert result.metrics["floor"] == pytest.approx(bce_floor(x, "sum"), rel=1e-4)
    assert result.metrics["floor_known"] and result.metrics["best_loss"] > result.metrics["floor"]


def test_bce_floor_is_the_entropy_of_the_targets_with_the_losss_reduction():
    t = torch.tensor([[0.0, 1.0, 0.5, 0.2]])
    h = -(0.5 * math.log(0.5) * 2) - (0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert binary_entropy(t)[0].tolist() == pytest.approx([0.0, 0.0, math.log(2), h - math.log(2)])
    assert bce_floor(t, "sum") == pytest.approx(h) and bce_floor(t, "mean") == pytest.approx(h / 4)
    g = torch.Generator().manual_seed(0)
    t, logits = torch.rand(8, 16, generator=g), torch.randn(8, 16, generator=g)
    for loss in (nn.BCELoss(), nn.BCELoss(reduction="sum")):
        assert loss_floor(loss, "bce", logits.sigmoid(), t) == pytest.approx(bce_floor(t, loss.reduction), rel=1e-5)
    for loss in (nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")):
        assert loss_floor(loss, "bce_logits", logits, t) == pytest.approx(bce_floor(t, loss.reduction), rel=1e-4)
    w = torch.rand(16, generator=g)
    assert loss_floor(nn.BCELoss(weight=w), "bce", logits.sigmoid(), t) == pytest.approx(bce_floor(t, weight=w))
    # with pos_weight the lowest loss is not at p = t: the floor is the loss's true minimum
    pos = nn.BCEWithLogitsLoss(pos_weight=torch.full((16,), 3.0))
    z = torch.zeros(8, 16, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=200)

    def closure():
        opt.zero_grad()
        value = pos(z, t)
        value.backward()
        return value

    opt.step(closure)
    assert loss_floor(pos, "bce_logits", logits, t) == pytest.approx(float(pos(z, t).detach()), rel=1e-4)
    assert soft_targets(t) and not soft_targets((t > 0.5).float()) and not soft_targets(t * 2)


def unknown(best, start=1000.0, **fields):
    """An attempt at a loss babysitter does not know: its fall is judged."""
    return Attempt(lr=1e-3, why_lr="your LR 0.001", losses=(start, best), best=best, start=start,
                   reduction=1 - (start - best) / abs(start), accuracy=None, passed=fields.pop("passed", False),
                   steps=200, family=None, outputs=None, floor_known=False, **fields)


def test_judge_a_loss_of_unknown_floor_by_its_fall():
    ob = OverfitBatch()
    passed = ob.judge(measured(unknown(600.0, passed=True)))
    assert passed.status == Status.PASS and "fell by 40%, from 1000 to 600" in passed.summary
    stuck = ob.judge(measured(unknown(995.0)))
    assert stuck.status == Status.FAIL and "barely fell: best 995 is 99.5% of its start 1000" in stuck.summary
    assert stuck.causes[0].cause == "the loss's main term gets no gradient"
    assert fall_of(-2.0, -3.0) == pytest.approx(0.5)  # a loss below zero (a Gaussian NLL) falls from its magnitude


# -- causes named from evidence beside the loss (the corpus's tuning half) ---------------------------------------
def _failed_attempt(**kw) -> "Attempt":
    from babysitter.checklist.overfit_batch import Attempt

    fields = dict(lr=1e-3, why_lr="your LR 0.001", losses=(1.0, 0.9), best=0.9, start=1.0, reduction=0.9,
                  accuracy=None, passed=False, steps=200, reference=1.0, family="mse")
    fields.update(kw)
    return Attempt(**fields)


def _causes(attempt, **measured):
    from babysitter.checklist.overfit_batch import OverfitBatch, OverfitMeasured

    return OverfitBatch().causes(OverfitMeasured(examples=32, attempts=(attempt,), parameters=10_000, **measured))


def test_cause_a_loss_that_is_not_finite_from_the_first_step():
    causes = _causes(_failed_attempt(losses=(math.nan,), best=math.nan, start=math.nan, reduction=math.nan))
    assert causes[0].cause == "the loss is not finite from the first step"
    assert all(c.cause != "the loss is not finite from the first step" for c in _causes(_failed_attempt()))


def test_cause_dead_units_at_init_named_with_their_layer():
    causes = _causes(_failed_attempt(), dead=(("layer1.relu", 1.0),))
    assert causes[0].cause == "dead units" and "layer1.relu (100%)" in causes[0].evidence
    assert all(c.cause != "dead units" for c in _causes(_failed_attempt()))


def test_cause_outputs_that_cannot_be_negative_against_negative_targets():
    from babysitter.checklist.overfit_batch import output_facts

    targets = torch.randn(32, 1)
    clamped = output_facts(torch.relu(torch.randn(32, 1)), targets)
    causes = _causes(_failed_attempt(outputs=clamped))
    assert causes[0].cause == "outputs that cannot be negative, against negative targets"
    free = output_facts(torch.randn(32, 1), targets)
    assert all("cannot be negative" not in c.cause for c in _causes(_failed_attempt(outputs=free)))
    positive = output_facts(torch.relu(torch.randn(32, 1)), targets.abs())  # targets in the outputs' range
    assert all("cannot be negative" not in c.cause for c in _causes(_failed_attempt(outputs=positive)))


def test_retry_lrs_keep_the_range_tests_reading_when_the_race_moved_the_suggestion():
    """A race winner close to the user's LR is skipped as already tried; the curve's own reading is the next try
    before the top of the good range (a DAE under Adam: 0.0026 raced, 0.0047 read, 8.3 at the range's top)."""
    from babysitter.analysis.lr_curve import LrReading
    from babysitter.analysis.status import Status
    from babysitter.checklist.overfit_batch import OverfitBatch

    reading = LrReading(analyses=(), user_lr=1e-3, status=Status.PASS, summary="", suggested_lr=0.00264,
                        lr_low=6.9e-6, lr_high=8.3, range_lr=0.0047)
    lrs = [lr for lr, _ in OverfitBatch._retry_lrs(reading, _failed_attempt(lr=1e-3))]
    assert lrs == [0.00264, 0.0047, 8.3]
    unmoved = LrReading(analyses=(), user_lr=1e-3, status=Status.PASS, summary="", suggested_lr=0.0047,
                        lr_low=6.9e-6, lr_high=8.3, range_lr=0.0047)
    assert [lr for lr, _ in OverfitBatch._retry_lrs(unmoved, _failed_attempt(lr=1e-3))] == [0.0047, 8.3]
