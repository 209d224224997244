"""Parameter facts: which module owns a parameter, which parameters are weight matrices, the standard init
scales (PyTorch's default, Kaiming, Xavier, LeCun), each computed in this one place, and how much a weight still
looks like a fresh draw of one of them (:func:`init_fit`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

#: the init schemes whose std this module knows: name -> std from (fan_in, fan_out)
SCHEMES = {
    # PyTorch's default for Linear and convolutions: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "default": lambda fan_in, fan_out: 1.0 / math.sqrt(3.0 * fan_in),
    "kaiming": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),  # He et al. 2015, for rectifiers
    "xavier": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),  # Glorot & Bengio 2010
    "lecun": lambda fan_in, fan_out: math.sqrt(1.0 / fan_in),  # for SELU
}
#: the nn.init call that sets each scheme (``{w}`` is the weight's Python path)
INIT_CALLS = {
    "kaiming": "nn.init.kaiming_normal_({w}, nonlinearity='relu')",
    "xavier": "nn.init.xavier_normal_({w})",
    "lecun": "nn.init.kaiming_normal_({w}, nonlinearity='linear')",
    "default": "nn.init.kaiming_uniform_({w}, a=math.sqrt(5))",
}
WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


def owner_of(param_name: str) -> str:
    """The qualified name of the module that registers a parameter ('' for the root)."""
    return param_name.rpartition(".")[0]


def display(module_name: str, type_name: Optional[str] = None) -> str:
    """A module's qualified name: '(root)' for the model itself; else the name as stored (for metrics), or, with
    ``type_name`` (even ''), as people name it: a name that starts with an index (a child of an nn.Sequential
    model) is written from the model, 'model.1', and one whose module is known only by its index gets its type,
    'model.1 (ReLU)', 'layers.0 (Linear)' (as target errors name 'model (Sequential) > model.2 (Linear)'). A
    functional call ('layers.0#relu') names its op already; a second call of a module ('1#1') is the module."""
    if not module_name:
        return "(root)"
    if type_name is None:
        return module_name
    path, _, call = module_name.partition("#")
    name = f"model.{module_name}" if path.split(".")[0].isdigit() else module_name
    indexed = path.rpartition(".")[2].isdigit() and (not call or call.isdigit())
    return f"{name} ({type_name})" if type_name and indexed else name


def layers_of(names: list[str]) -> list[tuple[str, list[int]]]:
    """Parameter indices grouped by owning module, in registration order."""
    order: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        order.setdefault(owner_of(n), []).append(i)
    return list(order.items())


def grouped(names: list[str], limit: int = 8) -> str:
    """Parameter names gathered by layer, for messages: 'enc.fc (weight, bias), head (weight)'."""
    layers: dict[str, list[str]] = {}
    for n in names:
        layers.setdefault(display(owner_of(n), ""), []).append(n.rpartition(".")[2])
    parts = [f"{k} ({', '.join(v)})" for k, v in list(layers.items())[:limit]]
    return ", ".join(parts) + (f" and {len(layers) - limit} more layers" if len(layers) > limit else "")


def module_at(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a qualified name ('' is the model)."""
    return model.get_submodule(name) if name else model


def is_weight_matrix(model: nn.Module, name: str) -> bool:
    """A weight of a Linear, convolution, recurrent or attention layer: >= 2-D, named weight, not an embedding.

    Embedding tables get sparse gradients (only the rows of tokens in the batch), biases and norm scales are
    1-D: their gradient norms and update ratios follow other laws, so depth and ratio verdicts leave them out.
    """
    owner = module_at(model, owner_of(name))
    param = owner.get_parameter(name.rpartition(".")[2])
    return param.ndim >= 2 and "weight" in name.rpartition(".")[2] and \
        not isinstance(owner, (nn.Embedding, nn.EmbeddingBag))


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape, as torch.nn.init computes them (receptive field included)."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def init_std(scheme: str, shape: tuple[int, ...]) -> float:
    """The std that ``scheme`` ('default', 'kaiming', 'xavier', 'lecun') gives a weight of ``shape``."""
    fan_in, fan_out = fans(shape)
    return SCHEMES[scheme](max(fan_in, 1), max(fan_out, 1))


def reference_norm(shape: tuple[int, ...]) -> float:
    """The norm of a weight matrix under the smallest standard init: PyTorch's default std 1/sqrt(3 fan) on the
    larger of fan_in and fan_out (so that a wide-output layer is not measured against a large scale)."""
    fan_in, fan_out = fans(shape)
    return math.sqrt(math.prod(shape) / (3.0 * max(fan_in, fan_out, 1)))


