"""[tool.babysitter] in pyproject.toml: discovery, paths, precedence, validation and --show-config."""
from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from babysitter import config
from babysitter.cli import main
from babysitter.errors import ExitCode, UsageError
import target_sources

GOOD = target_sources.HEALTHY


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run(args, cwd: Path, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    buf = io.StringIO()
    code = main(list(args), console=Console(file=buf, width=200, force_terminal=False, color_system=None))
    return code, buf.getvalue()


def shown_config(args, cwd: Path, monkeypatch) -> dict:
    code, out = run(["check", "--show-config", "--format", "json", *args], cwd, monkeypatch)
    assert code == ExitCode.OK, out
    return json.loads(out)


# -- discovery ------------------------------------------------------------------------------------------------------
def test_the_closest_table_wins_and_a_pyproject_without_one_is_passed_over(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nseed = 7\n")
    write(tmp_path / "lib/pyproject.toml", "[project]\nname = 'lib'\n\n[tool.ruff]\nline-length = 100\n")
    shown = shown_config([], tmp_path / "lib", monkeypatch)
    assert shown["file"] == str(tmp_path / "pyproject.toml")  # lib's file has no table: the search went on up
    assert shown["settings"]["seed"] == {"value": 7, "source": str(tmp_path / "pyproject.toml")}
    write(tmp_path / "lib/pyproject.toml", "[tool.babysitter]\nseed = 8\n")
    shown = shown_config([], tmp_path / "lib", monkeypatch)
    assert shown["file"] == "pyproject.toml" and shown["settings"]["seed"]["value"] == 8  # the closer one
    assert shown["settings"]["ignore"] == {"value": [], "source": "default"}


def test_no_table_anywhere_means_the_defaults(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    shown = shown_config([], tmp_path, monkeypatch)
    assert shown["file"] is None and shown["searched_from"] == str(tmp_path)
    assert {name: s["source"] for name, s in shown["settings"].items()} == {k: "default" for k in config.KEY_NAMES}
    assert shown["settings"]["targets"]["value"] == [str(tmp_path / "checks")]
    assert shown["settings"]["out"]["value"] == "reports"


def test_paths_in_the_table_resolve_against_its_folder(tmp_path, monkeypatch):
    """Run from anywhere in the project, babysit check checks the same targets and writes to the same reports."""
    write(tmp_path / "pyproject.toml", """
        [tool.babysitter]
        targets = ["models/good.py"]
        out = "build/babysitter"
        select = ["initial_loss"]
    """)
    write(tmp_path / "models/good.py", GOOD)
    (tmp_path / "docs/deep").mkdir(parents=True)
    code, out = run(["check"], tmp_path / "docs/deep", monkeypatch)
    assert code == ExitCode.OK, out
    assert (tmp_path / "build/babysitter/good/report.json").is_file()
    assert not (tmp_path / "docs/deep/build").exists()
    shown = shown_config([], tmp_path / "docs/deep", monkeypatch)
    assert shown["settings"]["targets"]["value"] == [str(tmp_path / "models/good.py")]


def test_the_default_checks_folder_is_the_tables_when_there_is_one(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nselect = ['initial_loss']\nreport = false\n")
    write(tmp_path / "checks/good.py", GOOD)
    (tmp_path / "src").mkdir()
    code, out = run(["check"], tmp_path / "src", monkeypatch)
    assert code == ExitCode.OK and "checking good" in out, out


# -- precedence -----------------------------------------------------------------------------------------------------
def test_flags_override_the_file_which_overrides_the_defaults(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", """
        [tool.babysitter]
        seed = 3
        select = ["initial_loss", "input_scale"]
        strict = true
        out = "from-file"

        [tool.babysitter.checks.lr_range]
        steps = 50
        repeats = 2
    """)
    shown = shown_config(["--seed", "5", "--select", "dead_relu", "--no-strict", "-o", "lr_range.steps=30",
                          "--option", "initial_loss.warn_ratio=2"], tmp_path, monkeypatch)
    s = shown["settings"]
    assert s["seed"] == {"value": 5, "source": "--seed"}
    assert s["select"] == {"value": ["dead_relu"], "source": "--select"}  # replaced, not merged
    assert s["strict"] == {"value": False, "source": "--no-strict"}
    assert s["out"] == {"value": str(tmp_path / "from-file"), "source": "pyproject.toml"}
    assert s["device"] == {"value": "auto", "source": "default"}
    assert s["checks.lr_range.steps"] == {"value": 30, "source": "--option lr_range.steps=30"}
    assert s["checks.lr_range.repeats"] == {"value": 2, "source": "pyproject.toml"}  # the file's others stay
    assert s["checks.initial_loss.warn_ratio"]["value"] == 2.0  # an int given for a float threshold


def test_out_given_as_a_flag_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nout = 'r'\n")
    (tmp_path / "sub").mkdir()
    assert shown_config(["--out", "mine"], tmp_path / "sub", monkeypatch)["settings"]["out"]["value"] == "mine"


def test_thresholds_in_the_file_reach_the_checks(tmp_path, monkeypatch):
    write(tmp_path / "good.py", GOOD)
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nselect = ['initial_loss']\nreport = false\n")
    code, out = run(["check", "good.py"], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    with open(tmp_path / "pyproject.toml", "a") as f:  # the good model's loss is ~1.01x chance
        f.write("\n[tool.babysitter.checks.initial_loss]\nwarn_ratio = 1.001\nfail_ratio = 1.002\n")
    code, out = run(["check", "good.py"], tmp_path, monkeypatch)
    assert code == ExitCode.CHECKS_FAILED and "FAIL" in out, out
    code, out = run(["check", "good.py", "-o", "initial_loss.fail_ratio=3", "-o", "initial_loss.warn_ratio=2"],
                    tmp_path, monkeypatch)
    assert code == ExitCode.OK, out


def test_config_file_and_no_config(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nseed = 3\n")
    write(tmp_path / "ci.toml", "[tool.babysitter]\nseed = 9\n")
    assert shown_config(["--config", "ci.toml"], tmp_path, monkeypatch)["settings"]["seed"]["value"] == 9
    shown = shown_config(["--no-config"], tmp_path, monkeypatch)
    assert shown["file"] is None and shown["settings"]["seed"] == {"value": 0, "source": "default"}
    code, out = run(["check", "--config", "missing.toml"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "missing.toml" in out


def test_show_config_as_text_names_each_source(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nseed = 3\n[tool.babysitter.checks.lr_range]\nsteps = 50\n")
    code, out = run(["check", "--show-config", "--device", "cpu"], tmp_path, monkeypatch)
    assert code == ExitCode.OK, out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert out.splitlines()[0] == "config: pyproject.toml [tool.babysitter]"
    assert lines["seed"][1:] == ["3", "pyproject.toml"]
    assert lines["device"][1:] == ['"cpu"', "--device"]
    assert lines["strict"][1:] == ["false", "default"]
    assert lines["checks.lr_range.steps"][1:] == ["50", "pyproject.toml"]
    assert not (tmp_path / "reports").exists()  # it shows; it does not check


# -- bad configuration: exit 4, naming the file, the table, the key and the value -----------------------------------
BAD = [
    ("sed = 1", "[tool.babysitter] sed = 1: unknown key (did you mean 'seed'?)"),
    ('seed = "three"', '[tool.babysitter] seed = "three": takes an integer, not a string'),
    ("strict = 1", "[tool.babysitter] strict = 1: takes true or false, not an integer"),
    ('select = "initial_loss"', '[tool.babysitter] select = "initial_loss": takes a list of check ids'),
    ('select = ["initial_los"]', "[tool.babysitter] select = [\"initial_los\"]: unknown check id 'initial_los'"),
    ('device = "tpu"', "[tool.babysitter] device = \"tpu\": unknown device 'tpu'"),
    ("[tool.babysitter.checks.lr_range]\nsteps = \"fast\"",
     "[tool.babysitter.checks.lr_range] steps = \"fast\": lr_range's threshold steps takes an integer (default 100)"),
    ("[tool.babysitter.checks.lr_range]\nsteps = 50.5",
     "[tool.babysitter.checks.lr_range] steps = 50.5: lr_range's threshold steps takes an integer"),
    ("[tool.babysitter.checks.lr_range]\nband = true",
     "[tool.babysitter.checks.lr_range] band = true: lr_range's threshold band takes a number (default 0.1)"),
    ("[tool.babysitter.checks.lr_range]\nstepz = 5", "[tool.babysitter.checks.lr_range] stepz = 5: unknown threshold "
                                                     "'stepz'; lr_range takes: band,"),
    ("[tool.babysitter.checks.lr_rnge]\nsteps = 5", "[tool.babysitter.checks] lr_rnge = {\"steps\": 5}: unknown check "
                                                    "id 'lr_rnge'; the checks are: initial_loss"),
    ("checks = 3", "[tool.babysitter] checks = 3: takes tables of thresholds"),
]


@pytest.mark.parametrize("body, says", BAD, ids=[b.splitlines()[-1] for b, _ in BAD])
def test_a_bad_key_or_value_is_exit_4_naming_the_file_table_key_and_value(tmp_path, monkeypatch, body, says):
    write(tmp_path / "pyproject.toml", f"[tool.babysitter]\n{body}\n")
    write(tmp_path / "checks/good.py", GOOD)
    for args in (["check"], ["check", "--show-config"]):
        code, out = run(args, tmp_path, monkeypatch)
        assert code == ExitCode.USAGE_ERROR, out
        assert f"pyproject.toml: {says}" in " ".join(out.split()), out
        assert "Traceback" not in out and not (tmp_path / "reports").exists()


def test_invalid_toml_is_exit_4_naming_the_file(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\nseed = \n")
    code, out = run(["check"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "pyproject.toml: not valid TOML" in out, out


def test_a_bad_option_flag_is_exit_4(tmp_path, monkeypatch):
    for flag, says in (("lr_range.steps", "write ID.NAME=VALUE"), ("lr_range.steps=fast", "not the string 'fast'"),
                       ("nope.x=1", "unknown check id 'nope'")):
        code, out = run(["check", "--show-config", "-o", flag], tmp_path, monkeypatch)
        assert code == ExitCode.USAGE_ERROR and says in out, (flag, out)


def test_the_python_api_goes_through_the_same_validation():
    import torch

    import babysitter

    model = torch.nn.Linear(4, 2)
    data = (torch.randn(64, 4), torch.randint(0, 2, (64,)))
    with pytest.raises(UsageError, match=r"steps takes an integer \(default 100\), not the string 'fast'"):
        babysitter.check(model, data, loss_fn=torch.nn.CrossEntropyLoss(), options={"lr_range": {"steps": "fast"}})


def test_the_pytest_switch_is_read_leniently_but_its_own_type_is_checked(tmp_path):
    assert config.pytest_enabled(tmp_path) is False
    write(tmp_path / "pyproject.toml", "this is not toml [")
    assert config.pytest_enabled(tmp_path) is False  # not ours to judge in someone else's pytest run
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\npytest = true\n")
    assert config.pytest_enabled(tmp_path / ".") is True
    write(tmp_path / "pyproject.toml", "[tool.babysitter]\npytest = 'yes'\n")
    with pytest.raises(UsageError, match="pytest = \"yes\": takes true or false"):
        config.pytest_enabled(tmp_path)


def test_the_configuration_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, babysitter.config as c; c.find('.'); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
