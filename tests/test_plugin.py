"""The pytest plugin and babysitter.testing, on small projects run by pytest's own pytester."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babysitter.report import CheckResult, Report
from babysitter.testing import UnhealthyReport, assert_healthy
import target_sources

pytest_plugins = ["pytester"]

HEALTHY = target_sources.HEALTHY
#: the same model fed a feature in the thousands: input_scale fails, and initial_loss too (the logits are huge)
FAULTY = HEALTHY.replace("x = torch.randn(256, 10)", "x = torch.randn(256, 10)\n    x[:, 3] *= 1000")
#: a final layer 12x too large: initial_loss warns
WARM = HEALTHY.replace("return dict(", "model[2].weight.data.mul_(12)\n    return dict(")
#: two cheap checks, so that each target takes well under a second
TABLE = """
[tool.babysitter]
select = ["initial_loss", "input_scale"]
{extra}
"""


@pytest.fixture
def project(pytester, monkeypatch):
    """A project with a healthy and a faulty target under checks/ and one ordinary test; plugins load only as the
    tests name them, whatever else this machine has installed."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(**{"checks/healthy": HEALTHY, "checks/faulty": FAULTY,
                           "tests/test_plain": "def test_plain():\n    assert True\n"})
    pytester.makefile(".py", **{"checks/_helpers": "raise RuntimeError('not a target')"})
    configure(pytester)
    return pytester


def configure(pytester, extra: str = "") -> None:
    """The project's pyproject.toml: the table (with ``extra`` lines) and pytest's testpaths, tests/ only."""
    pytester.makefile(".toml", pyproject=TABLE.format(extra=extra) + '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')


def run(pytester, *args):
    # in-process, the plugin module is often imported already (by the outer run's entry point, or an earlier test):
    # pytest then warns that it cannot rewrite its asserts, which says nothing about the plugin
    return pytester.runpytest_inprocess("-p", "babysitter.pytest_plugin", "-p", "no:cacheprovider",
                                        "-W", "ignore::pytest.PytestAssertRewriteWarning", *args)


def test_babysit_turns_each_target_into_a_test_item(project):
    result = run(project, "--babysit", "-rA")
    result.assert_outcomes(passed=2, failed=1)  # the plain test, the healthy target; the faulty target
    result.stdout.fnmatch_lines([
        "*babysitter target checks/faulty.py:babysit*",
        "babysitter faulty: FAIL, 2 of 2 checks fail the run (initial_loss, input_scale)",
        "✗ FAIL initial_loss: loss at init * is *x chance 0.6931 (ln 2 = 0.6931)",
        "  → The initial outputs are far too large*",
        "✗ FAIL input_scale: feature 3 of input has mean * and std * too large, far from unit scale",
        "  → Standardize each feature of input with constants from your data*",
        "2 fail",
        "PASSED checks/healthy.py::babysit",
        "FAILED checks/faulty.py::babysit - babysitter faulty: FAIL*",
    ])
    report = json.loads((project.path / "reports/faulty/report.json").read_text())  # as babysit check writes it
    assert [c["id"] for c in report["checks"]] == ["initial_loss", "input_scale"]


def test_without_being_asked_the_plugin_collects_nothing(project):
    result = run(project)
    result.assert_outcomes(passed=1)
    assert "babysit" not in result.stdout.str().replace("--babysit", "")
    assert not (project.path / "reports").exists()


def test_the_table_can_ask_for_it_and_paths_on_the_command_line_choose(project):
    configure(project, "pytest = true")
    result = run(project, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["tests/test_plain.py::test_plain", "checks/faulty.py::babysit",
                                 "checks/healthy.py::babysit", "3 tests collected*"])
    result = run(project, "checks/healthy.py")  # a target named on the command line, and only it
    result.assert_outcomes(passed=1)
    result = run(project, "tests", "--collect-only", "-q")  # paths without the targets: none of them
    result.stdout.fnmatch_lines(["tests/test_plain.py::test_plain", "1 test collected*"])
    result = run(project, "-k", "healthy")
    result.assert_outcomes(passed=1, deselected=2)


