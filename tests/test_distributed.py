"""babysit check under torchrun: 2 CPU ranks over gloo, in one launch for the healthy target and one faulty target
per distributed check; a crash on one rank ends the run on all; the distributed report agrees with the
single-process one on a healthy target."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

COMMON = '''
import os
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def data():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    return x, (x[:, 0] > 0).long()


def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def sgd(p):
    return torch.optim.SGD(p, 0.1)
'''

TARGETS = {
    # healthy: tuple data (sharded by babysitter as DistributedSampler would), one seed for the model
    "healthy.py": "def babysit():\n    x, y = data()\n    torch.manual_seed(1)\n"
                  "    return dict(model=mlp(), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, "
                  "batch_size=32)\n",
    # a model built with a per-rank seed
    "per_rank_seed.py": "def babysit():\n    x, y = data()\n    torch.manual_seed(int(os.environ['RANK']))\n"
                        "    return dict(model=mlp(), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, "
                        "batch_size=32)\n",
    # a DataLoader without DistributedSampler: every rank draws the same batches
    "no_sampler.py": "def babysit():\n    x, y = data()\n    torch.manual_seed(1)\n"
                     "    return dict(model=mlp(), data=DataLoader(TensorDataset(x, y), batch_size=32), "
                     "loss_fn=nn.CrossEntropyLoss(), optimizer=sgd)\n",
    # a loop of its own that forgets the all-reduce (data sharded with a DistributedSampler)
    "no_allreduce.py": "def step(model, batch, opt):\n    x, y = batch\n    opt.zero_grad()\n"
                       "    loss = nn.functional.cross_entropy(model(x), y)\n    loss.backward()\n    opt.step()\n"
                       "    return loss\n\n\ndef babysit():\n    x, y = data()\n    torch.manual_seed(1)\n"
                       "    ds = TensorDataset(x, y)\n"
                       "    return dict(model=mlp(), data=DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds)), "
                       "loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, step=step)\n",
    # a head the loss never reaches
    "unused_head.py": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                      "        self.body, self.spare = mlp(), nn.Linear(4, 4)\n\n    def forward(self, x):\n"
                      "        return self.body(x)\n\n\ndef babysit():\n    x, y = data()\n    torch.manual_seed(1)\n"
                      "    return dict(model=Net(), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, "
                      "batch_size=32)\n",
}


def _torchrun(args: list[str], cwd: Path, timeout: float = 240, env: dict | None = None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "babysitter", *args]
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full)


def _in_time(tmp_path: Path, files: dict, args: list[str], seconds: float = 60):
    """``files`` (bodies below ``from common import *``) written beside common.py, then ``babysit ARGS`` on 2 ranks
    with a 30 s collective timeout, which must end within ``seconds``: a rank left waiting would take longer."""
    (tmp_path / "common.py").write_text(COMMON)
    for name, body in files.items():
        (tmp_path / name).write_text("from common import *  # noqa: F401,F403\n\n\n" + body)
    t0 = time.monotonic()
    done = _torchrun(args, tmp_path, env={"BABYSITTER_DIST_TIMEOUT": "30"})
    assert time.monotonic() - t0 < seconds, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "checks").mkdir()
    (root / "checks" / "common.py").write_text(COMMON)
    for name, body in TARGETS.items():
        (root / "checks" / name).write_text("from common import *  # noqa: F401,F403\n\n\n" + body)
    done = _torchrun(["check", "checks", "--select", "initial_loss", "--no-config", "-q"], root)
    return root, done


def _report(root: Path, name: str) -> dict:
    return json.loads((root / "reports" / name / "report.json").read_text())


def _statuses(report: dict) -> dict:
    return {c["id"]: c["status"] for c in report["checks"]}


def test_a_healthy_target_passes_every_distributed_check_and_rank_0_alone_writes(launched):
    root, done = launched
    report = _report(root, "healthy")
    assert _statuses(report) == {"initial_loss": "pass", "ddp_params": "pass", "ddp_data": "pass",
                                 "ddp_grads": "pass"}, done.stderr[-3000:]
    assert report["run"]["world_size"] == 2 and report["run"]["rank"] == 0
    assert report["run"]["effective_batch_size"] == 64
    assert done.stdout.count("PASS  healthy") == 1  # one rank printed


def test_each_distributed_fault_is_flagged_by_its_check(launched):
    root, done = launched
    assert _statuses(_report(root, "per_rank_seed"))["ddp_params"] == "warn"
    assert _statuses(_report(root, "per_rank_seed"))["ddp_grads"] == "pass"  # DDP broadcasts rank 0's weights
    assert _statuses(_report(root, "no_sampler"))["ddp_data"] == "fail"
    no_allreduce = _statuses(_report(root, "no_allreduce"))
    assert no_allreduce["ddp_grads"] == "fail" and no_allreduce["ddp_data"] == "pass"
    unused = [c for c in _report(root, "unused_head")["checks"] if c["id"] == "ddp_grads"][0]
    assert unused["status"] == "warn" and "spare" in unused["summary"]
    assert done.returncode != 0  # some rank exited 1: the faults failed


def test_the_distributed_report_agrees_with_the_single_process_one(launched):
    import babysitter

    root, _ = launched
    sys.path.insert(0, str(root / "checks"))
    try:
        import healthy
        single = babysitter.check(**healthy.babysit(), select=["initial_loss"], device="cpu")
    finally:
        sys.path.remove(str(root / "checks"))
    distributed = _statuses(_report(root, "healthy"))
    assert {c.id: c.status for c in single.checks} == {"initial_loss": distributed["initial_loss"]}


#: the checks whose passes train or read the model at init: under torchrun they average over the ranks
REDUCED = ("initial_loss", "overfit_batch", "lr_range", "dead_relu", "saturation", "activation_scale", "grad_norms",
           "param_updates", "nonfinite")


def test_the_whole_checklist_under_two_ranks_trains_one_model_on_the_effective_batch(tmp_path):
    """Every pass that trains starts from rank 0's weights and averages each step's gradients and loss, and the
    numbers that steer a pass are averaged: the ranks read the same numbers, take the same decisions (no collective
    left unmatched), and agree with one process on the statuses."""
    (tmp_path / "common.py").write_text(COMMON)
    (tmp_path / "whole.py").write_text("from common import *  # noqa: F401,F403\n\n\n" + TARGETS["healthy.py"])
    done = _torchrun(["check", "whole.py", "--no-config", "-q", "--watch", "60"], tmp_path)
    report = _report(tmp_path, "whole")
    run = report["run"]
    assert run["ranks_differ"] == {}, done.stderr[-3000:]
    assert not set(run["ranks_read_own"]) & set(REDUCED), run["ranks_read_own"]
    sys.path.insert(0, str(tmp_path))
    try:
        import babysitter
        import whole
        single = babysitter.check(**whole.babysit(), device="cpu")
    finally:
        sys.path.remove(str(tmp_path))
    assert {c.id: c.status for c in single.checks} == \
        {k: v for k, v in _statuses(report).items() if not k.startswith("ddp_")}
    lr = [c for c in report["checks"] if c["id"] == "lr_range"][0]
    assert "effective batch of 64" in " ".join(lr["notes"]) and lr["metrics"]["suggested_lr"] is not None
    watched = _report(tmp_path, "whole/watch")  # the watch trains one data-parallel run too; rank 0 writes it
    assert watched["run"]["optimizer_steps"] == 60 and all(c["status"] != "fail" for c in watched["checks"])


def test_a_model_the_target_shards_with_fsdp2_is_checked_as_it_trains(tmp_path):
    """fully_shard (FSDP2) on the CPU over gloo: every check runs (FSDP unshards in its own forward, the sandbox
    reshards before it captures or restores), gradient norms are of the whole gradients, and ddp_grads reads
    FSDP's own reduction."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed.fsdp")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard")
    (tmp_path / "common.py").write_text(COMMON)
    (tmp_path / "sharded.py").write_text(
        "from common import *  # noqa: F401,F403\nimport torch.distributed as dist\n\n\ndef babysit():\n"
        "    x, y = data()\n    torch.manual_seed(1)\n    model = mlp()\n"
        "    from torch.distributed.device_mesh import init_device_mesh\n"
        "    from torch.distributed.fsdp import fully_shard\n"
        "    fully_shard(model, mesh=init_device_mesh('cpu', (dist.get_world_size(),)))\n"
        "    return dict(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, batch_size=32)\n")
    done = _torchrun(["check", "sharded.py", "--no-config", "-q"], tmp_path)
    report = _report(tmp_path, "sharded")
    statuses = _statuses(report)
    assert set(statuses.values()) <= {"pass", "skip"} and statuses["grad_norms"] == "pass", \
        ([(c["id"], c["summary"]) for c in report["checks"] if c["status"] not in ("pass", "skip")],
         done.stderr[-2000:])
    assert report["run"]["ranks_differ"] == {} and not set(report["run"]["ranks_read_own"]) & set(REDUCED)
    assert "your FSDP model" in [c for c in report["checks"] if c["id"] == "ddp_grads"][0]["summary"]


