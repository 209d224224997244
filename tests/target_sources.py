"""Target files as source text, for the tests that write small projects (CLI, configuration, pytest plugin)."""

#: a healthy target: a small MLP on a learnable two-class problem, SGD with momentum
HEALTHY = """
import torch
from torch import nn

def babysit():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    return dict(model=model, data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
"""
