"""Parameter facts: which module owns a parameter, which parameters are weight matrices, and the standard init
scales (PyTorch's default, Kaiming, Xavier, LeCun), each computed in this one place."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

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