def test_a_nan_on_one_rank_is_found_and_the_ranks_stay_in_step(tmp_path):
    """Rank 1's data drives a sqrt below zero: the averaged loss is NaN on both ranks; each rank replays its own
    steps to find where, and rank 0's report names rank 1's module (no rank left waiting in a collective)."""
    done = _in_time(tmp_path, {"nan_rank1.py": (
        "class Root(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.body = mlp()\n\n    def forward(self, x):\n"
        "        return self.body(x.sqrt())\n\n\ndef babysit():\n    x, y = data()\n    torch.manual_seed(1)\n"
        "    x = x.abs() * (-1 if os.environ['RANK'] == '1' else 1)\n    ds = TensorDataset(x, y)\n"
        "    return dict(model=Root(), data=DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds)), "
        "loss_fn=nn.CrossEntropyLoss(), optimizer=sgd)\n")},
                    ["check", "nan_rank1.py", "--no-config", "-q", "--select", "nonfinite"])
    nonfinite = [c for c in _report(tmp_path, "nan_rank1")["checks"] if c["id"] == "nonfinite"][0]
    assert nonfinite["status"] == "fail" and "sqrt" in nonfinite["summary"], (nonfinite, done.stderr[-2000:])


NAN_ON_RANK_1 = {
    # a NaN in rank 1's data only: every rank learns of it (the data scan is shared) and no replay runs
    "nan_data.py": "def babysit():\n    x, y = data()\n    torch.manual_seed(1)\n    if os.environ['RANK'] == '1':\n"
                   "        x = x.clone()\n        x[3, 0] = float('nan')\n    ds = TensorDataset(x, y)\n"
                   "    return dict(model=mlp(), data=DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds)), "
                   "loss_fn=nn.CrossEntropyLoss(), optimizer=sgd)\n",
    # a NaN on rank 1 through the user's own DDP model: its steps are collective, so the replay does not stop in one
    "ddp_nan.py": "class Root(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.body = mlp()\n\n"
                  "    def forward(self, x):\n        return self.body(x.sqrt())\n\n\ndef babysit():\n    x, y = data()\n"
                  "    torch.manual_seed(1)\n    x = x.abs() * (-1 if os.environ['RANK'] == '1' else 1)\n"
                  "    ds = TensorDataset(x, y)\n    return dict(model=nn.parallel.DistributedDataParallel(Root()), "
                  "data=DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds)), loss_fn=nn.CrossEntropyLoss(), "
                  "optimizer=sgd)\n",
}


