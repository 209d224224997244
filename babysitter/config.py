"""``[tool.babysitter]`` in pyproject.toml: found from a folder upward, validated, and merged with the command line.

The closest ``pyproject.toml`` that holds a ``[tool.babysitter]`` table wins; one without the table is passed over
and the search goes on upward, as ruff and pytest do. Paths in the table (``targets``, ``out``) resolve against the
file's folder, so ``babysit check`` checks the same targets from anywhere in the project. A flag overrides the file,
which overrides the defaults, and :class:`Settings` keeps where each value came from (``--show-config``).

This module imports no torch: the pytest plugin reads the table in every pytest run of a project where babysitter
is installed. Check ids and thresholds are checked by the runner's own validation (which imports the checklist)
only when some are given.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import OptionError, UsageError, kind_words

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10 read TOML with tomli, a dependency there
    import tomli as tomllib

FILE = "pyproject.toml"
TABLE = "tool.babysitter"
#: the subtable of per-check thresholds: ``[tool.babysitter.checks.lr_range]``
CHECKS = "checks"
#: where a value came from when neither the file nor a flag gave it
DEFAULT = "default"
#: device types ``device`` and ``--device`` accept besides ``auto`` (with an index: ``cuda:1``)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
#: the folder discovered when no target is named (target.DEFAULT_DIR; not imported: that module imports torch)
DEFAULT_TARGETS = "checks"


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Key:
    """A key of ``[tool.babysitter]``: its default, what it takes (in words and as a test) and what it does."""

    name: str
    default: Any
    kind: str
    accepts: Callable[[Any], bool]
    doc: str


KEYS: tuple[Key, ...] = (
    Key("targets", [], "a list of non-empty strings", _is_strings,
        "files, FILE.py:func, package.module:func or folders to check, relative to the file's folder "
        "(default: checks/ there)"),
    Key("select", [], "a list of check ids", _is_strings, "only these check ids (default: all)"),
    Key("ignore", [], "a list of check ids", _is_strings, "leave out these check ids"),
    Key("out", "reports", "a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()),
        "where reports go, one folder per target, relative to the file's folder"),
    Key("seed", 0, "an integer", _is_int, "the seed of every random choice of the checks"),
    Key("device", "auto", "a string", lambda v: isinstance(v, str), "auto (CUDA when available), cpu, cuda, cuda:N, "
        "mps or xpu"),
    Key("strict", False, "true or false", lambda v: isinstance(v, bool), "a warning fails the run (exit 1)"),
    Key("report", True, "true or false", lambda v: isinstance(v, bool),
        "write report.json, report.html and the CSVs (false: as --no-report)"),
    Key("pytest", False, "true or false", lambda v: isinstance(v, bool),
        "pytest collects the targets as test items in every run (as pytest --babysit)"),
    Key("watch", 0, "a non-negative integer", lambda v: _is_int(v) and v >= 0,
        "after the checklist, train each target this many steps under the watcher (its data, loss, optimizer "
        "and step) and write that report to OUT/TARGET/watch (0: no watch)"),
)
KEY_NAMES = tuple(k.name for k in KEYS)
_BY_NAME = {k.name: k for k in KEYS}


@dataclass(frozen=True)
class Settings:
    """What ``babysit check`` (or the pytest plugin) runs with, and where each value came from.

    ``targets`` are specs as given, resolved against ``targets_root`` (the file's folder for the file's targets and
    for the default ``checks/`` when a file was found, else the current folder); ``out`` is already resolved.
    ``sources`` maps each key, and each threshold as ``checks.ID.NAME``, to ``default``, the file or the flag;
    ``searched_from`` is the folder the search for the file started from (None with ``--no-config``).
    """

    targets: tuple[str, ...]
    targets_root: Path
    select: tuple[str, ...]
    ignore: tuple[str, ...]
    out: str
    seed: int
    device: str
    strict: bool
    report: bool
    pytest: bool
    watch: int = 0
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    file: Optional[Path] = None
    searched_from: Optional[Path] = None
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Flag:
    """A value given on the command line: ``Flag(3, "--seed")``."""

    value: Any
    flag: str


def shown(path: Path) -> str:
    """A path as people read it: relative to the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_device(value: str) -> str:
    """``device``/``--device``: auto, or a device type this tool runs on (``cuda:1``); else a ValueError naming it."""
    if value == "auto" or re.fullmatch(rf"(?:{'|'.join(DEVICE_TYPES)})(?::\d+)?", value):
        return value
    raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")


