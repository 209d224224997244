"""The ``babysit`` command: ``check``, ``list`` and ``explain``. Exit codes follow pytest (see errors.ExitCode).

``check`` reads its settings from the defaults, the closest ``[tool.babysitter]`` table (config.py) and its flags,
in that order of precedence, and prints the terminal report, one line per target (``--quiet``) or the report JSON
(``--format json``, nothing else on stdout); ``--junit-xml`` writes the JUnit view beside any of them."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from . import __version__
from .analysis.status import failing
from .config import Flag, check_device
from .errors import BabysitterError, ExitCode, TargetError, UsageError



class CommandLineError(UsageError):
    """A command line argparse rejects: exit 4, as pytest maps its own usage errors (argparse's 2 is ours for
    'interrupted')."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints and exits 2 here; we raise, and main maps it to 4
        raise CommandLineError(f"{self.prog}: error: {message}", self.format_usage())


class _Console(Console):
    """A console that reports a closed pipe (``babysit check | head``) as BrokenPipeError for main() to end quietly
    with its own exit code (rich's default exits 1, which reads as 'a check failed')."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def _device(value: str) -> str:
    """``--device``: auto, or a device type this tool runs on, checked before anything is loaded."""
    try:
        return check_device(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="babysit", description="Pre-flight checks for a PyTorch training run.")
    p.add_argument("--version", action="version", version=f"babysitter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="run the checklist on targets (default: checks/*.py)",
                       description="Run the checklist. Settings come from the defaults, then the closest "
                                   "pyproject.toml with a [tool.babysitter] table, then these flags.")
    c.add_argument("targets", nargs="*", metavar="TARGET",
                   help="FILE.py, FILE.py:func, package.module:func or a folder (default: [tool.babysitter] "
                        "targets, else checks/)")
    c.add_argument("--device", type=_device, help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    c.add_argument("--seed", type=int, help="seed for every random choice of the checks (default 0)")
    c.add_argument("--select", action="append", metavar="IDS", help="only these check ids (comma list)")
    c.add_argument("--ignore", action="append", metavar="IDS", help="skip these check ids (comma list)")
    c.add_argument("-o", "--option", action="append", default=[], metavar="ID.NAME=VALUE",
                   help="a check's threshold, as babysit explain ID names it (lr_range.steps=50)")
    c.add_argument("--out", metavar="DIR", help="where reports go, one folder per target (default: reports/)")
    c.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="write report.json, report.html and CSVs (default: yes; --no-report prints only)")
    c.add_argument("--watch", type=int, metavar="STEPS",
                   help="after the checklist, train each target STEPS steps under the watcher and write that "
                        "report to OUT/TARGET/watch (default 0: no watch)")
    c.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                   help="treat warnings as failures (exit 1)")
    c.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the report JSON on stdout and nothing else there (a list unless one FILE[:func] "
                        "is named)")
    c.add_argument("--junit-xml", metavar="PATH", help="also write a JUnit XML file: a testsuite per target, a "
                                                       "testcase per check")
    c.add_argument("-q", "--quiet", action="store_true", help="one line per target")
    c.add_argument("-v", "--verbose", action="store_true", help="tracebacks and every check's advice")
    c.add_argument("--config", metavar="FILE", help="read [tool.babysitter] from this file instead of searching")
    c.add_argument("--no-config", action="store_true", help="read no configuration file")
    c.add_argument("--show-config", action="store_true",
                   help="print the resolved settings and where each came from, then stop")
    sub.add_parser("list", help="show the checklist")
    e = sub.add_parser("explain", help="show a check's documentation")
    e.add_argument("check_id", metavar="ID")
    return p


def main(argv: Optional[Sequence[str]] = None, console: Optional[Console] = None,
         err: Optional[Console] = None) -> int:
    """The ``babysit`` command; returns its exit code. ``console`` takes the output (stdout), ``err`` the errors,
    notes and, with ``--format json``, the live line (stderr; by default ``console`` when one is given)."""
    own = console is None
    console = console or _Console(highlight=False)
    if err is None:
        err = _Console(stderr=True, highlight=False) if console.file is sys.stdout else console
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # under torchrun: see babysitter.distributed
            return _run_distributed(argv, console, err)
        return _run(argv, console, err)
    except BrokenPipeError:  # the reader went away (`| head`): stop at once, quietly, as for Ctrl-C
        if own:
            _silence_stdout()
        return int(ExitCode.INTERRUPTED)


def _run_distributed(argv, console: Console, err: Console) -> int:
    """Every rank runs the command inside the process group; rank 0 alone prints and writes."""
    import signal

    from . import distributed

    def stop(signum, frame):  # torchrun ends the other ranks with SIGTERM when one fails: as a Ctrl-C, so the
        raise KeyboardInterrupt  # running check stops, the model is restored and rank 0 writes its partial report

    signal.signal(signal.SIGTERM, stop)
    with distributed.joined() as place:
        if not place.main:
            quiet = _Console(file=open(os.devnull, "w"), highlight=False)
            console, err = quiet, quiet
        return _run(argv, console, err, place)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not fail again and print."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an embedding, a test's capture)
        pass


def _run(argv: Optional[Sequence[str]], console: Console, err: Console, place: Any = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except CommandLineError as exc:
        err.print(exc.usage.rstrip(), markup=False, highlight=False, style="dim")
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return int(exc.exit_code)
    try:
        if args.command == "list":
            return _list(console)
        if args.command == "explain":
            return _explain(console, args.check_id)
        if args.command == "check":
            return _check(args, console, err, place)
        _parser().print_help()
        return int(ExitCode.USAGE_ERROR)
    except KeyboardInterrupt:
        err.print("[bold yellow]interrupted[/]")
        return int(ExitCode.INTERRUPTED)
    except BabysitterError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return int(exc.exit_code)


def _list(console: Console) -> int:
    from .checklist import CHECKLIST

    table = RichTable(box=None, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("id", style="cyan")
    table.add_column("what it answers")
    for i, cls in enumerate(CHECKLIST, 1):
        table.add_row(str(i), cls.id, cls.title)
    console.print(table)
    console.print("babysit explain ID shows a check's documentation", style="dim")
    return int(ExitCode.OK)


def _explain(console: Console, check_id: str) -> int:
    from .checklist import CHECKLIST, by_id
    from .errors import UsageError

    try:
        cls = by_id(check_id)
    except KeyError:
        raise UsageError(f"unknown check id {check_id!r}; the checks are: {', '.join(c.id for c in CHECKLIST)} (and "
                         f"under torchrun: ddp_params, ddp_data, ddp_grads)")
    console.print(cls.doc(width=max(console.width, 40)), markup=False, highlight=False)  # filled to the console
    return int(ExitCode.OK)


# -- check -----------------------------------------------------------------------------------------------------
def _ids(values: Optional[list]) -> Optional[list]:
    return None if values is None else [p.strip() for v in values for p in v.split(",") if p.strip()]


def _settings(args):
    """The settings: defaults < the closest [tool.babysitter] (or --config FILE; none with --no-config) < flags."""
    from . import config

    if args.config and args.no_config:
        raise UsageError("--config and --no-config exclude each other")
    given = {"targets": (args.targets or None, "TARGET arguments"), "select": (_ids(args.select), "--select"),
             "ignore": (_ids(args.ignore), "--ignore"), "out": (args.out, "--out"), "seed": (args.seed, "--seed"),
             "device": (args.device, "--device"),
             "strict": (args.strict, "--strict" if args.strict else "--no-strict"),
             "report": (args.report, "--report" if args.report else "--no-report"),
             "watch": (args.watch, "--watch")}
    flags = {key: Flag(value, flag) for key, (value, flag) in given.items() if value is not None}
    return config.load(file=Path(args.config) if args.config else None, isolated=args.no_config, flags=flags,
                       options=config.option_flags(args.option))


def _check(args, console: Console, err: Console, place: Any = None) -> int:
    from .report import Report
    from .runner import select_checks
    from .target import collect

    settings = _settings(args)
    if args.show_config:
        return _show_config(settings, console, args.format)
    select_checks(settings.select, settings.ignore, settings.options)  # bad ids are a usage error before loading
    found = collect(settings.targets, root=settings.targets_root)
    out = _Output("json" if args.format == "json" else "quiet" if args.quiet else "text", args.verbose,
                  console, err, place)
    if place is not None and not place.main:
        settings = dataclasses.replace(settings, report=False)
    for skipped in found.skipped:
        out.note(f"note: {skipped}")
    outcomes, code = _check_all(found.refs, settings, out)
    if args.format == "json":
        out.json([o for _, o in outcomes if isinstance(o, Report)], single=_single(settings))
    if args.junit_xml and (place is None or place.main):
        _write_junit(Path(args.junit_xml), outcomes, settings.strict)
    return int(code)


def _check_all(refs, settings, out: "_Output") -> tuple[list, ExitCode]:
    """Check each target in turn: the (source, report or Unloaded) pairs, and the run's exit code. Ctrl-C stops
    the run; what ran so far is still printed and written."""
    outcomes, codes = [], []
    try:
        for ref in refs:
            code, outcome = _check_one(ref, settings, out)
            outcomes.append((shown_ref(ref), outcome))
            codes.append(code)
            if code is ExitCode.INTERRUPTED:
                break
    except KeyboardInterrupt:
        out.err.print("[bold yellow]interrupted[/]")
        codes.append(ExitCode.INTERRUPTED)
    for code in (ExitCode.INTERRUPTED, ExitCode.INTERNAL_ERROR, ExitCode.USAGE_ERROR, ExitCode.CHECKS_FAILED):
        if code in codes:
            return outcomes, code
    return outcomes, ExitCode.OK


def _check_one(ref, settings, out: "_Output") -> tuple[ExitCode, Any]:
    """Load, check, save and print one target: its exit code, and its report (an Unloaded when it has none)."""
    from .render.junit import Unloaded
    from .runner import run_target, select_checks
    from .target import importable, load

    try:
        with importable(ref):  # the project's modules stay importable while the checks run the target's code
            target = load(ref, seed=settings.seed)
            out.checking(target.name, ref)
            target, device, extra, ranks = _on_rank(target, settings, out.place)
            with out.progress(len(select_checks(settings.select, settings.ignore, settings.options))) as progress:
                report = run_target(target, device=device, seed=settings.seed, select=settings.select,
                                    ignore=settings.ignore, options=settings.options, where=ref.source,
                                    progress=progress, extra=extra, ranks=ranks)
            watched = _watch(target, ref, settings, device, ranks) if settings.watch and not report.interrupted \
                else None
    except TargetError as exc:
        out.target_error(ref, exc)
        return ExitCode.USAGE_ERROR, Unloaded(ref.name, "target error", str(exc))
    except (BabysitterError, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception:  # a bug of ours: reported with its traceback, and the other targets still run
        out.internal_error(ref)
        return ExitCode.INTERNAL_ERROR, Unloaded(ref.name, "internal error", traceback.format_exc())
    saved = save_report(report, settings)
    out.report(report, saved, settings.strict)
    if report.interrupted:
        return ExitCode.INTERRUPTED, report
    if watched is not None:
        out.report(watched, save_report(watched, settings, folder=report.target + "/watch"), settings.strict)
    checked = report.checks + (watched.checks if watched is not None else ())
    failed = any(failing(c.status, strict=settings.strict) for c in checked)
    return (ExitCode.CHECKS_FAILED if failed else ExitCode.OK), report


def _on_rank(target, settings, place) -> tuple[Any, str, tuple, Any]:
    """Under torchrun: the target with this rank's shard of tuple data, this rank's device, the distributed
    checks and the collectives that keep the ranks' passes in step; otherwise the target as it is."""
    if place is None or not place.active:
        return target, settings.device, (), None
    from . import distributed
    from .checklist.ddp import DISTRIBUTED

    device = distributed.device_for(place) if settings.device == "auto" else settings.device
    sharded = dataclasses.replace(target, data=distributed.shard(target.data, place, settings.seed))
    return sharded, device, DISTRIBUTED, distributed.Ranks(place)


