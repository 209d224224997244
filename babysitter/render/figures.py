"""A report's plots drawn with matplotlib's object API (no pyplot, no global state), for use outside the report:
``draw(plot, ax=None)`` returns the Figure (to show in a notebook, or save in any format), ``to_png`` its PNG.

Optional: it needs matplotlib (``pip install matplotlib``), which babysitter does not install; the HTML report's
figures are SVG written by :mod:`babysitter.render.svg`, from the same facts (:mod:`babysitter.render.plotdata`).
"""
from __future__ import annotations

import io
import math
import os
import textwrap
from typing import Optional

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator

from ..report import Plot
from .layout import fit
from .plotdata import COLORS, cut_label, finite, has_data, integer_x, log_y, markers, pairs, short, sweep_limits

__all__ = ["draw", "to_png", "has_data"]

#: a title wraps at this many characters per inch of figure width (matplotlib's 10 pt sans-serif)
_TITLE_CHARS_PER_INCH = 10.5
#: the font size (points) of a bar chart's group labels
_BAR_LABEL_PT = 7
#: a figure's size (inches) when the caller gives none
SIZE = (6.4, 3.6)
#: pixels per inch: a figure of SIZE is 538 px wide, the 540 px the HTML report shows a figure at
DPI = 84
#: at most this many minor ticks per decade on a log axis spanning more than _FULL_MINOR_DECADES decades (every
#: minor tick is an object with its own lines and label: eight per decade made a sweep over 1e-7..1 cost twice a
#: linear plot, for marks nobody reads); shorter axes keep matplotlib's, whose minor ticks carry labels there
_FEW_MINOR = (2.0, 5.0)
_FULL_MINOR_DECADES = 2.0


