"""The corpus of real architectures (issue 18): its integrity, its split, the plain-loop evidence, and a fast slice of
``benchmarks/corpus.py`` (the whole corpus runs there, not here)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import babysitter
import corpus
from babysitter.checklist import CHECKLIST
from corpus import Case, Fault, split_of
from corpus.plain import HURTS_ABOVE, PlainRun, train


def test_names_are_unique_and_faults_name_a_case_and_a_check():
    cases, faults = corpus.cases(), corpus.faults()
    names = [c.name for c in cases] + [f.name for f in faults]
    assert len(names) == len(set(names))
    ids = {c.id for c in CHECKLIST}
    for f in faults:
        assert f.base in {c.name for c in cases}, f.name
        assert f.check in ids, f.name


def test_every_check_has_a_fault_in_each_half():
    halves = split_of(corpus.faults())
    for check in CHECKLIST:
        seen = {halves[f.name] for f in corpus.faults() if f.check == check.id}
        assert seen == {"tune", "held"}, check.id


def test_split_alternates_within_a_group_and_ignores_order():
    build = lambda seed: {}  # noqa: E731
    items = [Case(f"m{i}", "vision" if i % 3 else "tabular", build, "") for i in range(9)]
    halves = split_of(items)
    assert halves == split_of(list(reversed(items)))
    for family in ("vision", "tabular"):
        group = [halves[c.name] for c in items if c.family == family]
        assert abs(group.count("tune") - group.count("held")) <= 1
    faults = [Fault(f"f{i}", "m0", "nonfinite", build, "") for i in range(4)]
    assert sorted(split_of(faults).values()) == ["held", "held", "tune", "tune"]


def _regression(seed: int, final_relu: bool = False) -> dict:
    torch.manual_seed(seed)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]])
    layers = [nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)] + ([nn.ReLU()] if final_relu else [])
    return dict(model=nn.Sequential(*layers), data=(x, y), batch_size=32, loss_fn=nn.MSELoss(),
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))


def test_plain_loop_shows_a_healthy_model_trains_and_a_fault_hurts():
    healthy = train(_regression(0), steps=150)
    assert healthy.trains and healthy.final < 0.2 * healthy.initial
    faulty = train(_regression(0, final_relu=True), steps=150)  # cannot output the negative half of the targets
    assert faulty.final > HURTS_ABOVE * healthy.final


def test_plain_loop_stops_at_a_non_finite_loss_and_clips_as_declared():
    fields = _regression(0)
    fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=50.0)
    assert train(fields, steps=50).final == math.inf
    fields = _regression(0)
    fields.update(optimizer=lambda p: torch.optim.SGD(p, lr=50.0), step=babysitter.Step(clip_grad_norm=0.01))
    assert math.isfinite(train(fields, steps=50).final)
    assert not PlainRun(10, 1.0, math.inf).trains


# -- the fast slice of benchmarks/corpus.py: cheap cases and faults from both halves -------------------------------
SLICE_HEALTHY = ("regression", "multilabel", "vae", "dae")
SLICE_FAULTS = ("regression-relu-out", "multilabel-sigmoid-out", "dae-per-image-max", "regression-finetune-lr",
                "deep-regression-small-init", "regression-raw-units", "multilabel-prior-sign")


def _by_name(items):
    return {item.name: item for item in items}


@pytest.mark.parametrize("name", SLICE_HEALTHY)
def test_slice_healthy_corpus_model_gets_no_fail_and_no_warning(name):
    report = babysitter.check(**_by_name(corpus.cases())[name].build(0), device="cpu")
    flagged = {c.id: c.summary for c in report.checks if c.status not in ("pass", "skip")}
    assert not flagged, flagged


@pytest.mark.parametrize("name", SLICE_FAULTS)
def test_slice_injected_fault_is_flagged_by_its_check(name):
    fault = _by_name(corpus.faults())[name]
    result = babysitter.check(**fault.build(0), device="cpu", select=[fault.check])[fault.check]
    assert result.status in ("warn", "fail"), result.summary


def test_slice_plain_loop_evidence_for_a_case_and_its_fault():
    rows = {r["name"]: r for r in __import__("corpus.plain", fromlist=["evidence"]).evidence("regression-relu")}
    assert rows["regression-relu-out"]["shows"], rows
