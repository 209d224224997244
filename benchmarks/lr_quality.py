"""How good is lr_range's suggestion? Regret against a grid search, beside torch-lr-finder and Lightning.

For each task (different architectures, optimizers and losses, data generated in code) and each seed:
train from that seed's initial model for a fixed short budget at every LR of a log-spaced grid, and at each
finder's suggestion (each finder runs on that same initial model). The final loss is the mean loss over the
whole data set after training (eval mode); a diverged run counts as infinite. The best LR is the grid LR with
the lowest final loss averaged over seeds; a method's regret is its seed-averaged final loss over the best,
minus 1 (0% = as good as the best grid LR; the goal is within 10%).

Peers, with their own documented suggestion rules:
- torch-lr-finder: ``range_test(loader, start_lr=1e-7, end_lr=10, num_iter=100)`` then the steepest gradient of
  its smoothed loss (the rule of its ``plot(suggest_lr=True)``: argmin of np.gradient after skipping 10 / 5 points);
- Lightning: ``Tuner(trainer).lr_find(module, min_lr=1e-7, max_lr=10, num_training=100).suggestion()``.

Also measured (``sweep_cost``): wall time of one 100-step sweep of each finder against 100 plain training
steps, and whether each leaves the model's state_dict bitwise as it found it.

    python benchmarks/lr_quality.py            # full run (~6 min on one core)
    python benchmarks/lr_quality.py --quick    # a smoke run (~2 min)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import babysitter  # noqa: E402
import zoo  # noqa: E402


# -- tasks ------------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    kind: str
    build: Callable[[int], nn.Module]  # seed -> freshly initialised model
    data: tuple  # (x, y) tensors
    loss_fn: nn.Module
    optimizer: Callable  # (params, lr) -> optimizer
    batch_size: int

    def loader(self, seed: int) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(seed)
        ds = torch.utils.data.TensorDataset(*self.data)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True)


def _noisy_labels(y: torch.Tensor, classes: int, rate: float, seed: int) -> torch.Tensor:
    """Flip a fraction of labels so the best reachable loss is well above zero (relative regret stays meaningful)."""
    g = torch.Generator().manual_seed(seed + 99)
    flip = torch.rand(len(y), generator=g) < rate
    return torch.where(flip, torch.randint(0, classes, y.shape, generator=g), y)


def tasks() -> list[Task]:
    x_sp, y_sp = zoo.spirals(n=768)
    x_im, y_im = zoo.images(n=512, size=12)
    x_sq, y_sq = zoo.sequences(n=512)
    x_tk, y_tk = zoo.tokens(n=512)
    x_rg, y_rg = zoo.regression(n=768)
    x_bl, y_bl = zoo.blobs(n=768, features=32, classes=8)
    return [
        Task("spirals-mlp", "MLP, SGD+momentum, CE", lambda s: _seeded(s, lambda: zoo.FunctionalMLP(hidden=64)),
             (x_sp, _noisy_labels(y_sp, 3, 0.1, 0)), nn.CrossEntropyLoss(),
             lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), 64),
        Task("images-cnn", "CNN+BatchNorm, Adam, CE", lambda s: _seeded(s, lambda: zoo.SmallCNN(width=8)),
             (x_im, _noisy_labels(y_im, 4, 0.1, 1)), nn.CrossEntropyLoss(),
             lambda p, lr: torch.optim.Adam(p, lr=lr), 32),
        Task("sequences-gru", "GRU, AdamW, CE", lambda s: _seeded(s, lambda: zoo.RecurrentClassifier(hidden=24)),
             (x_sq, y_sq), nn.CrossEntropyLoss(),
             lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), 32),
        Task("tokens-transformer", "Transformer encoder, Adam, CE",
             lambda s: _seeded(s, lambda: zoo.TinyTransformer(d_model=16, heads=2, layers=1)),
             (x_tk, _noisy_labels(y_tk, 2, 0.1, 2)), nn.CrossEntropyLoss(), lambda p, lr: torch.optim.Adam(p, lr=lr), 32),
        Task("regression-mlp", "MLP, plain SGD, MSE",
             lambda s: _seeded(s, lambda: nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))),
             (x_rg, y_rg), nn.MSELoss(), lambda p, lr: torch.optim.SGD(p, lr=lr), 32),
        Task("blobs-residual", "residual MLP+LayerNorm, SGD+Nesterov, CE",
             lambda s: _seeded(s, lambda: zoo.ResidualMLP(d_in=32, width=32, blocks=2, classes=8)),
             (x_bl, _noisy_labels(y_bl, 8, 0.2, 3)), nn.CrossEntropyLoss(),
             lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True), 64),
    ]


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(seed)
    return make()


# -- training at one LR -----------------------------------------------------------------------------
def final_loss(task: Task, seed: int, lr: float, steps: int) -> float:
    """Train the seed's initial model at ``lr`` for ``steps`` steps; the mean loss on all data afterwards."""
    model = task.build(seed)
    opt = task.optimizer(model.parameters(), lr)
    torch.manual_seed(seed)
    done = 0
    while done < steps:
        for x, y in task.loader(seed + done):
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x), y)
            if not torch.isfinite(loss):
                return math.inf
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model.eval()
    with torch.no_grad():
        loss = float(task.loss_fn(model(task.data[0]), task.data[1]))
    return loss if math.isfinite(loss) else math.inf


