"""The report model and its renderers: JSON round-trip, golden terminal and JSON text, escaped HTML, CSV."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

import babysitter
from babysitter.render import html as html_render
from babysitter.render import svg, terminal
from babysitter.report import CheckResult, Marker, Plot, Report, Series, Table

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def sample_report() -> Report:
    """A fixed report, with hostile strings where users control them."""
    checks = (
        CheckResult(id="initial_loss", title="Loss at initialization", status="fail",
                    summary="loss at init 21.98 is 20.0x chance 1.099 (ln 3 = 1.099)",
                    metrics={"observed": 21.98, "expected": 1.0986, "ratio": float("inf")},
                    advice=("Scale the final layer's weights down (x0.01, or zero them).",),
                    tables=(Table("refs", "Loss references", ("reference", "loss"),
                                  (("observed", 21.98), ("chance", 1.0986))),),
                    plots=(Plot("p", "Predicted probabilities", "hist", (Series("p", (), [0.1, 0.2, 0.9]),),
                                markers=(Marker("1/C", 0.333),)),),
                    duration_s=0.12),
        CheckResult(id="dead_relu", title="Dead units", status="warn",
                    summary="<script>alert('model.layers.0')</script> is 60% dead",
                    tables=(Table("layers", "Per layer", ("layer", "dead"), (("<b>model.fc1</b>", 0.6),)),),
                    duration_s=0.5),
        CheckResult(id="lr_range", title="Learning rate range", status="skip", summary="no optimizer steps possible"),
        CheckResult(id="nonfinite", title="Non-finite values", status="error", summary="the check crashed: boom",
                    traceback="Traceback (most recent call last):\n  ...\nRuntimeError: boom <&>"),
    )
    return Report(target="demo", checks=checks, run={"device": "cpu", "seed": 0, "model": "Net", "parameters": 12345,
                                                      "optimizer": "SGD", "user_lr": 0.1, "duration_s": 1.5})


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"


def test_json_round_trip_is_exact():
    report = sample_report()
    text = report.to_json()
    again = Report.from_json(text)
    assert again == report
    data = json.loads(text)
    assert data["status"] == "fail" and data["checks"][0]["metrics"]["ratio"] == "inf"
    assert [c["id"] for c in data["checks"]] == ["initial_loss", "dead_relu", "lr_range", "nonfinite"]
    for c in data["checks"]:
        assert {"id", "status", "summary", "metrics"} <= set(c)


def test_json_golden():
    report = sample_report()
    _golden("report.json", report.to_json() + "\n")


def test_terminal_golden():
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False, color_system=None)
    terminal.render(sample_report(), console, saved_to="reports/demo/report.html")
    _golden("terminal.txt", buf.getvalue())


def test_html_is_self_contained_and_escaped():
    page = html_render.render(sample_report())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;model.fc1&lt;/b&gt;" in page and "RuntimeError: boom &lt;&amp;&gt;" in page
    assert page.count("<svg xmlns=") == 1 and "data:image" not in page  # the figure, inline
    offline = page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # the SVG namespace's name, never fetched
    assert "http://" not in offline and "https://" not in offline  # opens offline


def test_save_writes_every_format_atomically(tmp_path):
    written = sample_report().save(tmp_path / "r")
    assert set(written) == {"json", "html", "csv"}
    assert (tmp_path / "r/initial_loss.refs.csv").read_text().splitlines()[0] == "reference,loss"
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_status_combination():
    ok = CheckResult(id="a", status="pass", summary="")
    warn = CheckResult(id="b", status="warn", summary="")
    skip = CheckResult(id="c", status="skip", summary="")
    err = CheckResult(id="d", status="error", summary="")
    assert Report("t", (ok, skip)).status == "pass"
    assert Report("t", (ok, warn)).status == "warn"
    assert Report("t", (ok, err)).status == "fail"  # a crashed check is never silently a pass
    with pytest.raises(ValueError):
        CheckResult(id="x", status="ok", summary="")


@pytest.mark.parametrize("kind", ["line", "scatter", "bar", "hist", "heatmap"])
def test_figures_from_series(kind):
    import xml.etree.ElementTree as ET

    plot = Plot("p", "t", kind, (Series("a", [1, 2, 3], [1.0, float("nan"), 3.0]), Series("b", [1, 2, 3], [2, 1, 0])),
                log_y=kind == "line", markers=(Marker("m", 2.0), Marker("h", 1.0, axis="y")))
    root = ET.fromstring(svg.render(plot))
    assert root.find("{http://www.w3.org/2000/svg}title").text == "t"


def test_report_from_a_real_run_round_trips(tmp_path):
    import zoo

    report = babysitter.check(**zoo.mlp_target())
    assert Report.from_json(report.to_json()) == report
    report.save(tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 1000


# -- issue 13: an interrupted run has its own status; report files honour the umask --------------------------------


def _interrupted_sample() -> Report:
    """One check ran (and passed) before Ctrl-C; two were left, one of them while it ran."""
    ran = CheckResult(id="initial_loss", title="Loss at initialization", status="pass", summary="loss at init 1.1")
    left = (CheckResult(id="overfit_batch", title="Overfit one batch", status="skip",
                        summary="not run: interrupted while it ran"),
            CheckResult(id="lr_range", title="Learning rate range", status="skip", summary="not run: interrupted"))
    return Report(target="demo", checks=(ran, *left), run={"device": "cpu"}, interrupted=True,
                  not_run=("overfit_batch", "lr_range"))


def test_an_interrupted_report_says_interrupted_everywhere():
    report = _interrupted_sample()
    assert report.status == "interrupted"
    data = json.loads(report.to_json())
    assert data["status"] == "interrupted" and data["interrupted"] is True
    assert data["not_run"] == ["overfit_batch", "lr_range"]
    assert [c["id"] for c in data["checks"]] == ["initial_loss", "overfit_batch", "lr_range"]  # every selected id
    assert Report.from_json(report.to_json()) == report

    buf = io.StringIO()
    terminal.render(report, Console(file=buf, width=100, force_terminal=False, color_system=None))
    headline = buf.getvalue().splitlines()[0]
    assert "INTERRUPTED" in headline and "PASS" not in headline, headline
    assert "1 of 3 checks ran" in headline, headline

    page = html_render.render(report)
    h1 = page[page.index("<h1>"):page.index("</h1>")]
    assert "INTERRUPTED" in h1 and "PASS" not in h1, h1
    assert "class='badge interrupted'" in h1 and ".interrupted{" in page  # the badge has a colour of its own


def test_a_report_that_was_not_interrupted_keeps_its_status_and_an_empty_not_run():
    data = json.loads(sample_report().to_json())
    assert data["status"] == "fail" and data["not_run"] == [] and data["interrupted"] is False
    assert Report.from_dict({k: v for k, v in data.items() if k != "not_run"}) == sample_report()  # older JSON reads


class _StopsAt(torch.nn.Module):
    """A small classifier whose forward raises KeyboardInterrupt (Ctrl-C) on call ``at``."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.net(x)


