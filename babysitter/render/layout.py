"""Figure margins measured from the text around the axes, set before the figure is drawn.

matplotlib's ``tight_layout`` and constrained layout find the margins by laying out every artist of the figure (each
tick's lines and label, the title's position, the legend), which costs about as much as drawing it; the report then
drew each figure a second time to save it. Here the margins come from the few strings that can stick out of the axes
(the title, the axis labels, the tick labels as the axes' locators and formatters will write them), measured with the
renderer that will draw them, whose text cache the draw then reuses: saving draws each figure once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.text import Text

#: blank space (inches) kept between the figure's edges and its outermost text
EDGE = 0.06
#: extra room (inches) beside the tick labels: the locators may pick slightly different ticks once the axes have
#: their final size
SLACK = 0.05
#: the least room (inches) right of the axes, where the last x tick label may reach past them
MIN_RIGHT = 0.15


@dataclass(frozen=True)
class _Ticks:
    """What one axis' tick labels need around the axes (inches): ``depth`` away from the axes (the labels' widest
    or tallest extent plus the tick and its pad), ``before``/``after`` past its two ends along it, ``offset`` for the
    offset text ("1e-5") at its end."""

    depth: float = 0.0
    before: float = 0.0
    after: float = 0.0
    offset: float = 0.0


def fit(ax: Axes) -> None:
    """Set the margins of ``ax``'s figure so that its title, axis labels and tick labels lie inside it, and pin the
    title above the axes (matplotlib would measure the y axis again at every draw to place it)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    xt, yt = _ticks(ax.xaxis, renderer), _ticks(ax.yaxis, renderer)
    left = EDGE + _label(ax.yaxis, renderer) + yt.depth + SLACK
    right = EDGE + max(xt.after, MIN_RIGHT)
    bottom = EDGE + _label(ax.xaxis, renderer) + xt.depth + xt.offset + SLACK
    top = EDGE + _title(ax, renderer) + yt.offset
    left = max(left, EDGE + xt.before)
    left, right = min(left, width * 0.45), min(right, width * 0.3)  # text past this is cut, the axes keep room
    bottom, top = min(bottom, height * 0.55), min(top, height * 0.4)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)


def _inches(text: Text, renderer: RendererBase, along: str) -> float:
    if not text.get_visible() or not text.get_text():
        return 0.0
    box = text.get_window_extent(renderer)
    return (box.width if along == "width" else box.height) / text.figure.dpi


def _label(axis: Axis, renderer: RendererBase) -> float:
    """The axis label's thickness with its pad (inches)."""
    size = _inches(axis.label, renderer, "width" if axis.axis_name == "y" else "height")
    return size + axis.labelpad / 72 if size else 0.0


def _title(ax: Axes, renderer: RendererBase) -> float:
    """The title's height with its pad (inches); the title is pinned there (``y=1``), where the margins leave room."""
    ax.set_title(ax.get_title(), y=1.0, fontsize=ax.title.get_fontsize())
    size = _inches(ax.title, renderer, "height")
    return size + rcParams["axes.titlepad"] / 72 if size else 0.0


def _ticks(axis: Axis, renderer: RendererBase) -> _Ticks:
    """Measure the labels the axis will draw: its locators' ticks inside the view, as its formatters write them."""
    labels, reach, offset = [], 0.0, None
    for minor in (False, True):
        locator = axis.get_minor_locator() if minor else axis.get_major_locator()
        formatter = axis.get_minor_formatter() if minor else axis.get_major_formatter()
        locs = list(locator())
        if not locs:
            continue
        tick = (axis.minorTicks if minor else axis.majorTicks)[0]  # the first is made by any draw: the style
        texts = formatter.format_ticks(locs)  # all of them, as the axis does: the offset depends on the set
        view = axis.get_view_interval()
        labels += [(loc, _sized(tick.label1, text)) for loc, text in zip(locs, texts) if text and _inside(view, loc)]
        if not minor:
            reach = (tick.get_tick_padding() + tick.get_pad()) / 72
            offset = _sized(axis.offsetText, formatter.get_offset())
    if not labels:
        return _Ticks()
    return _extent(axis, labels, renderer, reach, offset)


def _inside(view, loc: float) -> bool:
    """Whether the axis draws a tick at ``loc``: inside its view, give or take rounding."""
    lo, hi = sorted(view)
    slack = (hi - lo) * 1e-10
    return lo - slack <= loc <= hi + slack


def _sized(style: Text, text: str) -> Text:
    """A free Text with ``style``'s font, rotation and alignment, to measure ``text`` as it will be drawn."""
    out = Text(0, 0, text, fontproperties=style.get_fontproperties(), rotation=style.get_rotation(),
               horizontalalignment=style.get_horizontalalignment(), rotation_mode=style.get_rotation_mode())
    out.set_figure(style.figure)
    return out


def _extent(axis: Axis, labels: list, renderer: RendererBase, reach: float, offset: Optional[Text]) -> _Ticks:
    """Where the labels reach: away from the axes (the tallest x label, the widest y label, plus ``reach``), and,
    for x, past the axes' two ends (a label centred on the last tick, a long rotated one on the first bar)."""
    dpi = axis.figure.dpi
    boxes = [text.get_window_extent(renderer) for _, text in labels]
    extra = _inches(offset, renderer, "height") if offset is not None else 0.0
    if axis.axis_name == "y":
        return _Ticks(depth=max(b.width for b in boxes) / dpi + reach, offset=extra)
    scale = axis.get_transform()
    ends = scale.transform(np.reshape(axis.get_view_interval(), (-1, 1))).ravel()
    where = (scale.transform(np.reshape([loc for loc, _ in labels], (-1, 1))).ravel() - ends[0]) / (ends[1] - ends[0])
    length = axis.axes.get_position().width * axis.figure.get_figwidth()
    starts = [f * length + b.x0 / dpi for f, b in zip(where, boxes)]
    stops = [f * length + b.x1 / dpi for f, b in zip(where, boxes)]
    return _Ticks(depth=max(b.height for b in boxes) / dpi + reach, before=max(0.0, -min(starts)),
                  after=max(0.0, max(stops) - length), offset=extra)
