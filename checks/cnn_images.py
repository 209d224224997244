"""A small CNN with BatchNorm on synthetic images (oriented stripes plus noise), trained with SGD and momentum."""
import math

import torch
from torch import nn


def stripe_images(n: int = 512, size: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    angle = y.float() * math.pi / classes
    stripes = torch.sin(6 * (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]))
    x = stripes[:, None].repeat(1, 3, 1, 1) + 0.5 * torch.randn(n, 3, size, size, generator=g)
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), y


def babysit():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 4),
    )
    return dict(
        model=model,
        data=stripe_images(),
        batch_size=32,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
