"""Calibration of param_updates' reading of frozen weights: fresh draws of the standard inits against trained
weights and tables set by design, read by the same function the check uses.

    python benchmarks/frozen_init.py            # about a minute on one CPU thread

Prints, per group, how many weights read as a fresh random draw ('random'), as learned structure ('structured')
or as neither ('cannot tell'), and over the fresh draws the largest spike (in units of the edge's fluctuation),
the kurtosis's distance from its init's draws and the mean's, in standard errors: the numbers the check's
thresholds and its sources quote.
"""
from __future__ import annotations

import collections
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from babysitter.analysis.params import init_fit  # noqa: E402
from babysitter.checklist.param_updates import Param, ParamUpdates  # noqa: E402

CHECK = ParamUpdates()
SHAPES = [(4, 64), (8, 64), (10, 128), (16, 16), (64, 16), (64, 64), (128, 32), (256, 256), (768, 768), (3072, 768)]
UNIFORM = ("Linear", "xavier_uniform", "kaiming_uniform", "Conv2d", "LSTM", "GRU", "MultiheadAttention")


def reading(w: torch.Tensor) -> str:
    kind = CHECK.init_reading(Param("w", tuple(w.shape), trainable=False, init=init_fit(w)))[0]
    return kind or "cannot tell"


def _fresh(seed: int):
    """(group, weight) for fresh draws of the inits people use."""
    torch.manual_seed(seed)
    inits = {"Linear": lambda o, i: nn.Linear(i, o).weight,
             "normal(0, 0.02)": lambda o, i: nn.init.normal_(torch.empty(o, i), std=0.02),
             "trunc_normal(0, 0.02)": lambda o, i: nn.init.trunc_normal_(torch.empty(o, i), std=0.02),
             "normal(0, 0.01)": lambda o, i: nn.init.normal_(torch.empty(o, i), std=0.01),
             "xavier_uniform": lambda o, i: nn.init.xavier_uniform_(torch.empty(o, i)),
             "xavier_normal": lambda o, i: nn.init.xavier_normal_(torch.empty(o, i)),
             "kaiming_uniform": lambda o, i: nn.init.kaiming_uniform_(torch.empty(o, i), nonlinearity="relu"),
             "kaiming_normal": lambda o, i: nn.init.kaiming_normal_(torch.empty(o, i)),
             "orthogonal": lambda o, i: nn.init.orthogonal_(torch.empty(o, i))}
    for name, make in inits.items():
        for o, i in SHAPES:
            yield name, make(o, i)
    for o, i, k in [(16, 3, 3), (64, 3, 7), (64, 64, 3), (32, 16, 1), (192, 3, 16)]:
        yield "Conv2d", nn.Conv2d(i, o, k).weight
        yield "kaiming_normal fan_out (conv)", nn.init.kaiming_normal_(torch.empty(o, i, k, k), mode="fan_out")
    for v, d in [(20, 16), (1000, 64), (30522, 128)]:
        yield "Embedding", nn.Embedding(v, d).weight
        yield "Embedding padding_idx", nn.Embedding(v, d, padding_idx=0).weight
        yield "Embedding normal(0, 0.02)", nn.init.normal_(torch.empty(v, d), std=0.02)
    yield from (("LSTM", p) for n, p in nn.LSTM(32, 64).named_parameters() if "weight" in n)
    yield from (("GRU", p) for n, p in nn.GRU(16, 48).named_parameters() if "weight" in n)
    yield "MultiheadAttention", nn.MultiheadAttention(64, 4).in_proj_weight


def _train(model: nn.Module, x, y, opt, steps: int) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _trained():
    """(group, weight) for the weight matrices of MLPs trained on a teacher's labels with three optimizers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    optimizers = {"Adam 1e-3": lambda p: torch.optim.Adam(p, 1e-3), "Adam 3e-3": lambda p: torch.optim.Adam(p, 3e-3),
                  "SGD 0.05 m0.9": lambda p: torch.optim.SGD(p, 0.05, momentum=0.9)}
    for name, make in optimizers.items():
        for steps in (300, 1000):
            torch.manual_seed(0)
            mlp = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
            _train(mlp, x, y, make(mlp.parameters()), steps)
            for layer, label in ((0, "first"), (2, "hidden"), (4, "head")):
                yield f"trained MLP {label} layer ({name}, {steps} steps)", mlp[layer].weight


def _by_design():
    pos, i = torch.arange(197)[:, None].float(), torch.arange(384)[None].float()
    angle = pos / 10000 ** (2 * i / 768)
    yield "sinusoidal positions (1, 197, 768)", torch.cat([angle.sin(), angle.cos()], 1)[None]
    yield "identity 64", torch.eye(64)
    n = torch.arange(64).float()
    yield "DCT 64", torch.cos(math.pi / 64 * (n[:, None] + 0.5) * n[None])
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    yield "Sobel filter bank (32, 3, 3, 3)", torch.stack([sobel, sobel.T] * 48).reshape(32, 3, 3, 3)
    g = torch.Generator().manual_seed(0)
    for rank in (1, 4, 16):
        noise = (torch.rand(256, 256, generator=g) * 2 - 1) / 16
        low = torch.randn(256, rank, generator=g) @ torch.randn(rank, 256, generator=g) / (32 * math.sqrt(3 * rank))
        yield f"low rank {rank} + default noise", noise + low
    yield "Student-t(4) x 0.02", torch.distributions.StudentT(4.0).sample((256, 256)) * 0.02


def main() -> None:
    torch.set_num_threads(1)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    stats = []
    for seed in range(10):
        for group, w in _fresh(seed):
            fit = init_fit(w)
            counts[group][reading(w)] += 1
            shape = "uniform" if group.startswith(UNIFORM) else "Gaussian"
            stats.append((fit.spike_z, fit.kurtosis_z(shape), fit.mean_z))
    for group, w in [*_trained(), *_by_design()]:
        counts[group][reading(w)] += 1
    for group, c in counts.items():
        print(f"{group:48s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    spikes, kurt, means = zip(*stats)
    print(f"\n{len(stats)} fresh draws: spike at most {max(spikes):.2f} units; kurtosis {min(kurt):+.2f} to "
          f"{max(kurt):+.2f} standard errors from its init's draws; |mean| at most {max(means):.2f} standard errors")


if __name__ == "__main__":
    main()
