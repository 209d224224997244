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
import target_sources

GOOD = target_sources.HEALTHY

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


# -- issue 17: output for machines and CI -----------------------------------------------------------------------------
FAULTY = GOOD.replace("x = torch.randn(256, 10)", "x = torch.randn(256, 10)\n    x[:, 3] *= 1000")
BROKEN = "def babysit():\n    return 3\n"


def run_split(args, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``babysit ARGS`` on the real stdout and stderr: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_format_json_prints_the_report_json_and_nothing_else(tmp_path, monkeypatch, capsys):
    write(tmp_path, "good.py", GOOD)
    code, out, err = run_split(["check", "good.py", *SELECT, "--format", "json"], tmp_path, monkeypatch, capsys)
    assert code == ExitCode.OK, err
    report = json.loads(out)  # one target named: the object report.json holds, exactly
    assert report == json.loads((tmp_path / "reports/good/report.json").read_text())
    assert report["status"] == "pass" and report["checks"][0]["metrics"]["observed"] > 0
    assert "checking" not in err and "PASS" not in err


def test_format_json_over_a_folder_is_a_list_even_of_one(tmp_path, monkeypatch, capsys):
    write(tmp_path, "checks/good.py", GOOD)
    write(tmp_path, "checks/helper.py", "X = 1\n")
    code, out, err = run_split(["check", *SELECT, "--format", "json", "--no-report"], tmp_path, monkeypatch, capsys)
    assert code == ExitCode.OK and [r["target"] for r in json.loads(out)] == ["good"]
    assert "helper.py skipped" in err  # notes go to stderr
    write(tmp_path, "checks/hot.py", HOT)
    write(tmp_path, "checks/broken.py", BROKEN)
    code, out, err = run_split(["check", *SELECT, "--format", "json", "--no-report"], tmp_path, monkeypatch, capsys)
    assert code == ExitCode.USAGE_ERROR  # a target that cannot be loaded: exit 4, its error on stderr
    assert [(r["target"], r["status"]) for r in json.loads(out)] == [("good", "pass"), ("hot", "fail")]
    assert "target error" in err and "broken.py" in err


def test_quiet_prints_one_line_per_target(tmp_path, monkeypatch):
    write(tmp_path, "checks/good.py", GOOD)
    write(tmp_path, "checks/hot.py", HOT)
    write(tmp_path, "checks/broken.py", BROKEN)
    code, out = run(["check", "--select", "initial_loss,saturation", "-q"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    lines = out.strip().splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith("E ERROR  broken  target error: ")
    assert re.fullmatch(r"✓ PASS  good  1 pass, 1 skip · \d+\.\ds · reports/good/report\.html", lines[1]), lines[1]
    assert re.fullmatch(r"✗ FAIL  hot  1 fail, 1 skip · fail: initial_loss · \d+\.\ds · reports/hot/report\.html",
                        lines[2]), lines[2]


def _junit(path: Path):
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    return root, {s.get("name"): s for s in root.findall("testsuite")}


def test_junit_xml_has_a_testsuite_per_target_and_a_testcase_per_check(tmp_path, monkeypatch):
    write(tmp_path, "checks/good.py", GOOD)
    write(tmp_path, "checks/faulty.py", FAULTY)
    write(tmp_path, "checks/broken.py", BROKEN)
    code, out = run(["check", "--select", "initial_loss,saturation,input_scale", "--no-report",
                     "--junit-xml", "out/junit.xml"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    root, suites = _junit(tmp_path / "out/junit.xml")
    assert root.tag == "testsuites" and sorted(suites) == ["broken", "faulty", "good"]
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": "7", "failures": "2", "errors": "1", "skipped": "2"}
    faulty = suites["faulty"]
    assert {k: faulty.get(k) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": "3", "failures": "2", "errors": "0", "skipped": "1"}
    cases = {c.get("name"): c for c in faulty.findall("testcase")}
    assert list(cases) == ["initial_loss", "saturation", "input_scale"]
    assert cases["input_scale"].get("classname") == "babysitter.faulty" and float(cases["input_scale"].get("time")) >= 0
    failure = cases["input_scale"].find("failure")
    assert failure.get("message").startswith("feature 3 of input has mean") and "→ Standardize" in failure.text
    assert cases["saturation"].find("skipped").get("message").startswith("no tanh, sigmoid or softmax")
    good = {c.get("name"): c for c in suites["good"].findall("testcase")}
    assert list(good["initial_loss"]) == [good["initial_loss"].find("system-out")]  # a pass: nothing but its summary
    props = {p.get("name"): p.get("value") for p in suites["good"].find("properties")}
    assert props["source"] == "checks/good.py:babysit" and props["status"] == "pass" and props["seed"] == "0"
    (load,) = suites["broken"].findall("testcase")
    assert load.get("name") == "load" and load.find("error").get("message").startswith("target error: ")


def test_junit_xml_a_warning_passes_unless_strict(tmp_path, monkeypatch):
    warm = GOOD.replace("return dict(", "model[2].weight.data.mul_(12)\n    return dict(")
    write(tmp_path, "warm.py", warm)
    for flags, expect in (([], "system-out"), (["--strict"], "failure")):
        code, out = run(["check", "warm.py", *SELECT, "--no-report", "--junit-xml", "j.xml", *flags], tmp_path,
                        monkeypatch)
        root, suites = _junit(tmp_path / "j.xml")
        (case,) = suites["warm"].findall("testcase")
        assert [child.tag for child in case] == [expect], flags
        assert root.get("failures") == ("1" if flags else "0")
        assert (case.find("failure").get("type") == "warn") if flags else case.find("system-out").text.startswith(
            "WARN: loss at init")


def test_junit_xml_error_and_escaping():
    import xml.etree.ElementTree as ET

    from babysitter.render.junit import junit_xml
    from babysitter.report import CheckResult, Report

    checks = (CheckResult(id="a", status="error", summary="the check crashed: <boom> & \x1b[31m",
                          traceback="Traceback ...\nRuntimeError: <boom>"),
              CheckResult(id="b", status="fail", summary="ratio > 3 \"quoted\""))
    text = junit_xml([("net.py:babysit", Report(target="net", checks=checks, run={"duration_s": 1.5}))])
    root = ET.fromstring(text.encode())
    (suite,) = root
    assert (suite.get("errors"), suite.get("failures"), suite.get("time")) == ("1", "1", "1.500")
    error = suite.find("testcase/error")
    assert error.get("message") == "the check crashed: <boom> & \\x1b[31m" and "RuntimeError: <boom>" in error.text
    assert suite.find("testcase/failure").get("message") == 'ratio > 3 "quoted"'


def test_report_flags_can_be_turned_both_ways(tmp_path, monkeypatch):
    write(tmp_path, "pyproject.toml", "[tool.babysitter]\nreport = false\nstrict = true\n")
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py", *SELECT], tmp_path, monkeypatch)
    assert code == ExitCode.OK and not (tmp_path / "reports").exists(), out
    code, out = run(["check", "good.py", *SELECT, "--report"], tmp_path, monkeypatch)
    assert code == ExitCode.OK and (tmp_path / "reports/good/report.json").exists(), out
