"""`babysit explain` and the README state the numbers the code uses: both come from, or are compared with, the
thresholds' defaults and the checks' constants."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from babysitter.checklist import CHECKLIST

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
#: `name` (value): a threshold named in the README with its default; the value may end in x or %, or be a/b
NAMED = re.compile(r"`(\w+)`\s+\(([0-9.e+-]+(?:/[0-9.]+)?)(x|%|th)?[);]")


def _section(check_id: str) -> str:
    """The README's section for a check: from its '### `id`' heading to the next heading."""
    match = re.search(rf"^### `{check_id}`\n(.*?)(?=^##)", README, flags=re.S | re.M)
    assert match, f"README has no section '### `{check_id}`'"
    return match.group(1)


def _number(text: str, unit: str) -> float:
    value = float(text.split("/")[0]) / float(text.split("/")[1]) if "/" in text else float(text)
    return value / 100 if unit == "%" else value


@pytest.mark.parametrize("cls", CHECKLIST, ids=lambda c: c.id)
def test_explain_fills_every_number_from_the_code(cls):
    doc = cls.doc()
    prose = doc.split("Thresholds (")[0]
    assert "{" not in prose and "}" not in prose, "an unfilled placeholder in the prose"
    for name, default, _ in cls.thresholds():
        assert f"{name} = {default!r}" in doc


@pytest.mark.parametrize("cls", CHECKLIST, ids=lambda c: c.id)
def test_the_readme_names_every_threshold_with_its_default(cls):
    section = _section(cls.id)
    named = {}
    for name, value, unit in NAMED.findall(section):
        named.setdefault(name, []).append(_number(value, unit))
    for name, default, _ in cls.thresholds():
        assert name in named, f"README's `{cls.id}` section does not name `{name}` with its default ({default})"
        for value in named[name]:
            assert value == pytest.approx(default, rel=1e-6), \
                f"README says `{name}` ({value}) but {cls.id} uses {default}"
