"""The end-to-end benchmark's target: a mid-sized MLP (64 features, 4 hidden layers of 256 with functional ReLU,
10 classes; about 216k parameters) on 2048 examples of Gaussian blobs, batches of 128, SGD with momentum: the MLP of
benchmarks/checklist_cost.py, from the test zoo.

``babysit check benchmarks/targets/mlp.py`` checks it; ``benchmarks/end_to_end.py`` imports it for the bare replay.
"""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import zoo  # noqa: E402


def babysit():
    torch.manual_seed(0)
    x, y = zoo.blobs(n=2048, features=64, classes=10)
    return dict(model=zoo.FunctionalMLP(d_in=64, hidden=256, d_out=10, depth=4), data=(x, y), batch_size=128,
                loss_fn=nn.CrossEntropyLoss(), optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))
