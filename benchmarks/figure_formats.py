"""The report's figures as PNG and as SVG: time to draw and write them, and bytes, in files and inside the HTML.

Runs the checklist once on the end-to-end target (``benchmarks/targets/mlp.py``), then draws every figure its report
shows (``babysitter.render.figures.draw``, the report's own layout and size) and saves it in each format, best of
``--repeats`` per format (process CPU time: steadier than wall time on a shared machine). PNG goes into the HTML as
base64 (4/3 of its bytes); SVG could go in as text, counted here as UTF-8 percent-encoded for a data URI.

How fast a browser shows each is not measured here (no browser on the machine this was written on).

    python benchmarks/figure_formats.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import base64
import io
import time
import urllib.parse
from pathlib import Path

import matplotlib

from end_to_end import DEFAULT_TARGET, _load

FORMATS = (("png", "png", {}), ("png, zlib level 1", "png", {"pil_kwargs": {"compress_level": 1}}),
           ("svg, glyphs as paths", "svg", {}), ("svg, text as text", "svg", {"svg.fonttype": "none"}))


def shown_plots(target: Path) -> list:
    import babysitter
    from babysitter.render.figures import has_data

    report = babysitter.check(**_load(str(target)), device="cpu")
    return [p for c in report.checks for p in c.plots if has_data(p)]


def measure(plots: list, fmt: str, options: dict, repeats: int) -> tuple[float, list[bytes]]:
    from babysitter.render.figures import draw

    rc = {k: v for k, v in options.items() if "." in k}
    kwargs = {k: v for k, v in options.items() if "." not in k}
    best, out = float("inf"), []
    with matplotlib.rc_context(rc):
        for _ in range(repeats):
            t0, out = time.process_time(), []
            for plot in plots:
                buf = io.BytesIO()
                draw(plot).savefig(buf, format=fmt, **kwargs)
                out.append(buf.getvalue())
            best = min(best, time.process_time() - t0)
    return best, out


def in_html(fmt: str, files: list[bytes]) -> int:
    if fmt == "png":
        return sum(len(base64.b64encode(f)) for f in files)
    return sum(len(urllib.parse.quote(f.decode("utf-8"), safe=" /=:;,'\"<>#-.()")) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(DEFAULT_TARGET))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    plots = shown_plots(Path(args.target))
    for name, fmt, options in FORMATS:
        seconds, files = measure(plots, fmt, options, args.repeats)
        print(f"{name:22s} {seconds:.2f}s CPU for {len(plots)} figures (drawn and written), "
              f"{sum(map(len, files)) / 1024:.0f} KB of files, {in_html(fmt, files) / 1024:.0f} KB in the HTML")


if __name__ == "__main__":
    main()
