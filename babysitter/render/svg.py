"""The report's figures as SVG, written as text from a :class:`~babysitter.report.Plot` (no matplotlib).

One SVG unit is one CSS pixel of the 540 px the page shows a figure at, and the ``viewBox`` lets the page scale it.
Text is real text (``system-ui, sans-serif``), so its width is estimated from the advances of DejaVu Sans, the
widest of the usual sans-serif faces: margins measured that way hold the text in any of them. Every string from
the report is escaped. The data are drawn inside a nested ``<svg>`` (which clips, with no ``id`` to collide when
the page shows a figure twice); non-finite values are gaps; a legend sits in an empty corner of the axes, or
beside them when every corner holds data. Drawing a figure is a few milliseconds of string building.
"""
from __future__ import annotations

import html
import math
import re
from typing import NamedTuple, Optional, Sequence

from ..report import Plot
from .plotdata import COLORS, cut_label, finite, has_data, integer_x, log_y, markers, number, short, sweep_limits

__all__ = ["SIZE", "render", "has_data"]

#: a figure's size (px) when the caller gives none: the width the page shows it at
SIZE = (540, 304)
#: font sizes (px) of the title (one or two lines; three lines are smaller), axis labels, tick labels, legend,
#: a bar chart's group labels and a heatmap's row labels
TITLE_PX, SMALL_TITLE_PX, LABEL_PX, TICK_PX, LEGEND_PX, GROUP_PX = 13.0, 11.5, 11.0, 10.0, 10.0, 9.0
#: blank space (px) kept between the figure's edges and its outermost text
EDGE = 6.0
#: length (px) of a major tick mark, and the gap between it and its label
TICK, GAP = 4.0, 3.0
#: the share of an axis' range left blank beyond the data at each end (matplotlib's default margin)
PAD = 0.05
#: on a log axis that shows zeros, the 0 sits this many decades below the lowest decade
ZERO_DECADES = 0.6
#: a heatmap row's height (px) and the most a heatmap may grow to
ROW_PX, MAX_HEIGHT = 21.0, 1008.0
#: where a legend may sit inside the axes, in the order tried (matplotlib's "best" order, less the centre): the
#: share of the free room left of it and above it
PLACES = ((1, 0), (0, 0), (0, 1), (1, 1), (1, 0.5), (0, 0.5), (0.5, 1), (0.5, 0))
#: the widest a legend beside the axes may be, as a share of the figure's width (wider: below the axes)
LEGEND_SIDE = 0.4
#: dash patterns (px) of matplotlib's line styles
DASHES = {"--": "5,3", "-.": "7,3,1.5,3", ":": "1.5,2.5"}
#: viridis, sampled at 11 evenly spaced points
VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151",
           "#bddf26", "#fde725")
FONT = "system-ui,sans-serif"
INK, FRAME, GRID = "#333", "#888", "#e8e8e8"

# advances of DejaVu Sans (em) for the characters 32..126
_ASCII_EM = tuple(float(w) for w in (
    "0.32 0.4 0.46 0.84 0.64 0.95 0.78 0.27 0.39 0.39 0.5 0.84 0.32 0.36 0.32 0.34 0.64 0.64 0.64 0.64 0.64 0.64 "
    "0.64 0.64 0.64 0.64 0.34 0.34 0.84 0.84 0.84 0.53 1 0.68 0.69 0.7 0.77 0.63 0.58 0.77 0.75 0.29 0.29 0.66 0.56 "
    "0.86 0.75 0.79 0.6 0.79 0.69 0.63 0.61 0.73 0.68 0.99 0.69 0.61 0.69 0.39 0.34 0.39 0.84 0.5 0.5 0.61 0.63 0.55 "
    "0.63 0.62 0.35 0.63 0.63 0.28 0.28 0.58 0.28 0.97 0.63 0.61 0.63 0.63 0.41 0.52 0.39 0.63 0.59 0.82 0.59 0.59 "
    "0.52 0.64 0.34 0.64 0.84").split())
_OTHER_EM = {"…": 1.0, "×": 0.84, "−": 0.84}
#: characters XML does not allow, even escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def esc(value) -> str:
    """A string as XML text or attribute value."""
    return html.escape(_NOT_XML.sub("", str(value)), quote=True)


def width(text: str, px: float) -> float:
    """The estimated width (px) of ``text`` at ``px``."""
    em = 0.0
    for c in text:
        o = ord(c)
        em += _ASCII_EM[o - 32] if 32 <= o < 127 else _OTHER_EM.get(c, 0.75)
    return em * px


def _n(v: float) -> str:
    return f"{v:.1f}"


# -- rich text: a label is runs of (text, superscript?) -----------------------------------------------------------

class Label(NamedTuple):
    runs: tuple[tuple[str, bool], ...]

    @classmethod
    def plain(cls, text: str) -> "Label":
        return cls(((text, False),) if text else ())

    def __add__(self, other) -> "Label":
        return Label(self.runs + other.runs)

    def width(self, px: float) -> float:
        return sum(width(t, px * (0.7 if sup else 1.0)) for t, sup in self.runs)

    def markup(self, px: float) -> str:
        out, up = [], False
        for text, sup in self.runs:
            if sup != up:
                shift = 0.42 * px * (-1 if sup else 1)
                size = f' font-size="{_n(0.7 * px)}"' if sup else ""
                out.append(f'<tspan dy="{_n(shift)}"{size}>{esc(text)}</tspan>')
                up = sup
            elif up:
                out.append(f'<tspan font-size="{_n(0.7 * px)}">{esc(text)}</tspan>')
            else:
                out.append(esc(text))
        return "".join(out)

    def __bool__(self) -> bool:
        return bool(self.runs)


