"""End to end: the ``babysit`` command on real files, asserting printed lines and exit codes."""
from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path

from rich.console import Console

from babysitter.cli import main
from babysitter.errors import ExitCode

GOOD = """
import torch
from torch import nn

def babysit():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    return dict(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
"""

HOT = GOOD.replace("return dict(", "model[2].weight.data.mul_(100)\n    return dict(")


def run(args, cwd: Path, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    buf = io.StringIO()
    code = main(list(args), console=Console(file=buf, width=120, force_terminal=False, color_system=None))
    return code, buf.getvalue()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


SELECT = ["--select", "initial_loss"]


def test_discovers_checks_folder_and_writes_reports(tmp_path, monkeypatch):
    write(tmp_path, "checks/good.py", GOOD)
    write(tmp_path, "checks/_helper.py", "raise RuntimeError('helpers starting with _ are not targets')")
    code, out = run(["check", *SELECT], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    assert "checking good" in out and "PASS" in out and "initial_loss" in out
    report = json.loads((tmp_path / "reports/good/report.json").read_text())
    assert report["status"] == "pass" and report["checks"][0]["id"] == "initial_loss"
    assert report["checks"][0]["metrics"]["observed"] > 0
    assert (tmp_path / "reports/good/report.html").read_text().startswith("<!DOCTYPE html>")


def test_failing_check_exits_1_and_names_the_problem(tmp_path, monkeypatch):
    write(tmp_path, "hot.py", HOT)
    code, out = run(["check", "hot.py", *SELECT, "--out", "out"], tmp_path, monkeypatch)
    assert code == ExitCode.CHECKS_FAILED, out
    assert "FAIL" in out and "x chance" in out and "Next steps" in out
    assert (tmp_path / "out/hot/report.json").exists()


def test_explicit_function_and_module_specs(tmp_path, monkeypatch):
    write(tmp_path, "targets.py", GOOD.replace("def babysit", "def make_target"))
    code, out = run(["check", "targets.py:make_target", *SELECT, "--no-report"], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/mod.py", GOOD.replace("def babysit", "def build"))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = run(["check", "pkg.mod:build", *SELECT, "--no-report"], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    assert not (tmp_path / "reports").exists()


def test_strict_turns_warnings_into_failures(tmp_path, monkeypatch):
    warm = GOOD.replace("return dict(", "model[2].weight.data.mul_(12)\n    return dict(")
    write(tmp_path, "warm.py", warm)
    code, out = run(["check", "warm.py", *SELECT, "--no-report"], tmp_path, monkeypatch)
    assert code == ExitCode.OK and "WARN" in out, out
    code, out = run(["check", "warm.py", *SELECT, "--no-report", "--strict"], tmp_path, monkeypatch)
    assert code == ExitCode.CHECKS_FAILED


def test_no_targets_exits_5(tmp_path, monkeypatch):
    code, out = run(["check"], tmp_path, monkeypatch)
    assert code == ExitCode.NO_TARGETS and "checks/" in out
    (tmp_path / "checks").mkdir()
    code, out = run(["check"], tmp_path, monkeypatch)
    assert code == ExitCode.NO_TARGETS


def test_list_and_explain(tmp_path, monkeypatch):
    code, out = run(["list"], tmp_path, monkeypatch)
    assert code == 0 and "initial_loss" in out
    code, out = run(["explain", "initial_loss"], tmp_path, monkeypatch)
    assert code == 0
    for section in ("What it checks", "Why it matters", "What to do", "Thresholds", "Sources", "fail_ratio"):
        assert section in out
    code, out = run(["explain", "nope"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "unknown check id 'nope'" in out


def test_unknown_select_id_is_a_usage_error(tmp_path, monkeypatch):
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py", "--select", "initial_los"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "unknown check id 'initial_los'" in out


def test_ignore_skips_a_check(tmp_path, monkeypatch):
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py", "--ignore", "initial_loss", "--out", "o"], tmp_path, monkeypatch)
    report = json.loads((tmp_path / "o/good/report.json").read_text())
    assert "initial_loss" not in [c["id"] for c in report["checks"]]


def test_interrupt_writes_partial_report_and_exits_2(tmp_path, monkeypatch):
    import babysitter.runner as runner

    write(tmp_path, "good.py", GOOD)
    real = runner.run_check
    calls = []

    def interrupted(check, session):
        calls.append(check.id)
        if len(calls) == 1:
            return real(check, session)
        raise KeyboardInterrupt

    from babysitter.checklist import CHECKLIST

    monkeypatch.setattr(runner, "CHECKLIST", CHECKLIST + CHECKLIST[:1])
    monkeypatch.setattr(runner, "run_check", interrupted)
    code, out = run(["check", "good.py", "--out", "o"], tmp_path, monkeypatch)
    assert code == ExitCode.INTERRUPTED, out
    report = json.loads((tmp_path / "o/good/report.json").read_text())
    assert report["interrupted"] is True and report["status"] == "interrupted"
    first, *rest = report["checks"]
    assert first["id"] == "initial_loss" and first["status"] == "pass"
    assert report["not_run"] == [c["id"] for c in rest] and all(c["summary"].startswith("not run") for c in rest)


def test_python_m_entry_point(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "babysitter", "list"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "initial_loss" in proc.stdout


# -- issue 13: exit codes, broken pipes, explain's width, progress ----------------------------------------------


def test_unknown_device_is_a_usage_error_in_one_line(tmp_path, monkeypatch):
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py", *SELECT, "--no-report", "--device", "tpu"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "internal error" not in out
    assert "'tpu'" in out and "cuda" in out  # names the bad value and what is accepted
    assert len([line for line in out.splitlines() if "error" in line]) == 1


def test_argparse_errors_exit_4_as_pytest_does(tmp_path, monkeypatch):
    for argv, says in ((["check", "--bogus"], "--bogus"), (["explain"], "ID"), (["frobnicate"], "frobnicate"),
                       (["check", "--seed", "x"], "--seed")):
        code, out = run(argv, tmp_path, monkeypatch)
        assert code == ExitCode.USAGE_ERROR, (argv, out)
        assert says in out and "usage: babysit" in out, (argv, out)


def _closed_pipe(args, cwd) -> tuple[int, str]:
    """Run ``python -m babysitter ARGS`` with its stdout a pipe whose reader has gone (``| head`` that already
    exited): every write to stdout fails with EPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "babysitter", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def test_a_broken_pipe_ends_quietly(tmp_path):
    write(tmp_path, "good.py", GOOD)
    for args in (["list"], ["check", "good.py", *SELECT, "--no-report"]):
        code, err = _closed_pipe(args, tmp_path)
        assert "Traceback" not in err and "BrokenPipe" not in err and "internal error" not in err, (args, err)
        assert err == "", (args, err)
        assert code == ExitCode.INTERRUPTED, (args, code)


def test_explain_wraps_to_the_console_width(tmp_path, monkeypatch):
    def explain(width):
        monkeypatch.chdir(tmp_path)
        buf = io.StringIO()
        assert main(["explain", "lr_range"], console=Console(file=buf, width=width, color_system=None)) == 0
        return buf.getvalue().splitlines()

    narrow = explain(60)
    assert max(len(line) for line in narrow) <= 60
    body = narrow[narrow.index("What it checks") + 1: narrow.index("Why it matters") - 1]
    assert len(body) > 3 and all(line.startswith("  ") for line in body), body  # wrapped, indent kept
    assert all(len(line) > 40 for line in body[:-1]), body  # filled, not ragged
    wide = explain(140)
    assert max(len(line) for line in wide) > 100  # uses the width it has
    assert max(len(line) for line in wide) <= 140


def test_the_table_times_each_check(tmp_path, monkeypatch):
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py", "--select", "initial_loss,dead_relu", "--no-report"], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    table = out[out.index("status"):]
    assert re.search(r"PASS\s+initial_loss\s+\d+\.\d+s\s+loss at init", table), table
    assert re.search(r"PASS\s+dead_relu\s+\d+\.\d+s\s+", table), table


def test_a_terminal_sees_which_check_runs(tmp_path, monkeypatch):
    """On a terminal the live line names the running check and its place in the list, with its elapsed time."""
    write(tmp_path, "good.py", GOOD)
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, color_system=None, _environ={})
    code = main(["check", "good.py", "--select", "initial_loss,dead_relu", "--no-report"], console=console)
    assert code == ExitCode.OK
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "running checks…" not in screen
    assert re.search(r"initial_loss\s+1/2", screen) and re.search(r"dead_relu\s+2/2", screen), screen
    assert re.search(r"✓ PASS dead_relu \(\d+\.\d+s\)", screen)  # each finished check stays on the screen
