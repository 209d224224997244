"""The activation instrument: functional calls and reused modules are seen and named, statistics are right,
nothing is synchronised per call, and every hook and mode is gone afterwards."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from babysitter.evidence import INSTRUMENTS
from babysitter.instruments.activations import ActivationInstrument


class Functional(nn.Module):
    """Every spelling of an activation, in one forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = torch.relu(h - 0.1)
        h = (h - 0.1).relu()
        h = (h - 0.1).relu_()
        h = F.relu(self.fc2(h) - 0.1, inplace=True)
        h = F.gelu(h)
        h = torch.tanh(h)
        h = torch.sigmoid(h)
        return F.softmax(h, dim=-1)


class Reused(nn.Module):
    """One nn.ReLU module applied in two places."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(8, 16), nn.Linear(16, 4), nn.ReLU()

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))


def record(model, *inputs, forwards=1, **kw):
    with ActivationInstrument(model, **kw) as inst:
        for _ in range(forwards):
            out = model(*inputs)
            out.float().sum().backward()
    return inst.result()


def test_every_functional_spelling_is_seen_once_and_named_by_call():
    result = record(Functional(), torch.randn(32, 8))
    names = [l.name for l in result.layers]
    assert names == ["model#relu0", "model#relu1", "model#relu2", "model#relu3", "model#relu4", "model#gelu",
                     "model#tanh", "model#sigmoid", "model#softmax"]
    assert [l.family for l in result.layers][-4:] == ["rectifier", "tanh", "sigmoid", "softmax"]
    assert all(l.calls == 1 for l in result.layers)
    assert result.layers[0].producer == "fc1" and result.layers[4].producer == "fc2"


def test_reused_module_is_two_sites_and_modules_are_named_by_their_path():
    result = record(Reused(), torch.randn(32, 8))
    assert [l.name for l in result.layers] == ["act#0", "act#1"]
    assert [l.units for l in result.layers] == [16, 4]
    seq = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
    assert [(l.name, l.producer) for l in record(seq, torch.randn(32, 8)).layers] == [("1", "0"), ("3", "2")]


def test_statistics_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    x1, x2 = torch.randn(64, 8), torch.randn(32, 8)
    with ActivationInstrument(model) as inst:
        model(x1)
        model(x2)
    layer = inst.result().layers[0]
    with torch.no_grad():
        pre = torch.cat([model[0](x1), model[0](x2)])
        y = pre.relu()
    assert layer.per_unit == 96 and layer.calls == 2
    assert layer.active == pytest.approx((y > 0).float().mean(0).tolist(), abs=1e-6)
    assert layer.mean == pytest.approx(float(y.mean()), rel=1e-4)
    assert layer.std == pytest.approx(float(y.std(unbiased=False)), rel=1e-3)
    assert layer.pre_std == pytest.approx(float(pre.std(unbiased=False)), rel=1e-3)
    assert sum(layer.log_hist) == y.numel()  # under HIST_SAMPLE elements: every one is binned


def test_units_are_channels_of_feature_maps_and_features_of_sequences():
    conv = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
    assert record(conv, torch.randn(2, 3, 8, 8)).layers[0].units == 5
    conv1d = nn.Sequential(nn.Conv1d(3, 7, 3), nn.ReLU())
    assert record(conv1d, torch.randn(2, 3, 10)).layers[0].units == 7
    seq = nn.Sequential(nn.Linear(4, 6), nn.GELU())
    layer = record(seq, torch.randn(2, 10, 4)).layers[0]
    assert layer.units == 6 and layer.per_unit == 20


def test_tanh_saturation_and_dead_units_are_counted():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
    with torch.no_grad():
        model[0].weight.mul_(100)
    layer = record(model, torch.randn(64, 8)).layers[0]
    assert layer.saturated_fraction > 0.9
    relu = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    with torch.no_grad():
        relu[0].bias.fill_(-10)
    assert record(relu, torch.randn(64, 8)).layers[0].dead_fraction == 1.0


def test_softmax_rows_masked_to_one_choice_are_not_pinned():
    class CausalAttention(nn.Module):
        def forward(self, x):
            keys = x.roll(1, dims=2)  # not x itself: a token's score with itself would dominate
            scores = x @ keys.transpose(1, 2) / math.sqrt(x.shape[-1])
            mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
            return F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ x

    result = record(CausalAttention(), torch.randn(4, 8, 16, requires_grad=True))
    assert result.layers[0].pinned == 0.0

    class Unscaled(nn.Module):
        def forward(self, x):
            return F.softmax(x @ x.roll(1, dims=2).transpose(1, 2) * 10, dim=-1) @ x

    assert record(Unscaled(), torch.randn(4, 8, 16, requires_grad=True)).layers[0].pinned > 0.5


def test_calls_outside_modules_and_integer_tensors_are_ignored():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    with ActivationInstrument(model) as inst:
        out = model(torch.randn(16, 8))
        torch.sigmoid(out).sum().backward()  # the loss: not part of the model
        torch.relu(torch.arange(-3, 3))  # integers
    assert [l.name for l in inst.result().layers] == ["1"]


def test_skip_forwards_records_only_the_last_forwards():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    result = record(model, torch.randn(16, 8), forwards=5, skip_forwards=3)
    assert result.forwards == 2 and result.layers[0].calls == 2


def test_fused_recurrent_gates_are_reported_as_not_visible():
    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    result = record(Rnn(), torch.randn(2, 5, 4))
    assert result.layers == [] and any("LSTM" in h for h in result.hidden)


def test_no_host_sync_per_call(monkeypatch):
    """Reductions stay on the device: nothing reads a tensor value back while the forward runs."""
    model = Functional()
    x = torch.randn(32, 8)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the instrument")

    with ActivationInstrument(model) as inst:
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "cpu", "__bool__", "__float__", "numpy"):
                m.setattr(torch.Tensor, name, forbidden)
            model(x)
    assert inst.result().layers


def test_hooks_and_mode_are_removed_even_after_an_error():
    model = Reused()
    before = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError):
        with ActivationInstrument(model):
            model(torch.randn(4, 8))
            raise RuntimeError("boom")
    assert torch._C._len_torch_function_stack() == before
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    record(model, torch.randn(4, 8))
    assert torch._C._len_torch_function_stack() == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_carried_by_both_shared_passes():
    assert "activations" in INSTRUMENTS["init_pass"] and "activations" in INSTRUMENTS["train_probe"]
