"""babysitter in a test suite: ``assert_healthy(report)`` fails a test with the terminal's summary of the checks
that fail, in any test runner::

    from babysitter.testing import assert_healthy

    def test_the_model_is_ready_to_train():
        report = babysitter.check(model, (X, y), loss_fn=nn.CrossEntropyLoss(), select=["initial_loss"])
        assert_healthy(report)                   # warnings pass; allow_warn=False fails on them too

The pytest plugin (``pytest --babysit``) fails its items with the same message.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

from .analysis.status import failing

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report

ReportLike = Union["Report", Mapping[str, Any], str, "os.PathLike[str]"]


class BabysitterWarning(UserWarning):
    """A check warned: the pytest plugin issues one per warning check, so that pytest lists them in its warnings
    summary (``-W error::babysitter.testing.BabysitterWarning`` turns them into failures)."""


class UnhealthyReport(AssertionError):
    """The checks of ``report`` fail the run; the message is the terminal's summary of those checks."""

    def __init__(self, message: str, report: "Report"):
        super().__init__(message)
        self.report = report


def as_report(report: ReportLike) -> "Report":
    """A :class:`~babysitter.Report` from a report, its JSON as a dict, or the path of a ``report.json`` (or of the
    folder that holds one)."""
    from .report import Report

    if isinstance(report, Report):
        return report
    if isinstance(report, Mapping):
        return Report.from_dict(report)
    if isinstance(report, (str, os.PathLike)):
        path = Path(report)
        path = path / "report.json" if path.is_dir() else path
        return Report.from_dict(json.loads(path.read_text(encoding="utf-8")))
    raise TypeError(f"assert_healthy takes a Report, its JSON as a dict or the path of report.json, "
                    f"not {type(report).__name__}")


def problems(report: "Report", *, allow_warn: bool = True) -> list[str]:
    """The ids of the checks that make ``report`` unhealthy: failed and crashed ones, warned ones too unless
    ``allow_warn``; ``["interrupted"]`` for an interrupted run."""
    bad = [c.id for c in report.checks if failing(c.status, strict=not allow_warn)]
    return ["interrupted", *bad] if report.interrupted else bad


def assert_healthy(report: ReportLike, *, allow_warn: bool = True) -> "Report":
    """Fail (``AssertionError``) unless no check of ``report`` failed or crashed (nor warned, when ``allow_warn``
    is False) and the run finished; the message is the terminal's summary of the checks at fault, with their
    advice. Returns the report, for further assertions on its metrics."""
    __tracebackhide__ = True  # pytest shows the test's line, not this one
    from .render.terminal import failure_summary

    report = as_report(report)
    if problems(report, allow_warn=allow_warn):
        raise UnhealthyReport(failure_summary(report, strict=not allow_warn), report)
    return report
