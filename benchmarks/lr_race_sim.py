"""A simulator of lr_range's race on the tuning set of ``benchmarks/lr_quality.py``: candidate race rules judged
offline, in seconds, against the benchmark's regret.

``record`` measures, once per task and seed, everything a race could see and everything the benchmark scores:
- the range test (the ``lr_sweep`` evidence of a session built exactly as the benchmark's ``ours`` builds it), kept
  whole so that its reading can be redone under other reading rules;
- at every LR of a dense grid (``GRID``: 6 per decade, 1e-5 to 10^0.5), one run as the race trains a candidate
  (``babysitter.passes.lr_race.train_curve``: from the user's state, on the pool's training batches), its training
  loss at every step and its loss on the pool's held-out batches after each step count of ``CHECKPOINTS``;
- at every LR of the same grid, the benchmark's own score: the test-set loss after 150 steps on the whole training
  set (``lr_quality.final_loss``), the number a suggestion's regret is computed from.

``simulate`` then runs a race's rules (``babysitter.analysis.lr_curve.race_round`` and ``race_winner``, the same
code the pass runs) with every candidate's entry read from those curves instead of trained: the held-out losses at
an LR between grid points are interpolated in log-LR (a candidate is diverged when its nearer grid point diverged,
by the race's own divergence test replayed on the recorded training losses); the race's LRs lie on its lattice of 6
per decade, the grid's, so they are read exactly. The winner's regret is the benchmark's regret at it (interpolated
likewise off the grid) against the benchmark's reference (the 13-point grid's best LR). Cost is counted in
training steps and held-out evaluations.

    python benchmarks/lr_race_sim.py record            # ~35 min on one thread; cached per task in benchmarks/out
    python benchmarks/lr_race_sim.py eval              # the current rules against the recorded tasks
    python benchmarks/lr_race_sim.py eval --rules '{"finalists": 3, "steps": 80}'

The held-out set is never recorded: ``record`` refuses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import lr_quality as q  # noqa: E402
from babysitter.analysis.lr_curve import (LrRace, RaceEntry, RaceRules, ReadingRules, SweepSettings,  # noqa: E402
                                          around_user,
                                          race_bounds, race_round, race_suggestion, race_winner, read_sweep, shrinks,
                                          with_race)
from babysitter.api import wrap  # noqa: E402
from babysitter.passes.lr_race import SYNC_EVERY, _diverged, _held_out_loss, split_pool, train_curve  # noqa: E402
from babysitter.passes.stepper import Stepper  # noqa: E402
from babysitter.session import Session  # noqa: E402

#: the LRs every curve is recorded at: 6 per decade
GRID = tuple(float(10 ** (k / 6)) for k in range(-30, 4))
#: the step counts after which the held-out loss is recorded
CHECKPOINTS = (4, 6, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 96, 112, 128, 150)
STEPS = 150
#: a recorded run stops once its training loss is this many times its first (far past any rule's divergence test)
STOP = 50.0
OUT = ROOT / "out" / "lr_race_sim"


# -- recording ------------------------------------------------------------------------------------------------
def _session(task: q.Task, seed: int) -> Session:
    target = wrap(task.build(seed), task.loader(seed), loss_fn=task.loss_fn,
                  optimizer=lambda p: task.optimizer(p, q.REF_LR)).target
    return Session(target, seed=seed)


def _final_grid(task: q.Task, seed: int, known: dict) -> dict:
    """The benchmark's test-set loss after 150 steps at every grid LR (the 13 LRs the benchmark ran, from its
    output)."""
    out = {}
    for lr in GRID:
        key = f"{lr:.3g}"
        if key in known:
            v = known[key][seed]
            out[lr] = v[1] if v is not None else math.inf
        else:
            out[lr] = q.final_loss(task, seed, lr, STEPS)[1]
    return out


def record(task: q.Task, seeds: list[int], known: dict) -> dict:
    data = {"task": task.name, "seeds": {}}
    for seed in seeds:
        t0 = time.perf_counter()
        with _session(task, seed) as s:
            sweep = s.evidence("lr_sweep")
            train, held = split_pool(len(s.pool), RaceRules().held_out)
            s.reset()
            start = _held_out_loss(s, Stepper(s, s.make_optimizer(), scheduler=False), held)
            curves = {}
            for lr in GRID:
                c, _ = train_curve(s, lr, STEPS, train, held, CHECKPOINTS, STOP)
                curves[lr] = {"train": c.train, "held_out": c.held_out, "diverged": c.diverged}
        data["seeds"][seed] = {"sweep": sweep, "start": start, "curves": curves, "batches": len(s.pool),
                               "held": len(held), "final": _final_grid(task, seed, known)}
        print(f"  {task.name} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return data


def _known(*paths: Path) -> dict:
    """The benchmark's grid losses per task (from its outputs, ``lr_quality*.json``), when they were run with 5 seeds
    and 150 steps."""
    out = {}
    for path in paths:
        run = json.loads(path.read_text()) if path.exists() else {}
        if run.get("steps") == STEPS and len(run.get("seeds", ())) >= 5:
            out.update({r["task"]: r["grid"] for r in run["rows"]})
    return out


def load(names: Optional[list[str]] = None) -> list[dict]:
    out = []
    for path in sorted(OUT.glob("*.pkl")):
        data = pickle.loads(path.read_bytes())
        if names is None or data["task"] in names:
            out.append(data)
    order = [t.name for t in q.tuning_tasks()]
    return sorted(out, key=lambda d: order.index(d["task"]))


# -- simulation -----------------------------------------------------------------------------------------------
def _log_interp(lr: float, table: dict) -> float:
    """A value of ``table`` (LR -> loss, inf when diverged) at ``lr``, linear in log-LR and log-loss between grid
    points; infinite when the nearer grid point is."""
    lrs = sorted(table)
    x = math.log10(min(max(lr, lrs[0]), lrs[-1]))
    xs = [math.log10(v) for v in lrs]
    i = min(int(np.searchsorted(xs, x)), len(xs) - 1)
    if i == 0 or xs[i] == x:
        return table[lrs[i]]
    a, b = table[lrs[i - 1]], table[lrs[i]]
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    if not (math.isfinite(a) and math.isfinite(b)):
        return a if w < 0.5 else b
    if a > 0 and b > 0:
        return math.exp((1 - w) * math.log(a) + w * math.log(b))
    return (1 - w) * a + w * b


def _curve_diverged(curve: dict, steps: int, factor: float) -> bool:
    """The race's divergence test replayed on a recorded run cut at ``steps``: read every SYNC_EVERY steps (and at
    half-way and the end), stop when the recent mean exceeds ``factor`` times the first loss."""
    train = curve["train"]
    if len(train) < steps and curve["diverged"]:
        return True
    seen_until = sorted({min(i, steps) for i in range(SYNC_EVERY, steps + SYNC_EVERY, SYNC_EVERY)} | {steps // 2})
    first = train[0]
    for n in seen_until:
        if n > len(train):
            return True
        if _diverged(list(train[max(0, n - SYNC_EVERY):n]), first, factor):
            return True
    return False


class Oracle:
    """Race entries read from one seed's recorded curves, and what they cost in training steps (a finalist goes on
    from its first round's state, as the pass does when its state fits in ``RESUME_BYTES``)."""

    def __init__(self, seed_data: dict, rules: RaceRules):
        self.d, self.rules = seed_data, rules
        self.steps = self.evals = 0
        self.first: dict = {}  # the first round's LRs and their steps

    def _grid(self, lr: float) -> Optional[float]:
        """The grid LR within 0.01 decades of ``lr`` (exact for LRs on the race's lattice), None when none is."""
        near = min(self.d["curves"], key=lambda g: abs(math.log10(g / lr)))
        return near if abs(math.log10(near / lr)) < 0.01 else None

    def held(self, lr: float, steps: int) -> float:
        step = _nearest(steps)  # past the recorded STEPS: the last record
        table = {g: (c["held_out"].get(step) if c["held_out"].get(step) is not None else math.inf)
                 for g, c in self.d["curves"].items()}
        g = self._grid(lr)
        return table[g] if g is not None else _log_interp(lr, table)

    def diverged(self, lr: float, steps: int) -> bool:
        """Whether the run at ``lr`` diverged within ``steps`` (a run longer than the recorded ``STEPS``, the race's
        plateau and longer rounds, is read at ``STEPS``: it was counted diverged before, whatever it did)."""
        near = min(self.d["curves"], key=lambda g: abs(math.log10(g / lr)))
        return _curve_diverged(self.d["curves"][near], min(steps, STEPS), self.rules.diverge_factor)

    def entry(self, lr: float, steps: int, stage: str) -> RaceEntry:
        first = next((n for g, n in self.first.items() if abs(math.log10(g / lr)) < 0.01 and n < steps), 0)
        self.steps += steps - first  # a finalist goes on from its first round's state (the pass's ``Kept``)
        if stage == "coarse":
            self.first[lr] = steps
        self.evals += 1
        if self.diverged(lr, steps):
            return RaceEntry(lr=lr, loss=None, round=stage, steps=steps)
        end = self.held(lr, steps)
        return RaceEntry(lr=lr, loss=end if math.isfinite(end) else None, round=stage, steps=steps)