def _watch(target, ref, settings, device: str, ranks: Any):
    """The watch of a target after its checklist (``--watch STEPS``), on the checklist's device and ranks."""
    from .watching.target import watch_target

    return watch_target(target, steps=settings.watch, device=device, seed=settings.seed, where=ref.source,
                        ranks=ranks)


def shown_ref(ref) -> str:
    """A target as people read it: ``checks/model.py:babysit``, its path relative to the current folder when it
    is below it."""
    from .config import shown

    return f"{shown(Path(ref.source))}:{ref.function}" if ref.is_file else str(ref)


def save_report(report, settings, folder: Optional[str] = None) -> Optional[str]:
    """Write the report under ``settings.out``, one folder per target (or in ``folder`` there), unless
    ``settings.report`` is off: the path of its HTML page, or None."""
    if not settings.report:
        return None
    folder = Path(settings.out) / (folder or report.target)
    return str(report.save(folder).get("html", folder))


def _single(settings) -> bool:
    """Whether ``--format json`` prints one report object rather than a list: when exactly one target is named
    and it is a file or a function, not a folder and not the default discovery (the shape depends on the command,
    never on how many files a folder happens to hold)."""
    if len(settings.targets) != 1:
        return False
    return not (settings.targets_root / settings.targets[0].partition(":")[0]).is_dir()


