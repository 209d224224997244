"""The same seed gives the same numbers (issue 13, item 6): every RNG (torch, CUDA, numpy, random) is seeded with the
session's seed before the target's file is imported and its function called, so a target that seeds nothing
itself is checked on the same model and data each time; and loading leaves the caller's RNGs as they were."""
from __future__ import annotations

import json
import random

import numpy as np
import torch

from babysitter.errors import ExitCode
from babysitter.runner import run_target
from babysitter.target import discover, load
from test_cli import run, write

#: a target that seeds nothing: module-level data, numpy labels, a width drawn by `random`, a random init
UNSEEDED = """
import random
import numpy as np
import torch
from torch import nn

x = torch.randn(256, 10)  # at import
scale = 1 + np.random.rand()

def babysit():
    y = torch.from_numpy((np.random.rand(256) > 0.5).astype("int64"))
    width = random.choice([16, 24, 32, 48])
    model = nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, 2))
    return dict(model=model, data=(x * scale, y), loss_fn=nn.CrossEntropyLoss())
"""

SELECT = ["--select", "initial_loss"]


def _metrics(path) -> dict:
    report = json.loads(path.read_text())
    return {c["id"]: c["metrics"] for c in report["checks"]}


def test_two_cli_runs_of_an_unseeded_target_give_identical_numbers(tmp_path, monkeypatch):
    write(tmp_path, "checks/unseeded.py", UNSEEDED)
    runs = []
    for out in ("a", "b"):
        code, text = run(["check", *SELECT, "--out", out], tmp_path, monkeypatch)
        assert code in (ExitCode.OK, ExitCode.CHECKS_FAILED), text
        runs.append(_metrics(tmp_path / out / "unseeded/report.json"))
    assert runs[0] == runs[1]
    assert runs[0]["initial_loss"]["observed"] > 0


def _state(ref, seed: int):
    target = load(ref, seed=seed)
    x, y = target.data
    return {k: v.clone() for k, v in target.model.state_dict().items()}, x, y


def _rng_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_loading_seeds_every_rng_with_the_seed_and_restores_them_after(tmp_path):
    write(tmp_path, "unseeded.py", UNSEEDED)
    ref = discover(["unseeded.py"], root=tmp_path)[0]
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = _rng_states()
    (a, xa, ya), (b, xb, yb), (c, xc, yc) = _state(ref, 3), _state(ref, 3), _state(ref, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc) and not torch.equal(ya, yc)  # another seed, other numbers
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_two_api_runs_with_the_same_seed_give_identical_metrics(tmp_path):
    write(tmp_path, "unseeded.py", UNSEEDED)
    ref = discover(["unseeded.py"], root=tmp_path)[0]
    reports = [run_target(load(ref, seed=5), device="cpu", seed=5, select=["initial_loss", "grad_norms"])
               for _ in range(2)]
    assert [c.metrics for c in reports[0].checks] == [c.metrics for c in reports[1].checks]


def test_the_cli_seed_reaches_the_target_function(tmp_path, monkeypatch):
    write(tmp_path, "checks/unseeded.py", UNSEEDED)
    runs = {}
    for seed, out in (("1", "a"), ("1", "b"), ("2", "c")):
        code, text = run(["check", *SELECT, "--seed", seed, "--out", out], tmp_path, monkeypatch)
        assert code in (ExitCode.OK, ExitCode.CHECKS_FAILED), text
        runs[out] = _metrics(tmp_path / out / "unseeded/report.json")
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
