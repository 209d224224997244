"""The architecture's rules, as tests: who may import whom, short functions, one evidence table, frozen evidence."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import zoo
from babysitter.evidence import INSTRUMENTS, PROVIDERS
from babysitter.session import Session
from babysitter.target import Target

PACKAGE = Path(__file__).resolve().parents[1] / "babysitter"
#: functions allowed over MAX_LINES lines, with the reason (the closing note of issue 11 names them too)
LONG_FUNCTIONS: dict[str, str] = {}
MAX_LINES = 40


def _imports(path: Path) -> list[str]:
    """The babysitter modules a file imports, as absolute dotted names (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p) if node.level else node.module or ""
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("babysitter")]


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


def test_no_checklist_module_imports_another():
    checks = {p.stem for p in _modules("checklist")} - {"__init__", "base"}
    for path in _modules("checklist"):
        if path.stem == "__init__":
            continue
        others = {m.split(".")[2] for m in _imports(path) if m.startswith("babysitter.checklist.")
                  and len(m.split(".")) > 2} & checks
        assert not others - {path.stem}, f"{path.name} imports the check(s) {sorted(others - {path.stem})}"


def test_instruments_import_nothing_above_the_hook_layer():
    for path in _modules("instruments"):
        above = [m for m in _imports(path) if not m.startswith("babysitter.instruments")]
        assert not above, f"instruments/{path.name} imports {above}: instruments must ride in any loop"


def test_the_analysis_layer_knows_no_session():
    allowed = ("babysitter.analysis", "babysitter.instruments")
    for path in _modules("analysis"):
        bad = [m for m in _imports(path) if not m.startswith(allowed)]
        assert not bad, f"analysis/{path.name} imports {bad}: the analysis layer is pure"


def _function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str)
            start = body[1].lineno if docstring and len(body) > 1 else first.lineno
            yield f"{path.relative_to(PACKAGE.parent)}:{node.name}", node.end_lineno - start + 1


def test_no_function_is_longer_than_the_limit():
    long = {name: n for path in sorted(PACKAGE.rglob("*.py")) for name, n in _function_lengths(path)
            if n > MAX_LINES and name not in LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_LINES} lines (docstring excluded): {long}"


def test_every_pass_with_instruments_is_a_provider():
    assert set(INSTRUMENTS) <= set(PROVIDERS)
    assert {"init_pass", "train_probe", "lr_sweep", "lr_reading", "loss_facts", "call_order"} <= set(PROVIDERS)


def _target(**kw) -> Target:
    fields = {**zoo.mlp_target(), **kw}
    return Target(**fields)


def test_evidence_is_frozen_and_computed_once(monkeypatch):
    calls = {}
    table = dict(PROVIDERS)

    def counting(name):
        def provider(session):
            calls[name] = calls.get(name, 0) + 1
            return table[name](session)
        return provider

    monkeypatch.setattr("babysitter.evidence.PROVIDERS", {n: counting(n) for n in table})
    fast = {"lr_range": {"steps": 20, "repeats": 2}}
    with Session(_target(), device="cpu", options=fast) as session:
        values = {name: session.evidence(name) for name in table}
        again = {name: session.evidence(name) for name in table}
    assert calls == {name: 1 for name in table}
    assert all(values[n] is again[n] for n in table)
    for name, value in values.items():
        if dataclasses.is_dataclass(value):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(value, dataclasses.fields(value)[0].name, None)
    assert values["call_order"][0] == ""  # the model itself is called first
    assert values["loss_facts"].model.family == "ce" and values["loss_facts"].batch_factor == 1


def test_a_provider_that_raises_raises_for_every_reader_without_running_again(monkeypatch):
    calls = []

    def broken(session):
        calls.append(1)
        raise RuntimeError("the pass broke")

    monkeypatch.setitem(PROVIDERS, "call_order", broken)
    with Session(_target(), device="cpu") as session:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="the pass broke"):
                session.evidence("call_order")
    assert calls == [1]


def test_lr_range_options_reach_the_shared_reading():
    """overfit_batch reads the same lr_reading as lr_range: an option given to lr_range changes that reading."""
    fast = {"steps": 30, "repeats": 2}
    readings = []
    for band in (0.1, 0.9):
        with Session(_target(), device="cpu", options={"lr_range": {**fast, "band": band}}) as session:
            assert session.evidence("lr_sweep").runs[0].taken <= 30
            readings.append(session.evidence("lr_reading"))
    narrow, wide = readings
    assert narrow.lr_high is not None and wide.lr_high > narrow.lr_high


def test_a_loss_summed_over_the_batch_is_one_fact():
    target = _target(loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"))
    with Session(target, device="cpu") as session:
        facts = session.evidence("loss_facts")
    assert facts.summed and facts.batch_factor == 64 and facts.scale == pytest.approx(64, rel=1e-4)
