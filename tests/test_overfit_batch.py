"""overfit_batch: healthy models of every kind (also with heavy dropout and weight decay) fit a tiny subset;
a softmax before CrossEntropyLoss and an output that ignores its input do not, and the cause is named."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo
from babysitter.checklist.overfit_batch import regularization_off


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
