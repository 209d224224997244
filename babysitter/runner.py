"""The runner: selects checks, runs each in isolation inside the session, and gathers the report."""
from __future__ import annotations

import datetime as _dt
import numbers
import platform
import time
import traceback
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from . import __version__
from .checklist import CHECKLIST
from .checklist.base import Check
from .errors import OptionError, SkipCheck, value_words
from .memory import out_of_memory, release_memory
from .report import CheckResult, Report
from .session import Session
from .target import Target

ProgressFn = Callable[[str, str, Optional[CheckResult]], None]  # (event, check id, result)


def select_checks(select: Optional[Iterable[str]] = None, ignore: Optional[Iterable[str]] = None,
                  options: Optional[Mapping[str, Mapping]] = None) -> list[Check]:
    """Instantiate the checklist in order, filtered by id, with per-check threshold overrides."""
    select = check_ids(select, "--select")
    ignore = check_ids(ignore, "--ignore")
    options = validate_options(options)
    return [cls(**options.get(cls.id, {})) for cls in CHECKLIST
            if not (select and cls.id not in select) and cls.id not in ignore]


def check_ids(values: Optional[Iterable[str]], flag: str) -> set[str]:
    """The check ids of a ``--select``/``--ignore`` value (strings, each a comma list); an unknown one is an
    :class:`OptionError`."""
    known = [c.id for c in CHECKLIST]
    out = set()
    for v in values or ():
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in known:
                reason = f"unknown check id {part!r}; the checks are: {', '.join(known)}"
                raise OptionError(f"{flag}: {reason}", key=flag.lstrip("-"), value=part, reason=reason)
            out.add(part)
    return out


def validate_options(options: Optional[Mapping[str, Mapping]]) -> dict[str, dict]:
    """The per-check thresholds ``{check id: {name: value}}``, checked against the checklist (the ids, the names
    ``babysit explain`` shows, the type of each default) and converted (an int given for a float threshold becomes
    a float); anything else is an :class:`OptionError` naming the id, the name and the value."""
    known = {c.id: c for c in CHECKLIST}
    out: dict[str, dict] = {}
    for cid, given in dict(options or {}).items():
        if cid not in known:
            reason = f"unknown check id {cid!r}; the checks are: {', '.join(known)}"
            raise OptionError(f"options: {reason}", key=str(cid), value=given, reason=reason)
        if not isinstance(given, Mapping):
            reason = f"the thresholds of {cid} are a mapping {{name: value}}, not {type(given).__name__}"
            raise OptionError(f"options[{cid!r}]: {reason}", key=cid, value=given, reason=reason)
        out[cid] = {name: threshold_value(known[cid], name, value) for name, value in given.items()}
    return out


def threshold_value(cls: type[Check], name: str, value: Any) -> Any:
    """``value`` as the threshold ``name`` of the check ``cls`` takes it: a bool for a bool default, an integer for
    an int default, a number (not NaN) for a float default, else the default's type."""
    defaults = {n: d for n, d, _ in cls.thresholds()}
    if name not in defaults:
        reason = f"unknown threshold {name!r}; {cls.id} takes: {', '.join(sorted(defaults)) or 'none'}"
        raise OptionError(f"options[{cls.id!r}]: {reason}", key=f"{cls.id}.{name}", value=value, reason=reason)
    default = defaults[name]
    kind, ok = _kind_of(default, value)
    if not ok:
        reason = f"{cls.id}'s threshold {name} takes {kind} (default {default!r}), not {value_words(value)}"
        raise OptionError(f"options[{cls.id!r}][{name!r}]: {reason}", key=f"{cls.id}.{name}", value=value,
                          reason=reason)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    return value


def _kind_of(default: Any, value: Any) -> tuple[str, bool]:
    """What a threshold with this default takes, in words, and whether ``value`` is one."""
    if default is None:
        return "any value", True
    if isinstance(default, bool):
        return "true or false", isinstance(value, bool)
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, int):
        return "an integer", number and isinstance(value, numbers.Integral)
    if isinstance(default, float):
        return "a number", number and value == value  # NaN is not a threshold: every comparison with it is false
    return f"a {type(default).__name__}", isinstance(value, type(default))


