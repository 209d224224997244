"""babysitter: the experienced engineer's pre-flight checklist for a PyTorch training run.

    report = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(),
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    report.save("reports/run1")
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import Sitter, check, wrap  # noqa: E402
from .errors import ExitCode, TargetError, UsageError  # noqa: E402
from .report import CheckResult, Report  # noqa: E402
from .step import Step  # noqa: E402
from .target import Target  # noqa: E402

__all__ = ["check", "wrap", "Sitter", "Target", "Step", "Report", "CheckResult", "ExitCode", "TargetError",
           "UsageError", "__version__"]
