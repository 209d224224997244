"""The optional matplotlib figures (``babysitter.render.figures.draw``, outside the report, whose figures are SVG:
see test_svg.py), as people read them (issue 13, item 12): whole titles, integer ticks where x counts layers or
steps, no log axis stretched down to 1e-21 by zeros, margins measured without a layout pass that draws a figure
twice. The facts both renderers draw (marker styles, a sweep's y-range) are render/plotdata.py's, tested through
the SVG figures."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from test_svg import awkward_plots  # noqa: E402

from babysitter.render.figures import draw, to_png  # noqa: E402
from babysitter.report import Marker, Plot, Series  # noqa: E402


def _visible_ticks(ax, which: str) -> list[float]:
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    ticks = ax.get_yticks() if which == "y" else ax.get_xticks()
    return [t for t in ticks if lo <= t <= hi]


def test_a_long_title_is_wrapped_inside_the_figure():
    title = "Outputs of tanh, sigmoid (and softmax top probability) at init, by layer (model.encoder.0 > model.1)"
    fig = draw(Plot("p", title, "line", (Series("a", [0, 1, 2], [1.0, 2.0, 3.0]),)))
    ax = fig.axes[0]
    shown = ax.get_title()
    assert " ".join(shown.split()) == title  # every word kept, over several lines
    box = ax.title.get_window_extent(renderer=fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)


def test_layer_and_step_axes_have_integer_ticks():
    for xs in ([0, 1], [0, 1, 2], list(range(7))):
        fig = draw(Plot("d", "by layer", "line", (Series("std", xs, [0.4 / (i + 1) for i in xs]),), log_y=True))
        ticks = _visible_ticks(fig.axes[0], "x")
        assert ticks and all(float(t).is_integer() for t in ticks), (xs, ticks)
    hist = draw(Plot("h", "norms", "hist", (Series("total norm", (), [0.3, 0.35, 0.5, 0.5, 0.9]),)))
    ticks = _visible_ticks(hist.axes[0], "y")  # counts of steps
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_zeros_on_a_log_axis_sit_on_a_zero_line():
    """A log axis cannot show 0: zeros used to be clipped off its bottom (lines plunging to the edge, a series of
    zeros invisible, the axis stretched toward 1e-21); they sit on a labelled 0 below the decades of the data."""
    ys = [1.0] + [0.0] * 30 + [3e-4, 0.0]
    ax = draw(Plot("g", "relative gradient", "line", (Series("example 0", list(range(len(ys))), ys),), log_y=True,
                   markers=(Marker("pass", 1e-6, axis="y"),))).axes[0]
    ticks = _visible_ticks(ax, "y")
    assert 0 in ticks and min(t for t in ticks if t > 0) >= 1e-7, ticks
    lo, hi = ax.get_ylim()
    assert lo <= 0 < 1e-6 < 1 <= hi
    bars = draw(Plot("r", "ratios", "bar", (Series("update/weight", ["a", "b", "c"], [1e-3, 0.0, 2e-3]),),
                     log_y=True)).axes[0]
    ticks = _visible_ticks(bars, "y")
    assert 0 in ticks and min(t for t in ticks if t > 0) >= 1e-5, ticks
    plain = draw(Plot("n", "norms", "line", (Series("a", [0, 1, 2], [1e-3, 1.0, 2e-14]),), log_y=True)).axes[0]
    assert plain.get_yscale() == "log"  # no zero, a plain log axis: tiny values are data, not zeros


def test_every_figure_keeps_its_text_inside_without_a_layout_pass():
    """The margins are measured before drawing (no tight_layout, which draws each figure once more): the title,
    labels and tick labels of awkward figures still lie inside them, and the axes keep most of the room."""
    for plot in awkward_plots():
        fig = draw(plot)
        fig.canvas.draw()
        ax = fig.axes[0]
        box, frame = ax.get_tightbbox(fig.canvas.get_renderer()), fig.bbox
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1, (plot.id, box)
        axes = ax.get_window_extent()
        assert axes.width > 0.5 * frame.width and axes.height > 0.35 * frame.height, (plot.id, axes)


def test_long_names_keep_their_end_and_crowded_labels_thin_out():
    ax = draw(awkward_plots()[1]).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[3] == "…3.self_attn.out_proj (Linear)" and len(set(labels)) == 12
    fig = draw(awkward_plots()[2])
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticklabels()
    assert ticks[0].get_text() == "0" and 8 <= len(ticks) < 64  # every k-th feature...
    assert all(t.get_horizontalalignment() == "center" for t in ticks)  # ...under its bar
    boxes = [t.get_window_extent() for t in ticks]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # and no two overlap


def test_to_png_draws_each_figure_once_without_a_layout_pass(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tight_layout draws the figure once more to measure it")

    monkeypatch.setattr(Figure, "tight_layout", refuse)
    renders = []
    real = Figure.draw

    def counted(self, *args, **kwargs):
        renders.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "draw", counted)
    for plot in awkward_plots():
        assert to_png(plot).startswith(b"\x89PNG")
        assert draw(plot).get_layout_engine() is None  # no constrained layout either
    assert len(renders) == len(awkward_plots())
