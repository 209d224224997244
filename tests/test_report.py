"""The report model and its renderers: JSON round-trip, golden terminal and JSON text, escaped HTML, CSV."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

import babysitter
from babysitter.render import html as html_render
from babysitter.render import terminal
from babysitter.render.figures import draw
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
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # opens offline


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


@pytest.mark.parametrize("kind", ["line", "scatter", "bar", "hist"])
def test_figures_from_series(kind):
    plot = Plot("p", "t", kind, (Series("a", [1, 2, 3], [1.0, float("nan"), 3.0]), Series("b", [1, 2, 3], [2, 1, 0])),
                log_y=kind == "line", markers=(Marker("m", 2.0), Marker("h", 1.0, axis="y")))
    fig = draw(plot)
    assert fig.axes and fig.axes[0].get_title() == "t"


def test_report_from_a_real_run_round_trips(tmp_path):
    import zoo

    report = babysitter.check(**zoo.mlp_target())
    assert Report.from_json(report.to_json()) == report
    report.save(tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 1000