# -- finding and reading the file ---------------------------------------------------------------------------------
def read_toml(path: Path) -> dict:
    """A TOML file's content; a file that cannot be read or parsed is a usage error naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{shown(path)}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{shown(path)}: cannot be read: {exc.strerror or exc}") from None


def table_of(data: Mapping) -> Optional[Any]:
    """The ``[tool.babysitter]`` table of a parsed pyproject.toml, or None when it has none."""
    tool = data.get("tool")
    return tool.get("babysitter") if isinstance(tool, Mapping) else None


def find(start: Path, *, strict: bool = True) -> Optional[tuple[Path, Any]]:
    """The closest pyproject.toml at or above ``start`` that has a ``[tool.babysitter]`` table, with the table;
    files without one are passed over (the search goes on upward). None when there is none up to the root. A file
    that is not valid TOML is a usage error, or passed over too when not ``strict``."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        path = folder / FILE
        if path.is_file():
            try:
                table = table_of(read_toml(path))
            except UsageError:
                if strict:
                    raise
                continue
            if table is not None:
                return path, table
    return None


def read(path: Path) -> tuple[Path, Any]:
    """``--config FILE``: that file's ``[tool.babysitter]`` table (an empty one when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: no such file: {path}")
    table = table_of(read_toml(path))
    return path.resolve(), {} if table is None else table


def pytest_enabled(start: Path) -> bool:
    """Whether the closest ``[tool.babysitter]`` table asks pytest to collect the targets (``pytest = true``). Read
    in every pytest run where the plugin is installed, so it passes over files it cannot parse (pytest, or
    ``babysit check``, says what is wrong with them) and judges only its own key."""
    found = find(start, strict=False)
    if found is None or not isinstance(found[1], Mapping):
        return False
    path, table = found
    value = table.get("pytest", False)
    if not isinstance(value, bool):
        raise _bad(path, TABLE, "pytest", value, f"takes true or false, not {kind_words(value)}")
    return value


# -- validating -----------------------------------------------------------------------------------------------------
def _toml(value: Any) -> str:
    """A value as it reads in TOML (strings in double quotes, true/false), for messages."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _bad(path: Path, table: str, key: str, value: Any, reason: str) -> UsageError:
    return UsageError(f"{shown(path)}: [{table}] {key} = {_toml(value)}: {reason}")