@dataclass(frozen=True)
class InitAdvice:
    """The weight layer feeding an activation, its weight std, and the std the usual init would give it."""

    layer: str
    fan_in: int
    fan_out: int
    std: float
    recommended: float
    scheme: str  # 'Kaiming', 'Xavier', 'LeCun'
    call: str  # the nn.init call that sets it

    @property
    def ratio(self) -> float:
        return self.std / self.recommended if self.recommended else float("nan")


def scheme_for(op: str, rectifier: bool) -> str:
    """The init scheme an activation wants: LeCun for SELU, Kaiming for the ReLU family, Xavier otherwise."""
    return "lecun" if op == "selu" else "kaiming" if rectifier else "xavier"


def init_advice(layer: str, weight_shape: tuple[int, ...], std: float, scheme: str, weight_ref: str
                ) -> Optional[InitAdvice]:
    """What ``scheme`` recommends for the weight of ``layer`` (shape and measured std), with the call to paste."""
    if len(weight_shape) < 2 or math.prod(weight_shape) < 2:
        return None
    fan_in, fan_out = fans(weight_shape)
    return InitAdvice(layer, fan_in, fan_out, std, init_std(scheme, weight_shape),
                      {"kaiming": "Kaiming", "xavier": "Xavier", "lecun": "LeCun", "default": "default"}[scheme],
                      INIT_CALLS[scheme].format(w=weight_ref))


# -- does a weight still look like a fresh draw of its init? -------------------------------------------------------
#: the kurtosis of the entries of a uniform and of a Gaussian draw, and the standard error of the sample kurtosis of
#: n such entries times sqrt(n) (measured by simulation: 1.15 for uniform entries, sqrt(24) = 4.9 for Gaussian ones)
KURTOSIS = {"uniform": (1.8, 1.15), "Gaussian": (3.0, 4.9)}
BOTH = ("uniform", "Gaussian")
#: shuffled copies whose top singular value is the null, and the largest side of the (sub)matrix whose spectrum is
#: computed (rows and columns beyond it are subsampled: structure survives in a submatrix, cost stays ~ms)
SHUFFLES, SPECTRUM_SIDE = 8, 128
#: the moments (std, kurtosis, mean) are read from at most this many entries (whole rows, taken at random)
MOMENT_ENTRIES = 1 << 20


@dataclass(frozen=True)
class Init:
    """A standard init for a weight of a given shape: its name, its std and the shapes of its draws."""

    name: str
    std: float
    shapes: tuple[str, ...]


def init_candidates(shape: tuple[int, ...]) -> list[Init]:
    """Every standard init of a weight of ``shape``: PyTorch's default U(+-1/sqrt(fan_in)) for Linear and
    convolutions, and its recurrent default U(+-1/sqrt(hidden)) with 3 or 4 gates stacked along the rows; Kaiming
    (fan_in and fan_out modes), Xavier and LeCun (an orthogonal init's scale: 1/sqrt of the larger fan), uniform or
    normal; the constants of Hugging Face's ``_init_weights`` and timm (normal(0, 0.02)), torchvision's classifier
    heads (normal(0, 0.01)) and nn.Embedding (normal(0, 1)), Gaussian."""
    fan_in, fan_out = (max(f, 1) for f in fans(shape))
    out = [Init("default", 1.0 / math.sqrt(3.0 * fan_in), ("uniform",))]
    if len(shape) == 2:
        out += [Init(f"recurrent default ({g} gates)", 1.0 / math.sqrt(3.0 * shape[0] / g), ("uniform",))
                for g in (3, 4) if shape[0] % g == 0]
    out += [Init("kaiming", math.sqrt(2.0 / fan_in), BOTH), Init("kaiming (fan_out)", math.sqrt(2.0 / fan_out), BOTH),
            Init("xavier", math.sqrt(2.0 / (fan_in + fan_out)), BOTH), Init("lecun", math.sqrt(1.0 / fan_in), BOTH),
            Init("lecun (fan_out)", math.sqrt(1.0 / fan_out), BOTH)]
    return out + [Init(f"normal(0, {s:g})", s, ("Gaussian",)) for s in (0.02, 0.01, 1.0)]


