"""The JUnit XML view (``babysit check --junit-xml PATH``): one testsuite per target, one testcase per check, in the
shape CI systems (GitHub Actions reporters, GitLab, Jenkins, Azure) display natively.

A check that failed is a ``<failure>``, one that crashed an ``<error>``, a skipped one ``<skipped>``; one that
warned passes, its summary and advice in ``<system-out>``, or is a ``<failure type="warn">`` under ``strict``. A
target that could not be loaded is a testsuite with one ``<error>`` testcase named ``load``.
"""
from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence, Union

from ..analysis.status import failing
from ..report import CheckResult, Report

#: characters XML 1.0 cannot hold (control characters other than tab, newline and carriage return)
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Unloaded:
    """A target that produced no report: ``kind`` is 'target error' or 'internal error'."""

    name: str
    kind: str
    message: str


Outcome = Union[Report, Unloaded]


def _text(value: object) -> str:
    return _ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _detail(check: CheckResult) -> str:
    return _text("\n".join([check.summary, *(f"→ {a}" for a in check.advice), *check.notes]))


def _testcase(suite: ET.Element, report: Report, check: CheckResult, strict: bool) -> str:
    """Append one check's testcase; which JUnit outcome it is (failure, error, skipped or '' for passed)."""
    case = ET.SubElement(suite, "testcase", classname=f"babysitter.{report.target}", name=check.id,
                         time=f"{check.duration_s:.3f}")
    if check.status == "error":
        ET.SubElement(case, "error", message=_text(check.summary), type="error").text = \
            _text(check.traceback or check.summary)
        return "error"
    if check.status == "skip":
        ET.SubElement(case, "skipped", message=_text(check.summary))
        return "skipped"
    if failing(check.status, strict=strict):
        ET.SubElement(case, "failure", message=_text(check.summary), type=check.status).text = _detail(check)
        return "failure"
    ET.SubElement(case, "system-out").text = (f"{check.status.upper()}: " if check.status != "pass" else "") + \
        _detail(check)
    return ""


def _report_suite(root: ET.Element, source: str, report: Report, strict: bool) -> dict[str, int]:
    run = report.run
    suite = ET.SubElement(root, "testsuite", name=report.target, timestamp=str(run.get("started", "")),
                          hostname=socket.gethostname())
    props = ET.SubElement(suite, "properties")
    facts = {"source": source, "status": report.status, **{k: run.get(k) for k in ("device", "seed", "torch",
                                                                                   "babysitter")}}
    for name, value in facts.items():
        if value is not None:
            ET.SubElement(props, "property", name=name, value=_text(value))
    kinds = [_testcase(suite, report, c, strict) for c in report.checks]
    counts = {"tests": len(kinds), "failures": kinds.count("failure"), "errors": kinds.count("error"),
              "skipped": kinds.count("skipped")}
    _set_counts(suite, counts, float(run.get("duration_s") or sum(c.duration_s for c in report.checks)))
    return counts


def _unloaded_suite(root: ET.Element, source: str, outcome: Unloaded) -> dict[str, int]:
    suite = ET.SubElement(root, "testsuite", name=outcome.name, hostname=socket.gethostname())
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="source", value=_text(source))
    case = ET.SubElement(suite, "testcase", classname=f"babysitter.{outcome.name}", name="load", time="0.000")
    first = (outcome.message.strip().splitlines() or [outcome.kind])[0]
    ET.SubElement(case, "error", message=_text(f"{outcome.kind}: {first}"), type=outcome.kind).text = \
        _text(outcome.message)
    counts = {"tests": 1, "failures": 0, "errors": 1, "skipped": 0}
    _set_counts(suite, counts, 0.0)
    return counts


def _set_counts(element: ET.Element, counts: dict[str, int], seconds: float) -> None:
    for key, n in counts.items():
        element.set(key, str(n))
    element.set("time", f"{seconds:.3f}")


def junit_xml(outcomes: Sequence[tuple[str, Outcome]], *, strict: bool = False) -> str:
    """The JUnit XML document for ``(source, report or Unloaded)`` pairs, one testsuite each, totals on the root."""
    root = ET.Element("testsuites", name="babysitter")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    seconds = 0.0
    for source, outcome in outcomes:
        if isinstance(outcome, Report):
            counts = _report_suite(root, source, outcome, strict)
            seconds += float(outcome.run.get("duration_s") or 0.0)
        else:
            counts = _unloaded_suite(root, source, outcome)
        totals = {k: totals[k] + counts[k] for k in totals}
    _set_counts(root, totals, seconds)
    ET.indent(root)  # readable in a CI log
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
