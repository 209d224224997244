"""What the whole default checklist costs against the plain training work it needs.

For each model: count the root forwards F and optimizer steps S that ``babysitter.check`` performs (in an
untimed run), then time, alternately, the checklist and a bare loop doing the same work (S steps of
zero_grad/forward/loss/backward/step and F - S forwards without gradients) on the same model and data.
(B - S backward passes without a step are added as forward/backward pairs.) Reports the median ratio and its
spread, each check's share of the checklist's time, and how the ratio grows with depth and width (peak memory is
measured by ``benchmarks/memory.py``).

    python benchmarks/checklist_cost.py [--repeats 3] [--device cpu|cuda] [--skip-scaling]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import babysitter  # noqa: E402
import zoo  # noqa: E402
from _timing import CpuTimed, alternate, bare_work, count_work, ratio_stats  # noqa: E402

from babysitter.session import Session  # noqa: E402
from babysitter.target import Target  # noqa: E402


def mlp(depth: int = 4, width: int = 256):
    torch.manual_seed(0)
    x, y = zoo.blobs(n=2048, features=64, classes=10)
    return dict(model=zoo.FunctionalMLP(d_in=64, hidden=width, d_out=10, depth=depth), data=(x, y),
                loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.sgd(0.05), batch_size=128)


def cnn():
    torch.manual_seed(0)
    x, y = zoo.images(n=1024, size=32)
    return dict(model=zoo.SmallCNN(width=32), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.sgd(0.05),
                batch_size=64)


def transformer():
    torch.manual_seed(0)
    ids, y = zoo.tokens(n=1024, length=32, vocab=200)
    return dict(model=zoo.TinyTransformer(vocab=200, d_model=64, heads=4, layers=3, length=32), data=(ids, y),
                loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-3), batch_size=64)


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


DEVICE = "cpu"


def plain_loop(fields: dict, forwards: int, backwards: int, steps: int):
    """The bare training work the checklist needs, on the same batches (the session's pool) and device."""
    target = Target(**fields)
    model = target.model.to(DEVICE)
    with Session(target, device=DEVICE) as session:
        pool = [session.batch(i) for i in range(len(session.pool))]
    optimizer = (target.optimizer or babysitter.target.default_optimizer)(model.parameters())

    def loss_of(i):
        *inputs, y = pool[i % len(pool)]
        return target.loss_fn(model(*inputs), y)

    return bare_work(model, optimizer, loss_of, steps, backwards, forwards)


def measure(name: str, fields_fn, repeats: int) -> dict:
    fields = fields_fn()
    with count_work(fields["model"]) as counts:
        report = babysitter.check(**fields, device=DEVICE)
    forwards, backwards, steps = counts["forwards"], counts["backwards"], counts["steps"]
    plain = plain_loop(fields_fn(), forwards, backwards, steps)
    shares = []

    def checklist():
        shares.append({c.id: c.duration_s for c in babysitter.check(**fields, device=DEVICE).checks})

    a, b = CpuTimed(checklist), CpuTimed(plain)
    ta, tb = alternate(a, b, repeats=repeats)
    stats = ratio_stats(ta, tb)
    cpu = ratio_stats(a.times[1:], b.times[1:])  # without the warmup pair
    stats.update(cpu_ratio=cpu["ratio"], cpu_ratio_min=cpu["ratio_min"], cpu_ratio_max=cpu["ratio_max"])
    total = statistics.median(sum(s.values()) for s in shares)
    per_check = {cid: statistics.median(s[cid] for s in shares) / total for cid in shares[0]}
    return {"model": name, "forwards": forwards, "backwards": backwards, "optimizer_steps": steps,
            "statuses": {c.id: c.status for c in report.checks}, **stats, "check_share": per_check}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/checklist_cost.json"))
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                          f"{torch.__version__}, device {DEVICE}",
               "models": [], "scaling": []}
    for name, fn in MODELS.items():
        r = measure(name, fn, args.repeats)
        results["models"].append(r)
        print(f"{name:12s} checklist/plain = {r['ratio']:.2f}x (min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f}); "
              f"CPU time {r['cpu_ratio']:.2f}x ({r['cpu_ratio_min']:.2f}-{r['cpu_ratio_max']:.2f})"
              f"  checklist {r['median_a_s']:.2f}s, plain {r['median_b_s']:.2f}s, {r['optimizer_steps']} steps, "
              f"{r['backwards']} backwards, {r['forwards']} forwards", flush=True)
        print("             share: " + ", ".join(f"{k} {v:.0%}" for k, v in r["check_share"].items()), flush=True)
    if not args.skip_scaling:
        for depth, width in ((2, 128), (8, 128), (16, 128), (4, 64), (4, 512)):
            r = measure(f"mlp d{depth} w{width}", lambda: mlp(depth, width), max(1, args.repeats - 1))
            results["scaling"].append(r)
            print(f"mlp depth {depth:2d} width {width:3d}: {r['ratio']:.2f}x wall, {r['cpu_ratio']:.2f}x CPU time "
                  f"(plain {r['median_b_s']:.2f}s)",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
