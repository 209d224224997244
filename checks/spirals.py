"""The classic CS231n two-dimensional spiral classifier: an MLP whose activations are functional calls."""

import torch
import torch.nn.functional as F
from torch import nn


def spiral_data(n_per_class: int = 200, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.0, 1.0, n_per_class)
        t = torch.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + 0.2 * torch.randn(n_per_class, generator=g)
        xs.append(torch.stack([r * torch.sin(t), r * torch.cos(t)], dim=1))
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    x = torch.cat(xs)
    return (x - x.mean(0)) / x.std(0), torch.cat(ys)


class SpiralNet(nn.Module):
    def __init__(self, hidden: int = 100, classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.out(x)


def babysit():
    torch.manual_seed(0)
    x, y = spiral_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    return dict(
        model=SpiralNet(),
        data=loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
