"""What writing a report costs, as structure rather than seconds (issue 19): each figure is drawn and encoded once
per save and shared by every place that shows it, no layout pass draws a figure an extra time, the CSVs need no
pandas, and figures drawn on two cores are the figures drawn on one."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from babysitter.render import figures, html, parallel
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


@pytest.fixture
def one_core(monkeypatch):
    """Every figure drawn in this process, where calls can be counted."""
    monkeypatch.setattr(parallel, "two_cores", lambda: False)


def _count(monkeypatch, module, name: str) -> list:
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_figure_is_drawn_and_saved_once_per_save(tmp_path, monkeypatch, one_core):
    report = sample()
    draws = _count(monkeypatch, figures, "draw")
    saves = _count(monkeypatch, Figure, "savefig")
    report.save(tmp_path)
    shown = [p for c in report.checks for p in c.plots if figures.has_data(p)]
    assert sorted(id(a[0]) for a in draws) == sorted(id(p) for p in shown)  # the summary's three are not redrawn
    assert len(saves) == len(shown)


def test_no_layout_pass_draws_a_figure_again(tmp_path, monkeypatch, one_core):
    def refuse(*args, **kwargs):
        raise AssertionError("tight_layout draws the figure once more to measure it")

    monkeypatch.setattr(Figure, "tight_layout", refuse)
    renders = _count(monkeypatch, Figure, "draw")  # Figure.draw renders every artist: once per figure
    report = sample()
    report.save(tmp_path, formats=("html",))
    shown = [p for c in report.checks for p in c.plots if figures.has_data(p)]
    assert len(renders) == len(shown)
    for plot in shown:
        assert figures.draw(plot).get_layout_engine() is None  # no constrained layout either


def test_the_summary_shows_the_cards_images(tmp_path, one_core):
    page = html.render(sample())
    summary, cards = page.split("</section>", 1)
    srcs = [s.split('"', 1)[0] for s in summary.split('src="')[1:]]
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,") and cards.count(src) == 1  # the same bytes, in its card


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


def test_figures_drawn_on_two_cores_are_the_figures_drawn_on_one(monkeypatch):
    report = sample()
    shown = [p for c in report.checks for p in c.plots if figures.has_data(p)]
    sizes = [None] * len(shown)
    monkeypatch.setattr(parallel, "two_cores", lambda: True)
    forked = figures.pngs(shown, sizes)
    monkeypatch.setattr(parallel, "two_cores", lambda: False)
    assert forked == figures.pngs(shown, sizes)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_failing_child_leaves_the_work_to_this_process(monkeypatch):
    parent = os.getpid()
    monkeypatch.setattr(parallel, "two_cores", lambda: True)

    def square(x: int) -> int:
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return x * x

    children = []
    start = parallel.Background.start

    def recorded(self):
        started = start(self)
        if self.pid not in children:
            children.append(self.pid)
        return started

    monkeypatch.setattr(parallel.Background, "start", recorded)
    assert parallel.split_map(square, range(9)) == [x * x for x in range(9)]
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # reaped: no zombie is left


def test_split_map_keeps_order_and_computes_small_lists_here(monkeypatch):
    monkeypatch.setattr(parallel, "two_cores", lambda: True)
    assert parallel.split_map(lambda x: (x, os.getpid()), range(3)) == [(x, os.getpid()) for x in range(3)]
    assert [x for x, _ in parallel.split_map(lambda x: (x, os.getpid()), range(10))] == list(range(10))


def test_the_collector_is_paused_while_writing_and_left_as_it_was(tmp_path, monkeypatch, one_core):
    import gc

    seen = []
    real = figures.draw

    def watched(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(figures, "draw", watched)
    was = gc.isenabled()
    try:
        gc.enable()
        sample().save(tmp_path / "a")
        assert gc.isenabled() and seen and not any(seen)
        gc.disable()
        sample().save(tmp_path / "b")
        assert not gc.isenabled()  # a caller's choice is kept
        gc.enable()

        def broken(report, figures=None):
            raise RuntimeError("a renderer fails")

        monkeypatch.setattr(html, "render", broken)
        with pytest.raises(RuntimeError):
            sample().save(tmp_path / "c")
        assert gc.isenabled()  # and back on after a failure too
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_stuck_child_is_killed_and_its_share_computed_here(monkeypatch):
    import time

    parent = os.getpid()
    monkeypatch.setattr(parallel, "two_cores", lambda: True)
    monkeypatch.setattr(parallel, "PATIENCE_S", 0.3)

    def slow_in_child(x: int) -> int:
        if os.getpid() != parent:
            time.sleep(60)
        return -x

    assert parallel.split_map(slow_in_child, range(6)) == [-x for x in range(6)]


# -- figures drawn on the idle core while the checks run (render/prefetch.py) ------------------------------------
fork_only = pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"), reason="no fork")


@fork_only
def test_figures_drawn_while_the_checks_ran_are_the_page_figures_and_are_not_drawn_again(tmp_path, monkeypatch):
    from babysitter.render.prefetch import FigurePrefetch, size_of

    monkeypatch.setattr(parallel, "two_cores", lambda: True)
    report = sample()
    with FigurePrefetch() as prefetch:
        for check in report.checks:
            prefetch.add(check)
        ready = prefetch.ready()
    shown = [(p, size_of(c.id, p)) for c in report.checks for p in c.plots if figures.has_data(p)]
    assert set(ready) == {(id(p), size) for p, size in shown}  # the plot with nothing to draw is not there
    monkeypatch.setattr(parallel, "two_cores", lambda: False)
    for plot, size in shown:
        assert ready[(id(plot), size)] == figures.to_png(plot, size=size)
    draws = _count(monkeypatch, figures, "draw")
    assert html.render(report, ready) == html.render(report) and len(draws) == len(shown)  # the second one drew


@fork_only
def test_background_workers_return_what_they_finished_and_leave_nothing_behind(monkeypatch):
    monkeypatch.setattr(parallel, "two_cores", lambda: True)
    parent = os.getpid()

    def square_but_not_three(x: int) -> int:
        if x == 3 and os.getpid() != parent:
            raise RuntimeError("a worker dies on job 3")
        return x * x

    with parallel.Background(square_but_not_three) as background:
        numbers = [background.submit(x) for x in range(6)]
        folder, pid = background.folder, background.pid
        done = background.results()
    assert numbers == list(range(6))
    assert done == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}  # the sibling went on; job 3 is the caller's to compute
    assert not os.path.exists(folder)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    monkeypatch.setattr(parallel, "two_cores", lambda: False)
    with parallel.Background(square_but_not_three) as one_core:
        assert one_core.submit(2) is None and one_core.results() == {}


@fork_only
def test_background_two_warm_workers_share_the_jobs_and_do_each_once(monkeypatch, tmp_path):
    import time

    monkeypatch.setattr(parallel, "two_cores", lambda: True)

    def warm() -> None:
        (tmp_path / f"warm.{os.getpid()}").touch()

    def slow_square(x: int) -> tuple[int, int]:
        with open(tmp_path / f"{x}.{os.getpid()}", "x"):  # "x": a job done twice fails
            pass
        time.sleep(0.05)
        return x * x, os.getpid()

    with parallel.Background(slow_square, warm=warm) as background:
        background.start()
        for x in range(12):
            background.submit(x)
        done = background.results()
    assert {n: v for n, (v, _) in done.items()} == {x: x * x for x in range(12)}
    workers = {pid for _, pid in done.values()}
    assert len(workers) == 2 and os.getpid() not in workers
    assert len(list(tmp_path.glob("warm.*"))) == 1  # warmed once, before the sibling was forked
    assert len(list(tmp_path.iterdir())) == 13


@fork_only
def test_a_worker_whose_owner_is_gone_leaves_instead_of_waiting_for_ever(tmp_path):
    import subprocess
    import time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    start = time.monotonic()
    parallel._work(str(tmp_path), lambda x: x, owner=gone.pid)  # no end mark, no job: only the owner's death ends it
    assert time.monotonic() - start < 5
