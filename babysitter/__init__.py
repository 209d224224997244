"""babysitter: the experienced engineer's pre-flight checklist for a PyTorch training run.

    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(),
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    report.save("reports/run1")

The public names are imported on first use (PEP 562), so that importing a light module of the package (the pytest
plugin, which pytest imports in every run of every project where babysitter is installed; the configuration) does
not import torch.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "check": ".api", "wrap": ".api", "Sitter": ".api",
    "ExitCode": ".errors", "TargetError": ".errors", "UsageError": ".errors",
    "CheckResult": ".report", "Report": ".report",
    "Step": ".step",
    "Target": ".target",
    "watch": ".watching", "Watcher": ".watching",
}

__all__ = ["check", "wrap", "Sitter", "Target", "Step", "Report", "CheckResult", "ExitCode", "TargetError",
           "UsageError", "watch", "Watcher", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .api import Sitter, check, wrap
    from .errors import ExitCode, TargetError, UsageError
    from .report import CheckResult, Report
    from .step import Step
    from .target import Target
    from .watching import Watcher, watch


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # ``babysitter.target`` after ``import babysitter``
    else:
        raise AttributeError(f"module 'babysitter' has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
