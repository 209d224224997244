"""What a figure shows, whatever draws it: the finite points of a plot, its colours, the y-range of a sweep, how a
log axis holds zeros. Pure functions of a :class:`~babysitter.report.Plot`, shared by the report's SVG figures
(:mod:`babysitter.render.svg`) and the optional matplotlib ones (:mod:`babysitter.render.figures`)."""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Optional

from ..report import Marker, Plot

#: colours of curves, bars and histograms
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
#: reference lines (suggestions, thresholds, the user's setting): colours no curve uses, and dash patterns
#: (matplotlib's names), so that "your LR" is never mistaken for a repeat of the sweep
MARKER_STYLES = tuple((color, dash) for dash in ("--", "-.", ":")
                      for color in ("#000000", "#17becf", "#bcbd22", "#7f7f7f", "#d100d1"))
#: a sweep's curve (log x) is drawn up to its start plus this many times its descent; higher is divergence
SWEEP_HEADROOM = 1.0
#: the most characters of a name on an axis (a bar's group, a heatmap's row): longer ones lose their start
LABEL_CHARS = 32


def number(v) -> Optional[float]:
    """``v`` as a float when it is a finite number (report series hold "nan" and "inf" as strings), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def finite(values: Iterable) -> list[float]:
    """The finite numbers of ``values``, in order."""
    return [f for f in map(number, values) if f is not None]


def pairs(xs: Iterable, ys: Iterable) -> list[tuple[float, float]]:
    """The (x, y) points of which both are finite."""
    out = []
    for x, y in zip(xs, ys):
        fx, fy = number(x), number(y)
        if fx is not None and fy is not None:
            out.append((fx, fy))
    return out


def has_data(plot: Plot) -> bool:
    """Whether ``plot`` has a finite value to draw (a plot of nothing is left out of the report)."""
    return any(number(v) is not None for s in plot.series for v in s.y)


def short(label: str) -> str:
    """A name of at most LABEL_CHARS characters: its leading dotted parts give way to an ellipsis, since the end
    is what tells layers apart (``…3.self_attn.out_proj (Linear)``; the tables have the whole names)."""
    if len(label) <= LABEL_CHARS:
        return label
    parts = label.split(".")
    while len(parts) > 1 and len(".".join(parts)) >= LABEL_CHARS:
        parts.pop(0)
    return "…" + ".".join(parts)[-(LABEL_CHARS - 1):]


def markers(plot: Plot) -> list[tuple[Marker, str, str]]:
    """The reference lines that can be drawn (a finite value), each with its colour and dash; a marker keeps the
    style of its place in the plot's list, drawn or not."""
    out = []
    for i, m in enumerate(plot.markers):
        if number(m.value) is not None:
            color, dash = MARKER_STYLES[i % len(MARKER_STYLES)]
            out.append((m, color, dash))
    return out


def integer_x(plot: Plot) -> bool:
    """Whether x counts layers, steps or examples (every x a whole number; a series without x runs over 0..n-1)."""
    if plot.kind not in ("line", "scatter") or plot.log_x:
        return False
    return all(isinstance(x, int) and not isinstance(x, bool) for s in plot.series for x in s.x)


class LogY(NamedTuple):
    """How a log y axis shows the plot's values: ``zero`` is None when every value is positive (a plain log axis);
    else zeros sit on a labelled 0 below ``zero``, the decade under the smallest positive value (a log axis cannot
    show 0: zeros used to be clipped off its bottom, stretching it toward 1e-21)."""

    zero: Optional[float]
    low: float
    high: float


def log_y(plot: Plot) -> Optional[LogY]:
    """The log y axis of ``plot``, or None when it asks for none or has no positive value to show on one."""
    if not plot.log_y:
        return None
    values = [v for s in plot.series for v in finite(s.y)]
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    lines = [float(m.value) for m, _, _ in markers(plot) if m.axis == "y"]
    shown = positive + [v for v in lines if v > 0]
    if all(v > 0 for v in values):
        return LogY(None, min(shown), max(shown))
    floor = 10.0 ** max(math.floor(math.log10(min(shown))), -300)  # a subnormal's decade would round to 0
    return LogY(floor, floor, max(shown))


def is_sweep(plot: Plot) -> bool:
    """A sweep: a curve over a log x on a linear y, such as the loss against the LR."""
    return plot.log_x and plot.kind == "line" and not plot.log_y


def sweep_limits(plot: Plot) -> Optional[tuple[float, float]]:
    """A sweep informs from its start down to its minimum and the turn back up; a repeat that diverges to 1e4 would
    flatten all of that. The y-range (bottom, top) that stops at the start plus ``SWEEP_HEADROOM`` times the descent,
    or None when every value fits under it (the axis label then says "divergence cut off")."""
    if not is_sweep(plot):
        return None
    curves = [ys for ys in (finite(s.y) for s in plot.series) if ys]
    if not curves:
        return None
    start = max(ys[0] for ys in curves)
    low = min(min(ys) for ys in curves)
    high = max(max(ys) for ys in curves)
    span = start - low if start > low else abs(start) or 1.0
    top = start + SWEEP_HEADROOM * span
    if high <= top:
        return None
    return low - 0.05 * span, top


def cut_label(plot: Plot) -> str:
    """The y label of a sweep whose divergence is cut off."""
    return f"{plot.y_label or 'value'} (divergence cut off)"
