"""Peak memory of each check, and of the whole checklist, against one plain training step.

Each measurement runs in a fresh process so that peaks do not leak into each other. On CUDA the figure is
``torch.cuda.max_memory_allocated`` above what the model, its data and the optimizer held before the work
began: this is where the snapshot matters, because babysitter keeps it in host memory and a check should cost
the accelerator no more than a training step does. On the CPU the figure is the growth of the process's peak
resident set (``ru_maxrss``) above its peak before the work: there the snapshot, like any checkpoint, is an
extra copy of the parameters and optimizer state in the same memory, and the table says so.

    python benchmarks/memory.py [--device cpu|cuda] [--width 2048] [--depth 6] [--modes plain,all,lr_range]
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import babysitter  # noqa: E402
import zoo  # noqa: E402
from babysitter.checklist import CHECKLIST  # noqa: E402

MiB = 1 << 20


def target(width: int, depth: int) -> dict:
    """A wide MLP whose parameters dominate the process's memory (about 4 * width^2 * depth bytes)."""
    torch.manual_seed(0)
    x, y = zoo.blobs(n=1024, features=256, classes=10)
    return dict(model=zoo.FunctionalMLP(d_in=256, hidden=width, d_out=10, depth=depth), data=(x, y),
                loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-3), batch_size=64)


def _peak(cuda: bool) -> int:
    if cuda:
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def probe(mode: str, device: str, width: int, depth: int) -> dict:
    """One measurement in this process: 'plain' (one training step with a warm optimizer) or a check id or 'all'."""
    torch.set_num_threads(1)
    fields = target(width, depth)
    cuda = device == "cuda"
    model = fields["model"].to(device)
    optimizer = fields["optimizer"](model.parameters())
    x, y = fields["data"]
    x, y = x[:64].to(device), y[:64].to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        fields["loss_fn"](model(x), y).backward()
        optimizer.step()

    # both sides start from a process that has trained: the optimizer state exists and torch's lazy imports
    # (the first optimizer imports torch._dynamo, about 100 MiB) are done, as they are for a user mid-training
    step()
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _peak(False)
    if mode == "plain":
        step()
    else:
        select = None if mode == "all" else [mode]
        report = babysitter.check(**{**fields, "optimizer": optimizer}, device=device, select=select)
        assert all(c.status != "error" for c in report.checks), [c.traceback for c in report.checks]
    if cuda:
        torch.cuda.synchronize()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"mode": mode, "base": base, "peak": _peak(cuda), "params_bytes": params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--modes", default="", help="comma-separated: plain, all, check ids (default: every one)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/memory.json"))
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.device, args.width, args.depth)))
        return
    modes = ["plain", "all", *(c.id for c in CHECKLIST)]
    if args.modes:
        modes = ["plain"] + [m for m in args.modes.split(",") if m != "plain"]
    unit = "CUDA allocated above the model's resident state" if args.device == "cuda" else "peak RSS growth"
    print(f"device {args.device}, MLP width {args.width} depth {args.depth}, Adam; {unit}", flush=True)
    print("| work | peak above start (MiB) | / plain step | / parameters |")
    print("|---|---:|---:|---:|", flush=True)
    rows = []
    for mode in modes:
        proc = subprocess.run([sys.executable, __file__, "--probe", mode, "--device", args.device, "--width",
                               str(args.width), "--depth", str(args.depth)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"probe {mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        plain, params = rows[0]["peak"] - rows[0]["base"], rows[0]["params_bytes"]
        extra = r["peak"] - r["base"]
        r["extra"], r["ratio_plain"], r["ratio_params"] = extra, extra / max(plain, 1), extra / params
        print(f"| {r['mode']} | {extra / MiB:.0f} | {r['ratio_plain']:.2f}x | {r['ratio_params']:.2f}x |", flush=True)
    print(f"parameters: {rows[0]['params_bytes'] / MiB:.0f} MiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "width": args.width, "depth": args.depth,
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
