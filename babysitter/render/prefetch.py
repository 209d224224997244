"""The report's figures drawn on the idle core while the checks still run.

The checks keep one core busy (torch at one intra-op thread on a small model, or the GPU); drawing a figure is
matplotlib's Python on one core. As each check finishes, its plots go to a forked child (see
:class:`~babysitter.render.parallel.Background`) at the size the page shows them; when the report is written, the
page takes the PNGs that are ready and draws only the rest. This module imports no matplotlib: only the child does.
"""
from __future__ import annotations

from typing import Optional

from ..report import CheckResult, Plot
from .parallel import Background

#: the figures the HTML summary shows, by (check id, plot id), drawn at SUMMARY_SIZE inches (the card shows the same)
SUMMARY_FIGURES = (("lr_range", "lr_curve"), ("grad_norms", "total_hist"), ("activation_scale", "std_by_depth"))
SUMMARY_SIZE = (4.6, 3.2)

Size = Optional[tuple[float, float]]


def size_of(check_id: str, plot: Plot) -> Size:
    """The size a plot is drawn at on the page (None: the figures' default)."""
    return SUMMARY_SIZE if (check_id, plot.id) in SUMMARY_FIGURES else None


def _draw(job: tuple[Plot, Size]) -> Optional[bytes]:
    from .figures import has_data, to_png  # in the child: matplotlib is imported there, never here

    plot, size = job
    return to_png(plot, size=size) if has_data(plot) else None


def _warm() -> None:
    """In the first worker, before its sibling is forked: matplotlib imported, fonts and mathtext loaded."""
    from ..report import Series

    _draw((Plot("warm", "warm", "line", (Series("a", [1, 10, 100], [1.0, 0.1, 0.01]),), log_x=True, log_y=True),
           None))


class FigurePrefetch:
    """Feed it each finished check (:meth:`add`); :meth:`ready` returns the PNGs drawn meanwhile, keyed by
    ``(id(plot), size)`` as :func:`~babysitter.render.figures.pngs` looks them up. A context manager: leaving it
    stops the child whatever happened."""

    def __init__(self) -> None:
        self._background = Background(_draw, warm=_warm)
        self._jobs: dict[tuple[int, Size], tuple[int, Plot]] = {}  # the plot is kept: its id stays its own

    def start(self) -> None:
        """Fork the workers now (they warm up while the first checks run); the first :meth:`add` would."""
        self._background.start()

    def add(self, result: CheckResult) -> None:
        for plot in result.plots:
            size = size_of(result.id, plot)
            n = self._background.submit((plot, size))
            if n is None:
                return
            self._jobs[(id(plot), size)] = (n, plot)

    def ready(self) -> dict[tuple[int, Size], bytes]:
        done = self._background.results()
        return {key: done[n] for key, (n, _) in self._jobs.items() if done.get(n) is not None}

    def __enter__(self) -> "FigurePrefetch":
        return self

    def __exit__(self, *exc) -> None:
        self._background.close()