def _minus(text: str) -> str:
    return text.replace("-", "−")


def power(k: int, mantissa: str = "") -> Label:
    """``10^k``, after ``mantissa×`` when given."""
    return Label((((mantissa + "×" if mantissa else "") + "10", False), (_minus(str(k)), True)))


def _decimals(step: float) -> int:
    for d in range(12):
        if abs(round(step, d) - step) <= 1e-9 * abs(step):
            return d
    return 12


def _plain(v: float, decimals: int) -> str:
    text = f"{v:.{decimals}f}"
    return "0" if float(text) == 0 else _minus(text)


def _compact(v: float) -> Label:
    """A tick value in few characters: plain from 0.001 to 10^4, else mantissa×10^k."""
    if v == 0:
        return Label.plain("0")
    k = math.floor(math.log10(abs(v)) + 1e-9)
    if -3 <= k < 4:
        return Label.plain(_minus(f"{v:.{max(0, -k + 2)}g}" if k < 0 else f"{v:g}"))
    mantissa = v / 10 ** k
    if abs(mantissa - 1) < 1e-6:
        return power(k)
    return power(k, _minus(f"{mantissa:.2g}"))


# -- axes ---------------------------------------------------------------------------------------------------------

class Tick(NamedTuple):
    at: float  # in the axis' own units (log10 of the value on a log axis)
    label: Optional[Label]  # None: a minor tick, unlabelled


class Axis:
    """How values map to positions: linear, log (``log10``), or log with zeros on a line ``ZERO_DECADES`` below the
    decade ``zero`` (values below ``zero``, negative ones included, sit on that line)."""

    def __init__(self, log: bool = False, zero: Optional[float] = None, integer: bool = False):
        self.log, self.zero, self.integer = log, zero, integer
        self.lo, self.hi = 0.0, 1.0
        self.a, self.b = 0.0, 1.0  # the positions (px) of lo and hi
        self.suffix = Label(())  # "×10^k" of a linear axis whose tick labels are mantissas

    @property
    def zero_at(self) -> float:
        return math.log10(self.zero) - ZERO_DECADES

    def t(self, v: float) -> Optional[float]:
        """``v`` in the axis' units, or None when the axis cannot show it (v <= 0 on a plain log axis)."""
        if not self.log:
            return v
        if self.zero is not None and v < self.zero:
            return self.zero_at
        return math.log10(v) if v > 0 else None

    def fit(self, ts: Sequence[float], pad: float = PAD, sticky: Optional[float] = None) -> None:
        """The range over ``ts`` with ``pad`` of it beyond each end; none beyond ``sticky`` (a bar's or histogram's
        0) when it is the end."""
        if self.zero is not None:
            ts = list(ts) + [self.zero_at]
        if not ts:
            self.lo, self.hi = (-1.0, 1.0) if self.log else (0.0, 1.0)
            return
        lo, hi = max(min(ts), -1e300), min(max(ts), 1e300)  # a range that stays finite
        if lo == hi:
            half = 0.5 if self.log else (abs(lo) * 0.1 or 0.5)
            lo, hi = lo - half, hi + half
        span = hi - lo
        self.lo = lo if sticky is not None and lo == sticky else lo - pad * span
        self.hi = hi if sticky is not None and hi == sticky else hi + pad * span

    def px(self, t: float) -> float:
        return self.a + (t - self.lo) * (self.b - self.a) / ((self.hi - self.lo) or 1.0)

    def ticks(self, most: int) -> list[Tick]:
        """At most ``most`` labelled ticks inside the range (and minor ones on a log axis)."""
        if self.log:
            lo = max(self.lo, math.log10(self.zero)) if self.zero is not None else self.lo
            ticks = _log_ticks(lo, self.hi, most)
            if self.zero is not None:
                ticks.insert(0, Tick(self.zero_at, Label.plain("0")))
            return ticks
        ticks, self.suffix = _linear_ticks(self.lo, self.hi, most, self.integer)
        return ticks


def _steps(raw: float, integer: bool):
    k = math.floor(math.log10(raw)) if raw > 0 else 0
    if integer:
        k = max(k, 0)
    while True:
        for m in ((1, 2, 5) if integer else (1, 2, 2.5, 5)):
            yield m * 10.0 ** k
        k += 1


def _linear_ticks(lo: float, hi: float, most: int, integer: bool) -> tuple[list[Tick], Label]:
    most = max(most, 2)
    for step in _steps((hi - lo) / most, integer):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 <= most:
            break
    values = [k * step for k in range(first, last + 1)]
    big = max((abs(v) for v in values), default=0.0)
    k = math.floor(math.log10(big)) if big >= 1e5 or 0 < big < 1e-3 else 0
    scale = 10.0 ** k
    decimals = _decimals(step / scale)
    ticks = [Tick(v, Label.plain(_plain(v / scale, decimals))) for v in values]
    return ticks, (Label((("×", False),)) + power(k) if k else Label(()))


