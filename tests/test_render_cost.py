"""What writing a report costs, as structure rather than seconds (issue 19): each figure is drawn once per save, as
inline SVG, and shared by every place that shows it; the page imports no matplotlib and the CSVs no pandas; the
garbage collector is paused while the report is written."""
from __future__ import annotations

import subprocess
import sys

import pytest

from babysitter.render import html, svg
from babysitter.render.plotdata import has_data
from babysitter.report import CheckResult, Marker, Plot, Report, Series, Table


def _plot(pid: str, title: str, kind: str = "line", **kw) -> Plot:
    xs = list(range(12))
    return Plot(pid, title, kind, (Series("a", xs, [1.0 + (i % 5) / 7 for i in xs]),), **kw)


def sample() -> Report:
    """The three summary figures, other figures, and a plot with nothing to draw."""
    lr = Plot("lr_curve", "Loss against the LR", "line", (Series("order 0", [1e-5, 1e-3, 1e-1], [2.3, 1.1, 3.0]),),
              log_x=True, markers=(Marker("suggested", 1e-3),))
    checks = (
        CheckResult(id="lr_range", status="pass", summary="ok", plots=(lr, _plot("repeats", "Repeats"))),
        CheckResult(id="grad_norms", status="warn", summary="hm",
                    plots=(Plot("total_hist", "Norms", "hist", (Series("norm", (), [0.1, 0.2, 0.2, 0.4]),)),
                           _plot("depth", "By depth", log_y=True))),
        CheckResult(id="activation_scale", status="pass", summary="ok",
                    plots=(_plot("std_by_depth", "Std through depth", log_y=True),
                           Plot("empty", "Nothing", "line", (Series("a", [0, 1], ["nan", "nan"]),))),
                    tables=(Table("layers", "Layers", ("layer", "std"), (("model.0", 0.4), ("model.2", None))),)),
        CheckResult(id="dead_relu", status="pass", summary="ok",
                    plots=(Plot("dead", "Dead units", "bar", (Series("dead", ["l0", "l1"], [0.0, 0.1]),)),)),
    )
    return Report("costs", checks)


def _count(monkeypatch, module, name: str) -> list:
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_figure_is_drawn_once_per_save(tmp_path, monkeypatch):
    report = sample()
    draws = _count(monkeypatch, svg, "render")
    report.save(tmp_path)
    shown = [p for c in report.checks for p in c.plots if has_data(p)]
    assert sorted(id(a[0]) for a in draws) == sorted(id(p) for p in shown)  # the summary's three are not redrawn
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg xmlns") == len(shown) + 3 and "Nothing" not in page  # the plot of nothing is left out


def test_the_summary_shows_the_cards_figures():
    page = html.render(sample())
    summary, cards = page.split("</section>", 1)
    figures = ["<svg xmlns" + part.split("</a>", 1)[0] for part in summary.split("<svg xmlns")[1:]]
    assert len(figures) == 3
    for figure in figures:
        assert figure.endswith("</svg>") and cards.count(figure) == 1  # the same figure, in its card
    assert 'viewBox="0 0 390.0 270.0"' in figures[0]  # drawn at the summary's size


def test_the_page_imports_no_matplotlib(tmp_path):
    code = ("import sys, pathlib\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from test_render_cost import sample\n"
            "sample().save(pathlib.Path(sys.argv[1]))\n"
            "print('matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(__import__("pathlib").Path(__file__).parent)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert (tmp_path / "report.html").exists()


def test_csvs_are_written_without_pandas(tmp_path):
    code = ("import sys, pathlib\n"
            "from babysitter.report import CheckResult, Report, Table\n"
            "from babysitter.render.tables import write_csvs\n"
            "table = Table('layers', 'Layers', ('layer', 'std', 'n'), (('model.0', 0.4, 3), ('model.2', None, None)))\n"
            "report = Report('t', (CheckResult(id='activation_scale', status='pass', summary='', tables=(table,)),))\n"
            "write_csvs(report, pathlib.Path(sys.argv[1]))\n"
            "print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert (tmp_path / "activation_scale.layers.csv").read_text() == "layer,std,n\nmodel.0,0.4,3\nmodel.2,,\n"


def test_the_collector_is_paused_while_writing_and_left_as_it_was(tmp_path, monkeypatch):
    import gc

    seen = []
    real = svg.render

    def watched(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(svg, "render", watched)
    was = gc.isenabled()
    try:
        gc.enable()
        sample().save(tmp_path / "a")
        assert gc.isenabled() and seen and not any(seen)
        gc.disable()
        sample().save(tmp_path / "b")
        assert not gc.isenabled()  # a caller's choice is kept
        gc.enable()

        def broken(report):
            raise RuntimeError("a renderer fails")

        monkeypatch.setattr(html, "render", broken)
        with pytest.raises(RuntimeError):
            sample().save(tmp_path / "c")
        assert gc.isenabled()  # and back on after a failure too
    finally:
        (gc.enable if was else gc.disable)()
