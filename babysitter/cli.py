"""The ``babysit`` command: ``check``, ``list`` and ``explain``. Exit codes follow pytest (see errors.ExitCode)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from . import __version__
from .analysis.status import failing
from .errors import BabysitterError, ExitCode, TargetError, UsageError

DEFAULT_OUT = "reports"
#: device types ``--device`` accepts besides ``auto`` (with an index, ``cuda:1``)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


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
    if value == "auto":
        return value
    import torch

    try:
        kind = torch.device(value).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="babysit", description="Pre-flight checks for a PyTorch training run.")
    p.add_argument("--version", action="version", version=f"babysitter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="run the checklist on targets (default: checks/*.py)")
    c.add_argument("targets", nargs="*", metavar="TARGET",
                   help="FILE.py, FILE.py:func, package.module:func or a folder (default: checks/)")
    c.add_argument("--device", default="auto", type=_device, help="auto (CUDA when available), cpu, cuda or cuda:N")
    c.add_argument("--seed", type=int, default=0, help="seed for every random choice of the checks (default 0)")
    c.add_argument("--select", action="append", default=[], metavar="IDS", help="only these check ids (comma list)")
    c.add_argument("--ignore", action="append", default=[], metavar="IDS", help="skip these check ids (comma list)")
    c.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="where reports go, one folder per target (default: reports/)")
    c.add_argument("--no-report", action="store_true", help="print only; write no files")
    c.add_argument("--strict", action="store_true", help="treat warnings as failures (exit 1)")
    c.add_argument("-v", "--verbose", action="store_true", help="tracebacks and every check's advice")
    sub.add_parser("list", help="show the checklist")
    e = sub.add_parser("explain", help="show a check's documentation")
    e.add_argument("check_id", metavar="ID")
    return p


def main(argv: Optional[Sequence[str]] = None, console: Optional[Console] = None) -> int:
    """The ``babysit`` command; returns its exit code."""
    own = console is None
    console = console or _Console(highlight=False)
    err = _Console(stderr=True, highlight=False) if console.file is sys.stdout else console
    try:
        return _run(argv, console, err)
    except BrokenPipeError:  # the reader went away (`| head`): stop at once, quietly, as for Ctrl-C
        if own:
            _silence_stdout()
        return int(ExitCode.INTERRUPTED)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not fail again and print."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an embedding, a test's capture)
        pass


def _run(argv: Optional[Sequence[str]], console: Console, err: Console) -> int:
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
            return _check(args, console, err)
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
        raise UsageError(f"unknown check id {check_id!r}; the checks are: {', '.join(c.id for c in CHECKLIST)}")
    console.print(cls.doc(width=max(console.width, 40)), markup=False, highlight=False)  # filled to the console
    return int(ExitCode.OK)


def _check(args, console: Console, err: Console) -> int:
    from .runner import select_checks
    from .target import collect

    select_checks(args.select, args.ignore)  # bad ids are a usage error before anything is loaded
    found = collect(args.targets)
    for skipped in found.skipped:
        err.print(f"note: {escape(str(skipped))}", style="dim")
    codes: list[ExitCode] = []
    for ref in found.refs:
        code = _check_one(ref, args, console, err)
        if code is ExitCode.INTERRUPTED:
            return int(code)
        codes.append(code)
    for code in (ExitCode.INTERNAL_ERROR, ExitCode.USAGE_ERROR, ExitCode.CHECKS_FAILED):
        if code in codes:
            return int(code)
    return int(ExitCode.OK)


def _check_one(ref, args, console: Console, err: Console) -> ExitCode:
    """Load, check, save and print one target; its exit code."""
    from .render.terminal import live_progress, render
    from .runner import run_target, select_checks
    from .target import importable, load

    try:
        with importable(ref):  # the project's modules stay importable while the checks run the target's code
            target = load(ref, seed=args.seed)
            console.print(f"[bold]checking[/] [cyan]{escape(target.name)}[/] [dim]({escape(str(ref))})[/]")
            with live_progress(console, len(select_checks(args.select, args.ignore))) as progress:
                report = run_target(target, device=args.device, seed=args.seed, select=args.select,
                                    ignore=args.ignore, where=ref.source, progress=progress)
    except TargetError as exc:
        _target_error(err, exc, args.verbose)
        return ExitCode.USAGE_ERROR
    except (BabysitterError, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception:  # a bug of ours: reported with its traceback, and the other targets still run
        err.print(f"[bold magenta]internal error[/] while checking {escape(str(ref))}:")
        err.print(escape(traceback.format_exc()))
        return ExitCode.INTERNAL_ERROR
    saved = None
    if not args.no_report:
        folder = Path(args.out) / report.target
        saved = str(report.save(folder).get("html", folder))
    render(report, console, saved_to=saved, verbose=args.verbose)
    console.print()
    if report.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.CHECKS_FAILED if any(failing(c.status, strict=args.strict) for c in report.checks) \
        else ExitCode.OK


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