def _log_ticks(lo: float, hi: float, most: int) -> list[Tick]:
    """Decades labelled 10^k when three or more are in range (every n-th when crowded), minor ticks between them;
    over a shorter range, 1-2-5 times a power of ten when that makes three labels, else 1..9, 1-2-5, 1-3 times
    one, the first that ``most`` allows; over less than that, linear ones."""
    decades = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
    if len(decades) >= 3:
        every = math.ceil(len(decades) / max(most, 2))
        ticks = [Tick(k, power(k) if k % every == 0 else None) for k in decades]
        span = hi - lo
        subs = range(2, 10) if span <= 3 else (2, 5) if span <= 8 else ()
        ticks += [Tick(t, None) for k in range(decades[0] - 1, decades[-1] + 1) for m in subs
                  if lo <= (t := k + math.log10(m)) <= hi]
        return ticks
    for subs, least in (((1, 2, 5), 3), (range(1, 10), 2), ((1, 2, 5), 2), ((1, 3), 2), ((1,), 2)):
        places = [(k, m) for k in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in subs
                  if lo - 1e-9 <= k + math.log10(m) <= hi + 1e-9]
        if least <= len(places) <= max(most, 2):
            return [Tick(k + math.log10(m), _compact(m * 10.0 ** k) if abs(k) < 300 else power(k, f"{m}"))
                    for k, m in places]
    linear, _ = _linear_ticks(10 ** lo, 10 ** hi, most, False)
    return [Tick(math.log10(t.at), _compact(t.at)) for t in linear if t.at > 0]


# -- what a plot draws, in its axes' units --------------------------------------------------------------------------

class Entry(NamedTuple):
    """One legend row: ``shape`` is "line", "dot" or "box"; ``dash`` a matplotlib line style."""

    label: str
    color: str
    shape: str
    dash: str = "-"


class Body:
    """A plot's data in its axes' units, and the legend it needs. Subclasses draw one kind."""

    def __init__(self, plot: Plot):
        self.plot = plot
        self.x = Axis(log=plot.log_x, integer=integer_x(plot))
        scale = log_y(plot) if plot.kind in ("line", "scatter", "bar") else None
        self.y = Axis(log=scale is not None, zero=scale.zero if scale else None, integer=plot.kind == "hist")
        self.y_label = plot.y_label
        self.entries: list[Entry] = []
        self.lines = [(m, color, dash) for m, color, dash in markers(plot)]

    def marker_ts(self, axis: str) -> list[float]:
        axis_ = self.x if axis == "x" else self.y
        ts = [axis_.t(float(m.value)) for m, _, _ in self.lines if m.axis == axis]
        return [t for t in ts if t is not None]

    def legend(self) -> list[Entry]:
        out = self.entries + [Entry(m.label, color, "line", dash) for m, color, dash in self.lines]
        return out if len(out) > 1 else []

    # overridden by each kind
    def fit(self) -> None:
        raise NotImplementedError

    def x_ticks(self, length: float) -> list[Tick]:
        return _fitted_ticks(self.x, length, horizontal=True)

    def y_ticks(self, length: float) -> list[Tick]:
        return _fitted_ticks(self.y, length, horizontal=False)

    def draw(self) -> tuple[list[str], list[tuple], list[tuple]]:
        """SVG elements in the plot area's pixels (0, 0 at its top left), and the rectangles and segments they
        cover (for the legend's placement)."""
        raise NotImplementedError


def _fitted_ticks(axis: Axis, length: float, horizontal: bool) -> list[Tick]:
    """The most ticks whose labels do not collide over ``length`` px (the axis' positions set)."""
    most = max(2, int(length / (60 if horizontal else 28)))
    while True:
        ticks = axis.ticks(most)
        if most <= 2 or not _collide([t for t in ticks if t.label], axis, horizontal):
            return ticks
        most -= 1


def _collide(ticks: list[Tick], axis: Axis, horizontal: bool) -> bool:
    """Whether two neighbouring labels overlap, or come closer than a gap."""
    at = sorted((axis.px(t.at), t.label.width(TICK_PX) if horizontal else TICK_PX) for t in ticks)
    return any(b - a < (wa + wb) / 2 + (8 if horizontal else 0.4 * TICK_PX) for (a, wa), (b, wb) in zip(at, at[1:]))


