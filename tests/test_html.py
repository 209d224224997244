"""The HTML report as a newcomer opens it (issue 13, items 11 and 13), tested by parsing the written file: a
one-screen summary at the top (the verdict table and the three figures people come for), cards that show they
can be opened, and tables with no Python ``None`` and no 16-digit numbers."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import babysitter
from babysitter.report import CheckResult, Marker, Plot, Report, Series, Table

VOID = {"br", "img", "meta", "hr", "input", "link", "col", "wbr"}
#: the self-closing elements of the inline SVG figures
SVG_EMPTY = {"rect", "path", "polyline", "circle", "line"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str, cls: str | None = None) -> list["Node"]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and (cls is None or cls in c.attrs.get("class", "").split()):
                    out.append(c)
                out += c.all(tag, cls)
        return out

    def first(self, tag: str, cls: str | None = None) -> "Node":
        found = self.all(tag, cls)
        assert found, f"no <{tag} class={cls}>"
        return found[0]


class Tree(HTMLParser):
    """A small DOM of the page (html.parser, the standard library's)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(path: Path) -> Node:
    return Tree(path.read_text()).root


def _raw_floats(cells: list[str]) -> list[str]:
    """Cells with a number of more than 6 significant digits (0.40120885969692516, not 0.0004582 or 1.235e+05)."""
    return [c for c in cells for n in re.findall(r"\d+\.\d+", c) if len(n.replace(".", "").lstrip("0")) > 6]


def _cells(root: Node) -> list[str]:
    return [td.text().strip() for td in root.all("td")]


# -- a report from a real run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Report, Node]:
    import zoo

    report = babysitter.check(**zoo.mlp_target(), select=["initial_loss", "lr_range", "activation_scale",
                                                          "grad_norms", "param_updates"],
                              options={"lr_range": {"repeats": 1, "steps": 60}})
    folder = tmp_path_factory.mktemp("html")
    return report, parse(report.save(folder)["html"])


def test_the_top_is_a_one_screen_summary_with_the_three_figures(real):
    report, root = real
    summary = root.first("section", "overview")
    rows = summary.first("table").all("tr")
    assert [r.first("a").text() for r in rows if r.all("a")] == [c.id for c in report.checks]
    figures = summary.all("svg")
    labels = [f.attrs["aria-label"] for f in figures if f.attrs.get("role") == "img"]
    wanted = [report["lr_range"].plots[0], report["grad_norms"].plots[0], report["activation_scale"].plots[0]]
    assert [p.id for p in wanted] == ["lr_curve", "total_hist", "std_by_depth"]
    assert labels == [p.title for p in wanted], labels  # inline SVG, named for screen readers
    for figure in (f for f in figures if f.attrs.get("role") == "img"):
        assert figure.attrs["viewbox"].startswith("0 0 ") and figure.first("title").text() in labels
    body = root.first("body")
    first_card = body.first("details", "check")
    order = [n for n in _walk(body) if n is summary or n is first_card]
    assert order[0] is summary  # the summary comes before the cards


def _walk(node: Node):
    for c in node.children:
        if isinstance(c, Node):
            yield c
            yield from _walk(c)


def test_passing_cards_show_that_they_open(real):
    report, root = real
    style = root.first("style").text().replace(" ", "")
    assert "details-marker{display:none" not in style and "list-style:none" not in style, style
    cards = root.all("details", "check")
    assert [c.attrs["id"] for c in cards] == [c.id for c in report.checks]
    for card, check in zip(cards, report.checks):
        summary = card.first("summary")
        if check.status == "pass":
            assert "open" not in card.attrs  # collapsed, but...
        if check.plots:  # ...its summary line says what opening it shows
            assert re.search(r"\d+ plots?", summary.text()), summary.text()


def test_a_real_report_has_no_none_cells_and_no_raw_floats(real):
    _, root = real
    cells = _cells(root)
    assert cells and "None" not in cells and "null" not in cells
    bad = _raw_floats(cells)
    assert not bad, bad[:5]
    assert not [c for c in cells if c.startswith("{")], "a metric printed as a JSON dict"


# -- a fixed report with the awkward values ----------------------------------------------------------------------

def awkward() -> Report:
    metrics = {"std_by_layer": {"model.0 (Linear)": 0.40120885969692516, "model.2 (Linear)": 0.15001722043349086},
               "first_step": None, "ratio": 0.996424980943106, "probes": [0, 32, 63], "frozen": True,
               "empty": {}, "many": {f"layer{i}": i / 3 for i in range(30)}}
    table = Table("layers", "Per layer", ("layer", "std", "std / previous std", "judged"),
                  (("model.0", 0.40120885969692516, None, True), ("model.2", 0.15001722043349086, 0.37391303, False)))
    plot = Plot("std_by_depth", "Activation std through depth", "line", (Series("std", [0, 1], [0.4, 0.15]),),
                log_y=True, markers=(Marker("first std / 100", 0.004, axis="y"),))
    checks = (CheckResult(id="activation_scale", title="Activation scale", status="pass", summary="fine",
                          metrics=metrics, tables=(table,), plots=(plot,)),
              CheckResult(id="lr_range", title="LR", status="skip", summary="no optimizer"))
    return Report("awkward", checks, run={"step": None, "seed": 0, "timings_s": {"prepare": 1.6005123}})


def test_tables_show_no_none_and_format_numbers(tmp_path):
    root = parse(awkward().save(tmp_path)["html"])
    cells = _cells(root)
    assert "None" not in cells and "null" not in cells
    assert not _raw_floats(cells), cells
    assert "0.4012" in cells and "0.1500" not in cells and "0.15" in cells
    assert "–" in cells  # the missing value and the empty dict
    assert "yes" in cells and "no" in cells


def test_dict_metrics_read_as_name_value_lines(tmp_path):
    root = parse(awkward().save(tmp_path)["html"])
    rows = {tr.all("td")[0].text(): tr.all("td")[1] for tr in root.all("table", "metrics")[0].all("tr")}
    std = rows["std_by_layer"].text()
    assert "model.0 (Linear): 0.4012" in std and "model.2 (Linear): 0.15" in std
    assert "{" not in std and '"' not in std
    many = rows["many"].text()
    assert "layer0: 0" in many and "more" in many and "layer29" not in many  # long dicts are cut, and say so
    assert rows["probes"].text() == "0, 32, 63"


def test_the_summary_without_those_checks_has_no_figures(tmp_path):
    report = Report("t", (CheckResult(id="initial_loss", status="pass", summary="ok"),))
    summary = parse(report.save(tmp_path)["html"]).first("section", "overview")
    assert summary.all("table") and not summary.all("svg")