def draw(plot: Plot, ax: Optional[Axes] = None, *, size: Optional[tuple[float, float]] = None) -> Figure:
    """Draw ``plot`` on ``ax`` (a new figure of ``size`` inches when None, laid out by :func:`fit`) and return the
    Figure. Nothing is rendered yet: saving the figure renders it, once."""
    own = ax is None
    if own:
        fig = Figure(figsize=size or SIZE, dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    {"heatmap": _heatmap, "hist": _hist, "bar": _bars}.get(plot.kind, _lines)(plot, ax)
    _markers(plot, ax)
    _axes(plot, ax)
    _sweep_range(plot, ax)
    _minor_ticks(ax)
    if own:
        _share_mathtext(ax.figure)
        fit(ax)
    return ax.figure


_mathtext: list = []  # the mathtext parser of the first figure drawn, lent to every later one
if hasattr(os, "register_at_fork"):
    # its cached parses hold the parent's fonts, and matplotlib's fonts must not be used across a fork (their files'
    # shared offsets garble the glyphs of both processes): a forked child lends its own
    os.register_at_fork(after_in_child=_mathtext.clear)


def _share_mathtext(fig: Figure) -> None:
    """Let the figure's renderer use the parser of the first figure drawn. matplotlib caches parsed mathtext (the
    ``10^{-4}`` of every log axis' tick labels, about 9 ms each) per parser, and each figure's renderer has its own:
    a report of log axes parsed the same labels in every figure."""
    renderer = fig.canvas.get_renderer()
    if not hasattr(renderer, "mathtext_parser"):
        return
    if not _mathtext:
        _mathtext.append(renderer.mathtext_parser)
    renderer.mathtext_parser = _mathtext[0]


def _minor_ticks(ax: Axes) -> None:
    """_FEW_MINOR minor ticks per decade on log axes that span more than _FULL_MINOR_DECADES decades."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(axis.get_view_interval())
        if lo > 0 and math.log10(hi / lo) > _FULL_MINOR_DECADES:
            axis.set_minor_locator(LogLocator(subs=_FEW_MINOR))


def _title(plot: Plot, ax: Axes) -> None:
    """The whole title, wrapped to the figure's width (three lines at most, smaller when it needs three)."""
    chars = max(int(ax.figure.get_figwidth() * _TITLE_CHARS_PER_INCH), 30)
    lines = textwrap.wrap(plot.title, chars) or [""]
    if len(lines) > 2:
        lines = textwrap.wrap(plot.title, int(chars * 1.2), max_lines=3, placeholder=" …")
    ax.set_title("\n".join(lines), fontsize=10 if len(lines) <= 2 else 8.5)


def _hist(plot: Plot, ax: Axes) -> None:
    """Histograms of each series' sample over one shared range."""
    samples = [finite(s.y) for s in plot.series]
    pooled = [v for s in samples for v in s]
    if not pooled:
        return
    lo, hi = min(pooled), max(pooled)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    for i, (s, vals) in enumerate(zip(plot.series, samples)):
        if vals:
            ax.hist(vals, bins=plot.bins, range=(lo, hi), alpha=0.6 if len(samples) > 1 else 0.9,
                    histtype="stepfilled", label=s.name, color=COLORS[i % len(COLORS)])  # one polygon, not 40 bars


def _bars(plot: Plot, ax: Axes) -> None:
    """Grouped bars, one group per x label, one bar per series."""
    n = max(len(plot.series), 1)
    width = 0.8 / n
    labels = [short(str(x)) for x in plot.series[0].x] if plot.series else []
    for i, s in enumerate(plot.series):
        ys = [float(y) if isinstance(y, (int, float)) and math.isfinite(y) else 0.0 for y in s.y]
        ax.bar([j + (i - (n - 1) / 2) * width for j in range(len(ys))], ys, width=width, label=s.name,
               color=COLORS[i % len(COLORS)])
    _bar_labels(ax, labels)


def _bar_labels(ax: Axes, labels: list[str]) -> None:
    """One label per group, turned 45 degrees when some are long (right-aligned under their bar, centred when
    level); when they would overlap, every k-th group is labelled (64 features: 0, 3, 6, ...)."""
    longest = max((len(x) for x in labels), default=0)
    turned = longest > 6
    pitch = _BAR_LABEL_PT * (1.4 if turned else 0.6 * longest + 1.5) / 72  # inches one label needs along x
    room = ax.figure.get_figwidth() * 0.8
    every = max(1, math.ceil(len(labels) * pitch / room))
    kept = range(0, len(labels), every)
    ax.set_xticks(list(kept))
    ax.set_xticklabels([labels[i] for i in kept], rotation=45 if turned else 0, ha="right" if turned else "center",
                       fontsize=_BAR_LABEL_PT)


def _lines(plot: Plot, ax: Axes) -> None:
    """Lines (or scatter points) over each series' x, or over the index when it has none."""
    for i, s in enumerate(plot.series):
        pts = pairs(s.x, s.y) if s.x else pairs(range(len(s.y)), s.y)
        if not pts:
            continue
        xs, ys = zip(*pts)
        if plot.kind == "scatter":
            ax.scatter(xs, ys, s=12, label=s.name, color=COLORS[i % len(COLORS)])
        else:
            ax.plot(xs, ys, label=s.name, color=COLORS[i % len(COLORS)], lw=1.5)


def _markers(plot: Plot, ax: Axes) -> None:
    for m, color, dash in markers(plot):
        line = ax.axvline if m.axis == "x" else ax.axhline
        line(m.value, color=color, ls=dash, lw=1.3, label=m.label)


def _axes(plot: Plot, ax: Axes) -> None:
    """Scales, labels, grid and legend."""
    if plot.log_x:
        ax.set_xscale("log")
    if plot.log_y:
        _log_y(plot, ax)
    _integer_ticks(plot, ax)
    _title(plot, ax)
    ax.set_xlabel(plot.x_label, fontsize=9)
    ax.set_ylabel(plot.y_label, fontsize=9)
    ax.tick_params(labelsize=8)
    if plot.kind != "heatmap":
        ax.grid(alpha=0.3)
    if plot.kind != "heatmap" and len(plot.series) + len(plot.markers) > 1:
        ax.legend(fontsize=7, loc="best")


def _log_y(plot: Plot, ax: Axes) -> None:
    """A log y axis over the positive values; zeros sit on a labelled 0 one decade below the smallest positive value,
    on a symmetric-log axis (see :func:`~babysitter.render.plotdata.log_y`)."""
    scale = log_y(plot)
    if scale is None:
        return  # a log axis over no positive value is empty, and matplotlib warns
    if scale.zero is None:
        ax.set_yscale("log")
        return
    ax.set_yscale("symlog", linthresh=scale.zero, linscale=0.4)
    values = [v for s in plot.series for v in finite(s.y)]
    ax.set_ylim(min(min(values), 0.0), scale.high * 10 ** 0.15)


def _integer_ticks(plot: Plot, ax: Axes) -> None:
    """Whole-number ticks where x counts layers, steps or examples, and on a histogram's counts."""
    if plot.kind == "hist":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    elif integer_x(plot):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _sweep_range(plot: Plot, ax: Axes) -> None:
    """A sweep's y-range stops short of its divergence (see :func:`~babysitter.render.plotdata.sweep_limits`)."""
    cut = sweep_limits(plot)
    if cut is not None:
        ax.set_ylim(*cut)
        ax.set_ylabel(cut_label(plot), fontsize=9)


def _heatmap(plot: Plot, ax: Axes) -> None:
    """One row per series (y over the shared x of the first series), top row first: histograms through depth."""
    rows = [[float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in s.y] for s in plot.series]
    if not rows or not rows[0]:
        return
    width = max(len(r) for r in rows)
    rows = [r + [0.0] * (width - len(r)) for r in rows]
    xs = finite(plot.series[0].x) or [0.0, float(width)]
    step = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) if len(xs) > 1 else 1.0
    ax.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest",
              extent=(xs[0] - step / 2, xs[-1] + step / 2, len(rows) - 0.5, -0.5))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([short(s.name) for s in plot.series], fontsize=6 if len(rows) > 12 else 7)
    ax.figure.set_size_inches(6.4, min(max(3.6, 0.25 * len(rows) + 1.2), 12.0))


def to_png(plot: Plot, *, size: Optional[tuple[float, float]] = None) -> bytes:
    """``plot`` drawn by :func:`draw`, as PNG bytes."""
    fig = draw(plot, size=size)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