class Lines(Body):
    """Lines (or scatter points) over each series' x, or over the index when it has none; a non-finite value is
    a gap in its line, and a point between two gaps a dot."""

    def __init__(self, plot: Plot):
        super().__init__(plot)
        self.runs: list[tuple[str, list[list[tuple[float, float]]]]] = []
        for i, s in enumerate(plot.series):
            color, runs, run = COLORS[i % len(COLORS)], [], []
            xs = s.x if s.x else range(len(s.y))
            for x, y in zip(xs, s.y):
                fx, fy = number(x), number(y)
                tx = self.x.t(fx) if fx is not None else None
                ty = self.y.t(fy) if fy is not None else None
                if tx is None or ty is None:
                    if run:
                        runs.append(run)
                    run = []
                else:
                    run.append((tx, ty))
            if run:
                runs.append(run)
            if runs:
                self.runs.append((color, runs))
                self.entries.append(Entry(s.name, color, "dot" if plot.kind == "scatter" else "line"))

    def fit(self) -> None:
        points = [p for _, runs in self.runs for run in runs for p in run]
        self.x.fit([p[0] for p in points] + self.marker_ts("x"))
        cut = sweep_limits(self.plot)
        if cut is not None:
            self.y.lo, self.y.hi = cut
            self.y_label = cut_label(self.plot)
        else:
            self.y.fit([p[1] for p in points] + self.marker_ts("y"))

    def draw(self):
        out, rects, segments = [], [], []
        scatter = self.plot.kind == "scatter"
        for color, runs in self.runs:
            dots, lines = [], []
            for run in runs:
                pts = [(self.x.px(tx), self.y.px(ty)) for tx, ty in run]
                if scatter or len(pts) == 1:
                    dots += pts
                    rects += [(x - 3, y - 3, x + 3, y + 3) for x, y in pts]
                else:
                    lines.append(" ".join(f"{_n(x)},{_n(y)}" for x, y in pts))
                    segments += zip(pts, pts[1:])
            if lines:
                out.append(f'<g fill="none" stroke="{color}" stroke-width="1.6" stroke-linejoin="round">'
                           + "".join(f'<polyline points="{p}"/>' for p in lines) + "</g>")
            if dots:
                r = 3.2 if scatter else 2.2
                out.append(f'<g fill="{color}">' + "".join(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{r}"/>'
                                                           for x, y in dots) + "</g>")
        return out, rects, segments


class Hist(Body):
    """Histograms of each series' sample over one shared range, as filled steps, on linear axes."""

    def __init__(self, plot: Plot):
        super().__init__(plot)
        self.x = Axis()
        samples = [finite(s.y) for s in plot.series]
        pooled = [v for s in samples for v in s]
        lo, hi = min(pooled), max(pooled)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        self.edges = [lo + (hi - lo) * k / plot.bins for k in range(plot.bins + 1)]
        self.counts: list[tuple[str, list[int]]] = []
        scale = plot.bins / (hi - lo)
        for i, (s, values) in enumerate(zip(plot.series, samples)):
            if not values:
                continue
            counts = [0] * plot.bins
            for v in values:
                counts[min(int((v - lo) * scale), plot.bins - 1)] += 1
            color = COLORS[i % len(COLORS)]
            self.counts.append((color, counts))
            self.entries.append(Entry(s.name, color, "box"))

    def fit(self) -> None:
        self.x.fit([self.edges[0], self.edges[-1]] + self.marker_ts("x"))
        top = max((max(c) for _, c in self.counts), default=1)
        self.y.fit([0.0, float(top)] + self.marker_ts("y"), sticky=0.0)

    def draw(self):
        out, rects = [], []
        opacity = "0.55" if len(self.counts) > 1 else "0.85"
        base = self.y.px(0.0)
        xs = [self.x.px(e) for e in self.edges]
        for color, counts in self.counts:
            d = [f"M{_n(xs[0])},{_n(base)}"]
            for k, c in enumerate(counts):
                y = self.y.px(c)
                d.append(f"V{_n(y)}H{_n(xs[k + 1])}")
                if c:
                    rects.append((xs[k], y, xs[k + 1], base))
            d.append(f"V{_n(base)}Z")
            out.append(f'<path d="{"".join(d)}" fill="{color}" fill-opacity="{opacity}" stroke="{color}" '
                       f'stroke-width="1"/>')
        return out, rects, []


class Bars(Body):
    """Grouped bars, one group per x label, one bar per series; a non-finite value is no bar."""

    def __init__(self, plot: Plot):
        super().__init__(plot)
        self.groups = [short(str(x)) for x in plot.series[0].x] if plot.series else []
        n = max(len(plot.series), 1)
        self.width = 0.8 / n
        self.bars: list[tuple[str, list[tuple[float, float]]]] = []
        for i, s in enumerate(plot.series):
            color = COLORS[i % len(COLORS)]
            offset = (i - (n - 1) / 2) * self.width
            bars = [(j + offset, t) for j, y in enumerate(s.y)
                    if (v := number(y)) is not None and (t := self.y.t(v)) is not None]
            self.bars.append((color, bars))
            if bars:
                self.entries.append(Entry(s.name, color, "box"))

    def fit(self) -> None:
        n = max([len(self.groups)] + [len(s.y) for s in self.plot.series])
        self.x.fit([-0.5, n - 0.5], pad=0.0)
        ts = [t for _, bars in self.bars for _, t in bars] + self.marker_ts("y")
        if self.y.log:
            self.y.fit(ts)
        else:
            self.y.fit(ts + [0.0], sticky=0.0)

    def base(self) -> float:
        if not self.y.log:
            return 0.0
        return self.y.zero_at if self.y.zero is not None else self.y.lo

    def x_ticks(self, length: float) -> list[Tick]:
        labels = self.groups
        turned = max((len(x) for x in labels), default=0) > 6
        pitch = GROUP_PX * 1.5 if turned else max((width(x, GROUP_PX) for x in labels), default=0) + 6
        every = max(1, math.ceil(len(labels) * pitch / max(length, 1)))
        return [Tick(j, Label.plain(labels[j])) for j in range(0, len(labels), every)]

    def turned(self) -> bool:
        return max((len(x) for x in self.groups), default=0) > 6

    def draw(self):
        out, rects = [], []
        base = self.y.px(self.base())
        half = self.width / 2
        for color, bars in self.bars:
            shapes = []
            for x, t in bars:
                x0, x1, y = self.x.px(x - half), self.x.px(x + half), self.y.px(t)
                top, bottom = min(y, base), max(y, base)
                shapes.append(f'<rect x="{_n(x0)}" y="{_n(top)}" width="{_n(x1 - x0)}" height="{_n(bottom - top)}"/>')
                rects.append((x0, top, x1, bottom))
            if shapes:
                out.append(f'<g fill="{color}">' + "".join(shapes) + "</g>")
        return out, rects, []


