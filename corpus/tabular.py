"""Tabular models: an MLP regressor on standardised features (MSE, Adam 1e-3), a deep (8 hidden layers) MLP
regressor with He initialisation (Adam 1e-3), and a multi-label classification head (BCEWithLogitsLoss on
multi-hot targets, the final bias set to the label prior, AdamW 1e-3); with the bugs people make in them."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import Case, Fault
from .data import generator


# -- data ---------------------------------------------------------------------------------------------------------
#: the raw units of the 16 regression features: (mean, std) of each column as it comes from the table; column 0 is
#: in the thousands (a price, an area), column 1 in the thousandths (a rate), the rest in various units
RAW_UNITS = [(2500.0, 800.0), (0.004, 0.0015)] + [(float(m), float(s)) for m, s in
                                                  zip([0, 3, 40, -5, 1, 10, 0, 7, 60, 2, 0, 15, 1, 0],
                                                      [1, 2, 12, 3, 0.5, 4, 2, 3, 20, 1, 5, 6, 0.3, 1])]


def regression_data(n: int = 512, seed: int = 0, standardise: bool = True):
    """A table of 16 features in raw units and a target that is a smooth nonlinear function of them plus noise (a
    linear part, a sine, a product and a square of the underlying columns). Features standardised with the table's
    mean and std (StandardScaler) unless ``standardise=False``; the target always standardised. Returns
    (X (n, 16), y (n, 1))."""
    g = generator(seed)
    z = torch.randn(n, len(RAW_UNITS), generator=g)
    mean = torch.tensor([m for m, _ in RAW_UNITS])
    std = torch.tensor([s for _, s in RAW_UNITS])
    raw = mean + std * z
    w = torch.randn(len(RAW_UNITS), generator=g) / math.sqrt(len(RAW_UNITS))
    noise = 0.2 * torch.randn(n, generator=g)
    y = z @ w + torch.sin(2 * z[:, 0]) + 0.5 * z[:, 1] * z[:, 2] + 0.3 * z[:, 3] ** 2 + noise
    y = ((y - y.mean()) / y.std())[:, None]
    if standardise:
        x = (raw - raw.mean(0)) / raw.std(0)
    else:
        x = raw
    return x.float(), y.float()


def multilabel_data(n: int = 512, d: int = 24, labels: int = 8, rate: float = 0.15, seed: int = 0):
    """Standardised features and 8 multi-hot labels from a random two-layer teacher, each label on for about
    ``rate`` of the examples (multi-label data sets are sparse). Returns (X (n, d), Y (n, labels) floats in {0, 1})."""
    g = generator(seed)
    x = torch.randn(n, d, generator=g)
    w1 = torch.randn(d, 32, generator=g) / math.sqrt(d)
    w2 = torch.randn(32, labels, generator=g) / math.sqrt(32)
    score = torch.tanh(x @ w1) @ w2 + 0.1 * torch.randn(n, labels, generator=g)
    cut = torch.quantile(score, 1 - rate, dim=0)
    return x, (score > cut).float()


# -- regression ---------------------------------------------------------------------------------------------------
class MLPRegressor(nn.Module):
    """Linear-ReLU blocks and a linear output of one unit (the usual tabular MLP, e.g. scikit-learn's
    MLPRegressor's architecture). ``relu_out``: a ReLU after the output layer too (the hidden block's pattern
    repeated once too often)."""

    def __init__(self, d_in: int = 16, hidden: int = 64, depth: int = 2, relu_out: bool = False,
                 he_init: bool = False, init_std: float | None = None):
        super().__init__()
        layers, width = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        if relu_out:
            layers.append(nn.ReLU())  # the bug: the output cannot be negative
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                if init_std is not None:
                    nn.init.normal_(m.weight, std=init_std)  # CS231n's "small random numbers", W = 0.01 * randn
                    nn.init.zeros_(m.bias)
                elif he_init:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # He et al. 2015
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def regression(seed: int = 0, standardise: bool = True, relu_out: bool = False, lr: float = 1e-3) -> dict:
    """MLP 16-64-64-1, MSE on (N, 1) outputs against (N, 1) standardised targets, Adam 1e-3 (its default, the usual
    choice for tabular MLPs), batches of 32."""
    torch.manual_seed(seed)
    x, y = regression_data(seed=seed, standardise=standardise)
    return dict(model=MLPRegressor(relu_out=relu_out), data=(x, y), batch_size=32, loss_fn=nn.MSELoss(),
                optimizer=lambda params: torch.optim.Adam(params, lr=lr))


def deep_regression(seed: int = 0, init_std: float | None = None) -> dict:
    """The same task with 8 hidden layers of 64 ReLU units, He (Kaiming normal, fan-in) init, no normalisation
    layers, Adam 1e-3."""
    torch.manual_seed(seed)
    x, y = regression_data(seed=seed)
    return dict(model=MLPRegressor(depth=8, he_init=True, init_std=init_std), data=(x, y), batch_size=32,
                loss_fn=nn.MSELoss(), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))


# -- multilabel ---------------------------------------------------------------------------------------------------
class MultiLabelHead(nn.Module):
    """An MLP trunk (Linear-ReLU-Dropout x2) and a linear head with one logit per label. The head's bias starts at
    the label prior, log(p / (1 - p)) (Karpathy's "init well"; RetinaNet's b = -log((1 - pi) / pi)).
    ``prior_sign``: -1 flips it (log((1 - p) / p): the minus sign dropped). ``prior_everywhere``: the init loop
    sets that bias on every Linear layer, the hidden ones included. ``sigmoid_out``: probabilities returned."""

    def __init__(self, prior: torch.Tensor, d_in: int = 24, hidden: int = 128, prior_sign: float = 1.0,
                 prior_everywhere: bool = False, sigmoid_out: bool = False):
        super().__init__()
        self.sigmoid_out = sigmoid_out
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.1),
                                   nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(hidden, len(prior))
        bias = prior_sign * torch.log(prior / (1 - prior))
        with torch.no_grad():
            self.head.bias.copy_(bias)
            if prior_everywhere:  # the bug: `for m in model.modules(): if isinstance(m, nn.Linear): ...`
                for m in self.trunk:
                    if isinstance(m, nn.Linear):
                        m.bias.fill_(float(bias.mean()))

    def forward(self, x):
        logits = self.head(self.trunk(x))
        return torch.sigmoid(logits) if self.sigmoid_out else logits


def multilabel(seed: int = 0, **bug) -> dict:
    """BCEWithLogitsLoss on 8 multi-hot labels, AdamW(lr=1e-3, weight_decay=1e-2), batches of 32."""
    torch.manual_seed(seed)
    x, y = multilabel_data(seed=seed)
    prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
    return dict(model=MultiLabelHead(prior, **bug), data=(x, y), batch_size=32, loss_fn=nn.BCEWithLogitsLoss(),
                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2))


CASES = [
    Case("regression", "tabular", regression,
         "MLP regressor 16-64-64-1 (ReLU) on standardised features, (N, 1) outputs vs (N, 1) standardised targets, "
         "MSE, Adam 1e-3 (the default tabular recipe)"),
    Case("deep-regression", "tabular", deep_regression,
         "deep MLP regressor, 8 hidden ReLU layers of 64, He (Kaiming normal) init, no normalisation, MSE, Adam 1e-3"),
    Case("multilabel", "tabular", multilabel,
         "multi-label MLP head 24-128-128-8 (ReLU, dropout 0.1), final bias at the label prior, BCEWithLogitsLoss "
         "on multi-hot targets (15% positive), AdamW 1e-3 weight decay 0.01"),
]

FAULTS = [
    Fault("regression-raw-units", "regression", "input_scale", lambda seed: regression(seed, standardise=False),
          "features fed in their raw units (StandardScaler forgotten): one column in the thousands, one in the "
          "thousandths"),
    Fault("regression-relu-out", "regression", "overfit_batch", lambda seed: regression(seed, relu_out=True),
          "a ReLU after the output layer (the hidden block repeated once too often): standardised targets below "
          "0 cannot be reached"),
    Fault("regression-finetune-lr", "regression", "lr_range", lambda seed: regression(seed, lr=1e-5),
          "Adam at 1e-5, a fine-tuning learning rate, on an MLP trained from scratch: far too low to learn"),
    Fault("deep-regression-small-init", "deep-regression", "activation_scale",
          lambda seed: deep_regression(seed, init_std=0.01),
          "weights initialised as 0.01 * randn (nn.init.normal_(std=0.01)) in an 8-layer ReLU MLP: activations "
          "vanish with depth (CS231n)"),
    Fault("multilabel-prior-sign", "multilabel", "initial_loss", lambda seed: multilabel(seed, prior_sign=-1.0),
          "the prior bias init with its minus sign dropped, log((1 - p) / p) instead of log(p / (1 - p)): every "
          "label starts at 85% instead of 15%"),
    Fault("multilabel-prior-everywhere", "multilabel", "dead_relu",
          lambda seed: multilabel(seed, prior_everywhere=True),
          "the init loop meant for the head (bias at the prior, log(p / (1 - p)) = -1.7) applied to every Linear: "
          "the hidden ReLUs start below zero"),
    Fault("multilabel-sigmoid-out", "multilabel", "overfit_batch", lambda seed: multilabel(seed, sigmoid_out=True),
          "a sigmoid at the end of the model fed into BCEWithLogitsLoss (which applies its own): the loss cannot "
          "fall below ln(1 + 1/e) for a positive label"),
]
