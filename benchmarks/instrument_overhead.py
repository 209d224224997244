"""What the activation instrument costs on a training step: instrumented forward/backward against the plain one.

For a mid-sized MLP (functional F.relu), a CNN (Conv-BN-ReLU) and a Transformer encoder (GELU, attention), time
blocks of forward+backward steps alternately with and without the instrument (A B A B ..., then B A B A ...),
on one thread and on the default thread count. An instrumented block enters the instrument, runs the steps and
calls ``result()`` (the one host transfer), so the ratio includes everything the checks pay for. The steps are
few enough that every call is one of the first four of its site, which also pay for moments and histograms: the
worst case (later calls only count active and saturated units). Reports the median of the paired ratios, their
spread, the ratio of the fastest blocks, and the median ratio of process CPU time (both robust on a machine
shared with other work: CPU time does not count the turns of other processes). Goal: at most 1.10x.

    python benchmarks/instrument_overhead.py [--repeats 11] [--device cpu|cuda] [--batch-scales 1,16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import CpuTimed, alternate, ratio_stats  # noqa: E402

from babysitter.instruments.activations import ActivationInstrument  # noqa: E402


class MLP(nn.Module):
    def __init__(self, width: int = 1024, depth: int = 6, d_in: int = 256, classes: int = 10):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


def cnn(width: int = 64, depth: int = 5, classes: int = 10) -> nn.Module:
    layers, c = [], 3
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


class Encoder(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 256, heads: int = 4, layers: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def cases(device, batch_scale: int = 1):
    """The three models; ``batch_scale`` multiplies the batch (a GPU step on the CPU's batch is launch-bound)."""
    g = torch.Generator().manual_seed(0)
    b = batch_scale
    return {
        f"mlp 6x1024, batch {128 * b}": (MLP(), torch.randn(128 * b, 256, generator=g), 4),
        f"cnn 5 conv 64ch 32x32, batch {8 * b}": (cnn(), torch.randn(8 * b, 3, 32, 32, generator=g), 2),
        f"transformer 4 layers d=256, {8 * b}x64 tokens": (
            Encoder(), torch.randint(0, 1000, (8 * b, 64), generator=g), 2),
    }


def measure(model: nn.Module, x: torch.Tensor, steps: int, repeats: int, device) -> dict:
    model = model.to(device).train()
    x = x.to(device)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    def plain():
        for _ in range(steps):
            step()

    sites = {}

    def instrumented():
        with ActivationInstrument(model) as inst:
            for _ in range(steps):
                step()
            result = inst.result()
        sites["n"] = len(result.layers)

    a, b = CpuTimed(instrumented), CpuTimed(plain)
    # half the pairs in each order: whichever runs first in a pair pays for cache and scheduler effects
    ta, tb = alternate(a, b, repeats=(repeats + 1) // 2, warmup=1)
    tb2, ta2 = alternate(b, a, repeats=repeats // 2, warmup=0)
    ta, tb = ta + ta2, tb + tb2
    stats = ratio_stats(ta, tb)
    cpu_stats = ratio_stats(a.times[1:], b.times[1:])  # the k-th calls of each pair up; without the warmup
    stats.update(step_s=stats["median_b_s"] / steps, sites=sites["n"], steps_per_block=steps,
                 best_ratio=min(ta) / min(tb), cpu_ratio=cpu_stats["ratio"], cpu_ratio_min=cpu_stats["ratio_min"],
                 cpu_ratio_max=cpu_stats["ratio_max"])
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-scales", default="1", help="comma-separated batch multipliers, e.g. 1,16 on a GPU")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/instrument_overhead.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    thread_settings = [1] + ([default_threads] if default_threads > 1 and device.type == "cpu" else [])
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                          f"{torch.__version__}, device {device}", "goal": 1.10, "rows": []}
    print(f"{'model':42s} {'threads':>7s} {'plain step':>11s} {'ratio':>6s} {'min':>6s} {'max':>6s} {'best':>6s} "
          f"{'cpu':>6s} {'sites':>5s}")
    scales = [int(v) for v in args.batch_scales.split(",")]
    for threads, scale in ((t, sc) for t in thread_settings for sc in scales):
        torch.set_num_threads(threads)
        for name, (model, x, steps) in cases(device, scale).items():
            torch.manual_seed(0)
            r = measure(model, x, steps, args.repeats, device)
            r.update(model=name, threads=threads)
            results["rows"].append(r)
            print(f"{name:42s} {threads:7d} {r['step_s'] * 1e3:9.1f}ms {r['ratio']:6.3f} {r['ratio_min']:6.3f} "
                  f"{r['ratio_max']:6.3f} {r['best_ratio']:6.3f} {r['cpu_ratio']:6.3f} {r['sites']:5d}", flush=True)
    worst = max(r["ratio"] for r in results["rows"])
    best = max(r["best_ratio"] for r in results["rows"])
    cpu = max(r["cpu_ratio"] for r in results["rows"])
    print(f"worst median ratio {worst:.3f}x (wall), {best:.3f}x (fastest blocks), {cpu:.3f}x (process CPU time); "
          f"goal <= 1.10x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