class Heatmap(Body):
    """One row per series (y over the shared x of the first series), top row first, on viridis with its scale;
    a non-finite value is a blank cell."""

    def __init__(self, plot: Plot):
        super().__init__(plot)
        self.x, self.y = Axis(), Axis()
        self.rows = [[number(v) for v in s.y] for s in plot.series]
        self.names = [short(s.name) for s in plot.series]
        values = [v for r in self.rows for v in r if v is not None]
        self.vmin, self.vmax = (min(values), max(values)) if values else (0.0, 1.0)
        cols = max((len(r) for r in self.rows), default=1)
        xs = finite(plot.series[0].x) if plot.series else []
        if len(xs) != cols or any(b <= a for a, b in zip(xs, xs[1:])) or not math.isfinite(xs[-1] - xs[0]):
            xs = [float(k) for k in range(cols)]  # no usable x: the columns' numbers
        step = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) if len(xs) > 1 else 1.0
        self.starts = [x - step / 2 for x in xs] + [xs[-1] + step / 2]
        self.lines = []

    def fit(self) -> None:
        self.x.lo, self.x.hi = self.starts[0], self.starts[-1]
        self.y.lo, self.y.hi = float(len(self.rows)), 0.0  # row i spans [i, i+1], top row first

    def y_ticks(self, length: float) -> list[Tick]:
        """The rows' names, every k-th when they would overlap."""
        every = max(1, math.ceil(len(self.rows) * GROUP_PX * 1.3 / max(length, 1)))
        return [Tick(i + 0.5, Label.plain(name)) for i, name in enumerate(self.names) if i % every == 0]

    def color(self, v: float) -> str:
        f = (v - self.vmin) / (self.vmax - self.vmin) if self.vmax > self.vmin else 0.5
        return _viridis(round(f * 63) / 63)

    def draw(self):
        out = []
        xs = [self.x.px(s) for s in self.starts]
        for i, row in enumerate(self.rows):
            y0, y1 = self.y.px(i), self.y.px(i + 1)
            k = 0
            while k < len(row):  # runs of one colour are one rectangle
                if row[k] is None:
                    k += 1
                    continue
                color, j = self.color(row[k]), k + 1
                while j < len(row) and row[j] is not None and self.color(row[j]) == color:
                    j += 1
                out.append(f'<rect x="{_n(xs[k])}" y="{_n(y0)}" width="{_n(xs[j] - xs[k] + 0.3)}" '
                           f'height="{_n(y1 - y0 + 0.3)}" fill="{color}"/>')
                k = j
        return out, [], []


def _viridis(f: float) -> str:
    f = min(max(f, 0.0), 1.0) * (len(VIRIDIS) - 1)
    k = min(int(f), len(VIRIDIS) - 2)
    a, b, w = VIRIDIS[k], VIRIDIS[k + 1], f - k
    return "#" + "".join(f"{round(int(a[i:i + 2], 16) * (1 - w) + int(b[i:i + 2], 16) * w):02x}" for i in (1, 3, 5))


KINDS = {"heatmap": Heatmap, "hist": Hist, "bar": Bars}


# -- layout ----------------------------------------------------------------------------------------------------------

class Box(NamedTuple):
    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def wrap(text: str, px: float, room: float, most: int) -> list[str]:
    """``text`` in lines of at most ``room`` px (a word too long for a line is cut), at most ``most`` lines (the
    last ends in an ellipsis when some is left out)."""
    lines, line = [], ""
    for word in text.split():
        while width(word, px) > room and len(word) > 1:  # a word longer than a line: cut it
            cut = len(word) - 1
            while cut > 1 and width(word[:cut], px) > room:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}" if line else word
        if line and width(candidate, px) > room:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    if len(lines) > most:
        last = lines[most - 1]
        while last and width(last + " …", px) > room:
            last = last[:-1]
        lines = lines[:most - 1] + [last.rstrip() + " …"]
    return lines


class Legend(NamedTuple):
    entries: list[Entry]
    column: float  # one column's width (px)
    columns: int

    @property
    def width(self) -> float:
        return self.columns * self.column + 8

    @property
    def height(self) -> float:
        return math.ceil(len(self.entries) / self.columns) * LEGEND_PX * 1.45 + 8


def _legend(entries: list[Entry], columns: int = 1) -> Optional[Legend]:
    if not entries:
        return None
    return Legend(entries, max(width(e.label, LEGEND_PX) for e in entries) + 32, columns)