def matrix_view(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The weight as a matrix (rows: its first non-singleton dimension; a convolution's filters flattened), or None
    below two non-singleton dimensions."""
    dims = [d for d in weight.shape if d != 1]
    if len(dims) < 2:
        return None
    return weight.detach().reshape(dims[0], -1)


@dataclass(frozen=True)
class InitFit:
    """What a weight's values say of its initialization (measured by :func:`init_fit`).

    Attributes:
        entries: its number of entries (those the moments were read from).
        spike: its top singular value over the mean top singular value of the same entries shuffled (an i.i.d.
            matrix of the same values, whose top singular value is the Marchenko-Pastur edge, measured): ~1 for a
            random draw; above it for learned low-rank structure.
        spike_z: ``spike - 1`` in units of the edge's fluctuation scale (m n)^(-1/3) of an m x n matrix.
        kurtosis: of the entries (1.8 for a uniform draw, 3 for a Gaussian one).
        mean_z: |mean| of the entries in standard errors of a zero-mean draw.
        std: of the entries.
        distinct: the fraction of distinct values among the entries (of the spectrum's submatrix): 1 for a draw
            from a continuous distribution, low for filters set by hand (Sobel, Haar) or quantized weights; None
            below 32-bit floats, whose random draws repeat values.
    """

    entries: int
    spike: float
    spike_z: float
    kurtosis: float
    mean_z: float
    std: float
    distinct: Optional[float] = None

    def kurtosis_z(self, shape: str) -> float:
        """The kurtosis's distance from a ``shape`` draw's ('uniform', 'Gaussian'), in standard errors (signed)."""
        k, se = KURTOSIS[shape]
        return (self.kurtosis - k) / (se / math.sqrt(self.entries))

    @property
    def scale_noise(self) -> float:
        """The standard error of ln(std) of a draw of this many entries with this kurtosis."""
        return math.sqrt(max(self.kurtosis - 1.0, 0.0) / (4.0 * self.entries))


def init_match(fit: InitFit, shape: tuple[int, ...], scale: float, low: float, high: float) -> Optional[Init]:
    """The standard init of which ``fit`` reads as a fresh draw, or None: its std within a fraction ``scale`` plus
    ``high`` standard errors of the init's, the kurtosis between ``low`` standard errors below and ``high`` above
    that of one of its draws' shapes (the sample kurtosis is skewed: its lower tail is short), the nearest such."""
    found = []
    for init in init_candidates(shape):
        off = abs(math.log(fit.std / init.std))
        if off <= scale + high * fit.scale_noise and any(-low <= fit.kurtosis_z(s) <= high for s in init.shapes):
            found.append((off, init))
    return min(found, key=lambda x: x[0])[1] if found else None


def _submatrix(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """At most SPECTRUM_SIDE random rows and columns of ``m`` (all of a smaller one)."""
    rows, cols = m.shape
    if rows > SPECTRUM_SIDE:
        m = m[torch.randperm(rows, generator=generator)[:SPECTRUM_SIDE].to(m.device)]
    if cols > SPECTRUM_SIDE:
        m = m[:, torch.randperm(cols, generator=generator)[:SPECTRUM_SIDE].to(m.device)]
    return m


def _spike(m: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """The top singular value of ``m`` over that of its entries shuffled (mean over SHUFFLES copies), and the
    fluctuation scale (rows x cols)^(-1/3) of that ratio for a random matrix."""
    flat = m.reshape(-1)
    perms = torch.stack([torch.randperm(flat.numel(), generator=generator) for _ in range(SHUFFLES)])
    null = torch.linalg.svdvals(flat[perms].reshape(SHUFFLES, *m.shape))[:, 0].mean()
    top = torch.linalg.svdvals(m)[0]
    return float(top / null), float(m.numel()) ** (-1.0 / 3.0)


def init_fit(weight: torch.Tensor) -> Optional[InitFit]:
    """What ``weight``'s values say of its initialization: its spectrum against its own entries shuffled, and the
    moments of its entries. None below two non-singleton dimensions or for constant entries. Deterministic (a
    fixed generator)."""
    m = matrix_view(weight)
    if m is None:
        return None
    generator = torch.Generator().manual_seed(0)
    sub = _submatrix(m, generator).cpu()
    distinct = sub.unique().numel() / sub.numel() if torch.finfo(m.dtype).bits >= 32 else None
    if m.numel() > MOMENT_ENTRIES:
        m = m[torch.randperm(m.shape[0], generator=generator)[:max(MOMENT_ENTRIES // m.shape[1], 1)].to(m.device)]
    m, sub = m.float(), sub.float()
    x = m.reshape(-1) - m.mean()
    var = float(x.pow(2).mean())
    if not math.isfinite(var) or var <= 0.0:
        return None
    n = x.numel()
    spike, scale = _spike(sub, generator)
    return InitFit(entries=n, spike=spike, spike_z=(spike - 1.0) / scale, kurtosis=float(x.pow(4).mean()) / var ** 2,
                   mean_z=abs(float(m.mean())) / math.sqrt(var / n), std=math.sqrt(var), distinct=distinct)
