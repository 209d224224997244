"""CSV export of every table in a report, through pandas."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..report import Report, write_atomic


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
