"""docs/checks.md is generated from the checks' own documentation and must match the code."""
from pathlib import Path

from babysitter.checklist import CHECKLIST
from babysitter.docs import markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "checks.md"


def test_the_reference_page_is_up_to_date():
    assert PAGE.read_text() == markdown(), "docs/checks.md is stale: run python -m babysitter.docs > docs/checks.md"


def test_every_check_and_threshold_is_on_the_page():
    page = markdown()
    for cls in CHECKLIST:
        assert f"## `{cls.id}`" in page
        for name, default, _ in cls.thresholds():
            assert f"| `{name}` | `{default!r}` |" in page