# -- the finders ------------------------------------------------------------------------------------
REF_LR = 1e-3  # the LR the optimizer is built with before a finder sweeps (finders express LRs absolutely)


def ours(task: Task, seed: int) -> Optional[float]:
    model = task.build(seed)
    report = babysitter.check(model=model, data=task.loader(seed), loss_fn=task.loss_fn,
                              optimizer=lambda p: task.optimizer(p, REF_LR), select=["lr_range"], seed=seed)
    return report["lr_range"].metrics.get("suggested_lr")


def torch_lr_finder(task: Task, seed: int, num_iter: int = 100) -> Optional[float]:
    from torch_lr_finder import LRFinder

    model = task.build(seed)
    opt = task.optimizer(model.parameters(), REF_LR)
    finder = LRFinder(model, opt, task.loss_fn, device="cpu")
    torch.manual_seed(seed)
    with _quiet():
        finder.range_test(task.loader(seed), start_lr=1e-7, end_lr=10, num_iter=num_iter)
    lrs, losses = finder.history["lr"][10:-5], finder.history["loss"][10:-5]
    finder.reset()
    if len(losses) < 2:
        return None
    return float(lrs[int(np.gradient(np.asarray(losses)).argmin())])


def _lightning_module(task: Task, model: nn.Module):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            x, y = batch
            return task.loss_fn(self.model(x), y)

        def configure_optimizers(self):
            return task.optimizer(self.model.parameters(), REF_LR)

    return Module()


def lightning(task: Task, seed: int, num_training: int = 100) -> Optional[float]:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    model = task.build(seed)
    module = _lightning_module(task, model)
    torch.manual_seed(seed)
    with _quiet(), _in_tmpdir():
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        result = Tuner(trainer).lr_find(module, train_dataloaders=task.loader(seed), min_lr=1e-7, max_lr=10,
                                        num_training=num_training, update_attr=False)
        return result.suggestion() if result is not None else None


@contextlib.contextmanager
def _quiet():
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _in_tmpdir():
    import tempfile

    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


FINDERS = {"babysitter": ours, "torch-lr-finder": torch_lr_finder, "lightning": lightning}


