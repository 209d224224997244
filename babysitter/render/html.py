"""A self-contained HTML report: inline CSS and figures, opens offline, every user string escaped."""
from __future__ import annotations

import html
from typing import Any, Optional

from ..analysis import fmt
from ..analysis.status import PROBLEMS
from ..report import CheckResult, Plot, Report, Table
from . import svg
from .plotdata import has_data
from .tables import cell

#: the figures people come for, by (check id, plot id), shown at the top of the report when their checks drew them:
#: the LR curve with the suggestion and the user's LR, the gradient-norm histogram with the clip line, activation
#: scale through depth. At SUMMARY_SIZE (px) three side by side fill one screen's width; each is drawn once, at that
#: size, and the same figure shows in the summary and in its check's card
SUMMARY_FIGURES = (("lr_range", "lr_curve"), ("grad_norms", "total_hist"), ("activation_scale", "std_by_depth"))
SUMMARY_SIZE = (390, 270)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin:0} .sub{color:#666;font-size:.9em}
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-weight:600;font-size:.85em}
.pass{background:#2e7d32}.warn{background:#f9a825}.fail{background:#c62828}.skip{background:#9e9e9e}
.error{background:#8e24aa}.interrupted{background:#ef6c00}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f5f5f5}
.check{border:1px solid #e0e0e0;border-radius:6px;margin:1em 0;padding:.8em 1em}
.check summary{cursor:pointer} .check summary h2{display:inline} .more{color:#1565c0;font-size:.8em;
margin-left:.4em}
.summary{margin:.3em 0 .2em 0} .advice li{margin:.2em 0} pre{background:#f7f7f7;padding:.6em;overflow:auto;
font-size:.8em} .metrics td:first-child{font-family:monospace}
.figs{display:flex;flex-wrap:wrap;gap:.5em} .figs svg{max-width:100%;height:auto;margin:.4em 0}
.overview{border-bottom:1px solid #e0e0e0;padding-bottom:.6em} .overview .figs{flex-wrap:nowrap}
.overview .figs a{flex:1 1 0;min-width:0} .overview .figs svg{width:100%;margin:0}
.num{text-align:right;white-space:nowrap;color:#666}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    """A table cell: numbers through fmt, a dash for a missing value, a dict or list one item per line."""
    return esc(cell(value, sep="\n")).replace("\n", "<br>")


def _table(t: Table) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in t.rows)
    return f"<h3>{esc(t.title)}</h3><table><tr>{head}</tr>{rows}</table>"


def size_of(check_id: str, plot: Plot) -> Optional[tuple[float, float]]:
    """The size (px) a plot is drawn at on the page (None: the figures' default)."""
    return SUMMARY_SIZE if (check_id, plot.id) in SUMMARY_FIGURES else None


def _summary_plots(report: Report) -> list[tuple[str, Plot]]:
    """The SUMMARY_FIGURES that the run drew, with their check's id."""
    return [(cid, p) for cid, pid in SUMMARY_FIGURES for c in report.checks if c.id == cid
            for p in c.plots if p.id == pid and has_data(p)]


def _figures(report: Report) -> dict[int, str]:
    """Every figure the page shows, drawn once as inline SVG (the summary's three at SUMMARY_SIZE), keyed by the id
    of their Plot: the summary and the cards share them."""
    return {id(p): svg.render(p, size_of(c.id, p)) for c in report.checks for p in c.plots if has_data(p)}


def _contents(c: CheckResult, plots: list) -> str:
    """What opening a card shows, named in its summary line: a closed card says that it holds something."""
    parts = [fmt.plural(n, one) for n, one in ((len(plots), "plot"), (len(c.tables), "table"),
                                                (len(c.metrics), "metric")) if n]
    return f'<span class="more">{esc(", ".join(parts))}</span>' if parts else ""


def _check(c: CheckResult, figures: dict[int, str]) -> str:
    plots = [p for p in c.plots if has_data(p)]
    parts = [f'<details class="check" id="{esc(c.id)}" {"open" if c.status in PROBLEMS else ""}>',
             f'<summary><h2><span class="badge {esc(c.status)}">{esc(c.status.upper())}</span> '
             f'{esc(c.title or c.id)} <span class="sub">{esc(c.id)} · {c.duration_s:.2f}s</span></h2>'
             f'{_contents(c, plots)}<p class="summary">{esc(c.summary)}</p></summary>']
    if c.advice:
        parts.append("<ul class='advice'>" + "".join(f"<li>{esc(a)}</li>" for a in c.advice) + "</ul>")
    if c.notes:
        parts.append("<p class='sub'>" + "<br>".join(esc(n) for n in c.notes) + "</p>")
    if plots:
        parts.append("<div class='figs'>" + "".join(figures[id(p)] for p in plots) + "</div>")
    for t in c.tables:
        parts.append(_table(t))
    if c.metrics:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{_cell(v)}</td></tr>" for k, v in c.metrics.items())
        parts.append(f"<h3>Metrics</h3><table class='metrics'>{rows}</table>")
    if c.traceback:
        parts.append(f"<h3>Traceback</h3><pre>{esc(c.traceback)}</pre>")
    parts.append("</details>")
    return "".join(parts)


def _overview(report: Report, figures: dict[int, str]) -> str:
    """The one-screen summary: the verdict of every check (linked to its card, with its time), then the figures
    of SUMMARY_FIGURES that the run drew."""
    rows = "".join(
        f"<tr><td><span class='badge {esc(c.status)}'>{esc(c.status.upper())}</span></td>"
        f"<td><a href='#{esc(c.id)}'>{esc(c.id)}</a></td><td class='num'>{c.duration_s:.1f}s</td>"
        f"<td>{esc(c.summary)}</td></tr>" for c in report.checks)
    figs = [f"<a href='#{esc(cid)}'>{figures[id(p)]}</a>" for cid, p in _summary_plots(report)]
    shown = f"<div class='figs'>{''.join(figs)}</div>" if figs else ""
    return f"<section class='overview' id='overview'><table>{rows}</table>{shown}</section>"


def render(report: Report) -> str:
    """The self-contained page."""
    figures = _figures(report)
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    run_rows = "".join(f"<tr><td>{esc(k)}</td><td>{_cell(v)}</td></tr>" for k, v in report.run.items())
    interrupted = (f"<p><b>Interrupted: this report is partial; {len(report.not_run)} of {len(report.checks)} checks "
                   f"did not run ({esc(', '.join(report.not_run))}).</b></p>") if report.interrupted else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>babysitter: {esc(report.target)}</title><style>{_CSS}</style></head><body>"
        f"<h1>babysitter: {esc(report.target)} <span class='badge {esc(report.status)}'>"
        f"{esc(report.status.upper())}</span></h1><p class='sub'>{esc(counts)}</p>{interrupted}"
        + _overview(report, figures)
        + "".join(_check(c, figures) for c in report.checks)
        + f"<details><summary>Run facts</summary><table class='metrics'>{run_rows}</table></details>"
        "</body></html>")
