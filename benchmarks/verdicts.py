"""The checklist's verdicts on every model of tests/zoo.py and every target under checks/, as a table.

    python benchmarks/verdicts.py --out before.json          # record
    python benchmarks/verdicts.py --compare before.json      # record again and show what changed

Used to show that a refactoring changes no verdict (the statuses of all eleven checks on each model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import babysitter  # noqa: E402
import zoo  # noqa: E402
from babysitter.target import discover, load  # noqa: E402


def targets():
    for name, build in zoo.HEALTHY.items():
        yield f"zoo.{name}", build()
    for ref in discover(root=ROOT):
        t = load(ref)
        yield f"checks.{t.name}", dict(model=t.model, data=t.data, loss_fn=t.loss_fn, optimizer=t.optimizer,
                                       forward=t.forward, batch_size=t.batch_size)


def record() -> dict:
    torch.set_num_threads(1)
    out = {}
    for name, fields in targets():
        torch.manual_seed(0)
        report = babysitter.check(**fields, device="cpu")
        out[name] = {c.id: {"status": c.status, "summary": c.summary} for c in report.checks}
        print(name, " ".join(f"{c.id}={c.status}" for c in report.checks), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the verdicts to this JSON file")
    ap.add_argument("--compare", help="a JSON file written by --out: print the table and every change")
    args = ap.parse_args()
    now = record()
    if args.out:
        Path(args.out).write_text(json.dumps(now, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        ids = list(next(iter(now.values())))
        print("| target | " + " | ".join(ids) + " |")
        print("|---" * (len(ids) + 1) + "|")
        changed = 0
        for name, checks in now.items():
            cells = []
            for cid in ids:
                b, a = before.get(name, {}).get(cid, {}).get("status"), checks[cid]["status"]
                cells.append(a if a == b else f"**{b} -> {a}**")
                changed += a != b
            print(f"| {name} | " + " | ".join(cells) + " |")
        print(f"\n{changed} status(es) changed")


if __name__ == "__main__":
    main()
