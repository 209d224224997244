"""Immutable results of checks, and the report that gathers them.

Everything here is JSON-native data (numbers, strings, lists of them) in frozen dataclasses, so a report
round-trips through JSON exactly. Renderers read these objects and compute nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .analysis.status import STATUSES, report_verdict

SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    """Convert numbers from torch/numpy and nested containers into JSON-native values.

    Non-finite floats become the strings "nan", "inf", "-inf" so the JSON stays standard.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return jsonable(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


@dataclass(frozen=True)
class Series:
    """One named line, set of bars or sample of values in a plot."""

    name: str
    x: tuple = ()
    y: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "x", tuple(jsonable(list(self.x))))
        object.__setattr__(self, "y", tuple(jsonable(list(self.y))))


@dataclass(frozen=True)
class Marker:
    """A vertical (axis='x') or horizontal (axis='y') reference line with a label."""

    label: str
    value: float
    axis: str = "x"


@dataclass(frozen=True)
class Plot:
    """Plot data for renderers. kind: 'line', 'scatter', 'bar' or 'hist' (y holds the sample; x is unused)."""

    id: str
    title: str
    kind: str
    series: tuple[Series, ...]
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    log_y: bool = False
    markers: tuple[Marker, ...] = ()
    bins: int = 40


@dataclass(frozen=True)
class Table:
    """A table of rows (each a tuple of JSON-native values) under named columns."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "rows", tuple(tuple(jsonable(list(r))) for r in self.rows))

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]


@dataclass(frozen=True)
class CheckResult:
    """What one checklist item concluded. ``status`` is one of pass, warn, fail, skip, error."""

    id: str
    status: str
    summary: str
    title: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    advice: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    plots: tuple[Plot, ...] = ()
    notes: tuple[str, ...] = ()
    traceback: str | None = None
    duration_s: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        object.__setattr__(self, "status", str(self.status))  # a Status enum is stored as its plain string
        object.__setattr__(self, "metrics", jsonable(dict(self.metrics)))
        object.__setattr__(self, "advice", tuple(self.advice))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "plots", tuple(self.plots))

    def replace(self, **changes) -> "CheckResult":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Report:
    """The checklist's results for one target, plus facts about the run.

    An interrupted run (Ctrl-C) has the status ``interrupted``; every selected check is still in ``checks``, those
    that did not run (or did not finish) as ``skip`` results whose summary starts "not run: interrupted", and
    their ids, in order, in ``not_run``.
    """

    target: str
    checks: tuple[CheckResult, ...]
    run: Mapping[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    not_run: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "checks", tuple(self.checks))
        object.__setattr__(self, "run", jsonable(dict(self.run)))
        object.__setattr__(self, "not_run", tuple(str(i) for i in self.not_run))

    @property
    def status(self) -> str:
        """pass, warn or fail from the checks (see analysis.status), or interrupted."""
        return report_verdict((c.status for c in self.checks), interrupted=self.interrupted)

    def __getitem__(self, check_id: str) -> CheckResult:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for c in self.checks:
            out[c.status] += 1
        return out

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "target": self.target,
            "interrupted": self.interrupted,
            "not_run": list(self.not_run),
            "counts": self.counts(),
            "run": dict(self.run),
            "checks": [jsonable(dataclasses.asdict(c)) for c in self.checks],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Report":
        checks = []
        for c in data["checks"]:
            c = dict(c)
            c["tables"] = tuple(Table(**t) for t in c.get("tables", ()))
            c["plots"] = tuple(_plot_from_dict(p) for p in c.get("plots", ()))
            c["advice"] = tuple(c.get("advice", ()))
            c["notes"] = tuple(c.get("notes", ()))
            checks.append(CheckResult(**c))
        return cls(target=data["target"], checks=tuple(checks), run=data.get("run", {}),
                   interrupted=bool(data.get("interrupted", False)), not_run=tuple(data.get("not_run", ())))

    @classmethod
    def from_json(cls, text: str) -> "Report":
        return cls.from_dict(json.loads(text))

    # -- files ------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, formats: Sequence[str] = ("json", "html", "csv")) -> dict[str, Path]:
        """Write the report into ``directory`` (created if needed); returns the written paths by format."""
        from .render import write_report

        return write_report(self, Path(directory), formats=formats)

    def __repr__(self) -> str:  # a short one: the dataclass default prints every series
        return f"Report(target={self.target!r}, status={self.status!r}, counts={self.counts()})"


def _plot_from_dict(p: Mapping) -> Plot:
    p = dict(p)
    p["series"] = tuple(Series(**s) for s in p.get("series", ()))
    p["markers"] = tuple(Marker(**m) for m in p.get("markers", ()))
    return Plot(**p)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new one, never half of it.

    The file gets the mode any new file gets (0666 less the umask: 0644 under the usual 022), not mkstemp's 0600,
    so that colleagues and CI artifact uploaders can read the report.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w",
                       **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, uniquely named file beside ``path``, created with mode 0666 so that the umask applies."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")
