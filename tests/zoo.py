"""A zoo of small, healthy models of many kinds, each with data generated in code.

Every builder returns a dict of target fields (model, data, loss_fn, optimizer, and forward where the batch
is not ``(inputs, targets)``), seeded, small enough that a whole checklist runs in seconds on a CPU.
Faulty variants live in each check's own test file, built from these.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- data -------------------------------------------------------------------------------------------
def spirals(n: int = 512, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CS231n's spiral data set: ``classes`` interleaved arms in 2-D, standardized."""
    g = _gen(seed)
    per = n // classes
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.0, 1.0, per)
        t = torch.linspace(c * 4.0, (c + 1) * 4.0, per) + torch.randn(per, generator=g) * 0.2
        xs.append(torch.stack([r * torch.sin(t), r * torch.cos(t)], 1))
        ys.append(torch.full((per,), c, dtype=torch.long))
    x = torch.cat(xs)
    return (x - x.mean(0)) / x.std(0), torch.cat(ys)


def blobs(n: int = 512, features: int = 16, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters, one per class, standardized features."""
    g = _gen(seed)
    centres = torch.randn(classes, features, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return (x - x.mean(0)) / x.std(0), y


def images(n: int = 256, channels: int = 3, size: int = 16, classes: int = 4, seed: int = 0):
    """Synthetic images whose class sets the orientation of a stripe pattern, plus noise; standardized."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = y.float() * math.pi / classes
    pattern = torch.sin(6 * (xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]))
    x = pattern[:, None].expand(n, channels, size, size) + 0.5 * torch.randn(n, channels, size, size, generator=g)
    return (x - x.mean()) / x.std(), y


def sequences(n: int = 256, length: int = 12, features: int = 8, classes: int = 3, seed: int = 0):
    """Sequences whose class is the sign pattern of a cumulative sum; standardized."""
    g = _gen(seed)
    x = torch.randn(n, length, features, generator=g)
    score = x[:, :, 0].cumsum(1)[:, -1].contiguous()
    y = torch.bucketize(score, torch.quantile(score, torch.linspace(0, 1, classes + 1)[1:-1]))
    return x, y


def tokens(n: int = 256, length: int = 16, vocab: int = 50, classes: int = 2, seed: int = 0):
    """Token ids; the class is whether token 7 occurs."""
    g = _gen(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    y = (ids == 7).any(1).long()
    return ids, y


def regression(n: int = 512, features: int = 8, seed: int = 0):
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, (y - y.mean()) / y.std()


# -- models -----------------------------------------------------------------------------------------
class FunctionalMLP(nn.Module):
    """An MLP whose activations are functional calls, which module hooks alone do not see."""

    def __init__(self, d_in: int = 2, hidden: int = 64, d_out: int = 3, depth: int = 2):
        super().__init__()
        dims = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int = 16, width: int = 32, blocks: int = 3, classes: int = 4):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class RecurrentClassifier(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 3, cell: str = "gru"):
        super().__init__()
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, d_model: int = 32, heads: int = 4, layers: int = 2, classes: int = 2,
                 length: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(1, length, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.1, batch_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, ids):
        h = self.encoder(self.embed(ids) + self.pos[:, : ids.shape[1]])
        return self.head(h.mean(1))


class DictModel(nn.Module):
    """A HuggingFace-style model: keyword inputs, returns an object with ``.logits``."""

    def __init__(self, d_in: int = 16, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, classes))

    def forward(self, input_values=None, attention_mask=None):
        logits = self.body(input_values)
        return {"logits": logits}


# -- targets ----------------------------------------------------------------------------------------
def blobs_fields(model: nn.Module, **kw) -> dict:
    """Target fields for ``model`` classifying the 16-feature, 4-class blobs (the activation checks' fixtures)."""
    x, y = blobs()
    return {"model": model, "data": (x, y), "loss_fn": nn.CrossEntropyLoss(), **kw}


def sgd(lr: float = 0.1, momentum: float = 0.9, **kw):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, **kw)


def adam(lr: float = 1e-3, **kw):
    return lambda params: torch.optim.Adam(params, lr=lr, **kw)


def mlp_target(seed: int = 0):
    torch.manual_seed(seed)
    return dict(model=FunctionalMLP(), data=spirals(seed=seed), loss_fn=nn.CrossEntropyLoss(), optimizer=adam(1e-2))


def cnn_target(seed: int = 0):
    torch.manual_seed(seed)
    x, y = images(seed=seed)
    return dict(model=SmallCNN(), data=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd(0.05), batch_size=32)


def residual_target(seed: int = 0):
    torch.manual_seed(seed)
    return dict(model=ResidualMLP(), data=blobs(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01))


def gru_target(seed: int = 0):
    torch.manual_seed(seed)
    return dict(model=RecurrentClassifier(cell="gru"), data=sequences(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=adam(3e-3), batch_size=32)


def lstm_target(seed: int = 0):
    torch.manual_seed(seed)
    return dict(model=RecurrentClassifier(cell="lstm"), data=sequences(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=adam(3e-3), batch_size=32)


def transformer_target(seed: int = 0):
    torch.manual_seed(seed)
    return dict(model=TinyTransformer(), data=tokens(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=adam(1e-3), batch_size=32)


def regression_target(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return dict(model=model, data=regression(seed=seed), loss_fn=nn.MSELoss(), optimizer=adam(3e-3))


def binary_target(seed: int = 0):
    torch.manual_seed(seed)
    x, y = blobs(classes=2, seed=seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    return dict(model=model, data=(x, y.float()[:, None]), loss_fn=nn.BCEWithLogitsLoss(), optimizer=sgd(0.1))


def dict_batch_target(seed: int = 0):
    """Batches are dicts, the model takes keywords and returns a dict: checked through ``forward``."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    batches = [{"input_values": x[i:i + 64], "attention_mask": torch.ones(len(x[i:i + 64]), 16),
                "labels": y[i:i + 64]} for i in range(0, len(x), 64)]
    return dict(model=DictModel(), data=batches, loss_fn=nn.CrossEntropyLoss(), optimizer=adam(3e-3),
                forward=lambda model, b: (model(input_values=b["input_values"],
                                                attention_mask=b["attention_mask"])["logits"], b["labels"]))


#: healthy targets of diverse kinds, by name: every check must pass (or skip with a reason) on all of them
HEALTHY = {
    "mlp": mlp_target,
    "cnn": cnn_target,
    "residual": residual_target,
    "gru": gru_target,
    "lstm": lstm_target,
    "transformer": transformer_target,
    "regression": regression_target,
    "binary": binary_target,
    "dict_batch": dict_batch_target,
}