def _write_junit(path: Path, outcomes: list, strict: bool) -> None:
    from .render.junit import junit_xml
    from .report import write_atomic

    write_atomic(path, junit_xml(outcomes, strict=strict))


class _Output:
    """Where ``check`` prints, by mode: ``text`` (the terminal report), ``quiet`` (one line per target) or
    ``json`` (the report JSON on stdout at the end, and nothing else there: notes and errors on stderr, the live
    line on stderr when it is a terminal)."""

    def __init__(self, mode: str, verbose: bool, console: Console, err: Console, place: Any = None):
        self.mode, self.verbose, self.console, self.err = mode, verbose, console, err
        self.place = place  # a babysitter.distributed.Place under torchrun

    def note(self, text: str) -> None:
        if self.mode != "quiet":
            self.err.print(escape(text), style="dim")

    def checking(self, name: str, ref) -> None:
        if self.mode == "text":
            self.console.print(f"[bold]checking[/] [cyan]{escape(name)}[/] [dim]({escape(shown_ref(ref))})[/]")

    def progress(self, total: int):
        from .render.terminal import live_progress

        if self.mode == "text":
            return live_progress(self.console, total)
        screen = self.console if self.mode == "quiet" else self.err
        return live_progress(screen, total, lines=False) if screen.is_terminal else contextlib.nullcontext(None)

    def report(self, report, saved: Optional[str], strict: bool) -> None:
        from .render.terminal import one_line, render

        if self.mode == "text":
            render(report, self.console, saved_to=saved, verbose=self.verbose)
            self.console.print()
        elif self.mode == "quiet":
            self.console.print(one_line(report, saved_to=saved, strict=strict), soft_wrap=True)

    def target_error(self, ref, exc: TargetError) -> None:
        if self.mode == "quiet":
            first = str(exc).splitlines()[0]
            self.console.print(f"[bold magenta]E ERROR[/]  [cyan]{escape(ref.name)}[/]  target error: "
                               f"{escape(first)}", soft_wrap=True)
            return
        _target_error(self.err, exc, self.verbose)

    def internal_error(self, ref) -> None:
        self.err.print(f"[bold magenta]internal error[/] while checking {escape(str(ref))}:")
        self.err.print(escape(traceback.format_exc()))

    def json(self, reports: list, *, single: bool) -> None:
        """The report JSON on stdout: one object (report.json's contract) when ``single``, else a list of them."""
        if single and not reports:
            return
        payload = reports[0].to_dict() if single else [r.to_dict() for r in reports]
        self.console.file.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        self.console.file.flush()


