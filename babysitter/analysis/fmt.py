"""Numbers for people: the one place that decides how a loss, an LR, a ratio or a fraction is printed.

Every verdict and piece of advice formats its numbers through these, so that an LR reads the same in every
check (``3e-04`` in one and ``0.0003`` in another was the old state).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional


def num(x: Optional[float], digits: int = 4) -> str:
    """A measured value (a loss, a norm, a statistic): ``digits`` significant digits; 'n/a' for None."""
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def lr(x: Optional[float]) -> str:
    """A learning rate (or a clip value, or any setting a user types in): three significant digits."""
    return num(x, 3)


def ratio(x: Optional[float], digits: int = 2) -> str:
    """A multiple, ``12x`` or ``1.7x``: one decimal below 10, none above."""
    if x is None or not math.isfinite(x):
        return num(x)
    return f"{x:.{1 if abs(x) < 10 else 0}f}x" if digits == 2 else f"{x:.{digits}g}x"


def pct(x: Optional[float], decimals: int = 0) -> str:
    """A fraction in [0, 1] as a percentage."""
    if x is None or not math.isfinite(x):
        return num(x)
    return f"{x:.{decimals}%}"


def small(x: Optional[float]) -> str:
    """A quantity that spans orders of magnitude (update/weight ratios, gradient ratios): two digits."""
    return num(x, 2)


def plural(n: int, one: str, many: Optional[str] = None) -> str:
    """``1 layer``, ``3 layers``; ``many`` for irregular plurals (matrix/matrices)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def listed(names: Iterable[str], limit: int = 6) -> str:
    """``a, b, c and 4 more``: a list of names cut at ``limit``."""
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")
