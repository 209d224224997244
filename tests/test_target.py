"""Every bad input gives exit 4 and one clear message naming the file, the field and the value."""
from __future__ import annotations


import pytest
import torch
from torch import nn

import babysitter
from babysitter.errors import ExitCode, TargetError
from test_cli import GOOD, run, write

HEADER = """
import torch
from torch import nn
x = torch.randn(64, 10)
y = torch.randint(0, 2, (64,))
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
"""

CASES = {
    "syntax": ("def babysit(:\n    pass\n", ["syntax error at line 1"]),
    "no_function": (HEADER + "def other():\n    pass\n", ["has no function 'babysit()'", "other"]),
    "raises": (HEADER + "def babysit():\n    raise ValueError('no data here')\n",
               ["calling babysit() raised ValueError: no data here"]),
    "returns_list": (HEADER + "def babysit():\n    return [model]\n", ["returned list", "must return"]),
    "missing_field": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y))\n",
                      ["required field 'loss_fn' is missing"]),
    "unknown_field": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(),"
                               " lr=0.1)\n", ["unknown field(s) 'lr'"]),
    "model_type": (HEADER + "def babysit():\n    return dict(model='resnet', data=(x, y), "
                            "loss_fn=nn.CrossEntropyLoss())\n", ["field 'model'", "torch.nn.Module", "'resnet'"]),
    "data_type": (HEADER + "def babysit():\n    return dict(model=model, data=42, loss_fn=nn.CrossEntropyLoss())\n",
                  ["field 'data'", "42"]),
    "data_mismatch": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y[:10]), "
                               "loss_fn=nn.CrossEntropyLoss())\n", ["field 'data'", "X(64, 10)", "y(10,)"]),
    "empty_data": (HEADER + "def babysit():\n    return dict(model=model, data=[], loss_fn=nn.CrossEntropyLoss())\n",
                   ["field 'data'", "yielded no batch"]),
    "loss_type": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), loss_fn='ce')\n",
                  ["field 'loss_fn'", "'ce'"]),
    "loss_not_tensor": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), "
                                 "loss_fn=lambda o, t: nn.functional.cross_entropy(o, t).item())\n",
                        ["field 'loss_fn'", "scalar tensor", "float", ".item()"]),
    "loss_not_scalar": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), "
                                 "loss_fn=nn.CrossEntropyLoss(reduction='none'))\n",
                        ["field 'loss_fn'", "shape (64,)"]),
    "forward_fails": (HEADER + "def babysit():\n    bad = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(8, 2))\n"
                               "    return dict(model=bad, data=(x, y), loss_fn=nn.CrossEntropyLoss())\n",
                      ["field 'model'", "forward pass on the first batch raised", "model.2 (Linear)"]),
    "batch_shape": (HEADER + "def babysit():\n    return dict(model=model, data=[x[:8], x[8:16]], "
                             "loss_fn=nn.CrossEntropyLoss())\n", ["field 'data'", "(inputs, targets)", "forward="]),
    "optimizer_type": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), "
                                "loss_fn=nn.CrossEntropyLoss(), optimizer=0.1)\n", ["field 'optimizer'", "0.1"]),
    "optimizer_factory": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), "
                                   "loss_fn=nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=-1))\n",
                          ["field 'optimizer'", "raised ValueError", "-1"]),
    "lazy_model": (HEADER + "def babysit():\n    lazy = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.LazyLinear(2))\n"
                            "    return dict(model=lazy, data=(x, y), loss_fn=nn.CrossEntropyLoss())\n",
                   ["field 'model'", "uninitialized lazy parameters", "2.weight", "run one forward pass"]),
    "forward_returns": (HEADER + "def babysit():\n    return dict(model=model, data=(x, y), "
                                 "loss_fn=nn.CrossEntropyLoss(), forward=lambda m, b: m(b[0]))\n",
                        ["field 'forward'", "(outputs, targets)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_target_exits_4_with_clear_message(case, tmp_path, monkeypatch):
    source, expected = CASES[case]
    write(tmp_path, f"{case}.py", source)
    code, out = run(["check", f"{case}.py", "--select", "initial_loss"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR, out
    assert f"{case}.py" in out, out  # names the file
    flat = " ".join(out.split())  # the console wraps long lines
    for fragment in expected:
        assert fragment in flat, f"{fragment!r} not in {out!r}"
    assert "Traceback" not in out  # no traceback unless -v


def test_missing_file_and_function(tmp_path, monkeypatch):
    code, out = run(["check", "nothere.py"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "file not found: nothere.py" in out
    write(tmp_path, "good.py", GOOD)
    code, out = run(["check", "good.py:make"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "has no function 'make()'" in out and "babysit" in out
    code, out = run(["check", "no_such_pkg.mod:fn"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "module 'no_such_pkg.mod' not found" in out


def test_verbose_shows_the_traceback(tmp_path, monkeypatch):
    write(tmp_path, "raises.py", CASES["raises"][0])
    code, out = run(["check", "raises.py", "-v"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR and "Traceback" in out and "no data here" in out


def test_one_bad_target_does_not_stop_the_others(tmp_path, monkeypatch):
    write(tmp_path, "checks/a_bad.py", CASES["model_type"][0])
    write(tmp_path, "checks/b_good.py", GOOD)
    code, out = run(["check", "--select", "initial_loss"], tmp_path, monkeypatch)
    assert code == ExitCode.USAGE_ERROR
    assert (tmp_path / "reports/b_good/report.json").exists()


def test_python_api_validates_fields():
    model = nn.Linear(3, 2)
    with pytest.raises(TargetError, match="field 'loss_fn'"):
        babysitter.check(model, (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), loss_fn=None)
    with pytest.raises(TargetError, match="field 'data'"):
        babysitter.wrap(model, "not data", loss_fn=nn.CrossEntropyLoss())


def test_target_dataclass_and_dict_batches_through_forward():
    import zoo

    fields = zoo.dict_batch_target()
    target = babysitter.Target(**fields)
    report = babysitter.wrap(target.model, target.data, loss_fn=target.loss_fn, optimizer=target.optimizer,
                             forward=target.forward).check(select=["initial_loss"])
    assert report["initial_loss"].status == "pass"


def test_an_unknown_device_is_a_usage_error_from_python_too():
    with pytest.raises(babysitter.UsageError, match="unknown device 'tpu'"):
        babysitter.check(nn.Linear(3, 2), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)),
                         loss_fn=nn.CrossEntropyLoss(), device="tpu")
