"""The activation instrument: every activation of any model, reduced on the device as batches stream by.

Module hooks alone see ``nn.ReLU`` but not ``F.relu`` inside a ``forward``; fastai's ActivationStats and wandb
users report exactly that gap. So two mechanisms work together:

- forward pre/post hooks on every module keep a stack of which module is executing (its qualified name and
  how many times it has run in the current top-level forward), and remember the last leaf module that ran
  (the layer that produced the activation's input: a Linear, a Conv, a norm);
- a ``TorchFunctionMode`` catches the activation functions themselves (``F.relu``, ``torch.relu``,
  ``x.relu()``, ``relu_``, ``F.gelu``, ``torch.tanh``, ``F.softmax``, ...). Activation modules such as
  ``nn.ReLU`` or ``nn.Tanh`` call these functions, so they are counted once, through the mode, under the
  module's own name. Functional calls get the name of the module that made them plus the op and its index
  (``encoder.layers.0#gelu``, ``model#relu1``).

Per unit (a feature of a linear output, a channel of a feature map) the instrument accumulates, as device
tensors, the number of elements where the unit is positive, where it is saturated, its sum and sum of
squares; per layer the pre-activation's sum and sum of squares, a fixed-bin histogram of log10|y| and, for
bounded activations, a fixed-bin histogram of y. Nothing is copied to the host until ``result()``, which
transfers everything at once. Calls outside any module (the loss function, the target's glue code) are not
the model's and are ignored. While the instrument reduces, torch has popped the mode, so its own tensor
operations are not caught.

Not visible: activations inside fused kernels (the gates of ``nn.LSTM``/``nn.GRU``/``nn.RNN``, the softmax of
``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``); the result lists the modules and calls where
they were hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .hooks import HookSet, ModuleStack

#: activation families
RECTIFIER, TANH, SIGMOID, SOFTMAX = "rectifier", "tanh", "sigmoid", "softmax"

#: the magnitude histogram has one bin per octave, by binary exponent e (|y| in [2^(e-1), 2^e)) from EXP_MIN
#: (everything below 2^-27 ~ 7e-9, zeros included) to EXP_MAX (everything from 2^11 = 2048 up)
EXP_MIN, EXP_MAX = -27, 12
LOG_BINS = EXP_MAX - EXP_MIN + 1
#: bins of the value histogram of bounded activations (tanh over [-1, 1], sigmoid over [0, 1])
VALUE_BINS = 40
#: at most this many elements of one call go into the histograms (a strided sample, no copy)
HIST_SAMPLE = 1 << 13
#: moments (mean, std of the output and of its input) and histograms come from the first DETAIL_CALLS calls of a
#: site (the 4 batches at init); the active and saturated counts are exact over every call
DETAIL_CALLS = 4
#: invocations of one module in a forward beyond this one share a row (recurrent loops)
MAX_INVOCATIONS = 16

#: saturation: |tanh| above, sigmoid outside [1 - x, x], softmax maximum probability above
TANH_SATURATED = 0.99
SIGMOID_SATURATED = 0.99
SOFTMAX_PINNED = 0.99


def _functions() -> dict:
    """Activation functions as the torch function mode receives them -> (op name, family)."""
    table = {
        RECTIFIER: {
            "relu": (F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.relu_),
            "relu6": (F.relu6,),
            "leaky_relu": (F.leaky_relu, F.leaky_relu_),
            "elu": (F.elu, F.elu_),
            "selu": (F.selu, torch.selu, torch.selu_),
            "celu": (F.celu, torch.celu),
            "gelu": (F.gelu,),
            "silu": (F.silu,),
            "mish": (F.mish,),
            "hardswish": (F.hardswish,),
            "rrelu": (F.rrelu,),
            "hardtanh": (F.hardtanh, F.hardtanh_),  # a rectifier only with min_val >= 0 (nn.ReLU6)
        },
        TANH: {"tanh": (torch.tanh, torch.Tensor.tanh, torch.tanh_, torch.Tensor.tanh_, F.tanh)},
        SIGMOID: {"sigmoid": (torch.sigmoid, torch.Tensor.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid_,
                              F.sigmoid, torch.special.expit),
                  "hardsigmoid": (F.hardsigmoid,)},  # MobileNetV3's squeeze-excite gates: flat beyond |x| >= 3
        SOFTMAX: {"softmax": (F.softmax, torch.softmax, torch.Tensor.softmax),
                  "log_softmax": (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax)},
    }
    out = {}
    for family, ops in table.items():
        for op, fns in ops.items():
            for fn in fns:
                out[fn] = (op, family)
    return out


ACTIVATION_FUNCTIONS = _functions()

#: activation module classes: a call made inside one of these is named after the module itself
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Hardswish, nn.RReLU, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.LogSoftmax,
                      nn.Softmax2d)
#: modules whose activations run inside fused kernels
FUSED_MODULES = (nn.RNNBase, nn.MultiheadAttention, nn.RNNCellBase)
FUSED_FUNCTIONS = {F.scaled_dot_product_attention: "F.scaled_dot_product_attention: attention softmax",
                   F.multi_head_attention_forward: "F.multi_head_attention_forward: attention softmax"}
#: leaf modules that set the scale of the next activation's input
WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CHANNEL_FIRST_3D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.GroupNorm, nn.MaxPool1d,
                     nn.AvgPool1d)


@dataclass
class LayerStats:
    """Host statistics of one activation site (a call site in the forward), over every recorded call."""

    name: str  # display name, unique: module path, '#op' and index where needed
    module: str  # qualified name of the module that executed the call ('' for the root)
    module_type: str
    op: str
    family: str
    order: int  # position of the first call in the forward (depth order)
    calls: int
    units: int
    per_unit: int  # elements per unit summed over calls (examples x positions)
    active: list[float]  # per unit: fraction of elements > 0
    saturated: Optional[list[float]]  # per unit: fraction in the flat region (tanh, sigmoid)
    mean: float
    std: float
    pre_mean: Optional[float]  # of the activation's input (None for in-place calls seen after the fact)
    pre_std: Optional[float]
    log_hist: list[float]  # counts of |y| per octave (see ActivationResult.log_edges), on a sample of each call
    value_hist: Optional[list[float]]  # counts over the value range of bounded activations
    value_range: Optional[tuple[float, float]]
    pinned: Optional[float]  # softmax: fraction of distributions whose maximum exceeds SOFTMAX_PINNED
    producer: str = ""  # the last leaf module before the call (Linear, Conv, norm...), qualified name
    producer_type: str = ""
    is_output: bool = False  # its result is returned by the model as is (a final sigmoid, tanh or softmax)

    @property
    def finite(self) -> bool:
        """False when the layer produced NaN or Inf (counts and moments are then meaningless)."""
        return all(math.isfinite(a) for a in self.active) and math.isfinite(self.std)

    @property
    def dead_fraction(self) -> float:
        return sum(a < 0.01 for a in self.active) / max(self.units, 1)

    def dead_units(self, threshold: float) -> int:
        return sum(a < threshold for a in self.active)

    @property
    def saturated_fraction(self) -> Optional[float]:
        if self.family == SOFTMAX:
            return self.pinned
        if self.saturated is None:
            return None
        return sum(self.saturated) / max(len(self.saturated), 1)


@dataclass
class ActivationResult:
    """What the instrument saw: layers in depth order, and what it could not see."""

    layers: list[LayerStats]
    forwards: int  # top-level forwards recorded
    hidden: list[str] = field(default_factory=list)  # fused modules/calls whose activations are not visible
    skipped: int = 0  # calls that could not be reduced (non-float, odd shapes)

    def family(self, *families: str) -> list[LayerStats]:
        return [l for l in self.layers if l.family in families]

    @staticmethod
    def log_edges() -> list[float]:
        """Edges of the magnitude histogram's bins in log10|y| (the outer bins are open-ended)."""
        return [(EXP_MIN - 1 + i) * math.log10(2) for i in range(LOG_BINS + 1)]


