"""Exit codes and the exceptions that map onto them (pytest's convention)."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of ``babysit``; scripts rely on these numbers."""

    OK = 0  #: no check failed
    CHECKS_FAILED = 1  #: at least one check failed (or warned, under ``--strict``)
    INTERRUPTED = 2  #: Ctrl-C; a partial report was written
    INTERNAL_ERROR = 3  #: a bug of ours
    USAGE_ERROR = 4  #: bad command line or unusable target
    NO_TARGETS = 5  #: nothing to check was found


_KINDS = {bool: "boolean", str: "string", int: "integer", float: "number", list: "list", tuple: "list",
          dict: "table"}


def kind_words(value: object) -> str:
    """A value's kind as a message names it: ``a string``, ``an integer``, ``a table``."""
    kind = _KINDS.get(type(value), type(value).__name__)
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def value_words(value: object) -> str:
    """A value with its kind, as an error message names it: ``the string 'fast'``, ``the number 0.5``."""
    kind = _KINDS.get(type(value))
    return f"the {kind} {value!r}" if kind else f"{kind_words(value)} {value!r}"


class BabysitterError(Exception):
    """Base class of errors that carry their exit code and a message meant for a user."""

    exit_code = ExitCode.INTERNAL_ERROR


class UsageError(BabysitterError):
    """The command line or an argument of the Python API is wrong."""

    exit_code = ExitCode.USAGE_ERROR


class OptionError(UsageError):
    """A check id, a threshold name or a threshold value the checklist does not take. ``key`` says where it was
    given (``select``, ``lr_range``, ``lr_range.steps``), ``value`` what was given and ``reason`` what is wrong
    with it, so that a caller (the configuration file, the command line) can name them in its own terms."""

    def __init__(self, message: str, *, key: str, value: object, reason: str):
        super().__init__(message)
        self.key = key
        self.value = value
        self.reason = reason


class TargetError(BabysitterError):
    """A target cannot be loaded or is unusable: names the file, the field and the value."""

    exit_code = ExitCode.USAGE_ERROR

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None, hint: str | None = None):
        self.where = where
        self.field = field
        self.hint = hint
        self.message = message
        parts = []
        if where:
            parts.append(f"{where}: ")
        if field:
            parts.append(f"field '{field}': ")
        parts.append(message)
        if hint:
            parts.append(f"\n  hint: {hint}")
        super().__init__("".join(parts))


class NoTargetsError(BabysitterError):
    """Discovery found nothing to check."""

    exit_code = ExitCode.NO_TARGETS


class SkipCheck(BaseException):
    """Raised inside a check to skip it with a reason.

    Derives from ``BaseException`` (as pytest's ``skip`` does) so that a broad ``except Exception``
    in a check cannot swallow it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
