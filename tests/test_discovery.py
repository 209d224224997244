"""Targets import the user's own code (issue 13, item 1): the project's root folder and the target's own folder are
on ``sys.path`` while a target loads and runs, as pytest makes a project's modules importable from its tests;
helper modules in ``checks/`` that define no ``babysit()`` are skipped with a note when the folder is discovered,
and are still an error when named explicitly."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from babysitter.errors import ExitCode, NoTargetsError, TargetError
from babysitter.runner import run_target
from babysitter.target import collect, defines_function, discover, importable, load, rootdir
from test_cli import run, write

#: the user's own model, in their project, next to (not inside) checks/
MYNET = """
from torch import nn

class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
"""

#: a helper module in checks/: shared data, no babysit()
HELPERS = """
import torch

def make_data():
    x = torch.randn(256, 10)
    return x, (x[:, 0] > 0).long()
"""

NET_CHECK = """
import torch
from torch import nn
from mynet import Net
from helpers import make_data

def babysit():
    return dict(model=Net(), data=make_data(), loss_fn=nn.CrossEntropyLoss())
"""

SELECT = ["--select", "initial_loss", "--no-report"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """proj/pyproject.toml, proj/mynet.py, proj/checks/{net_check,helpers}.py; module caches cleaned after."""
    proj = tmp_path / "proj"
    write(proj, "pyproject.toml", "[project]\nname = 'proj'\n")
    write(proj, "mynet.py", MYNET)
    write(proj, "checks/helpers.py", HELPERS)
    write(proj, "checks/net_check.py", NET_CHECK)
    for name in ("mynet", "helpers", "lazy_layer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield proj
    for name in ("mynet", "helpers", "lazy_layer"):
        sys.modules.pop(name, None)


def test_a_target_imports_the_users_own_code_from_the_project_root(project, monkeypatch):
    path_before = list(sys.path)
    code, out = run(["check", *SELECT], project, monkeypatch)
    assert code == ExitCode.OK, out
    assert "ModuleNotFoundError" not in out and "has no function" not in out
    assert "checking net_check" in out
    assert sys.path == path_before  # nothing is left behind on sys.path


def test_the_root_is_found_upward_from_the_target_like_pytest(project, monkeypatch):
    # run from inside checks/: the root is the folder above, where pyproject.toml is
    code, out = run(["check", "net_check.py", *SELECT], project / "checks", monkeypatch)
    assert code == ExitCode.OK, out
    assert rootdir(project / "checks", cwd=project / "checks") == project.resolve()
    # no marker anywhere above: the folder babysit runs from is the root
    bare = project.parent / "bare" / "checks"
    bare.mkdir(parents=True)
    assert rootdir(bare, cwd=project.parent / "bare") == (project.parent / "bare").resolve()


def test_helper_modules_are_skipped_with_a_note_when_the_folder_is_discovered(project, monkeypatch):
    monkeypatch.chdir(project)
    found = collect()
    assert [Path(r.source).name for r in found.refs] == ["net_check.py"]
    assert [Path(s.path).name for s in found.skipped] == ["helpers.py"]
    note = str(found.skipped[0])
    assert "helpers.py" in note and "babysit()" in note and "skipped" in note
    assert discover() == list(found.refs)  # discover() keeps returning the references only
    # a folder named on the command line is discovered the same way
    assert [Path(s.path).name for s in collect(["checks"]).skipped] == ["helpers.py"]


def test_a_helper_named_explicitly_is_still_an_error(project, monkeypatch):
    code, out = run(["check", "checks/helpers.py", *SELECT], project, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    flat = " ".join(out.split())  # the console wraps long lines
    assert "has no function 'babysit()'" in flat and "make_data" in flat


def test_a_folder_of_helpers_only_has_no_targets(tmp_path, monkeypatch):
    write(tmp_path, "checks/helpers.py", HELPERS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoTargetsError, match=r"defines babysit\(\).*helpers\.py"):
        collect()
    code, out = run(["check"], tmp_path, monkeypatch)
    assert code == ExitCode.NO_TARGETS, out


def test_which_files_define_the_target_function(tmp_path):
    cases = {
        "def babysit():\n    pass\n": True,
        "babysit = lambda: None\n": True,
        "from elsewhere import babysit\n": True,
        "from elsewhere import make as babysit\n": True,
        "from elsewhere import *\n": True,  # cannot tell without importing: loading it says
        "if True:\n    def babysit():\n        pass\n": True,
        "def babysit(:\n": True,  # a syntax error is a target, so that loading it reports the error
        "def make():\n    babysit = 1\n": False,  # bound inside a function only
        "x = 'babysit'\n": False,
        "": False,
    }
    for i, (source, expected) in enumerate(cases.items()):
        path = write(tmp_path, f"f{i}.py", source)
        assert defines_function(path, "babysit") is expected, source


def test_the_paths_stay_importable_while_the_target_runs(project, monkeypatch):
    """A model that imports lazily in its forward finds the user's module while the checks run."""
    write(project, "lazy_layer.py", "import torch\ndef act(x):\n    return torch.relu(x)\n")
    write(project, "checks/lazy.py", NET_CHECK.replace("from mynet import Net", "from mynet import Net\n"
                                                       "class Lazy(Net):\n    def forward(self, x):\n"
                                                       "        from lazy_layer import act\n"
                                                       "        return act(super().forward(x))\n")
                                               .replace("model=Net()", "model=Lazy()"))
    monkeypatch.chdir(project)
    ref = [r for r in discover() if Path(r.source).stem == "lazy"][0]
    path_before = list(sys.path)
    with importable(ref):
        assert str((project / "checks").resolve()) in sys.path and str(project.resolve()) in sys.path
        target = load(ref)
        report = run_target(target, device="cpu", select=["initial_loss"])
    assert report["initial_loss"].status in ("pass", "warn"), report["initial_loss"].summary
    assert sys.path == path_before


def test_a_module_target_is_imported_from_the_root(project, monkeypatch):
    write(project, "pkgx/__init__.py", "")
    write(project, "pkgx/targets.py", NET_CHECK.replace("from helpers import make_data", "")
          .replace("make_data()", "(torch.randn(64, 10), torch.randint(0, 2, (64,)))"))
    monkeypatch.delitem(sys.modules, "pkgx", raising=False)
    monkeypatch.delitem(sys.modules, "pkgx.targets", raising=False)
    (project / "sub").mkdir()
    code, out = run(["check", "pkgx.targets:babysit", *SELECT], project / "sub", monkeypatch)
    sys.modules.pop("pkgx", None), sys.modules.pop("pkgx.targets", None)
    assert code == ExitCode.OK, out


def test_a_missing_user_module_is_still_a_clear_target_error(tmp_path, monkeypatch):
    write(tmp_path, "checks/orphan.py", "from not_my_module_xyz import Net\ndef babysit():\n    pass\n")
    code, out = run(["check", *SELECT], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    assert "No module named 'not_my_module_xyz'" in out and "orphan.py" in out
    with pytest.raises(TargetError):
        load(discover(root=tmp_path)[0])


def test_the_cli_notes_the_helper_modules_it_skipped(project, monkeypatch):
    code, out = run(["check", *SELECT], project, monkeypatch)
    assert code == ExitCode.OK, out
    assert "note: checks" in out and "helpers.py skipped" in " ".join(out.split())
