"""`babysit explain`, docs/checks.md and the README state the numbers the code uses: the prose is filled from the
thresholds' defaults and the checks' constants, docs/checks.md is generated from it (tests/test_docs.py), and the
README's statements about the shared passes are compared with the constants here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from babysitter.checklist import CHECKLIST
from babysitter.evidence import TRAIN_WINDOW
from babysitter.passes.init_pass import INIT_BATCHES
from babysitter.passes.train_probe import TRAIN_STEPS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("cls", CHECKLIST, ids=lambda c: c.id)
def test_explain_fills_every_number_from_the_code(cls):
    doc = cls.doc()
    prose = doc.split("Thresholds (")[0]
    assert "{" not in prose and "}" not in prose, "an unfilled placeholder in the prose"
    for name, default, _ in cls.thresholds():
        assert f"{name} = {default!r}" in doc


def test_the_readme_lists_every_check_once_and_links_the_reference():
    section = README.split("\n## The checklist\n", 1)[1].split("\n## ", 1)[0]  # other tables name checks too
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert [r for r in rows if r in {c.id for c in CHECKLIST}] == [c.id for c in CHECKLIST]
    assert "docs/checks.md" in README


def test_the_readme_states_the_shared_passes_as_the_code_runs_them():
    flat = " ".join(README.split())
    batches = set(re.findall(r"\((\d+) batches, read by", flat)) | set(re.findall(r"the (\d+) batches at init", flat))
    steps = set(re.findall(r"\((\d+) steps, read by", flat)) | set(re.findall(r"the probe's (\d+) steps", flat))
    window = set(re.findall(r"the last (\d+) of the probe's", flat))
    assert batches == {str(INIT_BATCHES)} and steps == {str(TRAIN_STEPS)} and window == {str(TRAIN_WINDOW)}
