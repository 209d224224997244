"""The end-to-end benchmark's target: a mid-sized MLP (64 features, 4 hidden layers of 256 with functional ReLU,
10 classes; about 216k parameters) on 2048 examples of Gaussian blobs, batches of 128, SGD with momentum.

``babysit check benchmarks/targets/mlp.py`` checks it; ``benchmarks/end_to_end.py`` imports it for the bare replay.
"""
import torch
import torch.nn.functional as F
from torch import nn


def blobs(n: int = 2048, features: int = 64, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return (x - x.mean(0)) / x.std(0), y


class MLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 256, d_out: int = 10, depth: int = 4):
        super().__init__()
        dims = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


def babysit():
    torch.manual_seed(0)
    return dict(model=MLP(), data=blobs(), batch_size=128, loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))
