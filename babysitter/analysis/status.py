"""The statuses of a check and of a report, with their order of severity (the one place that ranks them)."""
from __future__ import annotations

import enum
from typing import Iterable


class Status(str, enum.Enum):
    """What a check concluded. A ``str`` enum: ``Status.PASS == "pass"``, and it serialises as the string."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__  # equal to its string, so it hashes as its string (in sets and dict keys) on every Python

    @property
    def severity(self) -> int:
        """skip < pass < warn < error < fail: how a report's status is combined from its checks'."""
        return _SEVERITY[self]


_SEVERITY = {Status.SKIP: 0, Status.PASS: 1, Status.WARN: 2, Status.ERROR: 3, Status.FAIL: 4}

#: every status, in the order they are documented
STATUSES = tuple(s.value for s in Status)
#: the verdict levels a judgment climbs: index 0 pass, 1 warn, 2 fail
LEVELS = (Status.PASS, Status.WARN, Status.FAIL)


def worst(statuses: Iterable[str | Status], default: Status = Status.PASS) -> Status:
    """The most severe of ``statuses`` (``default`` when there is none)."""
    found = [Status(s) for s in statuses]
    return max(found, key=lambda s: s.severity) if found else default


def level(status: str | Status) -> int:
    """0 for pass, 1 for warn, 2 for fail (a skip or error counts as pass: it says nothing of the model)."""
    s = Status(status)
    return LEVELS.index(s) if s in LEVELS else 0


#: statuses a reader must look at: shown in the terminal without --verbose, opened in the HTML report
PROBLEMS = frozenset({Status.WARN, Status.FAIL, Status.ERROR})


def report_status(statuses: Iterable[str | Status]) -> Status:
    """A report's status (pass, warn or fail, as DESIGN.md): a check that errored counts as failed, since it
    could not clear the model; skipped checks count as passed."""
    found = worst(statuses)
    return Status.FAIL if found in (Status.FAIL, Status.ERROR) else Status.WARN if found is Status.WARN \
        else Status.PASS


#: a report's status when the run was interrupted (Ctrl-C): the checks that ran say nothing of those that did not
INTERRUPTED = "interrupted"
#: every status a report can have, in the order they are documented (a check's are ``STATUSES``)
REPORT_STATUSES = ("pass", "warn", "fail", INTERRUPTED)


def report_verdict(statuses: Iterable[str | Status], *, interrupted: bool = False) -> str:
    """A report's status as written in report.json: ``interrupted`` for an interrupted run, whatever its checks
    said, else :func:`report_status` of its checks."""
    return INTERRUPTED if interrupted else report_status(statuses).value


def failing(status: str | Status, *, strict: bool = False) -> bool:
    """Whether a check's status fails the run (exit code 1): fail and error, and warn under ``--strict``."""
    s = Status(status)
    return s in (Status.FAIL, Status.ERROR) or (strict and s is Status.WARN)