def _nearest(steps: int) -> int:
    return min(CHECKPOINTS, key=lambda c: abs(c - steps))


def simulate(seed_data: dict, rules: RaceRules, reading_rules: ReadingRules = ReadingRules(),
             repeats: int = SweepSettings.repeats) -> dict:
    """One seed's race under ``rules``: its suggestion (as ``with_race`` reads the race: the winner shrunk, the user's
    LR kept, or the range test's suggestion when the race has no winner), the range test's suggestion, and the cost.
    The range test is read from its first ``repeats`` recorded repeats (the same batch orders a sweep of that many
    repeats runs)."""
    sweep = seed_data["sweep"]
    reading = read_sweep(dataclasses.replace(sweep, runs=sweep.runs[:repeats]), reading_rules)
    oracle, entries = Oracle(seed_data, rules), []
    start = seed_data["start"]
    for _ in range(20):
        todo = race_round(reading, rules, seed_data["sweep"].multiplier, tuple(entries), start)
        if not todo:
            break
        entries += [oracle.entry(lr, steps, stage) for lr, steps, stage in todo]
    winner = race_winner(entries, rules, start)
    multiplier = seed_data["sweep"].multiplier
    bounds = race_bounds(reading, rules, multiplier)
    race = LrRace(entries=tuple(entries), winner=winner, start_loss=start, bounds=bounds[:2] if bounds else (),
                  suggested=race_suggestion(winner, rules, shrinks(reading, rules, multiplier, entries)),
                  around=reading.user_lr if around_user(reading, rules, multiplier) else None)
    out = with_race(reading, race, rules, reading_rules, multiplier) if entries else reading
    return {"winner": winner, "suggested": out.suggested_lr, "range_lr": reading.suggested_lr,
            "steps": oracle.steps, "evals": oracle.evals, "entries": entries}


