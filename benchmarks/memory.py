"""Peak memory of each check, and of the whole checklist, against one plain training step.

Each measurement runs in a fresh process so that peaks do not leak into each other. Both sides start from a process
that has trained one step (the optimizer's state exists, as it does for a user mid-training); by default the
gradients of that step are kept (``--grads none`` lets them go first, as ``optimizer.zero_grad()`` does).

On CUDA the figure is ``torch.cuda.max_memory_allocated`` above what the model, its data and the optimizer held
before the work began; the snapshot lives in host memory, so a check should cost the accelerator what a training
step does (goal: at most 1.1x).

On the CPU the figure is the growth of the process's peak resident set (``ru_maxrss``) above its peak before the
work, against the bound: a plain step's growth plus one copy of the state the sandbox protects (parameters, buffers,
the gradients that exist, the optimizer's state). glibc's allocator keeps the memory of freed tensors resident, in
holes that later allocations do not always fit, so the resident set of any long training loop grows with its steps
(``plain:N`` rows: a plain loop of N steps); ``--malloc returning`` (the default) runs each process with
``MALLOC_MMAP_THRESHOLD_`` set so that large tensors are handed back when freed and the resident set follows what
the process holds, ``--malloc default`` leaves glibc as it is.

    python benchmarks/memory.py [--device cpu|cuda] [--width 2048] [--depth 6] [--grads keep|none]
                                [--malloc returning|default] [--modes plain,plain:300,all,lr_range,...]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
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
#: large allocations straight from mmap, handed back on free: the resident set follows the live tensors
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


def target(width: int, depth: int) -> dict:
    """A wide MLP whose parameters dominate the process's memory (about 4 * width^2 * depth bytes)."""
    torch.manual_seed(0)
    x, y = zoo.blobs(n=1024, features=256, classes=10)
    return dict(model=zoo.FunctionalMLP(d_in=256, hidden=width, d_out=10, depth=depth), data=(x, y),
                loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.adam(1e-3), batch_size=64)


def protected_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What the sandbox protects, in bytes: parameters and buffers (tied ones once), the gradients that exist and the
    optimizer's state tensors."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    params = sum(t.numel() * t.element_size() for t in tensors.values())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"params_buffers": params, "grads": grads, "optimizer_state": state}


def _peak(cuda: bool) -> int:
    if cuda:
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def probe(mode: str, device: str, width: int, depth: int, grads: str) -> dict:
    """One measurement in this process: 'plain' (one training step with a warm optimizer), 'plain:N' (N steps), a
    check id or 'all'."""
    torch.set_num_threads(1)
    fields = target(width, depth)
    cuda = device == "cuda"
    model = fields["model"].to(device)
    optimizer = fields["optimizer"](model.parameters())
    x, y = fields["data"]
    batches = [(x[i:i + 64].to(device), y[i:i + 64].to(device)) for i in range(0, len(x), 64)]

    def step(i: int = 0):
        xb, yb = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = fields["loss_fn"](model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # both sides start from a process that has trained: the optimizer state exists and torch's lazy imports
    # (the first optimizer imports torch._dynamo, about 100 MiB) are done, as they are for a user mid-training
    step()
    if grads == "none":
        optimizer.zero_grad(set_to_none=True)
    gc.collect()
    protected = protected_bytes(model, optimizer)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _peak(False)
    if mode.startswith("plain"):
        losses = [step(i) for i in range(int(mode.partition(":")[2] or 1))]  # kept, as a loop that logs keeps them
        assert len(losses) >= 1
    else:
        select = None if mode == "all" else [mode]
        report = babysitter.check(**{**fields, "optimizer": optimizer}, device=device, select=select)
        assert all(c.status != "error" for c in report.checks), [c.traceback for c in report.checks]
    if cuda:
        torch.cuda.synchronize()
    return {"mode": mode, "base": base, "peak": _peak(cuda), "protected": protected,
            "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--grads", choices=("keep", "none"), default="keep",
                    help="the gradients of the warm step kept (mid-training) or let go before the work")
    ap.add_argument("--malloc", choices=("returning", "default"), default="returning",
                    help="CPU: glibc handing large freed tensors back (RSS follows what is held) or as it is")
    ap.add_argument("--modes", default="", help="comma-separated: plain, plain:N, all, check ids (default: every one)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/memory.json"))
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.device, args.width, args.depth, args.grads)))
        return
    modes = ["plain", "all", *(c.id for c in CHECKLIST)]
    if args.modes:
        modes = ["plain"] + [m for m in args.modes.split(",") if m != "plain"]
    cuda = args.device == "cuda"
    env = {**os.environ, **(RETURNING_MALLOC if args.malloc == "returning" and not cuda else {})}
    unit = "CUDA allocated above the model's resident state" if cuda else f"peak RSS growth, malloc {args.malloc}"
    print(f"device {args.device}, MLP width {args.width} depth {args.depth}, Adam, gradients {args.grads}; {unit}",
          flush=True)
    rows: list[dict] = []
    for mode in modes:
        proc = subprocess.run([sys.executable, __file__, "--probe", mode, "--device", args.device, "--width",
                               str(args.width), "--depth", str(args.depth), "--grads", args.grads],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode:
            sys.exit(f"probe {mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if not rows:
            p = r["protected"]
            print(f"parameters {r['params_bytes'] / MiB:.0f} MiB; protected state {sum(p.values()) / MiB:.0f} MiB "
                  f"(parameters and buffers {p['params_buffers'] / MiB:.0f}, gradients {p['grads'] / MiB:.0f}, "
                  f"optimizer state {p['optimizer_state'] / MiB:.0f})")
            print(f"| work | peak above start (MiB) | {'/ plain step' if cuda else '/ bound'} | / parameters | "
                  f"bound (MiB) | over it (MiB) |")
            print("|---|---:|---:|---:|---:|---:|", flush=True)
        rows.append(r)
        plain, params = rows[0]["peak"] - rows[0]["base"], rows[0]["params_bytes"]
        extra = r["peak"] - r["base"]
        # on the accelerator the snapshot is on the host: the bound is the plain step; on the CPU, the plain step
        # plus one copy of the protected state
        bound = plain * 1.1 if cuda else plain + sum(r["protected"].values())
        r.update(extra=extra, ratio_plain=extra / max(plain, 1), ratio_bound=extra / max(bound, 1),
                 ratio_params=extra / params, bound=bound)
        print(f"| {r['mode']} | {extra / MiB:.0f} | {r['ratio_plain' if cuda else 'ratio_bound']:.2f}x | "
              f"{r['ratio_params']:.2f}x | {bound / MiB:.0f} | {max(extra - bound, 0) / MiB:.0f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "width": args.width, "depth": args.depth,
                                          "grads": args.grads, "malloc": args.malloc, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
