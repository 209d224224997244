"""What ``babysit check`` costs as a user meets it: the whole process, report included, against a bare script that
replays the same passes.

First (untimed, in this process) the checklist runs once on the target to count the root forwards F, backwards B
and optimizer steps S it performs. Then two child processes are timed alternately, so that both pay for their
imports and drift on the machine hits both alike:

- A: ``babysit check TARGET --device cpu --out DIR`` (the CLI's ``main``, with ``Report.save`` (the JSON, the CSVs
  and the HTML page with its figures) wrapped in a timer so that the report's share of the run can be read; output
  to a pipe, as in CI);
- B: a bare script that imports torch and the target file, batches the data as the checklist does, and replays
  max(S, B) zero_grad/forward/loss/backward passes (the first S followed by an optimizer step) and the remaining
  forwards without gradients (the loop of ``checklist_cost.plain_loop``, without babysitter).

Prints the median wall-time ratio A/B with its spread over the pairs, the ratio of the children's CPU times, and the
report's share of A's wall time (median, with the seconds).

    python benchmarks/end_to_end.py [--repeats 5] [--threads N] [--target benchmarks/targets/mlp.py]

On a machine shared with other work, ``--threads 1`` keeps torch's thread pool from waiting on threads that the
other work has descheduled (on 2 busy cores, the bare replay took 4x longer with 2 threads than with 1).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TARGET = HERE / "targets" / "mlp.py"


# -- the children (only the standard library is imported above this line: each child pays for its own imports) --

def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.babysit()


def bare(target: str, forwards: int, backwards: int, steps: int) -> None:
    """The training work the checklist needs, written as a user would: no babysitter."""
    import torch

    torch.manual_seed(0)
    fields = _load(target)
    x, y = fields["data"]
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    pool = [(x[idx], y[idx]) for idx in order.split(fields.get("batch_size") or 64)][:32]
    model, loss_fn = fields["model"], fields["loss_fn"]
    optimizer = fields["optimizer"](model.parameters())
    model.train()
    for i in range(max(steps, backwards)):
        xb, yb = pool[i % len(pool)]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        if i < steps:
            optimizer.step()
    with torch.no_grad():
        for i in range(max(forwards - max(steps, backwards), 0)):
            xb, yb = pool[i % len(pool)]
            loss_fn(model(xb), yb)


def cli(target: str, out: str, timings: str) -> int:
    """``babysit check`` with the report's writing timed (wall and CPU seconds, written to ``timings``)."""
    from babysitter import cli as babysit
    from babysitter.report import Report

    spent = {"save_s": 0.0, "save_cpu_s": 0.0}

    def timed(fn):
        def run(self, *args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(self, *args, **kwargs)
            finally:
                spent["save_s"] += time.perf_counter() - t0
                spent["save_cpu_s"] += time.process_time() - c0
        return run

    Report.save = timed(Report.save)  # the report's share: the JSON, the CSVs, the page and its figures
    code = babysit.main(["check", target, "--device", "cpu", "--out", out])
    Path(timings).write_text(json.dumps(spent))
    return code


# -- the parent ----------------------------------------------------------------------------------------------------

def count_passes(target: str) -> dict:
    """Forwards, backwards and optimizer steps of one checklist run on ``target`` (as the CLI runs it: seed 0)."""
    sys.path.insert(0, str(HERE))
    import babysitter
    from _timing import count_work

    fields = _load(target)
    with count_work(fields["model"]) as counts:
        babysitter.check(**fields, device="cpu", seed=0)
    return dict(counts)


class Child:
    """One child process per call; records its wall time and CPU time (user + system, from the kernel's
    accounting of waited-for children, so that helper processes it forks count too)."""

    def __init__(self, argv: list[str], env: dict):
        self.argv, self.env, self.wall, self.cpu = argv, env, [], []

    def __call__(self) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(self.argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        self.wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode not in (0, 1):  # 1: a check failed, which is the target's business
            raise RuntimeError(f"{' '.join(self.argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def _spread(a: list[float], b: list[float]) -> dict:
    ratios = [x / y for x, y in zip(a, b)]
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def measure(target: str, repeats: int, threads: Optional[int] = None, warmup: int = 1) -> dict:
    counts = count_passes(target)
    me = [sys.executable, str(Path(__file__).resolve())]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "save.json"
        check = Child(me + ["--child", "cli", target, "--out", tmp, "--timings", str(timings)], env)
        plain = Child(me + ["--child", "bare", target] + [str(counts[k]) for k in ("forwards", "backwards", "steps")],
                      env)
        saves = []
        for i in range(warmup + repeats):
            check()
            plain()
            saves.append(json.loads(timings.read_text()))
    n = slice(warmup, None)
    wall_a, wall_b, cpu_a, cpu_b, saves = check.wall[n], plain.wall[n], check.cpu[n], plain.cpu[n], saves[n]
    return {**counts, "check_s": wall_a, "bare_s": wall_b, "check_cpu_s": cpu_a, "bare_cpu_s": cpu_b,
            "save_s": [s["save_s"] for s in saves], "wall": _spread(wall_a, wall_b), "cpu": _spread(cpu_a, cpu_b),
            "report_share": _spread([s["save_s"] for s in saves], wall_a)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(DEFAULT_TARGET))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch's threads in both children (OMP_NUM_THREADS; default: torch's own choice, one per core)")
    ap.add_argument("--out", default=str(HERE / "out" / "end_to_end.json"))
    args = ap.parse_args()
    r = measure(str(Path(args.target).resolve()), args.repeats, args.threads)
    med = statistics.median
    print(f"target {Path(args.target).name}: {r['forwards']} forwards, {r['backwards']} backwards, "
          f"{r['steps']} optimizer steps; {os.cpu_count()} cores, torch threads "
          f"{args.threads or 'default'}, {args.repeats} alternated pairs")
    print(f"babysit check / bare replay = {r['wall']['ratio']:.2f}x wall (min {r['wall']['min']:.2f}, max "
          f"{r['wall']['max']:.2f}); {r['cpu']['ratio']:.2f}x CPU time ({r['cpu']['min']:.2f}-{r['cpu']['max']:.2f})")
    print(f"  babysit check {med(r['check_s']):.2f}s wall ({med(r['check_cpu_s']):.2f}s CPU), bare replay "
          f"{med(r['bare_s']):.2f}s wall ({med(r['bare_cpu_s']):.2f}s CPU)")
    print(f"  report (Report.save) {med(r['save_s']):.2f}s: {r['report_share']['ratio']:.1%} of the run "
          f"({r['report_share']['min']:.1%}-{r['report_share']['max']:.1%})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))
    print(f"wrote {args.out}")


def _child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=("cli", "bare"))
    ap.add_argument("target")
    ap.add_argument("counts", nargs="*", type=int)
    ap.add_argument("--out")
    ap.add_argument("--timings")
    args = ap.parse_args(argv)
    if args.child == "bare":
        bare(args.target, *args.counts)
        return 0
    return cli(args.target, args.out, args.timings)


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.exit(_child(sys.argv[1:]))
    main()
