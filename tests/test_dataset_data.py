"""A map-style Dataset as ``data`` is batched as a DataLoader would batch it (issue 13, item 10): ``batch_size``
examples a batch (default 64), shuffled with the session's seed, collated by PyTorch's ``default_collate``. Data
that yields single examples instead of batches is a target error naming the field and the value (exit 4): no check
ever runs on single examples."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import babysitter
from babysitter.errors import ExitCode, TargetError
from babysitter.pool import DEFAULT_BATCH_SIZE
from babysitter.session import Session
from babysitter.target import Target
from test_cli import run, write


def _xy(n: int = 200, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))


class Pairs(Dataset):
    """A custom Dataset returning ``(x, y)`` tuples, y a plain int."""

    def __init__(self):
        self.x, self.y = _xy()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Records(Pairs):
    """A custom Dataset returning dicts."""

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


def _dict_forward(model, batch):
    return model(batch["features"]), batch["label"]


def _pool(data, seed: int = 0, **fields):
    with Session(Target(model=_mlp(), data=data, loss_fn=nn.CrossEntropyLoss(), **fields), device="cpu",
                 seed=seed) as session:
        return list(session.pool), dict(session.facts)


# -- the report, end to end -----------------------------------------------------------------------------
DATASET_TARGET = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def babysit():
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    return dict(model=model, data=TensorDataset(x, y), batch_size=32, loss_fn=nn.CrossEntropyLoss())
"""


def test_a_tensor_dataset_is_checked_in_batches_of_batch_size(tmp_path, monkeypatch):
    write(tmp_path, "ds.py", DATASET_TARGET)
    code, out = run(["check", "ds.py", "--select", "initial_loss,overfit_batch,batch_independence", "--out", "r"],
                    tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    report = json.loads((tmp_path / "r/ds/report.json").read_text())
    assert report["run"]["batch_size"] == 32 and report["run"]["batches"] == 16
    statuses = {c["id"]: (c["status"], c["summary"]) for c in report["checks"]}
    assert all(status == "pass" for status, _ in statuses.values()), statuses
    assert "mat1 and mat2" not in out


def test_batches_are_those_a_seeded_shuffling_dataloader_draws():
    x, y = _xy()
    data = TensorDataset(x, y)
    batches, facts = _pool(data, seed=7, batch_size=32)
    expected = list(DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(7)))
    assert len(batches) == len(expected) == 7 and facts["batch_size"] == 32
    for (bx, by), (ex, ey) in zip(batches, expected):
        assert torch.equal(bx, ex) and torch.equal(by, ey)
    again, _ = _pool(data, seed=7, batch_size=32)
    other, _ = _pool(data, seed=8, batch_size=32)
    assert torch.equal(again[0][1], batches[0][1]) and not torch.equal(other[0][0], batches[0][0])


def test_the_batch_size_defaults_to_64():
    batches, facts = _pool(TensorDataset(*_xy()))
    assert DEFAULT_BATCH_SIZE == 64 and facts["batch_size"] == 64
    assert [len(b[1]) for b in batches] == [64, 64, 64, 8]


def test_a_custom_dataset_of_tuples():
    batches, _ = _pool(Pairs(), batch_size=50)
    x, y = batches[0]
    assert x.shape == (50, 16) and y.shape == (50,) and y.dtype == torch.int64
    report = babysitter.check(_mlp(), Pairs(), loss_fn=nn.CrossEntropyLoss(), batch_size=50, device="cpu",
                              select=["initial_loss"])
    assert report["initial_loss"].status == "pass", report["initial_loss"].summary


def test_a_custom_dataset_of_dicts_through_forward():
    batches, _ = _pool(Records(), forward=_dict_forward)
    assert set(batches[0]) == {"features", "label"} and batches[0]["features"].shape == (64, 16)
    report = babysitter.check(_mlp(), Records(), loss_fn=nn.CrossEntropyLoss(), forward=_dict_forward,
                              device="cpu", select=["initial_loss", "batch_independence"])
    assert [c.status for c in report.checks] == ["pass", "pass"], [c.summary for c in report.checks]


# -- data that is not batches: a target error, never checks on single examples ---------------------------------
class Stream(IterableDataset):
    """Yields single examples, as most IterableDatasets do."""

    def __iter__(self):
        x, y = _xy()
        return iter(zip(x, y))


class NoLen(Dataset):
    def __getitem__(self, i):
        return torch.zeros(16), 0


class Ragged(Pairs):
    def __getitem__(self, i):
        return self.x[i][: 8 + i % 3], self.y[i]


class Broken(Pairs):
    def __getitem__(self, i):
        raise KeyError(f"no example {i}")


def _examples():
    x, y = _xy(10)
    return list(zip(x, y))


BAD = {
    "list of examples": (lambda: _examples(), {}, ["single example", "tensor(", "DataLoader"]),
    "iterable dataset of examples": (lambda: Stream(), {}, ["single example", "Stream", "DataLoader"]),
    "examples of plain ints": (lambda: [(torch.zeros(16), 1)] * 4, {}, ["single example", "int: 1"]),
    "dict examples through forward": (lambda: [{"features": torch.zeros(16), "label": torch.tensor(1)}] * 4,
                                      {"forward": _dict_forward}, ["single example", "tensor(1)"]),
    "dataset without len": (lambda: NoLen(), {}, ["NoLen", "__len__", "DataLoader"]),
    "examples that do not collate": (lambda: Ragged(), {}, ["Ragged", "collat", "stack expects",
                                                            "collate_fn"]),
    "dataset that raises": (lambda: Broken(), {}, ["Broken", "KeyError", "no example"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_data_that_is_not_batches_is_a_target_error(case):
    make, fields, fragments = BAD[case]
    with pytest.raises(TargetError) as info:
        babysitter.check(_mlp(), make(), loss_fn=nn.CrossEntropyLoss(), device="cpu", select=["initial_loss"],
                         **fields)
    message = str(info.value)
    assert info.value.field == "data" and info.value.exit_code == ExitCode.USAGE_ERROR, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_list_of_examples_exits_4_on_the_command_line(tmp_path, monkeypatch):
    write(tmp_path, "examples.py", DATASET_TARGET.replace("TensorDataset(x, y), batch_size=32",
                                                         "list(zip(x, y))"))
    code, out = run(["check", "examples.py", "--select", "initial_loss", "--no-report"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    assert "field 'data'" in out and "single example" in " ".join(out.split())
