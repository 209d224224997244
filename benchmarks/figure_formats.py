"""The report's figures as babysitter's own SVG and as matplotlib's PNG (and SVG): CPU time to draw and write them,
and bytes inside the HTML.

Runs the checklist once on the end-to-end target (``benchmarks/targets/mlp.py``), then draws every figure its report
shows, at the size the page shows it, best of ``--repeats`` per format (process CPU time: steadier than wall time on
a shared machine):

- ``babysitter svg``: :func:`babysitter.render.svg.render`, what the report does (inline in the page, as text);
- matplotlib (``babysitter.render.figures.draw``, the optional matplotlib path, with its own layout and size, as the
  report drew its figures before issue 19's SVG): PNG, which went into the page as base64 (4/3 of its bytes), and
  SVG with text as text, counted as UTF-8 percent-encoded for a data URI. Needs matplotlib (``pip install -e
  '.[bench]'``); the first figure's imports and font loading are not counted (best of the repeats).

Last, the whole page: ``babysitter.render.html.render`` on the report, its time and its bytes.
How fast a browser shows each is not measured here.

    python benchmarks/figure_formats.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import base64
import io
import time
import urllib.parse
from pathlib import Path

from end_to_end import DEFAULT_TARGET, _load

#: the matplotlib figures' size (inches) for the page's summary figures, as the report drew them before
MPL_SUMMARY_SIZE = (4.6, 3.2)


def shown(target: Path):
    """The report of one checklist run, and the figures its page shows with their size on the page (px)."""
    import babysitter
    from babysitter.render.html import size_of
    from babysitter.render.plotdata import has_data

    report = babysitter.check(**_load(str(target)), device="cpu")
    return report, [(p, size_of(c.id, p)) for c in report.checks for p in c.plots if has_data(p)]


def best(repeats: int, draw) -> tuple[float, list]:
    """The least CPU time of ``repeats`` calls of ``draw()``, and what the last one returned."""
    least, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.process_time()
        out = draw()
        least = min(least, time.process_time() - t0)
    return least, out


def ours(figures: list) -> list[bytes]:
    from babysitter.render import svg

    return [svg.render(plot, size).encode("utf-8") for plot, size in figures]


def matplotlib_files(figures: list, fmt: str, rc: dict) -> list[bytes]:
    import matplotlib

    from babysitter.render.figures import draw

    out = []
    with matplotlib.rc_context(rc):
        for plot, size in figures:
            buf = io.BytesIO()
            draw(plot, size=MPL_SUMMARY_SIZE if size else None).savefig(buf, format=fmt)
            out.append(buf.getvalue())
    return out


def data_uri_bytes(files: list[bytes], fmt: str) -> int:
    if fmt == "png":
        return sum(len(base64.b64encode(f)) for f in files)
    return sum(len(urllib.parse.quote(f.decode("utf-8"), safe=" /=:;,'\"<>#-.()")) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(DEFAULT_TARGET))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    report, figures = shown(Path(args.target))
    n = len(figures)
    seconds, files = best(args.repeats, lambda: ours(figures))
    print(f"{'babysitter svg':24s} {seconds:.3f}s CPU for {n} figures ({seconds / n * 1000:.1f} ms each), "
          f"{sum(map(len, files)) / 1024:.0f} KB inline in the HTML")
    for name, fmt, rc in (("matplotlib png", "png", {}), ("matplotlib svg, text", "svg", {"svg.fonttype": "none"})):
        try:
            seconds, files = best(args.repeats, lambda: matplotlib_files(figures, fmt, rc))
        except ImportError as exc:
            print(f"{name:24s} skipped: {exc}")
            continue
        print(f"{name:24s} {seconds:.3f}s CPU for {n} figures ({seconds / n * 1000:.1f} ms each), "
              f"{data_uri_bytes(files, fmt) / 1024:.0f} KB in the HTML as data URIs")
    from babysitter.render import html

    seconds, page = best(args.repeats, lambda: html.render(report))
    print(f"{'the whole HTML page':24s} {seconds:.3f}s CPU, {len(page.encode('utf-8')) / 1024:.0f} KB "
          f"(the summary's {sum(1 for _, size in figures if size)} figures shown twice)")


if __name__ == "__main__":
    main()