# -- the comparison ---------------------------------------------------------------------------------
def evaluate(task: Task, grid: list[float], seeds: list[int], steps: int) -> dict:
    table = {lr: [final_loss(task, s, lr, steps) for s in seeds] for lr in grid}
    means = {lr: statistics.mean(v) for lr, v in table.items()}
    best_lr = min(means, key=means.get)
    best = means[best_lr]
    good = [lr for lr, m in means.items() if m <= 1.1 * best]
    row = {"task": task.name, "kind": task.kind, "best_lr": best_lr, "best_loss": best,
           "good_lrs": [min(good), max(good)], "grid": {f"{lr:.3g}": m for lr, m in means.items()}, "methods": {}}
    for name, finder in FINDERS.items():
        suggestions, losses = [], []
        for s in seeds:
            try:
                lr = finder(task, s)
            except Exception as exc:  # a finder that crashes is reported, not fatal
                lr = None
                row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            suggestions.append(lr)
            losses.append(final_loss(task, s, lr, steps) if lr else math.inf)
        mean = statistics.mean(losses)
        row["methods"][name] = {"suggestions": suggestions, "loss": mean,
                                "regret": mean / best - 1 if math.isfinite(mean) else math.inf}
    return row


def sweep_cost(task: Task, num_iter: int = 100, repeats: int = 3) -> dict:
    """Wall time of one ``num_iter``-step sweep per finder against ``num_iter`` plain steps, and bitwise restore.

    babysitter's time is its sweep alone (one repeat, read from the check's metrics), so the figure compares
    like with like; 'restores' compares the model's state_dict before and after, bitwise.
    """
    from babysitter.checklist.lr_range import END_LR, START_LR

    batches = list(task.loader(0))

    def plain():  # over batches drawn beforehand, as babysitter's pool is: the cost of the training math
        model = task.build(0)
        opt = task.optimizer(model.parameters(), REF_LR)
        t0 = time.perf_counter()
        for i in range(num_iter):
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()
        return time.perf_counter() - t0

    def ours_t():
        model = task.build(0)
        before = _state(model)
        t0 = time.perf_counter()
        report = babysitter.check(model=model, data=task.loader(0), loss_fn=task.loss_fn,
                                  optimizer=lambda p: task.optimizer(p, REF_LR), select=["lr_range"],
                                  options={"lr_range": {"repeats": 1, "steps": num_iter, "start_lr": START_LR,
                                                        "end_lr": END_LR}})
        total = time.perf_counter() - t0
        return report["lr_range"].metrics["sweep_seconds"], total, _same(before, _state(model))

    def tlf_t():
        from torch_lr_finder import LRFinder

        model = task.build(0)
        opt = task.optimizer(model.parameters(), REF_LR)
        before = _state(model)
        t0 = time.perf_counter()
        finder = LRFinder(model, opt, task.loss_fn, device="cpu")
        with _quiet():
            finder.range_test(task.loader(0), start_lr=1e-7, end_lr=10, num_iter=num_iter)
        finder.reset()
        total = time.perf_counter() - t0
        return total, total, _same(before, _state(model))

    def pl_t():
        model = task.build(0)
        before = _state(model)
        t0 = time.perf_counter()
        lightning_sweep(task, model, num_iter)
        total = time.perf_counter() - t0
        return total, total, _same(before, _state(model))

    finders = {"babysitter": ours_t, "torch-lr-finder": tlf_t, "lightning": pl_t}
    plains, runs = [], {name: [] for name in finders}
    plain()  # warm-up
    for _ in range(repeats):  # round-robin, so that drift in the machine hits every tool alike
        plains.append(plain())
        for name, fn in finders.items():
            runs[name].append(fn())
    out = {"task": task.name, "num_iter": num_iter, "plain_s": statistics.median(plains)}
    for name, rs in runs.items():
        ratios = [r[0] / p for r, p in zip(rs, plains)]
        out[name] = {"sweep_s": statistics.median(r[0] for r in rs), "total_s": statistics.median(r[1] for r in rs),
                     "ratio_to_plain": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "restores_bitwise": all(r[2] for r in rs)}
    return out