def _unknown_key(path: Path, key: str, value: Any) -> UsageError:
    import difflib

    close = difflib.get_close_matches(key, (*KEY_NAMES, CHECKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _bad(path, TABLE, key, value, f"unknown key{hint}; the keys are: {', '.join((*KEY_NAMES, CHECKS))}")


def from_table(table: Any, path: Path) -> tuple[dict[str, Any], dict[str, dict]]:
    """The keys and the thresholds of a ``[tool.babysitter]`` table, each checked: an unknown key, a value of the
    wrong type, an unknown check id or threshold is a usage error naming the file, the table, the key and the
    value."""
    if not isinstance(table, Mapping):
        raise UsageError(f"{shown(path)}: [{TABLE}] must be a table, not {kind_words(table)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == CHECKS:
            continue
        spec = _BY_NAME.get(key)
        if spec is None:
            raise _unknown_key(path, key, value)
        if not spec.accepts(value):
            raise _bad(path, TABLE, key, value, f"takes {spec.kind}, not {kind_words(value)}")
        values[key] = value
    _check_file_values(values, path)
    return values, _file_thresholds(table.get(CHECKS, {}), path)


def _check_file_values(values: Mapping[str, Any], path: Path) -> None:
    """The values that need more than a type: known check ids, a known device."""
    if "device" in values:
        try:
            check_device(values["device"])
        except ValueError as exc:
            raise _bad(path, TABLE, "device", values["device"], str(exc)) from None
    for key in ("select", "ignore"):
        if values.get(key):
            from .runner import check_ids

            try:
                check_ids(values[key], key)
            except OptionError as exc:
                raise _bad(path, TABLE, key, values[key], exc.reason) from None


def _file_thresholds(checks: Any, path: Path) -> dict[str, dict]:
    """``[tool.babysitter.checks.ID]`` tables, checked by the runner's validation (the one the Python API's
    ``options=`` goes through) and named in the file's terms when they are wrong."""
    if not isinstance(checks, Mapping):
        raise _bad(path, TABLE, CHECKS, checks, "takes tables of thresholds, [tool.babysitter.checks.ID], not "
                                                f"{kind_words(checks)}")
    if not checks:
        return {}
    from .runner import validate_options

    try:
        return validate_options(checks)
    except OptionError as exc:
        cid, _, name = exc.key.partition(".")
        table = f"{TABLE}.{CHECKS}.{cid}" if name else f"{TABLE}.{CHECKS}"
        raise _bad(path, table, name or cid, exc.value, exc.reason) from None


def option_flags(given: Sequence[str]) -> dict[str, dict[str, Flag]]:
    """``--option ID.NAME=VALUE`` flags, the value read as TOML (``50``, ``0.5``, ``true``; a bare word as a
    string), checked by the runner's validation."""
    out: dict[str, dict[str, Flag]] = {}
    for text in given:
        key, eq, raw = text.partition("=")
        cid, dot, name = key.strip().partition(".")
        if not (eq and dot and cid and name.strip()):
            raise UsageError(f"--option {text!r}: write ID.NAME=VALUE, as --option lr_range.steps=50")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(cid, {})[name.strip()] = Flag(value, f"--option {text}")
    from .runner import validate_options

    try:
        checked = validate_options({cid: {n: f.value for n, f in names.items()} for cid, names in out.items()})
    except OptionError as exc:
        raise UsageError(f"--option: {exc.reason}") from None
    return {cid: {n: Flag(checked[cid][n], f.flag) for n, f in names.items()} for cid, names in out.items()}


# -- merging --------------------------------------------------------------------------------------------------------
def load(start: Optional[Path] = None, *, file: Optional[Path] = None, isolated: bool = False,
         flags: Optional[Mapping[str, Flag]] = None,
         options: Optional[Mapping[str, Mapping[str, Flag]]] = None) -> Settings:
    """The settings: the defaults, overridden by the closest ``[tool.babysitter]`` at or above ``start`` (or by
    ``file``; by none when ``isolated``), overridden by ``flags`` ({key: Flag}) and threshold ``options``
    ({check id: {name: Flag}}, already checked: see :func:`option_flags`)."""
    start = Path.cwd() if start is None else Path(start)
    found = None if isolated else read(file) if file is not None else find(start)
    values: dict[str, Any] = {k.name: k.default for k in KEYS}
    sources: dict[str, str] = {k.name: DEFAULT for k in KEYS}
    thresholds: dict[str, dict] = {}
    path = None
    if found is not None:
        path, table = found
        given, thresholds = from_table(table, path)
        values.update(given)
        sources.update({k: shown(path) for k in given})
        sources.update({f"{CHECKS}.{c}.{n}": shown(path) for c, names in thresholds.items() for n in names})
    for key, flag in (flags or {}).items():
        values[key], sources[key] = flag.value, flag.flag
    for cid, names in (options or {}).items():
        for name, flag in names.items():
            thresholds.setdefault(cid, {})[name] = flag.value
            sources[f"{CHECKS}.{cid}.{name}"] = flag.flag
    return _settings(values, sources, thresholds, path, None if isolated else start, given=set(flags or ()))


def _settings(values: Mapping[str, Any], sources: Mapping[str, str], thresholds: Mapping[str, dict],
              path: Optional[Path], start: Optional[Path], given: set[str]) -> Settings:
    """Paths resolved: those of the file (and the defaults, when there is a file) against its folder, those of
    the flags in ``given`` against the current folder."""
    base = path.parent if path is not None else Path.cwd()
    targets_root = Path.cwd() if "targets" in given else base
    out = Path(values["out"])
    if "out" not in given and not out.is_absolute():
        out = base / out if path is not None else out
    return Settings(targets=tuple(values["targets"]), targets_root=targets_root, select=tuple(values["select"]),
                    ignore=tuple(values["ignore"]), out=str(out), seed=int(values["seed"]), device=values["device"],
                    strict=values["strict"], report=values["report"], pytest=values["pytest"],
                    watch=int(values["watch"]), options={c: dict(n) for c, n in thresholds.items()}, file=path, searched_from=start,
                    sources=dict(sources))


def rows(settings: Settings) -> list[tuple[str, Any, str]]:
    """Every setting as (name, JSON-native value, source), thresholds as ``checks.ID.NAME``: ``--show-config``."""
    targets = [_resolved(t, settings.targets_root) for t in settings.targets] or \
        [str(settings.targets_root / DEFAULT_TARGETS)]
    out = [("targets", targets, settings.sources["targets"])]
    for key in (k for k in KEY_NAMES if k != "targets"):
        value = getattr(settings, key)
        out.append((key, list(value) if isinstance(value, tuple) else value, settings.sources[key]))
    for cid, names in settings.options.items():
        for name, value in names.items():
            out.append((f"{CHECKS}.{cid}.{name}", value, settings.sources[f"{CHECKS}.{cid}.{name}"]))
    return out


def _resolved(spec: str, root: Path) -> str:
    """A target spec with its path made absolute; a ``package.module:func`` spec as it is."""
    path_part, colon, func = spec.partition(":")
    if not (path_part.endswith(".py") or "/" in path_part or "\\" in path_part or (root / path_part).exists()):
        return spec
    path = Path(path_part)
    return str(path if path.is_absolute() else root / path) + (colon + func)