def test_a_warning_passes_with_a_warning_and_fails_under_strict(project):
    project.makepyfile(**{"checks/faulty": WARM})
    # (this suite may run under -W ignore, which the in-process run inherits)
    result = run(project, "--babysit", "checks/faulty.py", "-W", "always::babysitter.testing.BabysitterWarning")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*BabysitterWarning: faulty: initial_loss warned: loss at init * chance*"])
    configure(project, "strict = true")
    result = run(project, "--babysit", "checks/faulty.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["! WARN initial_loss: loss at init *"])


def test_a_target_that_cannot_load_fails_its_item_with_the_target_error(project):
    project.makepyfile(**{"checks/broken": "def babysit():\n    return 3\n"})
    result = run(project, "--babysit", "checks/broken.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["target error *broken.py*"])
    assert "Traceback" not in result.stdout.str()


def test_a_bad_table_is_a_usage_error(project):
    configure(project, "sed = 1")
    result = run(project, "--babysit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "babysitter: pyproject.toml: [tool.babysitter] sed = 1: unknown key" in result.stderr.str()


def test_assert_healthy_in_any_test(project):
    project.makepyfile(test_model=f"""
        import importlib.util
        import babysitter
        from babysitter.testing import assert_healthy

        def _target(name):
            spec = importlib.util.spec_from_file_location(name, f"checks/{{name}}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.babysit()

        def test_healthy():
            report = assert_healthy(babysitter.check(**_target("healthy"), device="cpu", select=["input_scale"]))
            assert report["input_scale"].status == "pass"

        def test_faulty():
            assert_healthy(babysitter.check(**_target("faulty"), device="cpu", select=["input_scale"]))
    """)
    result = run(project, "test_model.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E * babysitter.testing.UnhealthyReport: babysitter Sequential: FAIL, 1 of 1 checks fails the run (input_scale)",
                                 "E * ✗ FAIL input_scale: feature 3 of input*"])


def test_the_plugin_is_an_entry_point_and_imports_no_torch():
    from babysitter.config import tomllib  # tomli below Python 3.11

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"babysitter": "babysitter.pytest_plugin"}
    code = "import sys, babysitter.pytest_plugin; print(sorted(m for m in ('torch', 'numpy', 'rich') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# -- assert_healthy on reports built by hand -----------------------------------------------------------------------
def _report(*statuses: str, interrupted: bool = False) -> Report:
    checks = [CheckResult(id=f"check_{i}", status=s, summary=f"{s} summary {i}", advice=(f"advice {i}",),
                          traceback="Traceback...\nValueError: boom" if s == "error" else None)
              for i, s in enumerate(statuses)]
    return Report(target="net", checks=tuple(checks), interrupted=interrupted)


def test_assert_healthy_passes_and_returns_the_report():
    report = _report("pass", "skip", "warn")
    assert assert_healthy(report) is report
    assert assert_healthy(report.to_dict()).to_dict() == report.to_dict()


def test_assert_healthy_message_is_the_summary_of_the_failing_checks():
    with pytest.raises(AssertionError) as info:
        assert_healthy(_report("pass", "fail", "warn", "error"))
    message = str(info.value)
    assert isinstance(info.value, UnhealthyReport) and info.value.report.target == "net"
    assert message.splitlines()[0] == "babysitter net: FAIL, 2 of 4 checks fail the run (check_1, check_3)"
    assert "✗ FAIL check_1: fail summary 1\n  → advice 1" in message
    assert "E ERROR check_3: error summary 3" in message and "ValueError: boom" in message
    assert "check_0" not in message and "check_2" not in message  # passing and warning checks are not at fault
    assert message.splitlines()[-1] == "1 pass, 1 warn, 1 fail, 1 error"


def test_assert_healthy_can_refuse_warnings_and_interrupted_runs(tmp_path):
    with pytest.raises(AssertionError, match=r"1 of 2 checks fails the run \(check_1\)"):
        assert_healthy(_report("pass", "warn"), allow_warn=False)
    with pytest.raises(AssertionError, match="interrupted after 1 of 2 checks"):
        assert_healthy(Report(target="net", checks=_report("pass", "skip").checks, interrupted=True,
                              not_run=("check_1",)))
    (tmp_path / "net").mkdir()
    (tmp_path / "net/report.json").write_text(_report("fail").to_json())
    for where in (tmp_path / "net", str(tmp_path / "net/report.json")):
        with pytest.raises(AssertionError, match="check_0"):
            assert_healthy(where)
    with pytest.raises(TypeError, match="not int"):
        assert_healthy(3)


def test_the_failure_message_has_one_line_per_summary_and_advice():
    long = "x" * 300
    report = Report(target="net", checks=(CheckResult(id="a", status="fail", summary=long, advice=(long,)),))
    with pytest.raises(AssertionError) as info:
        assert_healthy(report)
    lines = str(info.value).splitlines()
    assert lines[1] == f"✗ FAIL a: {long}" and lines[2] == f"  → {long}"
    assert all(line == line.rstrip() for line in lines)


def test_the_installed_entry_point_loads_it_in_a_plain_pytest_run(tmp_path):
    """pytest finds the plugin through the installed entry point (skipped where the package is not installed)."""
    from importlib.metadata import entry_points

    if not any(e.name == "babysitter" for e in entry_points(group="pytest11")):
        pytest.skip("babysitter is not installed with its entry points here (pip install -e .)")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks/net.py").write_text(HEALTHY)
    (tmp_path / "pyproject.toml").write_text("[tool.babysitter]\nselect = ['initial_loss']\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--babysit", "--collect-only",
                           "-q"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "checks/net.py::babysit" in proc.stdout, proc.stdout + proc.stderr
