"""What watching a run costs: the same training loop with and without ``babysitter.watch``, as a ratio in one run.

For a mid-sized MLP (Adam) and a small CNN (SGD with momentum, BatchNorm), time blocks of ``--steps`` training
steps alternately with and without the watcher at its default sampling (every 50 steps: activations and update
ratios; every step: loss and per-parameter gradient norms, read from the device every 32 steps), on one thread.
The ratio is per step, as the goal is stated: a watched block times the steps with the watcher attached (its
reads from the device and host records included); entering it and closing it (the last read and the verdicts,
once per run) are timed apart and printed in milliseconds. Beside it, Lightning's documented way to
track gradient norms since ``track_grad_norm`` was removed: ``lightning.pytorch.utilities.grad_norm`` in
``on_before_optimizer_step``, logged every step (its values read to the host, as ``self.log_dict`` does).
Reports the median of paired ratios (wall and process CPU time) with their spread. Goal: at most 1.05x.

    python benchmarks/watch_overhead.py [--repeats 7] [--steps 200] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import babysitter  # noqa: E402


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    layers, c = [], 3
    for width in (32, 64, 64):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


MODELS = {
    "mlp (784-512-512-256-10, Adam, batch 128)": (mlp, (128, 784), lambda p: torch.optim.Adam(p, 1e-3)),
    "cnn (3 conv+BN, SGD momentum, batch 64, 32x32)": (cnn, (64, 3, 32, 32),
                                                       lambda p: torch.optim.SGD(p, 0.05, momentum=0.9)),
}


def loop(make, shape, optim, steps: int, device: str, mode: str):
    """A block of ``steps`` training steps; returns (wall, CPU) seconds of the steps alone."""
    torch.manual_seed(0)
    model = make().to(device)
    opt = optim(model.parameters())
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> tuple[float, float]:
        watcher = babysitter.watch(model, opt, live=False) if mode == "watch" else None
        if watcher is not None:
            t0 = time.perf_counter()
            watcher.__enter__()
            ONCE.setdefault("enter_ms", []).append(1e3 * (time.perf_counter() - t0))
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            loss.backward()
            if watcher is not None:
                watcher.after_backward(loss)
            if mode == "lightning":
                from lightning.pytorch.utilities import grad_norm

                {k: float(v) for k, v in grad_norm(model, norm_type=2).items()}
            opt.step()
            opt.zero_grad()
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if watcher is not None:
            t0 = time.perf_counter()
            watcher.close()
            ONCE.setdefault("close_ms", []).append(1e3 * (time.perf_counter() - t0))
        return wall, cpu
    return run


#: what entering and closing a watcher cost (once per run, outside the per-step ratio), in milliseconds
ONCE: dict = {}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _paired(a, b, repeats: int) -> dict:
    """A and B alternately (A B A B ..., after one warm-up each); median paired ratios of wall and CPU time."""
    a(), b()
    pairs = [(a(), b()) for _ in range(repeats)]
    out = {}
    for i, kind in enumerate(("wall", "cpu")):
        ratios = sorted(x[i] / y[i] for x, y in pairs)
        out[kind] = {"ratio": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1],
                     "median_a_s": statistics.median(x[i] for x, _ in pairs),
                     "median_b_s": statistics.median(y[i] for _, y in pairs)}
    return out


def measure(steps: int, repeats: int, device: str, modes: list[str]) -> dict:
    out = {}
    for name, (make, shape, optim) in MODELS.items():
        plain = loop(make, shape, optim, steps, device, "plain")
        row = {mode: _paired(loop(make, shape, optim, steps, device, mode), plain, repeats) for mode in modes}
        row["once_ms"] = {k: statistics.median(v) for k, v in ONCE.items()}
        ONCE.clear()
        out[name] = row
        print(name, json.dumps({m: (round(r["wall"]["ratio"], 3), round(r["cpu"]["ratio"], 3))
                                for m, r in row.items() if m != "once_ms"}), row["once_ms"], flush=True)
    return out


def _lightning_available() -> bool:
    try:
        import lightning.pytorch.utilities  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "watch_overhead.json"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    modes = ["watch"] + (["lightning"] if _lightning_available() else [])
    results = measure(args.steps, args.repeats, args.device, modes)
    print("\n| model | babysitter.watch (wall) | (CPU) | Lightning grad_norm logging (wall) | (CPU) | watch: enter, "
          "close (ms) |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        cells = []
        for mode in ("watch", "lightning"):
            for kind in ("wall", "cpu"):
                r = row.get(mode, {}).get(kind)
                cells.append(f"{r['ratio']:.3f}x [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}]" if r else "n/a")
        once = row["once_ms"]
        cells.append(f"{once.get('enter_ms', 0):.1f}, {once.get('close_ms', 0):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "steps": args.steps, "repeats": args.repeats,
                                          "torch": torch.__version__, "machine": platform.processor(),
                                          "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