def lightning_sweep(task: Task, model: nn.Module, num_iter: int) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    module = _lightning_module(task, model)
    with _quiet(), _in_tmpdir():
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        Tuner(trainer).lr_find(module, train_dataloaders=task.loader(0), min_lr=1e-7, max_lr=10,
                               num_training=num_iter, update_attr=False, early_stop_threshold=None)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- output -----------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _lr(values) -> str:
    vals = [v for v in values if v]
    if not vals:
        return "none"
    return f"{10 ** statistics.mean(math.log10(v) for v in vals):.2g}"


def markdown(rows: list[dict]) -> str:
    names = list(FINDERS)
    head = ("| task | kind | best LR (within 10%) | " + " | ".join(f"{n} LR / regret" for n in names) + " |")
    lines = [head, "|" + "---|" * (3 + len(names))]
    for r in rows:
        cells = [f"{_lr(r['methods'][n]['suggestions'])} / {_pct(r['methods'][n]['regret'])}" for n in names]
        lines.append(f"| {r['task']} | {r['kind']} | {r['best_lr']:.2g} ({r['good_lrs'][0]:.2g}-"
                     f"{r['good_lrs'][1]:.2g}) | " + " | ".join(cells) + " |")
    summary = []
    for n in names:
        regrets = [r["methods"][n]["regret"] for r in rows]
        finite = [x for x in regrets if math.isfinite(x)]
        mean = statistics.mean(regrets) if len(finite) == len(regrets) else math.inf
        summary.append(f"{_pct(mean)} mean, {_pct(max(regrets))} worst, "
                       f"{sum(x <= 0.1 for x in regrets)}/{len(regrets)} within 10%")
    lines.append("| **all** | | | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def cost_markdown(rows: list[dict]) -> str:
    names = list(FINDERS)
    lines = ["| task | 100 plain steps | " + " | ".join(f"{n} (x plain, restores)" for n in names) + " |",
             "|" + "---|" * (2 + len(names))]
    for r in rows:
        cells = [f"{r[n]['sweep_s']:.2f}s ({r[n]['ratio_to_plain']:.2f}x [{r[n]['ratio_min']:.2f}-"
                 f"{r[n]['ratio_max']:.2f}], {'bitwise' if r[n]['restores_bitwise'] else 'NOT restored'})"
                 for n in names]
        lines.append(f"| {r['task']} | {r['plain_s']:.2f}s | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer LRs, seeds and steps: a smoke run")
    ap.add_argument("--steps", type=int, default=None, help="training budget per run (default 150; 100 quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task (default 3; 2 quick)")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    ap.add_argument("--no-cost", action="store_true", help="skip the sweep-cost measurement")
    ap.add_argument("--cost-only", action="store_true", help="only the sweep-cost measurement")
    ap.add_argument("--cost-repeats", type=int, default=None, help="rounds of the cost measurement (default 5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "lr_quality.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (100 if args.quick else 150)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    grid = [float(v) for v in np.logspace(-4, 0, 5 if args.quick else 13)]
    chosen = [t for t in tasks() if not args.tasks or t.name in args.tasks.split(",")]
    t0 = time.perf_counter()
    rows = []
    for task in ([] if args.cost_only else chosen):
        rows.append(evaluate(task, grid, seeds, steps))
        print(f"  {task.name}: done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    if rows:
        print(f"LR suggestion regret: {len(grid)} LRs {grid[0]:.0e}..{grid[-1]:.0e}, {len(seeds)} seeds, {steps} "
              f"steps per run, torch {torch.__version__}, one thread\n")
        print(markdown(rows))
    cost = []
    if not args.no_cost:
        repeats = args.cost_repeats or (1 if args.quick else 5)
        cost = [sweep_cost(t, repeats=repeats) for t in chosen[:2]]
        print(f"\nmedian [min-max] over {repeats} rounds:")
        print("\nCost of one 100-step sweep against 100 plain training steps, and whether the model is restored:\n")
        print(cost_markdown(cost))
    print(f"\n({time.perf_counter() - t0:.0f}s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cost": cost, "grid": grid, "seeds": seeds, "steps": steps}, indent=1,
                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
