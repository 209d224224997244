"""Renderers: terminal, HTML, JSON and CSV views of a report. They compute nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..report import Report, write_atomic

FORMATS = ("json", "html", "csv")


def write_report(report: Report, directory: Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write report.json, report.html and one CSV per table into ``directory``, each atomically."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {FORMATS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        written["json"] = directory / "report.json"
        write_atomic(written["json"], report.to_json())
    if "csv" in formats:
        from .tables import write_csvs

        for path in write_csvs(report, directory):
            written.setdefault("csv", path)
    if "html" in formats:
        from .html import render

        written["html"] = directory / "report.html"
        write_atomic(written["html"], render(report))
    return written
