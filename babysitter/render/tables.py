"""Table cells for people (HTML, terminal) and the CSV export of every table in a report.

People read numbers through ``babysitter.analysis.fmt``: a missing value is a dash, never ``None``; a dict
metric (``std_by_layer``) is ``name: value`` pairs, not JSON with 16 digits. CSV keeps the full values, written
by the standard library's csv module: pandas, which wrote them before, took 0.3 s to import for a few small tables
(and wrote whole numbers of a column with a missing value as 3.0).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from ..analysis import fmt
from ..report import Report, Table, write_atomic

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


def to_csv(table: Table) -> str:
    """The table as CSV: a header row, then one row per row; a missing value is an empty field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return buf.getvalue()


def write_csvs(report: Report, directory: Path) -> list[Path]:
    """One ``<check id>.<table id>.csv`` per table of each check."""
    out = []
    for c in report.checks:
        for t in c.tables:
            path = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.id}.{t.id}") + ".csv")
            write_atomic(path, to_csv(t))
            out.append(path)
    return out