def warning_notes(records: list) -> tuple[str, ...]:
    """The warnings a check saw (the model's, the loss's, torch's), each once with its count, as a note."""
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r.category.__name__, " ".join(str(r.message).split()))
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ()
    items = [f"{cat}: {msg}" + (f" (x{n})" if n > 1 else "") for (cat, msg), n in counts.items()]
    return (f"warnings raised while this check ran: {'; '.join(items[:8])}"
            + (f"; and {len(items) - 8} more" if len(items) > 8 else ""),)


def run_check(check: Check, session: Session) -> CheckResult:
    """Run one check; a crash becomes status 'error' with its traceback, a SkipCheck becomes 'skip'. Warnings raised
    while it runs (the model's, the loss's, torch's) are kept in its notes, each once with its count; the user's
    warning filters are as they were after it."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = _run_check(check, session)
    notes = warning_notes(seen)
    return result.replace(notes=tuple(result.notes) + notes) if notes else result


def _run_check(check: Check, session: Session) -> CheckResult:
    t0 = time.perf_counter()
    oom = False
    try:
        result = check.run(session)
        if not isinstance(result, CheckResult):
            raise TypeError(f"{type(check).__name__}.run returned {type(result).__name__}, not a CheckResult")
    except SkipCheck as skip:
        result = check.result("skip", skip.reason)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        oom = out_of_memory(exc)
        if oom:  # not a bug of ours nor of the target: the check did not fit beside the model
            result = check.result("skip", f"out of memory: {_first_line(exc)}; the check's memory was released "
                                          f"and your state restored")
        else:
            result = check.result("error", f"the check crashed: {type(exc).__name__}: {exc}",
                                  traceback=traceback.format_exc())
    finally:
        if oom:  # the exception and its frames are gone: what they held can be handed back before the reset
            release_memory()
        session.reset()  # a check that trained leaves nothing behind for the next one
    return result.replace(duration_s=round(time.perf_counter() - t0, 4))


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (CUDA's goes on about the allocator's settings)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_target(target: Target, *, device: str = "auto", seed: int = 0, select=None, ignore=None,
               options: Optional[Mapping[str, Mapping]] = None, where: Optional[str] = None,
               progress: Optional[ProgressFn] = None, max_batches: Optional[int] = None,
               extra: Sequence[type[Check]] = (), ranks: Any = None) -> Report:
    """Check one target and return its report. Ctrl-C, at any point of the run, returns a partial report with the
    status ``interrupted``: the checks that did not run are there as ``skip`` "not run: interrupted", and listed
    in ``not_run``; the model and every RNG are as they were found. Under torchrun, ``ranks`` (a
    :class:`babysitter.distributed.Ranks`) keeps every rank's passes in step: see that class."""
    options = validate_options(options)
    checks = select_checks(select, ignore, options) + [cls() for cls in extra]  # extra: the distributed checks
    started = _dt.datetime.now(_dt.timezone.utc)
    kwargs = {} if max_batches is None else {"max_batches": max_batches}
    session = Session(target, device=device, seed=seed, where=where, options=options, guard_memory=True,
                      ranks=ranks, **kwargs)
    t0 = time.perf_counter()
    results, running = _run_checks(checks, session, progress)
    interrupted = len(results) < len(checks)
    not_run = [_not_run(c, while_running=c is running) for c in checks[len(results):]]
    run = {
        "babysitter": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(session.device),
        "seed": seed,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 3),
        "timings_s": {k: round(v, 4) for k, v in session.timings.items()},
        "selected": [c.id for c in checks],
        **session.facts,
        **session.ranks.agreement({r.id: (r.status, r.summary) for r in results}, session.facts.get("batch_size")),
    }
    return Report(target=target.name or "target", checks=tuple(results) + tuple(not_run), run=run,
                  interrupted=interrupted, not_run=tuple(r.id for r in not_run))


def _run_checks(checks: Sequence[Check], session: Session,
                progress: Optional[ProgressFn]) -> tuple[list[CheckResult], Optional[Check]]:
    """The results of the checks in order, inside the session; on Ctrl-C, those that finished and the check that
    was running (None if none was). The session has put everything back by the time this returns."""
    results: list[CheckResult] = []
    running: Optional[Check] = None
    try:
        with session:
            for check in checks:
                running = check
                if progress:
                    progress("start", check.id, None)
                result = run_check(check, session)
                results.append(result)
                running = None
                if progress:
                    progress("done", check.id, result)
    except KeyboardInterrupt:
        pass
    return results, running


def _not_run(check: Check, *, while_running: bool) -> CheckResult:
    return check.result("skip", "not run: interrupted while it ran" if while_running else "not run: interrupted")
