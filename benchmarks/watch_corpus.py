"""The watcher's verdicts over the corpus of real architectures: false alarms on healthy runs, and what it says of
the injected faults, for each half of the corpus's split.

Each case (and fault) is trained its own way (its optimizer, data, ``Step`` and scheduler) for ``--steps`` steps
under the watcher (``babysitter.wrap(**fields).watch(steps)``, the same path as ``babysit check --watch``). A
healthy run's verdict counts as a false alarm when it warns or fails. The faults were written for the checklist
(most are mistakes visible at initialization); the table says which of them the watch flags too, and with what.

    python benchmarks/watch_corpus.py [--split tune|held|all] [--steps 300] [--every 25] [--only NAME] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import babysitter  # noqa: E402
import corpus  # noqa: E402

FLAGGED = ("warn", "fail")


def run_one(kind: str, name: str, steps: int, every: int) -> dict:
    torch.set_num_threads(1)
    item = {c.name: c for c in (corpus.cases() if kind == "case" else corpus.faults())}[name]
    fields = item.build(0)
    start = time.perf_counter()
    try:
        report = babysitter.wrap(**fields, name=name).watch(steps, every=every, device="cpu")
        checks = {c.id: dict(status=c.status, summary=c.summary) for c in report.checks}
    except Exception as exc:  # a watch that cannot run this model is reported, not hidden
        checks = {"watch": dict(status="error", summary=f"{type(exc).__name__}: {exc}")}
    return dict(kind=kind, name=name, seconds=round(time.perf_counter() - start, 2), checks=checks)


def run_all(only: str, split: str, steps: int, every: int, jobs: int) -> list[dict]:
    cases, faults = corpus.cases(), corpus.faults()
    halves = {**corpus.split_of(cases), **corpus.split_of(faults)}
    todo = [("case", c.name) for c in cases] + [("fault", f.name) for f in faults]
    todo = [(k, n) for k, n in todo if only in n and split in ("all", halves[n])]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(run_one, *zip(*todo), [steps] * len(todo), [every] * len(todo))) if todo else []
    for row in rows:
        row["split"] = halves[row["name"]]
    return rows


def flags(row: dict) -> list[str]:
    return [f"{cid}={c['status']}" for cid, c in row["checks"].items() if c["status"] in FLAGGED + ("error",)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("all", *corpus.SPLITS), default="all")
    ap.add_argument("--only", default="")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="write every status and summary to this JSON file")
    args = ap.parse_args(argv)
    rows = run_all(args.only, args.split, args.steps, args.every, args.jobs)
    for split in corpus.SPLITS:
        healthy = [r for r in rows if r["kind"] == "case" and r["split"] == split]
        faulty = [r for r in rows if r["kind"] == "fault" and r["split"] == split]
        if not healthy and not faulty:
            continue
        print(f"\n{split}: {len(healthy)} healthy runs, {len(faulty)} faulty")
        print("| run | kind | seconds | flagged by the watch |\n|---|---|---|---|")
        for r in healthy + faulty:
            print(f"| {r['name']} | {'healthy' if r['kind'] == 'case' else 'fault'} | {r['seconds']} | "
                  f"{', '.join(flags(r)) or '-'} |")
        alarms = sum(bool(flags(r)) for r in healthy)
        fails = sum(any(c["status"] == "fail" for c in r["checks"].values()) for r in healthy)
        print(f"{split}: {alarms} of {len(healthy)} healthy runs with a warning or failure ({fails} with a failure); "
              f"{sum(bool(flags(r)) for r in faulty)} of {len(faulty)} faulty runs flagged")
        for r in healthy:
            for cid, c in r["checks"].items():
                if c["status"] in FLAGGED + ("error",):
                    print(f"  {r['name']} {cid} {c['status']}: {c['summary']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
