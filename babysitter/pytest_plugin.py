"""The pytest plugin (entry point ``pytest11``, name ``babysitter``): babysitter's targets as test items.

pytest imports every installed plugin in every run, so this module imports nothing heavy and, unless asked, only
adds the ``--babysit`` option. Asked (``pytest --babysit``, or ``pytest = true`` in the closest
``[tool.babysitter]`` table), it collects each target ``babysit check`` would check (``[tool.babysitter] targets``,
else ``checks/``) as one test item, ``checks/model.py::babysit``, which runs the checklist with the table's
settings, writes the report as ``babysit check`` does, and fails with the terminal's summary of the failing checks.
A check that warned issues a :class:`~babysitter.testing.BabysitterWarning` (pytest's warnings summary lists it)
and fails the item under ``strict = true``.

With no path on pytest's command line (its ``testpaths`` or the current folder), every target is collected; with
paths, only the targets under them (``pytest tests checks --babysit``). ``pytest -p no:babysitter`` turns the plugin
off. Targets named ``package.module:func`` are not files pytest walks: ``babysit check`` checks them.
"""
from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("babysitter", "babysitter: pre-flight checks of PyTorch training targets")
    group.addoption("--babysit", action="store_true", default=False,
                    help="check babysitter's targets ([tool.babysitter] targets, else checks/) as test items, one "
                         "per target")


def pytest_configure(config: Any) -> None:
    from .config import pytest_enabled
    from .errors import UsageError

    try:
        asked = config.getoption("babysit") or pytest_enabled(config.invocation_params.dir)
    except UsageError as exc:
        raise pytest.UsageError(f"babysitter: {exc}") from None
    if asked:
        config.pluginmanager.register(Targets(config), "babysitter-targets")


class Targets:
    """The collection of babysitter's targets, registered only when asked for: each target file becomes a
    :class:`TargetFile` when pytest walks it (and the files are added to what pytest walks when its command line
    names no path)."""

    def __init__(self, config: Any):
        from .config import load
        from .errors import BabysitterError
        from .target import collect

        start = Path(config.invocation_params.dir)
        try:
            self.settings = load(start)
            found = collect(self.settings.targets, root=self.settings.targets_root)
        except BabysitterError as exc:
            raise pytest.UsageError(f"babysitter: {exc}") from None
        self.files: dict[Path, list] = {}
        for ref in found.refs:
            if ref.is_file:
                self.files.setdefault(Path(ref.source).resolve(), []).append(ref)
        self.patterns = list(config.getini("python_files"))
        if not config.getoption("file_or_dir"):
            _walk_too(config, start, self.files)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collect_file(self, file_path: Path, parent: Any):
        outcome = yield
        refs = self.files.get(Path(file_path).resolve())
        if not refs:
            return
        # a target file given to pytest is not a test module too, unless its name says it is one
        test_module = any(fnmatch.fnmatch(file_path.name, p) or fnmatch.fnmatch(str(file_path), p)
                          for p in self.patterns)
        kept = [n for n in outcome.get_result() if test_module or not isinstance(n, pytest.Module)]
        outcome.force_result(kept + [TargetFile.from_parent(parent, path=file_path, refs=refs,
                                                            settings=self.settings)])


def _walk_too(config: Any, start: Path, files: dict) -> None:
    """Add the target files that pytest's own paths (its testpaths, or the current folder) do not hold."""
    roots = [(start / str(arg).split("::")[0]).resolve() for arg in config.args]
    for path in files:
        if not any(path == root or root in path.parents for root in roots):
            config.args.append(str(path))


class TargetFile(pytest.File):
    """A target file: one item per target function in it."""

    def __init__(self, *, refs: list, settings: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.refs, self.settings = refs, settings

    def collect(self):
        for ref in self.refs:
            yield TargetItem.from_parent(self, name=ref.function, ref=ref, settings=self.settings)


class TargetItem(pytest.Item):
    """One target: runs the checklist on it and fails unless its report is healthy."""

    def __init__(self, *, ref: Any, settings: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.ref, self.settings = ref, settings

    def runtest(self) -> None:
        from .testing import BabysitterWarning, assert_healthy

        report, saved = check_target(self.ref, self.settings)
        self.user_properties += [("babysitter_status", report.status)] + \
            ([("babysitter_report", saved)] if saved else [])
        if report.interrupted:
            raise KeyboardInterrupt
        assert_healthy(report, allow_warn=not self.settings.strict)
        for c in report.checks:
            if c.status == "warn":
                warnings.warn(BabysitterWarning(f"{report.target}: {c.id} warned: {c.summary}"), stacklevel=1)

    def repr_failure(self, excinfo: Any, style: Optional[str] = None) -> Any:
        from .errors import TargetError
        from .testing import UnhealthyReport

        if isinstance(excinfo.value, UnhealthyReport):
            return str(excinfo.value)
        if isinstance(excinfo.value, TargetError):
            return f"target error {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        from .cli import shown_ref

        return self.path, None, f"babysitter target {shown_ref(self.ref)}"


def check_target(ref: Any, settings: Any) -> tuple[Any, Optional[str]]:
    """Load and check one target with the settings, and save its report as ``babysit check`` does: the report and
    the path of its HTML (None with ``report = false``)."""
    from .cli import save_report
    from .runner import run_target
    from .target import importable, load

    with importable(ref):
        target = load(ref, seed=settings.seed)
        report = run_target(target, device=settings.device, seed=settings.seed, select=settings.select,
                            ignore=settings.ignore, options=settings.options, where=ref.source)
    return report, save_report(report, settings)
