"""What the checklist costs under torchrun (issue 15): 2 ranks against the same training work done by a bare
DistributedDataParallel loop on the same ranks, and against the checklist in one process.

On every rank: count the root forwards F, backwards B and optimizer steps S that the checklist makes (an untimed
run under the ranks' collectives), then time, alternately (a barrier before each), the checklist (``run_target``
with ``Ranks``, every step's gradients averaged over the ranks) and a bare loop doing the same work through a real
``DistributedDataParallel`` model on the rank's shard: S steps of zero_grad/forward/loss/backward/step, B - S
backward passes without a step, F - max(S, B) forwards without gradients. Rank 0 prints the median ratio and its
spread. ``--single`` also times the checklist in one process on the whole data (no collectives) for the
distribution's own cost.

    python benchmarks/distributed_cost.py                 # 2 CPU ranks over gloo (launches torchrun itself)
    python benchmarks/distributed_cost.py --nproc 2 --device cuda   # NCCL, one GPU per rank
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402
from _timing import bare_work, count_work, ratio_stats  # noqa: E402


def mlp() -> dict:
    torch.manual_seed(0)
    x, y = zoo.blobs(n=2048, features=64, classes=10)
    return dict(model=zoo.FunctionalMLP(d_in=64, hidden=256, d_out=10, depth=4), data=(x, y),
                loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.sgd(0.05), batch_size=128)


def cnn() -> dict:
    torch.manual_seed(0)
    x, y = zoo.images(n=1024, size=32)
    return dict(model=zoo.SmallCNN(width=16), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=zoo.sgd(0.05),
                batch_size=64)


MODELS = {"mlp": mlp, "cnn": cnn}


def bare_ddp_loop(fields: dict, session_batches: list, device: str, work: dict):
    """The training work the checklist needs, through a real DDP model (a copy) on this rank's batches."""
    import copy

    model = nn.parallel.DistributedDataParallel(copy.deepcopy(fields["model"]).to(device),
                                                device_ids=[torch.device(device).index] if "cuda" in device else None)
    optimizer = fields["optimizer"](model.parameters())

    def loss_of(i):
        x, y = session_batches[i % len(session_batches)]
        return fields["loss_fn"](model(x), y)
    return bare_work(model, optimizer, loss_of, work["steps"], work["backwards"], work["forwards"])


def timed(fn, barrier) -> float:
    barrier()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    barrier()
    return time.perf_counter() - t0


def worker(args) -> None:
    import torch.distributed as dist

    from babysitter import distributed
    from babysitter.runner import run_target
    from babysitter.session import Session
    from babysitter.target import Target

    torch.set_num_threads(1)
    with distributed.joined() as place:
        ranks = distributed.Ranks(place)
        device = distributed.device_for(place) if args.device != "cpu" else "cpu"
        out = {}
        for name in args.models.split(","):
            fields = MODELS[name]()
            fields["data"] = distributed.shard(fields["data"], place, 0)
            target = Target(**fields)

            def checklist():
                run_target(target, device=device, ranks=ranks)
            with count_work(fields["model"]) as work:
                report = run_target(target, device=device, ranks=ranks)
            with Session(Target(**fields), device=device) as session:
                batches = [session.batch(i) for i in range(len(session.pool))]
            bare = bare_ddp_loop(fields, batches, device, dict(work))
            ta, tb = [], []
            for _ in range(args.repeats + 1):  # the first pair warms up
                ta.append(timed(checklist, dist.barrier))
                tb.append(timed(bare, dist.barrier))
            out[name] = dict(work, statuses={c.id: c.status for c in report.checks},
                             **ratio_stats(ta[1:], tb[1:]))
        if place.main:
            Path(args.out).write_text(json.dumps(out, indent=1))


def single(args) -> dict:
    """The checklist in one process on the whole data, for the cost of distribution itself."""
    import babysitter

    torch.set_num_threads(1)
    out = {}
    for name in args.models.split(","):
        times = []
        for _ in range(args.repeats + 1):
            fields = MODELS[name]()
            t0 = time.perf_counter()
            babysitter.check(**fields, device="cpu" if args.device == "cpu" else "cuda")
            times.append(time.perf_counter() - t0)
        out[name] = sorted(times[1:])[len(times[1:]) // 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single", action="store_true", help="also the checklist in one process")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/distributed_cost.json"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_port",
           str(29400 + os.getpid() % 500), __file__, "--worker", "--device", args.device, "--models", args.models,
           "--repeats", str(args.repeats), "--out", args.out]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(done.returncode)
    result = json.loads(Path(args.out).read_text())
    one = single(args) if args.single else {}
    for name, r in result.items():
        line = (f"{name:5s} {args.nproc} ranks ({args.device}): checklist {r['median_a_s']:.2f} s, bare DDP loop "
                f"{r['median_b_s']:.2f} s for the same {r['steps']} steps and {r['forwards']} forwards: "
                f"{r['ratio']:.2f}x [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]")
        if name in one:
            line += f"; one process on the whole data: {one[name]:.2f} s"
            r["single_process_s"] = one[name]
        print(line)
    result["machine"] = f"{os.cpu_count()} cores, torch {torch.__version__}, {args.nproc} ranks on {args.device}"
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
