"""The base class of checklist items.

Each item is a dataclass whose fields are its thresholds (documented with ``threshold(default, doc)``), with a
stable ``id``, a ``title`` and its documentation in fixed sections. An item reads as three steps:

- ``measure(session)`` touches the model (through the session's evidence or passes of its own) and returns
  plain measured data;
- ``judge(measured)`` is a pure function of that data and the thresholds: a :class:`Judgment` (status,
  summary, advice), testable in a few lines on synthetic data without any model;
- ``present(measured, judgment)`` builds the :class:`CheckResult` with its metrics, tables and plots.

Checks never print or draw: plots are series for the renderers. No check imports another check: what several
need lives in ``babysitter.analysis`` (pure) or in the session's evidence.
"""
from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from ..analysis.activations import ActivationResult
from ..analysis.status import Status
from ..errors import SkipCheck
from ..report import CheckResult


def threshold(default: Any, doc: str) -> Any:
    """A documented, configurable threshold of a check (a dataclass field with its reason)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Judgment:
    """What a check concluded from its measurements: a status, a one-line summary and advice."""

    status: Status
    summary: str
    advice: tuple[str, ...] = ()


@dataclasses.dataclass
class Check:
    id: ClassVar[str]
    title: ClassVar[str]
    #: what it checks
    what: ClassVar[str]
    #: why it matters
    why: ClassVar[str]
    #: what to do when it fails
    todo: ClassVar[str]
    #: where the thresholds come from
    sources: ClassVar[tuple[str, ...]] = ()
    #: constants (of the passes, the instruments) that the prose names as ``{placeholders}``, beside the thresholds
    constants: ClassVar[Mapping[str, Any]] = {}

    def run(self, session) -> CheckResult:
        """Measure, judge, present."""
        measured = self.measure(session)
        return self.present(measured, self.judge(measured))

    def measure(self, session) -> Any:  # pragma: no cover - every item overrides it
        raise NotImplementedError

    def judge(self, measured: Any) -> Judgment:  # pragma: no cover - every item overrides it
        raise NotImplementedError

    def present(self, measured: Any, judgment: Judgment) -> CheckResult:  # pragma: no cover
        raise NotImplementedError

    # -- helpers for items ------------------------------------------------------------------------
    def result(self, status: str, summary: str, **fields) -> CheckResult:
        return CheckResult(id=self.id, title=self.title, status=str(status), summary=summary, **fields)

    @staticmethod
    def skip(reason: str):
        raise SkipCheck(reason)

    @staticmethod
    def activations(session, which: str) -> tuple[Optional[ActivationResult], str]:
        """The activation statistics of the shared pass ``which`` ('init_pass' or 'train_probe'), and '' or, when
        that pass crashed, why they are missing (the checks that need the pass itself report its error)."""
        try:
            return session.evidence(which).instruments.get("activations"), ""
        except Exception as exc:  # the pass's own failure is reported by the checks that need it
            return None, f"{type(exc).__name__}: {exc}"

    @classmethod
    def thresholds(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]

    @classmethod
    def prose(cls, text: str) -> str:
        """A documentation text with its ``{placeholders}`` filled from the thresholds' defaults and ``constants``:
        the numbers that ``babysit explain`` states are the ones the code uses."""
        values = {**cls.constants, **{name: default for name, default, _ in cls.thresholds()}}
        return " ".join(text.split()).format(**values)

    @classmethod
    def doc(cls, width: Optional[int] = None) -> str:
        """The check's documentation as plain text (``babysit explain ID``), its paragraphs filled to ``width``
        columns (the console's width); by default to 98, with the sources one line each."""
        fill = width or 98
        out = [f"{cls.id}: {cls.title}", ""]
        for head, body in (("What it checks", cls.what), ("Why it matters", cls.why), ("What to do", cls.todo)):
            out += [head, textwrap.indent(textwrap.fill(cls.prose(body), fill - 2), "  "), ""]
        rows = cls.thresholds()
        if rows:
            head = ("Thresholds (babysitter.check(..., options={id: {name: value}}), [tool.babysitter.checks.<id>] "
                    "in pyproject.toml, or babysit check -o <id>.<name>=<value>)")
            out.append(textwrap.fill(head, fill, subsequent_indent="  "))
            for name, default, doc in rows:
                out.append(f"  {name} = {default!r}")
                if doc:
                    out.append(textwrap.indent(textwrap.fill(doc, fill - 6), "      "))
            out.append("")
        if cls.sources:
            out.append("Sources")
            out += [textwrap.fill(s, width, initial_indent="  - ", subsequent_indent="    ", break_long_words=False,
                                  break_on_hyphens=False) if width else f"  - {s}" for s in cls.sources]
        return "\n".join(out).rstrip() + "\n"
