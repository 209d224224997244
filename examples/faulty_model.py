"""The README's tour of a faulty setup: the same kind of classifier with three planted faults.

    babysit check examples/faulty_model.py

1. Features on wildly different scales (feature 11 is in the thousands).
2. A softmax at the end of the model, fed into CrossEntropyLoss (which applies log_softmax itself).
3. SGD at lr 3.0, far too high for this model.
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 5)

    def forward(self, x):
        return torch.softmax(self.head(self.body(x)), dim=1)  # fault 2: probabilities into CrossEntropyLoss


def babysit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
    x[:, 11] = x[:, 11] * 1000 - 10  # fault 1: one feature in the thousands
    return dict(model=Net(), data=(x, y), loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda params: torch.optim.SGD(params, lr=3.0))  # fault 3: lr far too high