def test_a_nan_on_one_rank_in_its_data_or_through_a_ddp_model_leaves_no_rank_waiting(tmp_path):
    done = _in_time(tmp_path, NAN_ON_RANK_1, ["check", ".", "--no-config", "-q", "--select", "nonfinite"])
    data = {c["id"]: c for c in _report(tmp_path, "nan_data")["checks"]}
    assert data["nonfinite"]["status"] == "fail" and "the data holds NaN" in data["nonfinite"]["summary"]
    assert data["ddp_grads"]["status"] == "pass"  # NaN gradients on both ranks are the same NaN
    ddp = {c["id"]: c for c in _report(tmp_path, "ddp_nan")["checks"]}
    assert ddp["nonfinite"]["status"] == "fail" and "not localised" in ddp["nonfinite"]["summary"]
    assert all(c["status"] != "error" for c in list(data.values()) + list(ddp.values())), done.stderr[-2000:]


def test_a_step_function_with_a_grad_scaler_skips_together_on_every_rank(tmp_path):
    """Rank 1's gradients overflow at the scaler's scale, rank 0's do not: babysitter averages a step function's
    gradients at the end of backward (as DDP), so both scalers see the inf and skip together (before: rank 0 waited
    in an all-reduce that rank 1, its step skipped, never joined)."""
    _in_time(tmp_path, {"scaled.py": (
        "scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 126)\n\n\n"
        "def step(model, batch, opt):\n    x, y = batch\n    opt.zero_grad()\n"
        "    loss = nn.functional.cross_entropy(model(x), y)\n    scaler.scale(loss).backward()\n"
        "    scaler.step(opt)\n    scaler.update()\n    return loss\n\n\ndef babysit():\n    x, y = data()\n"
        "    torch.manual_seed(1)\n    x = x * (1000.0 if os.environ['RANK'] == '1' else 1.0)\n"
        "    ds = TensorDataset(x, y)\n    return dict(model=mlp(), data=DataLoader(ds, batch_size=32, "
        "sampler=DistributedSampler(ds)), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd, step=step)\n")},
              ["check", "scaled.py", "--no-config", "-q", "--select", "grad_norms,param_updates"])
    report = _report(tmp_path, "scaled")
    assert all(c["status"] != "error" for c in report["checks"]), [(c["id"], c["summary"]) for c in report["checks"]]
    assert report["run"]["ranks_differ"] == {} and "grad_norms" not in report["run"]["ranks_read_own"]


