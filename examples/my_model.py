"""The README's first example: a small classifier on data it can learn, with your real training settings.

    babysit check examples/my_model.py
"""
import torch
from torch import nn


def babysit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 20, generator=g)
    y = (x @ torch.randn(20, 10, generator=g)).argmax(1)  # labels a linear model can learn
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 10))
    return dict(
        model=model,
        data=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),  # your real settings
    )