@pytest.mark.parametrize("at", [1, 40])
def test_ctrl_c_in_a_run_gives_an_interrupted_report_with_the_rest_not_run(at, tmp_path):
    """Ctrl-C in the first-batch validation (at=1) or in the second check's training (at=40)."""
    x, y = torch.randn(128, 4), torch.randint(0, 3, (128,))
    selected = ["initial_loss", "overfit_batch", "dead_relu"]
    report = babysitter.check(_StopsAt(at), (x, y), loss_fn=torch.nn.CrossEntropyLoss(), device="cpu",
                              select=selected)
    assert report.interrupted and report.status == "interrupted"
    assert [c.id for c in report.checks] == selected
    ran = 0 if at == 1 else 1
    assert report.not_run == tuple(selected[ran:])
    assert all(report[i].status == "skip" and report[i].summary.startswith("not run: interrupted")
               for i in report.not_run)
    if ran:
        assert report["initial_loss"].status == "pass"
        assert report["overfit_batch"].summary == "not run: interrupted while it ran"
    report.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["status"] == "interrupted" and data["not_run"] == selected[ran:]
    page = (tmp_path / "report.html").read_text()
    assert "INTERRUPTED" in page[page.index("<h1>"):page.index("</h1>")]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_report_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = sample_report().save(tmp_path / "r")
    finally:
        os.umask(old)
    files = sorted((tmp_path / "r").iterdir())
    assert {p.name for p in files} >= {"report.json", "report.html", "initial_loss.refs.csv"}, written
    for path in files:
        assert oct(os.stat(path).st_mode & 0o777) == oct(mode), path.name