def test_a_crash_on_one_rank_ends_the_run_on_all_within_the_timeout(tmp_path):
    (tmp_path / "crash.py").write_text(
        "import os\nimport torch\nfrom torch import nn\n\n\ndef babysit():\n"
        "    if os.environ['RANK'] == '1':\n        raise RuntimeError('rank 1 cannot build its model')\n"
        "    x = torch.randn(256, 8)\n"
        "    return dict(model=nn.Linear(8, 2), data=(x, (x[:, 0] > 0).long()), loss_fn=nn.CrossEntropyLoss())\n")
    start = time.monotonic()
    done = _torchrun(["check", "crash.py", "--select", "initial_loss", "--no-config", "-q"], tmp_path,
                     env={"BABYSITTER_DIST_TIMEOUT": "20"})
    assert time.monotonic() - start < 120 and done.returncode != 0
    # rank 0 still wrote its report: interrupted by torchrun's SIGTERM (as a Ctrl-C), or with the distributed
    # checks in error when the lost peer was seen first; never a hang
    report = _report(tmp_path, "crash")
    statuses = _statuses(report)
    assert report["interrupted"] or {statuses[i] for i in ("ddp_params", "ddp_data", "ddp_grads")} <= {"error", "skip"}
    assert statuses["initial_loss"] in ("pass", "skip")


