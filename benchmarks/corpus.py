"""The checklist over the corpus of real architectures (issue 18): false alarms on healthy models, detections of
injected faults, for each half of the held-out split.

    python benchmarks/corpus.py                  # both halves: the tables of the README
    python benchmarks/corpus.py --split tune     # the half that rules and thresholds may be tuned on
    python benchmarks/corpus.py --only bert      # the cases and faults whose names contain 'bert'
    python benchmarks/corpus.py --plain          # also the plain-loop evidence (each case trains, each fault hurts)
    python benchmarks/corpus.py --out runs.json  # keep every status and summary line

A healthy model's check counts as a false alarm when it fails (a false FAIL) or warns; a fault counts as detected
when the check it was injected for fails or warns. ``error`` (a check crashed) is counted on its own.
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
from babysitter.checklist import CHECKLIST  # noqa: E402

FLAGGED = ("warn", "fail")


def run_one(kind: str, name: str) -> dict:
    """The checklist on one case or fault: every check's status and summary, and the seconds it took."""
    torch.set_num_threads(1)
    item = {c.name: c for c in (corpus.cases() if kind == "case" else corpus.faults())}[name]
    fields = item.build(0)
    start = time.perf_counter()
    report = babysitter.check(**fields, device="cpu", name=name)
    row = dict(kind=kind, name=name, seconds=round(time.perf_counter() - start, 2),
               checks={c.id: dict(status=c.status, summary=c.summary) for c in report.checks})
    if kind == "fault":
        row.update(check=item.check, detected=row["checks"][item.check]["status"] in FLAGGED)
    return row


def run_all(only: str, split: str, jobs: int) -> list[dict]:
    cases, faults = corpus.cases(), corpus.faults()
    halves = {**corpus.split_of(cases), **corpus.split_of(faults)}
    todo = [("case", c.name) for c in cases] + [("fault", f.name) for f in faults]
    todo = [(k, n) for k, n in todo if only in n and split in ("all", halves[n])]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(run_one, *zip(*todo))) if todo else []
    for row in rows:
        row["split"] = halves[row["name"]]
    return rows


def flagged(row: dict) -> str:
    """The checks that did not pass or skip, as 'id=status'."""
    return ", ".join(f"{cid}={c['status']}" for cid, c in row["checks"].items() if c["status"] not in ("pass", "skip"))


def per_model_table(rows: list[dict]) -> list[str]:
    lines = ["| model | half | seconds | checks that did not pass |", "|---|---|---|---|"]
    for r in rows:
        name = r["name"] if r["kind"] == "case" else f"{r['name']} (fault for `{r['check']}`: " \
            f"{'detected' if r['detected'] else '**missed**'})"
        lines.append(f"| {name} | {r['split']} | {r['seconds']:.1f} | {flagged(r) or '-'} |")
    return lines


def per_check_table(rows: list[dict], splits: list[str]) -> list[str]:
    head = " | ".join(f"{s}: healthy fail / warn | {s}: faults detected" for s in splits)
    lines = [f"| check | {head} |", "|---" * (1 + 2 * len(splits)) + "|"]
    for cid in [c.id for c in CHECKLIST]:
        cells = []
        for s in splits:
            healthy = [r for r in rows if r["kind"] == "case" and r["split"] == s]
            faults = [r for r in rows if r["kind"] == "fault" and r["split"] == s and r["check"] == cid]
            fails = sum(r["checks"][cid]["status"] == "fail" for r in healthy)
            warns = sum(r["checks"][cid]["status"] == "warn" for r in healthy)
            errors = sum(r["checks"][cid]["status"] == "error" for r in rows if r["split"] == s)
            cells.append(f"{fails} / {warns} of {len(healthy)}" + (f" ({errors} error)" if errors else ""))
            cells.append(f"{sum(r['detected'] for r in faults)} of {len(faults)}" if faults else "-")
        lines.append(f"| `{cid}` | " + " | ".join(cells) + " |")
    return lines


def summary(rows: list[dict], splits: list[str]) -> list[str]:
    out = []
    for s in splits:
        healthy = [r for r in rows if r["kind"] == "case" and r["split"] == s]
        faults = [r for r in rows if r["kind"] == "fault" and r["split"] == s]
        fails = sum(c["status"] == "fail" for r in healthy for c in r["checks"].values())
        warns = sum(c["status"] == "warn" for r in healthy for c in r["checks"].values())
        clean = sum(not flagged(r) for r in healthy)
        out.append(f"{s}: {len(healthy)} healthy models, {clean} with no warning, {fails} false FAIL(s), "
                   f"{warns} warning(s); {sum(r['detected'] for r in faults)} of {len(faults)} faults detected")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("all", *corpus.SPLITS), default="all")
    ap.add_argument("--only", default="", help="only names containing this")
    ap.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    ap.add_argument("--plain", action="store_true", help="also print the plain-loop evidence")
    ap.add_argument("--out", help="write every status and summary line to this JSON file")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows = run_all(args.only, args.split, args.jobs)
    splits = list(corpus.SPLITS) if args.split == "all" else [args.split]
    print("\n".join(per_model_table(rows)) + "\n")
    print("\n".join(per_check_table(rows, splits)) + "\n")
    print("\n".join(summary(rows, splits)))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s with {args.jobs} process(es), "
          f"torch {torch.__version__}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.plain:
        from corpus.plain import main as plain_main

        return plain_main([args.only])
    return 0


if __name__ == "__main__":
    sys.exit(main())
