"""The report's figures as SVG (issue 19), parsed as XML: what a plot holds is drawn (a polyline per series, a bar
per value, a cell per heatmap value, a tick per label), non-finite values are gaps, a plot of nothing is left out,
every string is escaped; and the figures read as people need them (issue 13): whole titles, integer ticks where x
counts, marker lines no curve shares a colour with, an LR curve's y-range kept to where it informs, zeros on a log
axis, powers of ten on log ticks, long names that keep their end, text inside the figure, legends off the data."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from babysitter.render import svg
from babysitter.render.plotdata import COLORS, has_data
from babysitter.report import Marker, Plot, Series

NS = "{http://www.w3.org/2000/svg}"


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == NS + "svg"
    return root


def draw(plot: Plot, size=None) -> ET.Element:
    return parse(svg.render(plot, size))


def area(root: ET.Element) -> ET.Element:
    """The plot area: the nested <svg> that clips the data."""
    (inner,) = root.findall(NS + "svg")
    return inner


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in area(root).iter(NS + "polyline")]


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(NS + "text")]


def tick_group(root: ET.Element, axis: str) -> ET.Element:
    """The x tick labels (the group drawn under the axes) or the y ones (right-aligned, left of the axes)."""
    groups = [g for g in root.findall(NS + "g") if g.get("text-anchor") in ("middle", "end") and g.get("font-size")
              and list(g.iter(NS + "text"))]
    return groups[0] if axis == "x" else groups[1]


def tick_labels(root: ET.Element, axis: str) -> list[str]:
    return ["".join(t.itertext()) for t in tick_group(root, axis).iter(NS + "text")]


def number(label: str) -> float:
    """A tick label as a number: "0.5", "−2", "10−4" (ten to the -4), "2×10−5"."""
    label = label.replace("−", "-")
    if "10" in label and ("×" in label or label.startswith("10") and len(label) > 2):
        mantissa, _, exp = label.partition("×") if "×" in label else ("1", "", label)
        return float(mantissa) * 10.0 ** int(exp[2:])
    return float(label)


# -- structure ---------------------------------------------------------------------------------------------------

def test_a_line_plot_is_valid_svg_with_a_polyline_per_series_ticks_and_a_legend():
    xs = list(range(10))
    plot = Plot("p", "Two curves", "line",
                (Series("a", xs, [x * 0.5 for x in xs]), Series("b", xs, [9 - x for x in xs])), x_label="step",
                y_label="loss", markers=(Marker("start", 2.0, axis="y"),))
    root = draw(plot)
    assert root.get("viewBox") == "0 0 540.0 304.0" and root.get("role") == "img"
    assert root.find(NS + "title").text == "Two curves"
    lines = polylines(root)
    assert [len(line) for line in lines] == [10, 10]
    assert [p.get("stroke") for p in area(root).iter(NS + "g")] == list(COLORS[:2])
    assert len([p for p in area(root).iter(NS + "path") if p.get("stroke-dasharray")]) == 1  # the marker line
    x_ticks = tick_labels(root, "x")
    assert len(x_ticks) >= 3 and all(float(t).is_integer() for t in x_ticks)
    assert {"step", "loss", "a", "b", "start"} <= set(texts(root))


def test_summary_size_and_a_heatmap_that_grows_with_its_rows():
    plot = Plot("p", "t", "line", (Series("a", [0, 1], [1.0, 2.0]),))
    assert draw(plot, (390, 270)).get("viewBox") == "0 0 390.0 270.0"
    rows = tuple(Series(f"layer {i}", list(range(5)), [i * j for j in range(5)]) for i in range(30))
    tall = draw(Plot("h", "heat", "heatmap", rows))
    assert float(tall.get("height")) > 304


def test_non_finite_values_are_gaps_and_a_lone_point_a_dot():
    ys = [1.0, 2.0, float("nan"), 3.0, 4.0, float("inf"), 5.0]
    plot = Plot("p", "gaps", "line", (Series("a", list(range(7)), ys),))
    root = draw(plot)
    assert [len(line) for line in polylines(root)] == [2, 2]
    assert len(list(area(root).iter(NS + "circle"))) == 1
    log = draw(Plot("q", "log", "line", (Series("a", [0, 1, 2, 3], [1.0, -1.0, 0.1, 0.01]),), log_x=True))
    assert [len(line) for line in polylines(log)] == [3]  # x = 0 has no place on a log axis


def test_a_plot_of_nothing_is_left_out():
    empty = Plot("e", "Nothing", "line", (Series("a", [0, 1], [float("nan"), float("inf")]),))
    assert not has_data(empty) and svg.render(empty) == ""
    assert svg.render(Plot("e", "No series", "bar", ())) == ""


def test_bars_histograms_and_heatmaps_draw_what_they_hold():
    bars = draw(Plot("b", "bars", "bar", (Series("x", ["a", "b", "c"], [1.0, 2.0, 3.0]),
                                          Series("y", ["a", "b", "c"], [0.5, float("nan"), 1.5]))))
    assert len(list(area(bars).iter(NS + "rect"))) == 5  # the non-finite value is no bar
    assert tick_labels(bars, "x") == ["a", "b", "c"]
    hist = draw(Plot("h", "hist", "hist", (Series("v", (), [0.1, 0.2, 0.2, 0.9, float("nan")]),), bins=4))
    (path,) = area(hist).iter(NS + "path")
    assert path.get("fill") == COLORS[0]
    assert [float(t) for t in tick_labels(hist, "y")] == [0, 1, 2, 3]  # whole counts
    cells = [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, float("nan"), 1.0], [0.0, 0.0, 0.0, 0.0]]
    heat = draw(Plot("m", "heat", "heatmap", tuple(Series(f"row {i}", [0, 1, 2, 3], r) for i, r in enumerate(cells))))
    fills = [r.get("fill") for r in area(heat).iter(NS + "rect")]
    assert len(fills) == 4 + 3 + 1  # the blank cell is not drawn; a run of one colour is one rectangle
    assert fills[3] == svg.VIRIDIS[-1] and fills[-1] == svg.VIRIDIS[0]  # 4, the largest; the row of zeros
    assert {"row 0", "row 1", "row 2"} <= set(texts(heat))
    scale = [r for r in heat.findall(NS + "rect") if r.get("width") == "12"]
    assert len(scale) >= 10  # the colour scale beside it


def test_every_user_string_is_escaped():
    hostile = "<script>alert('x')</script> & \"quoted\""
    plot = Plot("p", hostile, "bar", (Series(hostile, [hostile, "b"], [1.0, 2.0]), Series("s<2>", ["a", "b"], [1, 2])),
                x_label=hostile, y_label="a<b & c>d", markers=(Marker(hostile, 1.5, axis="y"),))
    text = svg.render(plot)
    assert "<script>" not in text and "&lt;script&gt;" in text
    root = parse(text)  # well-formed XML
    assert root.find(NS + "title").text == hostile and root.get("aria-label") == hostile
    shown = texts(root)
    assert "a<b & c>d" in shown and "s<2>" in shown and hostile in shown  # the legend and the x label, whole
    bad = svg.render(Plot("c", "control \x00\x07 chars", "line", (Series("a\x1b", [0, 1], [1, 2]),
                                                                    Series("b", [0, 1], [2, 1]))))
    assert "control  chars" in texts(parse(bad))


# -- figures as people read them ---------------------------------------------------------------------------------

def test_a_long_title_is_wrapped_inside_the_figure():
    title = "Outputs of tanh, sigmoid (and softmax top probability) at init, by layer (model.encoder.0 > model.1)"
    for size in (None, (390, 270)):
        root = draw(Plot("p", title, "line", (Series("a", [0, 1, 2], [1.0, 2.0, 3.0]),)), size)
        width = float(root.get("width"))
        lines = [t for t in root.findall(NS + "text")]  # the title's lines are the figure's own texts
        assert len(lines) >= 2 and " ".join("".join(t.itertext()) for t in lines) == title
        for t in lines:
            px = float(t.get("font-size"))
            assert svg.width(t.text, px) <= width - 2 * svg.EDGE


def test_layer_and_step_axes_have_integer_ticks():
    for xs in ([0, 1], [0, 1, 2], list(range(7)), list(range(200))):
        root = draw(Plot("d", "by layer", "line", (Series("std", xs, [0.4 / (i + 1) for i in xs]),), log_y=True))
        ticks = tick_labels(root, "x")
        assert ticks and all(float(t).is_integer() for t in ticks), (xs, ticks)


def test_marker_lines_never_share_a_colour_with_a_curve():
    series = tuple(Series(f"order {i}", [1e-5, 1e-3, 1e-1], [1.0, 0.8 - i / 10, 1.2]) for i in range(4))
    markers = tuple(Marker(label, v) for label, v in (("suggested", 1e-3), ("range low", 1e-5), ("range high", 0.05),
                                                        ("diverged", 0.09), ("your LR", 0.01)))
    root = draw(Plot("lr", "Smoothed loss against the learning rate", "line", series, log_x=True, markers=markers))
    curves = {g.get("stroke") for g in area(root).iter(NS + "g")}
    marks = [(p.get("stroke"), p.get("stroke-dasharray")) for p in area(root).iter(NS + "path")]
    assert len(curves) == 4 and len(marks) == 5
    assert not curves & {c for c, _ in marks}
    assert len(set(marks)) == len(marks)  # and no two markers look alike


def test_a_diverging_repeat_does_not_flatten_the_lr_curve():
    lrs = [10 ** (-7 + i / 10) for i in range(80)]
    calm = [2.3 - 1.5 * (1 / (1 + math.exp(-(i - 50) / 4))) for i in range(80)]  # 2.3 falling to 0.8
    wild = calm[:70] + [calm[69] * 3 ** k for k in range(1, 11)]  # one repeat shoots to ~4e4
    root = draw(Plot("lr_curve", "Smoothed loss against the learning rate", "line",
                     (Series("order 0", lrs, calm), Series("order 1", lrs, wild)), log_x=True, y_label="loss",
                     markers=(Marker("suggested", 1e-3),)))
    ys = [number(t) for t in tick_labels(root, "y")]
    assert max(ys) < 2 * 2.3 and min(ys) <= 1.0, ys  # the start, the descent and the turn up
    assert "loss (divergence cut off)" in texts(root)
    x_ticks = tick_labels(root, "x")
    assert "10−7" in x_ticks or "10−6" in x_ticks  # decades as powers of ten
    assert all(t.startswith("10") for t in x_ticks)


def test_zeros_on_a_log_axis_sit_on_a_zero_line():
    ys = [1.0] + [0.0] * 30 + [3e-4, 0.0]
    root = draw(Plot("g", "relative gradient", "line", (Series("example 0", list(range(len(ys))), ys),), log_y=True,
                     markers=(Marker("pass", 1e-6, axis="y"),)))
    ticks = [number(t) for t in tick_labels(root, "y")]
    assert ticks[0] == 0 and min(t for t in ticks if t > 0) >= 1e-7 and max(ticks) >= 1, ticks
    (line,) = polylines(root)
    bottom = float(area(root).get("height"))
    assert max(y for _, y in line) < bottom  # the zeros are on the line, inside the axes
    bars = draw(Plot("r", "ratios", "bar", (Series("update/weight", ["a", "b", "c"], [1e-3, 0.0, 2e-3]),), log_y=True))
    ticks = [number(t) for t in tick_labels(bars, "y")]
    assert ticks[0] == 0 and min(t for t in ticks if t > 0) >= 1e-5, ticks


def test_small_and_large_linear_values_keep_short_labels():
    root = draw(Plot("race", "held-out loss", "scatter", (Series("a", [0.05, 0.1, 0.2], [4.2e-5, 4.5e-5, 4.8e-5]),),
                     log_x=True, y_label="held-out loss"))
    assert all(len(t) <= 4 for t in tick_labels(root, "y")), tick_labels(root, "y")
    assert "held-out loss (×10−5)" in texts(root)
    assert [number(t) for t in tick_labels(root, "x")] == [0.05, 0.1, 0.2]  # under a decade: 1-2-5 steps


def awkward_plots() -> list[Plot]:
    """Plots whose text is hard to fit (also drawn by test_figures.py's matplotlib path)."""
    names = [f"model.encoder.layers.{i}.self_attn.out_proj (Linear)" for i in range(12)]
    return [
        Plot("heat", "log10 |activation| per layer at init (left bin: zeros)", "heatmap",
             tuple(Series(n, list(range(20)), [(i * j) % 7 for j in range(20)]) for i, n in enumerate(names))),
        Plot("bars", "Update/weight ratio per weight matrix", "bar",
             (Series("ratio", names, [1e-3 * (i + 1) for i in range(12)]),), log_y=True,
             markers=(Marker("low", 1e-5, axis="y"),)),
        Plot("many", "Per-feature std", "bar", (Series("std", list(range(64)), [1.0] * 64),)),
        Plot("title", "A very long title " * 12, "line", (Series("a", [0, 1, 2], [1e6, 2e6, 3e6]),), x_label="step",
             y_label="big values"),
        Plot("offset", "Offset", "line", (Series("a", [0, 1, 2], [1.000001, 1.000002, 1.000003]),), y_label="y"),
        Plot("symlog", "Zeros on a log axis", "line", (Series("a", list(range(5)), [0, 1e-6, 1e-3, 0, 1]),),
             log_y=True),
        Plot("x", "Large x", "scatter", (Series("a", [1e5, 2e5, 3e5], [1, 2, 3]),), x_label="examples"),
        Plot("sweep", "Loss against the LR", "line", (Series("a", [1e-7, 1e-3, 1.0], [2.3, 1.0, 3.0]),), log_x=True,
             x_label="learning rate", y_label="loss"),
    ]


def _extent(t: ET.Element, px: float) -> tuple[float, float, float, float]:
    """Where a text reaches (left, top, right, bottom), from its anchor, estimated width and rotation."""
    x, y = float(t.get("x")), float(t.get("y"))
    w = sum(svg.width(part, float(s.get("font-size", px)) if s is not t else px)
            for s in t.iter() for part in ([s.text] if s.text else []))
    anchor = t.get("text-anchor") or t.get("_anchor")
    transform = t.get("transform") or ""
    if "rotate(-45" in transform:  # end-anchored, turned: down and to the left
        return x - w * 0.72, y - px, x, y + w * 0.72
    if "rotate(-90" in transform:  # centred, turned up
        return x - px, y - w / 2, x, y + w / 2
    left = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
    return left, y - px, left + w, y + 0.3 * px


def _texts_with_style(root: ET.Element):
    def walk(node, anchor, px):
        anchor = node.get("text-anchor", anchor)
        px = float(node.get("font-size", px))
        if node.tag == NS + "text":
            node.set("_anchor", anchor)
            yield node, px
            return
        for child in node:
            yield from walk(child, anchor, px)
    yield from walk(root, "start", float(root.get("font-size")))


def test_every_figure_keeps_its_text_inside_and_the_axes_most_of_the_room():
    for plot in awkward_plots():
        root = draw(plot)
        w, h = float(root.get("width")), float(root.get("height"))
        for t, px in _texts_with_style(root):
            left, top, right, bottom = _extent(t, px)
            assert left >= -1 and top >= -1 and right <= w + 1 and bottom <= h + 1, (plot.id, "".join(t.itertext()))
        inner = area(root)
        assert float(inner.get("width")) > 0.5 * w and float(inner.get("height")) > 0.35 * h, plot.id


def test_long_names_keep_their_end_and_crowded_labels_thin_out():
    labels = tick_labels(draw(awkward_plots()[1]), "x")
    assert labels[3] == "…3.self_attn.out_proj (Linear)" and len(set(labels)) == 12
    root = draw(awkward_plots()[2])
    labels = tick_labels(root, "x")
    assert labels[0] == "0" and 8 <= len(labels) < 64  # every k-th feature...
    under = tick_group(root, "x")
    spans = [_extent(t, px) for t, px in _texts_with_style(root) if t in list(under)]
    assert all(a[2] < b[0] for a, b in zip(spans, spans[1:]))  # ...and no two overlap


def _legend_box(root: ET.Element) -> tuple[float, float, float, float]:
    (box,) = [r for r in root.iter(NS + "rect") if r.get("rx")]
    x, y = float(box.get("x")), float(box.get("y"))
    return x, y, x + float(box.get("width")), y + float(box.get("height"))


@pytest.mark.parametrize("busy", [False, True])
def test_the_legend_covers_no_data(busy):
    xs = list(range(50))
    series = (Series("falling", xs, [1 - x / 60 for x in xs]), Series("low", xs, [0.1 + x / 500 for x in xs]))
    if busy:  # a curve through every corner
        series += (Series("zigzag", xs, [1.0 if (x // 5) % 2 else 0.1 for x in xs]),)
    root = draw(Plot("p", "legend", "line", series, markers=(Marker("threshold", 0.5, axis="y"),)))
    inner = area(root)
    ox, oy = float(inner.get("x")), float(inner.get("y"))
    left, top, right, bottom = _legend_box(root)
    assert len([t for t in texts(root) if t in ("falling", "low", "zigzag", "threshold")]) == 3 + busy
    if busy:
        assert left >= ox + float(inner.get("width"))  # beside the axes
    for line in polylines(root):
        for x, y in line:
            assert not (left - 1 < x + ox < right + 1 and top - 1 < y + oy < bottom + 1), (x, y)


@pytest.mark.parametrize("kind", ["line", "scatter", "bar", "hist", "heatmap"])
def test_odd_values_never_break_a_figure(kind):
    """A figure is drawn, with finite coordinates, from values a report can hold: subnormal and huge numbers,
    negatives and zeros on log axes, one repeated x, names for x, a single value."""
    odd = [5e-324, 1e300, -3.0, 0.0, float("nan"), 2.0, 2.0]
    for xs in ([], [5] * 7, [f"n{i}" for i in range(7)], odd):
        for log in (False, True):
            plot = Plot("p", "odd", kind, (Series("a", xs, odd), Series("b", xs[:1], odd[5:6])), log_x=log,
                        log_y=log, markers=(Marker("m", 5e-324, axis="y"), Marker("x", -1.0)), bins=1)
            text = svg.render(plot)
            parse(text)
            assert not re.search(r'(="|[ ,MHVLhv])-?(nan|inf)', text), (xs, log)  # every coordinate a number