def regret(seed_data: dict, lr: Optional[float], reference: float) -> float:
    """The benchmark's regret at ``lr`` on this seed: its test loss after 150 steps over the reference LR's."""
    if not lr:
        return math.inf
    final = seed_data["final"]
    ref = final[min(final, key=lambda g: abs(math.log10(g / reference)))]
    return _log_interp(lr, final) / ref - 1


def reference(task_data: dict) -> float:
    """The benchmark's reference: of its 13-point grid (1e-4 to 1), the LR of lowest seed-mean test loss."""
    grid = [g for g in GRID if 1e-4 * 0.999 <= g <= 1.001 and round(math.log10(g) * 3, 6) % 1 == 0]
    means = {g: statistics.mean(s["final"][g] for s in task_data["seeds"].values()) for g in grid}
    return min(means, key=means.get)


def evaluate(tasks: list[dict], rules: RaceRules, reading_rules: ReadingRules = ReadingRules(),
             repeats: int = SweepSettings.repeats) -> dict:
    rows = []
    for t in tasks:
        ref = reference(t)
        sims = {seed: simulate(d, rules, reading_rules, repeats) for seed, d in t["seeds"].items()}
        regrets = [regret(t["seeds"][s], r["suggested"], ref) for s, r in sims.items()]
        range_regrets = [regret(t["seeds"][s], r["range_lr"], ref) for s, r in sims.items()]
        lrs = [r["suggested"] for r in sims.values() if r["suggested"]]
        rows.append({"task": t["task"], "best": ref, "median": statistics.median(regrets), "worst": max(regrets),
                     "regrets": regrets, "range_median": statistics.median(range_regrets),
                     "suggested": statistics.median(lrs) if lrs else None,
                     "spread": max(lrs) / min(lrs) if lrs else None,
                     "steps": statistics.mean(r["steps"] for r in sims.values()),
                     "evals": statistics.mean(r["evals"] for r in sims.values())})
    medians = [r["median"] for r in rows]
    return {"rows": rows, "worst_median": max(medians), "mean_median": statistics.mean(medians),
            "mean_worst": statistics.mean(min(r["worst"], 10.0) for r in rows),
            "within_5": sum(m <= 0.05 for m in medians), "steps": statistics.mean(r["steps"] for r in rows),
            "max_steps": max(r["steps"] for r in rows)}


