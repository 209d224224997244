"""The terminal view: a table of checks with status colours, times and each check's key number, then next steps;
and the live view while checks run."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from ..analysis.status import PROBLEMS, failing
from ..report import CheckResult, Report

STYLES = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red", "skip": "dim", "error": "bold magenta",
          "interrupted": "bold dark_orange"}
SYMBOLS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-", "error": "E", "interrupted": "‖"}


def status_text(status: str) -> Text:
    return Text(f"{SYMBOLS[status]} {status.upper()}", style=STYLES[status])


def checks_table(report: Report) -> RichTable:
    table = RichTable(show_header=True, header_style="bold", expand=False, pad_edge=False, box=None)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True, style="cyan")
    table.add_column("time", no_wrap=True, justify="right", style="dim")
    table.add_column("summary", overflow="fold")
    for c in report.checks:
        took = "–" if c.id in report.not_run else f"{c.duration_s:.1f}s"
        table.add_row(status_text(c.status), c.id, took, escape(c.summary))
    return table


def next_steps(report: Report, verbose: bool = False, *, only: Optional[Callable[[CheckResult], bool]] = None) -> list:
    """Each problem check (every check with ``verbose``; those ``only`` keeps, when given) with its summary, its
    advice and the last line of its traceback."""
    out = []
    for c in report.checks:
        if not (only(c) if only is not None else (c.status in PROBLEMS or verbose)):
            continue
        lines = [Text.assemble(status_text(c.status), " ", (c.id, "cyan"), ": ", c.summary)]
        for a in c.advice:
            lines.append(Text("  → " + a))
        if c.status == "error" and c.traceback:
            tb = c.traceback.strip().splitlines()
            lines.append(Text("  " + (c.traceback.strip() if verbose else tb[-1]), style="magenta"))
            if not verbose:
                lines.append(Text("  (the traceback is in report.json; -v prints it)", style="dim"))
        out.append(Group(*lines))
    return out


def render(report: Report, console: Console, *, saved_to: Optional[str] = None, verbose: bool = False) -> None:
    """Print the report for one target."""
    status = report.status
    head = Text.assemble(("babysitter ", "bold"), (report.target, "bold cyan"), "  ", status_text(status))
    if report.interrupted:
        ran = len(report.checks) - len(report.not_run)
        head.append(f"  ({ran} of {len(report.checks)} checks ran: partial report)", style="bold dark_orange")
    facts = report.run
    sub = (f"{facts.get('model', '?')} ({_count(facts.get('parameters'))} params) · "
           f"{facts.get('optimizer', '?')}{' (default)' if facts.get('optimizer_source') == 'default' else ''} "
           f"lr={facts.get('user_lr', '?')}{' (' + facts['step'] + ')' if facts.get('step') else ''} · "
           f"{facts.get('device', '?')} · seed {facts.get('seed', '?')} · {facts.get('duration_s', 0):.1f}s")
    console.print(head)
    console.print(Text(sub, style="dim"))
    console.print(checks_table(report))
    steps = next_steps(report, verbose)
    if steps:
        console.print()
        console.print(Text("Next steps", style="bold"))
        for s in steps:
            console.print(s)
    console.print(Text(tally(report) + (f" · report: {saved_to}" if saved_to else ""), style="dim"))


def tally(report: Report) -> str:
    """``6 pass, 1 warn, 3 fail, 1 skip``: the report's counts, those that are not zero."""
    return ", ".join(f"{n} {s}" for s, n in report.counts().items() if n) or "no checks ran"


def one_line(report: Report, *, saved_to: Optional[str] = None, strict: bool = False) -> Text:
    """``--quiet``: the report in one line: its status, the target, the counts, the checks that failed (and
    warned), the time and where the report is."""
    line = Text.assemble(status_text(report.status), "  ", (report.target, "bold cyan"), "  ", tally(report))
    for status in ("fail", "error", "warn"):
        ids = [c.id for c in report.checks if c.status == status]
        if ids:
            style = STYLES["fail"] if failing(status, strict=strict) else STYLES[status]
            line.append(f" · {status}: {', '.join(ids)}", style=style)
    line.append(f" · {report.run.get('duration_s', 0):.1f}s", style="dim")
    if saved_to:
        line.append(f" · {saved_to}", style="dim")
    return line


def failure_summary(report: Report, *, strict: bool = False) -> str:
    """The terminal's summary of the checks that fail the run (fail and error; warn too under ``strict``), as plain
    text: the message of a failing pytest item and of ``babysitter.testing.assert_healthy``."""
    import io

    bad = [c for c in report.checks if failing(c.status, strict=strict)]
    buf = io.StringIO()
    console = Console(file=buf, width=100, color_system=None, force_terminal=False, highlight=False, _environ={})
    ran = len(report.checks) - len(report.not_run)
    head = f"babysitter {report.target}: {report.status.upper()}, " + (
        f"interrupted after {ran} of {len(report.checks)} checks" if report.interrupted else
        f"{len(bad)} of {len(report.checks)} checks {'fail' if len(bad) != 1 else 'fails'} the run")
    console.print(Text(head + (f" ({', '.join(c.id for c in bad)})" if bad else "")), soft_wrap=True)
    for step in next_steps(report, only=lambda c: failing(c.status, strict=strict)):
        console.print(step, soft_wrap=True)  # one line per summary and per advice: the CI log wraps them
    console.print(Text(tally(report)), soft_wrap=True)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())


def _count(n) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def progress_printer(console: Console):
    """A progress callback for the runner: one line per finished check, with its time."""

    def on_event(event: str, check_id: str, result: Optional[CheckResult]) -> None:
        if event == "done" and result is not None:
            console.print(Text.assemble("  ", status_text(result.status), f" {check_id} ",
                                        (f"({result.duration_s:.1f}s)", "dim")))

    return on_event


class _CheckClock(ProgressColumn):
    """The running check's own elapsed seconds."""

    def render(self, task: Task) -> Text:
        since = task.fields.get("since")
        return Text(f"{time.perf_counter() - since:.0f}s" if since else "", style="dim")


@contextlib.contextmanager
def live_progress(console: Console, total: int, *, lines: bool = True) -> Iterator:
    """The runner's progress callback while checks run. On a terminal, a live line names the running check, its
    place in the list and its elapsed time, over the whole run's bar and clock, with a line per finished check
    above it; elsewhere (a pipe, a CI log) only the lines per finished check. Without ``lines`` (``--quiet``,
    ``--format json``) only the live line, which leaves nothing behind, and nothing off a terminal."""
    printer = progress_printer(console) if lines else (lambda event, check_id, result: None)
    if not console.is_terminal:
        yield printer if lines else None
        return
    progress = Progress(SpinnerColumn(), TextColumn("[cyan]{task.description}"), TextColumn("{task.fields[place]}"),
                        _CheckClock(), BarColumn(bar_width=24), TextColumn("[dim]all"), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("starting", total=total, since=None, place="")

    def on_event(event: str, check_id: str, result: Optional[CheckResult]) -> None:
        if event == "start":
            place = f"{int(progress.tasks[0].completed) + 1}/{total}"
            progress.update(task, description=check_id, place=place, since=time.perf_counter(), refresh=True)
        elif event == "done":
            progress.update(task, advance=1, since=None, refresh=True)
            printer(event, check_id, result)

    with progress:
        yield on_event