class _Site:
    """Device accumulators of one call site."""

    __slots__ = ("key", "module", "module_type", "op", "family", "order", "calls", "units", "per_unit", "active",
                 "saturated", "moments", "pre", "pre_n", "log_hist", "value_hist", "value_range", "pinned",
                 "moment_n", "producer", "producer_type", "unit_dim", "is_output")

    def __init__(self, key, module, module_type, op, family, order, producer, producer_type):
        self.key, self.module, self.module_type, self.op, self.family = key, module, module_type, op, family
        self.order, self.producer, self.producer_type = order, producer, producer_type
        self.calls = self.units = self.per_unit = self.pre_n = self.moment_n = 0
        self.active = self.saturated = self.moments = self.pre = None
        self.log_hist = self.value_hist = self.pinned = None
        self.value_range = None
        self.unit_dim = None
        self.is_output = False


class _Mode(TorchFunctionMode):
    def __init__(self, owner: "ActivationInstrument"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = ACTIVATION_FUNCTIONS.get(func)
        if spec is None:
            frames = self.owner.stack.frames
            if func in FUSED_FUNCTIONS and frames and not isinstance(frames[-1][2], FUSED_MODULES):
                self.owner.hidden.add(f"{_short(frames[-1][0])} ({FUSED_FUNCTIONS[func]})")
            return func(*args, **kwargs)
        return self.owner._call(func, spec, args, kwargs)


class _Stack(ModuleStack):
    """The module stack, plus per-forward invocation counts and the last leaf module that ran."""

    def __init__(self, model: nn.Module, owner: "ActivationInstrument"):
        super().__init__(model, root_name="model")
        self.owner = owner
        self.leaves = {id(m) for m in self.names if not m._modules}
        self.invocations: dict[str, int] = {}
        self.frames: list[list] = []  # [name, invocation, module, {op: count}]
        self.last_leaf: Optional[nn.Module] = None

    def _pre(self, module, args):
        if not self.stack or module is self.model:  # a new top-level forward (also after one that raised)
            self.stack.clear()
            self.frames.clear()
            self.invocations.clear()
            self.owner._new_forward()
        name = self.names.get(module, type(module).__name__)
        inv = self.invocations.get(name, 0)
        self.invocations[name] = inv + 1
        self.stack.append(name)
        self.frames.append([name, min(inv, MAX_INVOCATIONS), module, {}])
        if isinstance(module, FUSED_MODULES) and self.owner.recording:
            what = "attention softmax" if isinstance(module, nn.MultiheadAttention) else "gate sigmoids and tanh"
            self.owner.hidden.add(f"{_short(name)} ({type(module).__name__}: {what})")

    def __enter__(self) -> "_Stack":
        seen = set()
        for module in self.names:
            if id(module) in seen:
                continue
            seen.add(id(module))
            try:  # a scripted module may take no Python hooks: what it runs is not visible anyway
                pre = module.register_forward_pre_hook(self._pre)
            except Exception:
                continue
            try:
                post = module.register_forward_hook(self._post)
            except Exception:
                pre.remove()
                continue
            self.hooks.add(pre)
            self.hooks.add(post)
        return self

    def _post(self, module, args, output):
        if self.stack:
            self.stack.pop()
            self.frames.pop()
        if id(module) in self.leaves:
            self.last_leaf = module
        if not self.stack:
            self.owner._forward_done(output)


def _short(name: str) -> str:
    """Qualified names without the root prefix: the names of ``model.named_modules()``."""
    return name[6:] if name.startswith("model.") else name


class ActivationInstrument:
    """Context manager: watch every activation of ``model``; ``result()`` returns an :class:`ActivationResult`.

    ``skip_forwards``: top-level forwards to let pass before recording (to measure the end of a training run).
    """

    def __init__(self, model: nn.Module, *, skip_forwards: int = 0):
        self.model = model
        self.skip_forwards = int(skip_forwards)
        self.forwards = 0
        self.recording = self.skip_forwards == 0
        self.sites: dict[tuple, _Site] = {}
        self.hidden: set[str] = set()
        self.skipped = 0
        self._last: Optional[tuple] = None  # (the last activation's result, its site), until the forward ends
        self.stack = _Stack(model, self)
        self.hooks = HookSet()

    # -- context ------------------------------------------------------------------------------------
    def __enter__(self) -> "ActivationInstrument":
        try:
            self.stack.__enter__()
            self.hooks.on_close(self.stack.__exit__)
            mode = _Mode(self)
            mode.__enter__()
            self.hooks.on_close(lambda: mode.__exit__(None, None, None))
        except BaseException:
            self.hooks.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def _new_forward(self) -> None:
        self.forwards += 1
        self.recording = self.forwards > self.skip_forwards
        self._last = None

    def _forward_done(self, output) -> None:
        """Mark the last activation as the model's output when the model returns its result unchanged."""
        if self._last is None:
            return
        values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
            else (output,)
        if any(v is self._last[0] for v in values):  # identity, not id(): a freed tensor's id is reused
            self._last[1].is_output = True
        self._last = None

    # -- the hot path -------------------------------------------------------------------------------
    def _call(self, func, spec, args, kwargs):
        frames = self.stack.frames
        if not self.recording or not frames or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        op, family = spec
        x = args[0]
        if not x.is_floating_point() or not x.ndim or not x.numel():
            return func(*args, **kwargs)
        if op == "hardtanh":
            low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            if low < 0:
                return func(*args, **kwargs)  # a clipping hardtanh, not a rectifier
            op = "relu6"
        site = self._site(frames[-1], op, family)
        # the input's moments before the call (an in-place activation overwrites it), on the first calls only
        pre = self._moments(x) if family != SOFTMAX and site.calls < DETAIL_CALLS else None
        out = func(*args, **kwargs)
        self._last = (out, site)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim and out.numel():
            try:
                self._record(site, op, family, out, pre, args, kwargs)
            except Exception:
                self.skipped += 1
        return out

    @staticmethod
    def _moments(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            flat = x.detach().reshape(-1)
            if flat.dtype != torch.float32:
                flat = flat.float()
            return torch.stack([flat.sum(), torch.dot(flat, flat)])

    def _site(self, frame, op, family) -> _Site:
        name, inv, module, counts = frame
        if isinstance(module, ACTIVATION_MODULES):
            key = (name, inv, "", 0)
        else:
            idx = counts.get(op, 0)
            counts[op] = idx + 1
            key = (name, inv, op, idx)
        site = self.sites.get(key)
        if site is None:
            leaf = self.stack.last_leaf
            producer = _short(self.stack.names.get(leaf, "")) if leaf is not None else ""
            if producer == "model":
                producer = ""
            site = _Site(key, _short(name), type(module).__name__, op, family, len(self.sites), producer,
                         type(leaf).__name__ if leaf is not None else "")
            self.sites[key] = site
        return site

    def _unit_dim(self, y: torch.Tensor) -> int:
        if y.ndim >= 4:
            return 1
        if y.ndim == 3 and isinstance(self.stack.last_leaf, _CHANNEL_FIRST_3D):
            return 1
        return y.ndim - 1

    def _record(self, site, op, family, out, pre, args, kwargs) -> None:
        with torch.no_grad():
            y = out.detach()
            if y.dtype != torch.float32:
                y = y.float()
            site.calls += 1
            if pre is not None:
                site.pre = pre if site.pre is None else site.pre + pre
                site.pre_n += out.numel()
            if family == SOFTMAX:
                self._record_softmax(site, op, y, args, kwargs)
                return
            dim = self._unit_dim(y)
            if not self._units(site, family, y, dim):
                self.skipped += 1
                return
            self._count(site, op, family, y, dim)
            if site.calls <= DETAIL_CALLS:
                self._record_detail(site, y)

    @staticmethod
    def _units(site: _Site, family: str, y: torch.Tensor, dim: int) -> bool:
        """Allocate the site's accumulators on its first call; False when the unit count changed since."""
        units = y.shape[dim]
        if site.unit_dim is not None:
            return units == site.units
        site.unit_dim, site.units = dim, units
        site.active = torch.zeros(units, device=y.device)
        site.log_hist = torch.zeros(LOG_BINS, device=y.device)
        if family in (TANH, SIGMOID):
            site.saturated = torch.zeros(units, device=y.device)
            site.value_range = (-1.0, 1.0) if family == TANH else (0.0, 1.0)
            site.value_hist = torch.zeros(VALUE_BINS, device=y.device)
        return True

    @staticmethod
    def _count(site: _Site, op: str, family: str, y: torch.Tensor, dim: int) -> None:
        """Per unit: elements that are positive (active) and, for bounded activations, saturated. Exact, on
        every call; counts through sign() and float sums (a bool tensor summed into floats takes a slow path)."""
        dims = tuple(d for d in range(y.ndim) if d != dim)
        site.per_unit += y.numel() // site.units
        positive = y.sign()
        if family != SIGMOID and op not in ("relu", "relu6"):
            positive.clamp_(min=0)  # signed outputs (leaky, ELU, GELU, tanh): only +1 counts
        site.active += positive.sum(dims)
        if family == TANH:
            site.saturated += y.abs().sub_(TANH_SATURATED).sign_().clamp_(min=0).sum(dims)
        elif family == SIGMOID:
            site.saturated += (y - 0.5).abs_().sub_(SIGMOID_SATURATED - 0.5).sign_().clamp_(min=0).sum(dims)

    def _record_detail(self, site: _Site, y: torch.Tensor) -> None:
        """Moments and histograms, on the first DETAIL_CALLS calls of a site (a strided sample for histograms)."""
        moments = self._moments(y)
        site.moments = moments if site.moments is None else site.moments + moments
        site.moment_n += y.numel()
        flat = y.reshape(-1)
        if flat.numel() > HIST_SAMPLE:
            flat = flat[:: flat.numel() // HIST_SAMPLE + 1]
        exponent = torch.frexp(flat.abs().clamp_(min=2.0 ** (EXP_MIN - 3))).exponent.float()
        site.log_hist += torch.histc(exponent.clamp_(EXP_MIN, EXP_MAX), LOG_BINS, EXP_MIN - 0.5, EXP_MAX + 0.5)
        if site.value_hist is not None:
            lo, hi = site.value_range
            site.value_hist += torch.histc(flat, VALUE_BINS, lo, hi)

    def _record_softmax(self, site, op, y, args, kwargs) -> None:
        """Distributions whose top probability exceeds SOFTMAX_PINNED, among those with a real choice.

        A row whose second-largest probability is exactly 0 had every other entry masked out (the first query
        of causal attention, a padded key set): pinned by construction, so it is not counted.
        """
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            dim = 0 if y.ndim in (0, 1, 3) else 1  # torch's legacy implicit dimension
        if y.shape[dim] < 2:
            return
        top2 = y.topk(2, dim).values
        top, second = top2.select(dim, 0), top2.select(dim, 1)
        if op == "softmax":
            valid, pinned = second > 0, top > SOFTMAX_PINNED
        else:
            valid, pinned = second > -80.0, top > math.log(SOFTMAX_PINNED)
            top = top.exp()
        counts = torch.stack([(pinned & valid).sum(dtype=torch.float32), valid.sum(dtype=torch.float32)])
        site.pinned = counts if site.pinned is None else site.pinned + counts
        if site.value_hist is None:
            site.log_hist = torch.zeros(LOG_BINS, device=y.device)
            site.value_range = (0.0, 1.0)
            site.value_hist = torch.zeros(VALUE_BINS, device=y.device)
        site.value_hist += torch.histc(top.reshape(-1)[:HIST_SAMPLE], VALUE_BINS, 0.0, 1.0)

    # -- results ------------------------------------------------------------------------------------
    _FIELDS = ("active", "saturated", "moments", "pre", "log_hist", "value_hist", "pinned")

    def result(self, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> ActivationResult:
        """Every accumulator to the host in one transfer, then per-layer statistics; ``reduce`` (under torchrun:
        the mean over the ranks) is applied to the accumulators on the device first."""
        sites = sorted(self.sites.values(), key=lambda s: s.order)
        parts = [t.reshape(-1).float() for s in sites for t in (getattr(s, f) for f in self._FIELDS) if t is not None]
        host: list[float] = []
        if parts:
            devices = {p.device for p in parts}
            flat = torch.cat([p.to("cpu") for p in parts]) if len(devices) > 1 else torch.cat(parts)
            host = (reduce(flat) if reduce is not None else flat).cpu().tolist()
        elif reduce is not None:  # under torchrun every rank joins the reduction, with or without layers seen
            reduce(torch.zeros(0))
        names, layers, pos = self._display_names(sites), [], 0
        for s in sites:
            values = {}
            for f in self._FIELDS:
                t = getattr(s, f)
                values[f] = None if t is None else host[pos:pos + t.numel()]
                pos += 0 if t is None else t.numel()
            layers.append(self._layer(s, names[s.key], values))
        return ActivationResult(layers=layers, forwards=max(self.forwards - self.skip_forwards, 0),
                                hidden=sorted(self.hidden), skipped=self.skipped)

    @staticmethod
    def _layer(s: _Site, name: str, v: dict) -> LayerStats:
        """One site's host statistics from its accumulators' values."""
        n = max(s.per_unit, 1)
        mean = std = 0.0
        if v["moments"] is not None and s.moment_n:
            mean = v["moments"][0] / s.moment_n
            std = math.sqrt(max(v["moments"][1] / s.moment_n - mean * mean, 0.0))
        pre_mean = pre_std = None
        if v["pre"] is not None and s.pre_n:
            pre_mean = v["pre"][0] / s.pre_n
            pre_std = math.sqrt(max(v["pre"][1] / s.pre_n - pre_mean ** 2, 0.0))
        pinned = v["pinned"]
        return LayerStats(
            name=name, module=s.module, module_type=s.module_type, op=s.op, family=s.family, order=s.order,
            calls=s.calls, units=s.units, per_unit=s.per_unit,
            active=[a / n for a in v["active"]] if v["active"] is not None else [],
            saturated=[x / n for x in v["saturated"]] if v["saturated"] is not None else None,
            mean=mean, std=std, pre_mean=pre_mean, pre_std=pre_std, log_hist=v["log_hist"] or [],
            value_hist=v["value_hist"], value_range=s.value_range,
            pinned=(pinned[0] / max(pinned[1], 1.0)) if pinned is not None else None,
            producer=s.producer, producer_type=s.producer_type, is_output=s.is_output)

    @staticmethod
    def _display_names(sites: list[_Site]) -> dict:
        """``module`` for an activation module, ``module#op`` for a functional call; indices only where needed."""
        multi_inv = {s.key[0] for s in sites if s.key[1] > 0}
        multi_op = {(s.key[0], s.key[2]) for s in sites if s.key[3] > 0}
        names = {}
        for s in sites:
            qual, inv, op, idx = s.key
            base = s.module or "model"
            if op:
                base += f"#{op}" + (str(idx) if (qual, op) in multi_op else "")
                if qual in multi_inv:
                    base += f"@{inv}"
            elif qual in multi_inv:
                base += f"#{inv}"
            names[s.key] = base
        return names


__all__ = ["ActivationInstrument", "ActivationResult", "LayerStats", "ACTIVATION_FUNCTIONS",
           "RECTIFIER", "TANH", "SIGMOID", "SOFTMAX"]