def _clear(box: Box, rects, segments) -> bool:
    """Whether ``box`` covers none of the rectangles and segments."""
    l, t, r, b = box
    for x0, y0, x1, y1 in rects:
        if x0 < r and x1 > l and y0 < b and y1 > t:
            return False
    for (x0, y0), (x1, y1) in segments:
        if max(x0, x1) < l or min(x0, x1) > r or max(y0, y1) < t or min(y0, y1) > b:
            continue
        if _crosses(box, x0, y0, x1, y1):
            return False
    return True


def _crosses(box: Box, x0: float, y0: float, x1: float, y1: float) -> bool:
    """Liang-Barsky: whether the segment meets the box."""
    lo, hi = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 - box.left), (dx, box.right - x0), (-dy, y0 - box.top), (dy, box.bottom - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        r = q / p
        if p < 0:
            lo = max(lo, r)
        else:
            hi = min(hi, r)
        if lo > hi:
            return False
    return True


class Layout(NamedTuple):
    frame: Box
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    legend_at: Optional[tuple[float, float]]  # its top left, inside or beside the axes


def render(plot: Plot, size: Optional[tuple[float, float]] = None) -> str:
    """``plot`` as an SVG element (a string) of ``size`` px (SIZE when None; a heatmap grows with its rows); ""
    for a plot with nothing to draw (see :func:`has_data`)."""
    if not has_data(plot):
        return ""
    w, h = size or SIZE
    body = KINDS.get(plot.kind, Lines)(plot)
    if isinstance(body, Heatmap) and size is None:
        h = min(max(h, ROW_PX * len(body.rows) + 101), MAX_HEIGHT)
    body.fit()
    title_px = TITLE_PX
    title = wrap(plot.title, title_px, w - 2 * EDGE, 2)
    if len(wrap(plot.title, title_px, w - 2 * EDGE, 3)) > 2:
        title_px = SMALL_TITLE_PX
        title = wrap(plot.title, title_px, w - 2 * EDGE, 3)
    top = EDGE + len(title) * title_px * 1.25 + 4 if title else EDGE + 6
    legend = _legend(body.legend())
    layout = _layout(body, w, h, top, legend, None)
    if legend is not None:
        _, rects, segments = body.draw()
        f = layout.frame
        segments += _marker_segments(body, f)
        inset = 5.0
        for across, down in PLACES:
            x = inset + across * (f.width - 2 * inset - legend.width)
            y = inset + down * (f.height - 2 * inset - legend.height)
            if x >= inset and y >= inset and _clear(Box(x - 3, y - 3, x + legend.width + 3, y + legend.height + 3),
                                                    rects, segments):
                layout = layout._replace(legend_at=(f.left + x, f.top + y))
                break
        else:
            if legend.width <= LEGEND_SIDE * w:
                layout = _layout(body, w, h, top, legend, "right")
            else:  # below the axes, in as many columns as fit
                legend = legend._replace(columns=max(1, min(len(legend.entries),
                                                            int((w - 2 * EDGE - 8) // legend.column))))
                layout = _layout(body, w, h, top, legend, "below")
    return _svg(body, w, h, title, title_px, layout, legend)


def _layout(body: Body, w: float, h: float, top: float, legend: Optional[Legend], beside: Optional[str]) -> Layout:
    """The plot area and ticks: margins hold the title, the axis labels and the tick labels; a legend ``beside``
    the axes ("right", "below") takes its room from them."""
    plot = body.plot
    bottom = EDGE + (LABEL_PX * 1.3 if plot.x_label else 0) + TICK + GAP + TICK_PX
    if isinstance(body, Bars) and body.turned():
        longest = max((Label.plain(t).width(GROUP_PX) for t in body.groups), default=0)
        bottom += min(longest * 0.72, 0.3 * h)
    below = legend is not None and beside == "below"
    if below:
        bottom += legend.height + 6
    frame_h = max(h - top - bottom, 20)
    body.y.a, body.y.b = frame_h, 0.0
    y_ticks = body.y_ticks(frame_h)
    tick_px = GROUP_PX if isinstance(body, Heatmap) else TICK_PX
    labels = max((t.label.width(tick_px) for t in y_ticks if t.label), default=0)
    y_label = _axis_label(body.y_label, body.y.suffix)
    left = EDGE + (LABEL_PX * 1.3 if y_label else 0) + labels + TICK + GAP
    right = EDGE + 8
    if isinstance(body, Heatmap):
        right = EDGE + 14 + TICK + GAP + _colorbar_label_width(body)
    if legend is not None and beside == "right":
        right = max(right, EDGE + legend.width + 8)
    frame_w = max(w - left - right, 20)
    body.x.a, body.x.b = 0.0, frame_w
    x_ticks = body.x_ticks(frame_w)
    if isinstance(body, Bars) and body.turned() and x_ticks:  # the first turned label may reach past the left edge
        first = body.x.px(x_ticks[0].at) - x_ticks[0].label.width(GROUP_PX) * 0.72
        shift = min(max(0.0, EDGE - (left + first)), 0.3 * w)
        left, frame_w = left + shift, frame_w - shift
        body.x.b = frame_w
    frame = Box(left, top, left + frame_w, top + frame_h)
    legend_at = None
    if legend is not None and beside == "right":
        legend_at = (frame.right + 8, frame.top)
    elif below:
        legend_at = (max(EDGE, (w - legend.width) / 2), h - EDGE - legend.height)
    return Layout(frame, x_ticks, y_ticks, legend_at)


def _axis_label(text: str, suffix: Label) -> Label:
    if not suffix:
        return Label.plain(text)
    return Label.plain(f"{text} (") + suffix + Label.plain(")") if text else suffix


def _colorbar_ticks(body: Heatmap) -> list[Tick]:
    axis = Axis()
    axis.lo, axis.hi = body.vmin, body.vmax if body.vmax > body.vmin else body.vmin + 1
    return axis.ticks(5)


def _colorbar_label_width(body: Heatmap) -> float:
    return max((t.label.width(TICK_PX) for t in _colorbar_ticks(body) if t.label), default=0)


# -- writing -----------------------------------------------------------------------------------------------------------

def _svg(body: Body, w: float, h: float, title: list[str], title_px: float, layout: Layout,
         legend: Optional[Legend]) -> str:
    plot, f = body.plot, layout.frame
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(w)} {_n(h)}" width="{_n(w)}" '
           f'height="{_n(h)}" role="img" aria-label="{esc(plot.title)}" font-family="{FONT}" '
           f'font-size="{_n(TICK_PX)}"><title>{esc(plot.title)}</title>'
           f'<rect width="{_n(w)}" height="{_n(h)}" fill="#fff"/>']
    for i, line in enumerate(title):
        out.append(f'<text x="{_n(w / 2)}" y="{_n(EDGE + title_px * (1.25 * i + 0.95))}" text-anchor="middle" '
                   f'font-size="{_n(title_px)}" fill="#222">{esc(line)}</text>')
    heat = isinstance(body, Heatmap)
    if not heat:
        out.append(_grid(body, layout))
    elements, _, _ = body.draw()
    marks = _marker_lines(body, f)
    out.append(f'<svg x="{_n(f.left)}" y="{_n(f.top)}" width="{_n(f.width)}" height="{_n(f.height)}">'
               + "".join(elements) + marks + "</svg>")
    out.append(f'<rect x="{_n(f.left)}" y="{_n(f.top)}" width="{_n(f.width)}" height="{_n(f.height)}" '
               f'fill="none" stroke="{FRAME}"/>')
    out.append(_ticks(body, layout, w))
    out.append(_labels(body, layout, w, h))
    if heat:
        out.append(_colorbar(body, f))
    if legend is not None and layout.legend_at is not None:
        out.append(_draw_legend(legend, *layout.legend_at))
    out.append("</svg>")
    return "".join(out)


def _grid(body: Body, layout: Layout) -> str:
    f = layout.frame
    d = [f"M{_n(f.left + body.x.px(t.at))},{_n(f.top)}V{_n(f.bottom)}" for t in layout.x_ticks if t.label
         and not isinstance(body, Bars)]
    d += [f"M{_n(f.left)},{_n(f.top + body.y.px(t.at))}H{_n(f.right)}" for t in layout.y_ticks if t.label]
    return f'<path d="{"".join(d)}" stroke="{GRID}" stroke-width="1" fill="none"/>' if d else ""


def _marker_ends(body: Body, f: Box):
    """Each reference line that the axes can show, with its two ends in the plot area's pixels."""
    for m, color, dash in body.lines:
        axis = body.x if m.axis == "x" else body.y
        t = axis.t(float(m.value))
        if t is not None:
            p = axis.px(t)
            yield m, color, dash, ((p, 0.0), (p, f.height)) if m.axis == "x" else ((0.0, p), (f.width, p))


def _marker_segments(body: Body, f: Box) -> list:
    return [ends for *_, ends in _marker_ends(body, f)]


def _marker_lines(body: Body, f: Box) -> str:
    out = []
    for m, color, dash, ((x0, y0), (x1, y1)) in _marker_ends(body, f):
        ends = f"M{_n(x0)},{_n(y0)}L{_n(x1)},{_n(y1)}"
        pattern = DASHES.get(dash)
        out.append(f'<path d="{ends}" stroke="{color}" stroke-width="1.4"'
                   + (f' stroke-dasharray="{pattern}"' if pattern else "") + "/>")
    return "".join(out)


def _placed(ticks: list[Tick], axis: Axis, start: float, end: float):
    """Each tick inside the axes with its position (px) and the length of its mark (minor ones are half)."""
    for t in ticks:
        p = start + axis.px(t.at)
        if min(start, end) - 0.5 <= p <= max(start, end) + 0.5:
            yield p, t, TICK if t.label else TICK / 2


def _ticks(body: Body, layout: Layout, w: float) -> str:
    f = layout.frame
    marks, texts, ylabels = [], [], []
    turned = isinstance(body, Bars) and body.turned()
    px = GROUP_PX if isinstance(body, Bars) else TICK_PX
    for x, t, size in _placed(layout.x_ticks, body.x, f.left, f.right):
        marks.append(f"M{_n(x)},{_n(f.bottom)}v{_n(size)}")
        y = f.bottom + TICK + GAP + px * 0.8
        if t.label and turned:
            texts.append(f'<text x="{_n(x + 3)}" y="{_n(y)}" text-anchor="end" transform="rotate(-45 {_n(x + 3)} '
                         f'{_n(y)})">{t.label.markup(px)}</text>')
        elif t.label:
            half = t.label.width(px) / 2
            texts.append(f'<text x="{_n(min(max(x, EDGE + half), w - EDGE - half))}" y="{_n(y)}">'
                         f'{t.label.markup(px)}</text>')
    ypx = GROUP_PX if isinstance(body, Heatmap) else TICK_PX
    for y, t, size in _placed(layout.y_ticks, body.y, f.top, f.bottom):
        marks.append(f"M{_n(f.left)},{_n(y)}h{_n(-size)}")
        if t.label:
            ylabels.append(f'<text x="{_n(f.left - TICK - GAP)}" y="{_n(y + ypx * 0.35)}">'
                           f'{t.label.markup(ypx)}</text>')
    anchor = "end" if turned else "middle"
    return (f'<path d="{"".join(marks)}" stroke="{FRAME}" fill="none"/>'
            f'<g fill="{INK}" text-anchor="{anchor}" font-size="{_n(px)}">{"".join(texts)}</g>'
            f'<g fill="{INK}" text-anchor="end" font-size="{_n(ypx)}">{"".join(ylabels)}</g>')


def _labels(body: Body, layout: Layout, w: float, h: float) -> str:
    f = layout.frame
    out = []
    x_label = _axis_label(body.plot.x_label, body.x.suffix)
    if x_label:
        bottom = h - EDGE - LABEL_PX * 0.25
        if layout.legend_at is not None and layout.legend_at[1] > f.bottom:  # a legend below: the label above it
            bottom = layout.legend_at[1] - 6 - LABEL_PX * 0.25
        out.append(f'<text x="{_n(f.left + f.width / 2)}" y="{_n(bottom)}" text-anchor="middle">'
                   f'{x_label.markup(LABEL_PX)}</text>')
    y_label = _axis_label(body.y_label, body.y.suffix)
    if y_label:
        x, y = EDGE + LABEL_PX * 0.85, f.top + f.height / 2
        px = max(min(LABEL_PX, LABEL_PX * (f.height + 2 * EDGE) / y_label.width(LABEL_PX)), 7.0)  # fits beside the axes
        out.append(f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="middle" transform="rotate(-90 {_n(x)} {_n(y)})"'
                   + (f' font-size="{_n(px)}"' if px < LABEL_PX else "") + f'>{y_label.markup(px)}</text>')
    return f'<g fill="#222" font-size="{_n(LABEL_PX)}">{"".join(out)}</g>' if out else ""


def _colorbar(body: Heatmap, f: Box) -> str:
    x, n = f.right + 8, 32
    step = f.height / n
    out = [f'<rect x="{_n(x)}" y="{_n(f.top + f.height - (k + 1) * step)}" width="12" height="{_n(step + 0.3)}" '
           f'fill="{_viridis(k / (n - 1))}"/>' for k in range(n)]
    out.append(f'<rect x="{_n(x)}" y="{_n(f.top)}" width="12" height="{_n(f.height)}" fill="none" '
               f'stroke="{FRAME}"/>')
    axis = Axis()
    axis.lo, axis.hi = body.vmin, body.vmax if body.vmax > body.vmin else body.vmin + 1
    axis.a, axis.b = f.bottom, f.top
    texts, marks = [], []
    for t in axis.ticks(5):
        y = axis.px(t.at)
        marks.append(f"M{_n(x + 12)},{_n(y)}h{_n(TICK)}")
        texts.append(f'<text x="{_n(x + 12 + TICK + GAP)}" y="{_n(y + TICK_PX * 0.35)}">{t.label.markup(TICK_PX)}'
                     "</text>")
    out.append(f'<path d="{"".join(marks)}" stroke="{FRAME}"/><g fill="{INK}">{"".join(texts)}</g>')
    return "".join(out)


def _draw_legend(legend: Legend, x: float, y: float) -> str:
    row = LEGEND_PX * 1.45
    rows = math.ceil(len(legend.entries) / legend.columns)
    out = [f'<g font-size="{_n(LEGEND_PX)}"><rect x="{_n(x)}" y="{_n(y)}" width="{_n(legend.width)}" '
           f'height="{_n(legend.height)}" rx="3" fill="#fff" fill-opacity="0.9" stroke="#ccc"/>']
    for i, e in enumerate(legend.entries):
        cy = y + 4 + row * (i % rows + 0.5)
        sx = x + 6 + legend.column * (i // rows)
        if e.shape == "box":
            out.append(f'<rect x="{_n(sx + 2)}" y="{_n(cy - 4)}" width="14" height="8" fill="{e.color}"/>')
        elif e.shape == "dot":
            out.append(f'<circle cx="{_n(sx + 9)}" cy="{_n(cy)}" r="3.2" fill="{e.color}"/>')
        else:
            pattern = DASHES.get(e.dash)
            out.append(f'<path d="M{_n(sx)},{_n(cy)}h18" stroke="{e.color}" stroke-width="1.6"'
                       + (f' stroke-dasharray="{pattern}"' if pattern else "") + "/>")
        out.append(f'<text x="{_n(sx + 24)}" y="{_n(cy + LEGEND_PX * 0.35)}" fill="{INK}">{esc(e.label)}</text>')
    out.append("</g>")
    return "".join(out)
