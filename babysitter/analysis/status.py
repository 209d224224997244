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