WATCHED = '''
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
import babysitter

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
opt = torch.optim.SGD(model.parameters(), 0.1)
g = torch.Generator().manual_seed(rank)  # each rank its own data
out = sys.argv[1] if rank == 0 else None
with babysitter.watch(model, opt, out=out, every=10, live=False) as w:
    for _ in range(60):
        x = torch.randn(32, 8, generator=g)
        loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        loss.backward()
        w.after_backward(loss)
        opt.step()
        opt.zero_grad()
norms = w.report_["grad_norms"].metrics
json.dump({"p50": norms["p50"], "clip": norms["suggested_clip"]}, open(f"{sys.argv[2]}/rank{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_the_watcher_under_ddp_reads_the_all_reduced_gradients_and_rank_0_writes(tmp_path):
    (tmp_path / "watched.py").write_text(WATCHED)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(30500 + os.getpid() % 1000), "watched.py", str(tmp_path / "report"), str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the norms of the averaged gradients, the same on both ranks
    assert (tmp_path / "report" / "report.json").exists() and not (tmp_path / "None").exists()


# -- the collectives themselves, and the sandbox on every rank: 2 gloo processes spawned here ---------------------
def _ranks_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    import babysitter
    from babysitter.distributed import Place, Ranks
    from babysitter.runner import run_target
    from babysitter.target import Target

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ranks = Ranks(Place(rank, world, rank))
    facts = {}
    # gradients averaged in place; a parameter without a gradient on one rank gets the average; the loss rides along
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad = torch.full((3,), float(rank + 1))
    b.grad = torch.ones(2) * 4 if rank == 0 else None
    (loss,) = ranks.average_grads([a, b], torch.tensor(float(rank)))
    facts["grads"] = (a.grad.tolist(), b.grad.tolist(), float(loss))
    facts["floats"] = ranks.mean_floats(float(rank), None, None if rank else 2.0)  # known on some ranks: theirs
    facts["unequal"] = ranks.mean_if_same(torch.ones(2 + rank)).tolist()  # different lengths: each keeps its own
    import babysitter.distributed as bd

    bd.BUCKET_ELEMENTS = 4  # buckets split by size and dtype: every tensor still gets its own average back
    parts = [torch.full((3,), float(rank)), torch.full((2,), 2.0 * rank, dtype=torch.float64), torch.ones(5) * rank]
    facts["buckets"] = [t.tolist() for t in ranks._mean_coalesced(parts)]
    bd.BUCKET_ELEMENTS = 1 << 24
    big = ranks._mean_coalesced([torch.full((2,), 60000.0, dtype=torch.float16)])[0]  # divided before the sum
    facts["half"] = big.float().tolist()
    emb = nn.Embedding(10, 2, sparse=True)
    if rank == 0:
        emb(torch.tensor([1])).sum().backward()  # a sparse gradient on rank 0, none on rank 1
    ranks.average_grads([emb.weight])
    facts["sparse"] = (emb.weight.grad.is_sparse, emb.weight.grad.to_dense()[1].tolist())
    # the same arithmetic as DistributedDataParallel: rank 0's weights, each rank's batch, the averaged gradient
    torch.manual_seed(rank)
    net, xb = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)), torch.randn(16, 4)
    ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    ranks.broadcast_state(net)
    ddp.module.load_state_dict(net.state_dict())
    ddp(xb).pow(2).mean().backward()
    net(xb).pow(2).mean().backward()
    ranks.average_grads(list(net.parameters()))
    facts["as_ddp"] = all(torch.allclose(p.grad, q.grad, atol=1e-7) for p, q in zip(net.parameters(),
                                                                                    ddp.module.parameters()))
    # the checklist on a model built with a per-rank seed: same numbers on both ranks, each rank's state restored
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    target = Target(model=model, data=(x[rank::2], (x[rank::2, 0] > 0).long()), loss_fn=nn.CrossEntropyLoss(),
                    optimizer=lambda p: torch.optim.SGD(p, 0.1), batch_size=32, name="mlp")
    report = run_target(target, device="cpu", select=["grad_norms", "overfit_batch"], ranks=ranks)
    facts["numbers"] = {c.id: c.summary for c in report.checks}
    facts["restored"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    facts["grad_free"] = all(p.grad is None for p in model.parameters())

    def step(m, batch, opt):  # a step function: its gradients are averaged by hooks at the end of backward
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    stepped = Target(model=model, data=target.data, loss_fn=nn.CrossEntropyLoss(), batch_size=32, name="mlp",
                     optimizer=lambda p: torch.optim.SGD(p, 0.1), step=step)
    run_target(stepped, device="cpu", select=["grad_norms"], ranks=ranks)
    facts["no_hooks"] = all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters()) \
        and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert babysitter is not None
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(facts))


def test_ranks_average_what_the_passes_need_and_every_rank_gets_its_own_state_back(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ranks_worker, args=(2, 29000 + os.getpid() % 1000, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["grads"] == r1["grads"] == [[1.5] * 3, [2.0, 2.0], 0.5]
    assert r0["floats"] == r1["floats"] == [0.5, None, 2.0]
    assert r0["unequal"] == [1.0, 1.0] and r1["unequal"] == [1.0, 1.0, 1.0]
    assert r0["as_ddp"] and r1["as_ddp"]
    assert r0["buckets"] == r1["buckets"] == [[0.5] * 3, [1.0] * 2, [0.5] * 5]
    assert r0["half"] == r1["half"] == [60000.0, 60000.0]
    assert r0["sparse"] == r1["sparse"] == [True, [0.5, 0.5]]
    assert r0["numbers"] == r1["numbers"]  # one model trained at the effective batch: the same summaries
    assert r0["restored"] and r1["restored"] and r0["grad_free"] and r1["grad_free"]
    assert r0["no_hooks"] and r1["no_hooks"]