def _show_config(settings, console: Console, fmt: str) -> int:
    """``--show-config``: every setting, its value and where it came from (default, the file, a flag)."""
    from .config import DEFAULT, rows, shown

    found = shown(settings.file) if settings.file else None
    table = rows(settings)
    if fmt == "json":
        payload = {"file": found, "searched_from": settings.searched_from and str(settings.searched_from),
                   "settings": {name: {"value": value, "source": source} for name, value, source in table}}
        console.file.write(json.dumps(payload, indent=2) + "\n")
        return int(ExitCode.OK)
    why = (f"no pyproject.toml with a \\[tool.babysitter] table at or above {escape(str(settings.searched_from))}"
           if settings.searched_from else "--no-config")
    console.print(f"config: {escape(found)} [dim]\\[tool.babysitter][/]" if found else f"config: none [dim]({why})[/]",
                  soft_wrap=True)
    grid = RichTable(box=None, header_style="bold", pad_edge=False)
    for column in ("setting", "value", "source"):
        grid.add_column(column, overflow="fold")
    for name, value, source in table:
        grid.add_row(name, escape(json.dumps(value)), source, style="dim" if source == DEFAULT else None)
    console.print(grid)
    return int(ExitCode.OK)


def _target_error(err: Console, exc: TargetError, verbose: bool) -> None:
    err.print(f"[bold red]target error[/] {escape(str(exc))}")
    if exc.__cause__ is not None:
        if verbose:
            cause = exc.__cause__  # the three-argument form: Python 3.9 has no format_exception(exc)
            err.print(escape("".join(traceback.format_exception(type(cause), cause, cause.__traceback__))))
        else:
            err.print("  (run with -v for the traceback)", style="dim")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
