"""The base class of checklist items.

Each item is a dataclass whose fields are its thresholds (documented with ``threshold(default, doc)``),
with a stable ``id``, a ``title``, its documentation in fixed sections, the evidence it needs, and
``run(session) -> CheckResult``. Checks never print or draw: plots are series for the renderers.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, ClassVar

from ..errors import SkipCheck
from ..report import CheckResult


def threshold(default: Any, doc: str) -> Any:
    """A documented, configurable threshold of a check (a dataclass field with its reason)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


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
    #: evidence providers (see babysitter.evidence) that the check reads
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, session) -> CheckResult:  # pragma: no cover - every item overrides it
        raise NotImplementedError

    # -- helpers for items ------------------------------------------------------------------------
    def result(self, status: str, summary: str, **fields) -> CheckResult:
        return CheckResult(id=self.id, title=self.title, status=status, summary=summary, **fields)

    @staticmethod
    def skip(reason: str):
        raise SkipCheck(reason)

    @classmethod
    def thresholds(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]

    @classmethod
    def doc(cls) -> str:
        """The check's documentation as plain text (``babysit explain ID``)."""
        out = [f"{cls.id}: {cls.title}", ""]
        for head, body in (("What it checks", cls.what), ("Why it matters", cls.why), ("What to do", cls.todo)):
            out += [head, textwrap.indent(textwrap.fill(" ".join(body.split()), 96), "  "), ""]
        rows = cls.thresholds()
        if rows:
            out.append("Thresholds (keyword arguments; babysitter.check(..., options={id: {name: value}}))")
            for name, default, doc in rows:
                out.append(f"  {name} = {default!r}")
                if doc:
                    out.append(textwrap.indent(textwrap.fill(doc, 92), "      "))
            out.append("")
        if cls.sources:
            out.append("Sources")
            out += [f"  - {s}" for s in cls.sources]
        return "\n".join(out).rstrip() + "\n"
