"""The README's sample outputs come from examples/ in the repository: the statuses it shows are what the checks say."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import babysitter
from babysitter.target import TargetRef, load

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_statuses(target: str) -> dict[str, str]:
    """check id -> status in the README's sample output for ``target``."""
    block = README.split(f"checking {target} (")[1].split("```")[0]
    return {cid: status.lower() for status, cid in re.findall(r"^[✓✗!E\-] (PASS|FAIL|WARN|SKIP|ERROR)\s+(\w+)",
                                                                   block, flags=re.M)}


@pytest.mark.parametrize("name, select", [
    ("my_model", None),  # the whole checklist: a second or two on 2 cores
    ("faulty_model", None),  # the whole checklist too: its overfit probe stops early on a loss that cannot fall
])
def test_the_readme_shows_what_the_example_gives(name, select):
    shown = _readme_statuses(name)
    assert len(shown) == 11, shown
    target = load(TargetRef(str(ROOT / "examples" / f"{name}.py"), "babysit", True))
    report = babysitter.check(**{f: getattr(target, f) for f in ("model", "data", "loss_fn", "optimizer")},
                              device="cpu", select=select)
    for c in report.checks:
        assert c.status == shown[c.id], f"{name} {c.id}: README shows {shown[c.id]}, the check says {c.status}"
