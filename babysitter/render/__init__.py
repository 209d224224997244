"""Renderers: terminal, HTML, JSON and CSV views of a report. They compute nothing."""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterator, Sequence

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
    with gc_paused():
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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the report is written (as it was, after). The process that
    writes it still holds the whole run (torch, the target, the evidence: 360k objects for a small MLP), and
    building the page's strings allocates enough to start full collections that walk all of them. What the report
    leaves behind is collected once the collector is back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
