"""Table cells for people (HTML, terminal) and the CSV export of every table in a report, through pandas.

People read numbers through ``babysitter.analysis.fmt``: a missing value is a dash, never ``None``; a dict
metric (``std_by_layer``) is ``name: value`` pairs, not JSON with 16 digits. CSV keeps the full values.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import fmt
from ..report import Report, write_atomic

#: what a missing value reads as
MISSING = "–"
#: the most items of a list or dict shown in one cell
CELL_ITEMS = 8


def cell(value: Any, sep: str = ", ") -> str:
    """One value as people read it; ``sep`` between the items of a dict (a newline for one per line)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt.num(value)
    if isinstance(value, dict):
        return _items([f"{k}: {cell(v, ', ')}" for k, v in value.items()], sep, "more")
    if isinstance(value, (list, tuple)):
        return _items([f"[{cell(v)}]" if isinstance(v, (list, tuple)) else cell(v) for v in value], ", ", "values")
    return str(value)


def _items(items: list[str], sep: str, more: str) -> str:
    if not items:
        return MISSING
    if len(items) <= CELL_ITEMS:
        return sep.join(items)
    rest = len(items) - CELL_ITEMS
    tail = f"… and {rest} more" if more == "more" else f"… ({len(items)} values)"
    return sep.join(items[:CELL_ITEMS] + [tail])


def frames(report: Report) -> dict[str, pd.DataFrame]:
    """Each table of each check as a DataFrame, keyed ``<check id>.<table id>``."""
    return {f"{c.id}.{t.id}": pd.DataFrame(list(t.rows), columns=list(t.columns))
            for c in report.checks for t in c.tables}


def write_csvs(report: Report, directory: Path) -> list[Path]:
    out = []
    for key, frame in frames(report).items():
        path = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".csv")
        write_atomic(path, frame.to_csv(index=False))
        out.append(path)
    return out