def report(result: dict) -> str:
    lines = ["| task | best LR | suggested (spread) | median | worst seed | range test alone | race steps |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sp = f"x{r['spread']:.1f}" if r["spread"] else ""
        lines.append(f"| {r['task']} | {r['best']:.2g} | {r['suggested'] or 0:.2g} ({sp}) | {q._pct(r['median'])} | "
                     f"{q._pct(r['worst'])} | {q._pct(r['range_median'])} | {r['steps']:.0f} |")
    lines.append(f"worst median {q._pct(result['worst_median'])}, mean median {q._pct(result['mean_median'])}, "
                 f"mean worst seed (capped at 1000%) {q._pct(result['mean_worst'])}, {result['within_5']}/"
                 f"{len(result['rows'])} within 5%, race steps mean {result['steps']:.0f} (max "
                 f"{result['max_steps']:.0f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("record", "eval"))
    ap.add_argument("--tasks", default="", help="comma-separated tuning task names (default: all 50)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rules", default="", help="RaceRules fields as JSON (eval)")
    ap.add_argument("--repeats", type=int, default=SweepSettings.repeats, help="sweep repeats read (eval; 3 recorded)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.tasks.split(",") if args.tasks else None
    if args.what == "record":
        held = {t.name for t in q.held_out_tasks()}
        if names and set(names) & held:
            raise SystemExit(f"refused: {sorted(set(names) & held)} belong to the held-out set")
        known = _known(*(ROOT / "out" / f"lr_quality{s}.json" for s in ("", "_tune", "_held")))
        OUT.mkdir(parents=True, exist_ok=True)
        for task in q.tuning_tasks():
            path = OUT / f"{task.name}.pkl"
            if (names and task.name not in names) or path.exists():
                continue
            path.write_bytes(pickle.dumps(record(task, list(range(args.seeds)), known.get(task.name, {}))))
        return 0
    rules = RaceRules(**json.loads(args.rules)) if args.rules else RaceRules()
    print(report(evaluate(load(names), rules, repeats=args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
