"""batch_independence: does example i's output depend on example j (a reshape that mixes the batch)?"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from ..analysis import fmt
from ..analysis.batches import batch_size_of, concat_batches, first_tensor, map_tensors, named_tensors
from ..analysis.params import display
from ..analysis.status import Status
from ..instruments.hooks import HookSet
from ..pool import is_map_dataset
from ..report import CheckResult, Marker, Plot, Series, Table
from ..usercode import positional_names
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: the examples probed, in order of use: first, middle, last, then the quarter points
_PICKS = ("first", "middle", "last", "first quarter", "third quarter")
#: a leak into at least this fraction of the other examples reads as a statistic over the batch
_MOST = 0.9
#: modules that read (L, N, D) unless built with batch_first=True
_SEQUENCE_MODULES = (nn.RNNBase, nn.MultiheadAttention)
#: targets are the inputs' next tokens in a reading when at least this fraction of the tokens they share agree,
#: over at least this many tokens (fewer could agree by chance)
_NEXT_TOKENS = 0.99
_NEXT_TOKENS_MIN = 16
_SPLITS = ("example-major", "time-major")


def _reads_sequence_first(module: nn.Module) -> bool:
    """An RNN or attention module (or a Transformer layer around one) that reads (L, N, ...) inputs."""
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        module = module.self_attn
    return isinstance(module, _SEQUENCE_MODULES) and not module.batch_first


# -- where the examples are -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rows:
    """Where one tensor holds the examples: along ``dim``, or in a leading dimension flattened with time,
    example-major ((N*k, ...) from (N, k, ...)) or time-major ((k*N, ...) from (k, N, ...))."""

    dim: int = 0
    split: Optional[str] = None

    def examples(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """``t`` viewed with its ``n`` examples along dimension 0."""
        if self.split == "example-major":
            return t.reshape(n, t.shape[0] // n, *t.shape[1:])
        if self.split == "time-major":
            return t.reshape(t.shape[0] // n, n, *t.shape[1:]).transpose(0, 1)
        return t.movedim(self.dim, 0)


@dataclass(frozen=True)
class _Layout:
    """Which dimension of the model's inputs holds the examples (0: batch-first, 1: sequence-first (L, N, ...)),
    how many there are, how outputs flattened with time are ordered, and how that was decided."""

    n: int
    dim: int = 0
    split: str = "example-major"
    reason: str = ""
    assumed: bool = False  # nothing decided it: a convention, which the judgment must not turn into a failure

    def rows(self, shape: tuple, flattened: bool = False, hidden: bool = False) -> Optional[_Rows]:
        """Where a tensor of ``shape`` holds the examples: the inputs' example dimension when its size is n, else
        dimension 0, else (``flattened``) a leading dimension of n*k split in this layout's order, else the only
        dimension of size n. A recurrent module's hidden state (layers, N, H) has them along dimension 1."""
        n, d = self.n, self.dim
        if hidden:
            return _Rows(1) if len(shape) >= 2 and shape[1] == n else None
        if len(shape) > d and shape[d] == n:
            return _Rows(d)
        if shape and shape[0] == n:
            return _Rows(0)
        if flattened and shape and shape[0] > n and shape[0] % n == 0:
            return _Rows(0, self.split)
        dims = [k for k, s in enumerate(shape) if s == n]
        return _Rows(dims[0]) if len(dims) == 1 else None

    def other(self, shape: tuple) -> Optional["_Layout"]:
        """The other reading of inputs of ``shape`` (dimension 1 for 0 and back), if it has 2 examples or more."""
        d = 1 - self.dim
        if len(shape) < 2 or shape[d] < 2:
            return None
        return _Layout(shape[d], d, _SPLITS[d], "the other reading")


def _cut_along_dim0(data: Any) -> bool:
    """Batches cut along dimension 0 by construction: a tuple of tensors, a map-style Dataset, a DataLoader with
    the default collate."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return True
    if isinstance(data, DataLoader):
        return data.collate_fn is default_collate and data.batch_size is not None
    return is_map_dataset(data)


def _follows(x: torch.Tensor, y: torch.Tensor, d: int, split: str) -> bool:
    """Whether the flat targets ``y`` are the next tokens of the 2-D tokens ``x`` with the examples along dimension
    ``d`` of ``x`` and ``y`` flattened in ``split`` order (targets below 0, ignored labels, are left out)."""
    n, steps = x.shape[d], x.shape[1 - d]
    if y.numel() % n or n < 2:
        return False
    seq, k = (x if d == 0 else x.t()), y.numel() // n
    ys = y.view(n, k) if split == "example-major" else y.view(k, n).t()
    m = min(k, steps - 1)
    if m < 1:
        return False
    ys, nxt = ys[:, :m], seq[:, 1:m + 1]
    kept = ys >= 0
    return int(kept.sum()) >= _NEXT_TOKENS_MIN and float((ys == nxt)[kept].float().mean()) >= _NEXT_TOKENS


def _next_tokens(first: torch.Tensor, targets: torch.Tensor) -> Optional[tuple[int, str]]:
    """(example dimension, flatten order) of a language model's batch: the one reading in which the targets are
    the next tokens of the 2-D integer inputs (x[:, 1:] or x[1:], flattened either way); None unless exactly one
    reading fits."""
    if first.ndim != 2 or first.is_floating_point() or targets.is_floating_point() or targets.numel() < 2:
        return None
    x, y = first.detach().cpu(), targets.detach().reshape(-1).cpu()
    fits = [(d, split) for d in (0, 1) for split in _SPLITS if _follows(x, y, d, split)]
    return fits[0] if len(fits) == 1 else None


def _by_targets(first: torch.Tensor, targets: Optional[torch.Tensor]) -> Optional[_Layout]:
    """The layout the targets decide: next tokens of the inputs in one reading, or one row per example where
    dimension 0 and 1 of the inputs differ in size (targets shaped like the inputs decide nothing)."""
    if targets is None or not targets.ndim:
        return None
    found = _next_tokens(first, targets)
    if found is not None:
        d, split = found
        return _Layout(first.shape[d], d, split, f"the targets are the inputs' next tokens along dimension {1 - d}, "
                                                 f"flattened {split}")
    p0, p1 = first.shape[:2]
    like_inputs = targets.ndim >= 2 and targets.shape[:2] == first.shape[:2]
    if p0 == p1 or like_inputs or targets.shape[0] not in (p0, p1):
        return None
    d = 0 if targets.shape[0] == p0 else 1
    return _Layout(first.shape[d], d, _SPLITS[d], f"the targets have {targets.shape[0]} rows, the size of "
                                                  f"dimension {d} of the inputs")


def _by_modules(first: torch.Tensor, seq_inputs: list[tuple[str, tuple]]) -> _Layout:
    """The layout the model's modules suggest: dimension 1 when a batch_first=False module reads the inputs'
    dimensions as they come, 0 when the model transposes them for it, or when no module reads sequence-first. Only
    the transposition decides: the other two are assumed."""
    p = tuple(first.shape[:2])
    if not seq_inputs:
        return _Layout(p[0], 0, _SPLITS[0], "no module of the model reads sequence-first (batch_first=False), "
                                            "and neither the data nor the targets tell", assumed=True)
    name, shape = seq_inputs[0]
    if p[0] != p[1] and tuple(shape[:2]) == p[::-1]:
        return _Layout(p[0], 0, _SPLITS[0], f"the model transposes its inputs for `{display(name, '')}` "
                                            f"(batch_first=False)")
    return _Layout(p[1], 1, _SPLITS[1], f"`{display(name, '')}` (batch_first=False) reads dimension 1 of the "
                                        f"inputs as the batch, and neither the data nor the targets tell",
                   assumed=True)


# -- tracing one forward --------------------------------------------------------------------------------------
@dataclass
class _Traced:
    """One eval-mode forward whose inputs (or first embeddings) are leaves that require grad."""

    leaves: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (name, leaf)
    hidden: set[int] = field(default_factory=set)  # leaves given to a recurrent module as its hidden state
    inputs: list[torch.Tensor] = field(default_factory=list)  # the model's tensors on its first call, in order
    int_shapes: list[tuple] = field(default_factory=list)  # shapes of the model's integer inputs
    seq_inputs: list[tuple[str, tuple]] = field(default_factory=list)  # (module, input shape), batch_first=False
    records: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)  # (module, type, output) in order
    outputs: Any = None
    targets: Any = None


def _per_example(t: torch.Tensor, rows: _Rows, n: int) -> torch.Tensor:
    """max |t| of each example (a length-n vector)."""
    return rows.examples(t.detach(), n).reshape(n, -1).abs().amax(1).float()


class _Tracer:
    """Hooks that make the model's float inputs (and the outputs of embeddings fed with its integer inputs)
    gradient-tracking leaves, record every submodule's output, and note how sequence-first modules are fed, for
    one forward."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.trace = _Traced()
        self.hooks = HookSet()
        self.names = {m: n for n, m in model.named_modules() if n}
        self.calls = 0
        self.given: dict[int, tuple[int, torch.Tensor]] = {}  # id of what the model got -> (leaf index, it)

    def __enter__(self) -> "_Tracer":
        self.hooks.add(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
        for module in self.names:
            self.hooks.add(module.register_forward_hook(self._post, with_kwargs=True))
            if _reads_sequence_first(module):
                self.hooks.add(module.register_forward_pre_hook(self._seq, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def _leaf(self, name: str, t: torch.Tensor) -> torch.Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        self.trace.leaves.append((name, leaf))
        given = leaf.clone()  # the model gets a non-leaf, so in-place ops on its input (x /= 255) stay legal
        self.given[id(given)] = (len(self.trace.leaves) - 1, given)
        return given

    def _swap_tensor(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim >= 1 and self.calls == 1:
            self.trace.inputs.append(t.detach())
        if t.is_floating_point() and t.ndim >= 1:
            return self._leaf(name, t)
        if not t.is_floating_point() and not t.is_complex() and t.ndim >= 1:
            self.trace.int_shapes.append(tuple(t.shape))
        return t

    def _swap(self, obj: Any, name: str) -> Any:
        """``obj`` with its float tensors swapped for leaves named by their paths. A PackedSequence stays whole:
        its rows are time steps of all the sequences, not examples."""
        if isinstance(obj, PackedSequence):
            return obj
        names = iter([n for n, _ in named_tensors(obj, name)])  # the order in which map_tensors meets them
        return map_tensors(lambda t: self._swap_tensor(next(names), t), obj)

    def _pre(self, module, args, kwargs):
        self.calls += 1
        call = f" (call {self.calls})" if self.calls > 1 else ""  # a siamese forward calls the model twice
        names = [n + call for n in positional_names(module, len(args))]
        return (tuple(self._swap(a, n) for n, a in zip(names, args)),
                {k: self._swap(v, k + call) for k, v in kwargs.items()})

    def _seq(self, module, args, kwargs):
        """How a batch_first=False module is fed: the shape of its input, and which leaves are its hidden state."""
        t = first_tensor(args[:1]) if args else first_tensor(list(kwargs.values()))
        if t is not None:
            self.trace.seq_inputs.append((self.names[module], tuple(t.shape)))
        if isinstance(module, nn.RNNBase):
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            self.trace.hidden.update(self.given[id(h)][0] for _, h in named_tensors(hx) if id(h) in self.given)

    def _post(self, module, args, kwargs, output):
        name = self.names[module]
        if isinstance(module, nn.Embedding) and isinstance(output, torch.Tensor):
            ids = args[0] if args else kwargs.get("input")
            if isinstance(ids, torch.Tensor) and tuple(ids.shape) in self.trace.int_shapes:
                out = self._leaf(f"output of {display(name, '')} (Embedding)", output)
                self.trace.records.append((name, type(module).__name__, out))
                return out
        t = first_tensor(output)
        if t is not None and t.requires_grad and t.is_floating_point():
            self.trace.records.append((name, type(module).__name__, t))
        return None


# -- measured data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """The gradient of one example's outputs on every example of the batch."""

    example: int
    relative: tuple[float, ...]  # per example j: max |grad_j| / max_k max |grad_k|
    leak: float  # the largest relative gradient on another example
    records: Mapping[str, float]  # module name -> leak of its output's gradient (absent: not reached)


@dataclass(frozen=True)
class OtherReading:
    """The probes along the other dimension of the inputs, taken when the layout was assumed and leaked."""

    dim: int
    n: int
    leak: float


@dataclass(frozen=True)
class BatchIndependenceMeasured:
    """The probes and what the judgment and the advice need of the model."""

    probes: tuple[Probe, ...]
    n: int  # examples in the batch
    gradient_at: tuple[str, ...]  # the inputs (or embedding outputs) the gradient is taken at
    output_dims: tuple[int, ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()
    flattened: Optional[str] = None  # the order of outputs (N*k, ...) flattened with time: example- or time-major
    modules: tuple[tuple[str, str], ...] = ()  # (name, type) of the traced module outputs, in execution order
    batch_norms: tuple[str, ...] = ()  # BatchNorm modules without running statistics
    sequence_modules: tuple[str, ...] = ()  # attention and recurrent modules that read (L, N, D)
    example_dim: int = 0  # the dimension of the model's inputs read as the examples
    layout: str = ""  # what decided it
    assumed: bool = False  # nothing decided it: a convention
    other: Optional[OtherReading] = None  # the other reading, when the assumed one leaked


@dataclass(frozen=True)
class _Reading:
    """The probes read under the thresholds: the worst one, the examples it leaks into, where the batch is mixed."""

    worst: Probe
    status: Status
    leaked: tuple[int, ...]
    own_zero: bool
    after: Optional[str] = None
    before: Optional[str] = None
    where: str = ""


@dataclass
class BatchIndependence(Check):
    id = "batch_independence"
    title = "Batch independence"
    what = """Karpathy's dependency test. With the model in eval mode (BatchNorm on its running statistics, dropout
    off; recurrent modules stay in train mode, since cuDNN has no RNN backward in eval mode and their train mode
    only adds element-wise dropout), one batch goes through with the inputs as gradient-tracking copies (for integer
    inputs: the outputs of the embeddings that read them). Which dimension of the inputs holds the examples is
    decided first: dimension 0 when the batches are cut along it (a tuple of tensors, a map-style Dataset, a
    DataLoader with the default collate); else the targets decide (the inputs' next tokens in exactly one reading,
    as a language model's are, or one row per example); else the model's modules do (dimension 1 when a
    batch_first=False module reads the inputs as they come, 0 when the model transposes them for it or no module
    reads sequence-first), which is an assumption, said in a note. Outputs whose leading dimension is N*k were
    flattened with time before the loss (.view(-1, V)) and are read back in the targets' order, example-major (N,
    k) or time-major (k, N); a recurrent module's hidden state (layers, N, H) holds the examples along dimension 1.
    The loss is a fixed random projection of example i's outputs only (for {probes} examples i, taken in this
    order: the first, middle and last, then the quarter points); its gradient on every other example j must be
    exactly zero. The leak is max_j |grad_j| / max_k |grad_k| over j != i: a pass up to {pass_leak:g}, a warning up
    to {fail_leak:g}, a failure above. When the layout was assumed and the examples leak, they are probed along the
    other dimension too, and if they are independent that way the verdict is a warning that gives both readings,
    never a failure. The outputs of every submodule are traced too, which locates where the examples are mixed."""
    why = """Examples in a batch must not see each other. A view or reshape that mixes the batch dimension with
    another (x.view(-1, N) where x.view(N, -1) was meant, transpose then reshape, (N, L, D) fed to a module that
    expects (L, N, D)), or a statistic over the batch at inference, makes each prediction depend on the rest of
    the batch: training still runs and the loss still falls, but the model learns something else, and results
    change with the batch size and composition. Outputs flattened in one order and targets in the other pair each
    prediction with another example's label, which this test sees the same way."""
    todo = """Reorder dimensions with permute/transpose, never with view/reshape; reshape only adjacent dimensions
    in their order (x.view(N, -1), x.flatten(1)); give batch_first=True to RNN and attention modules fed (N, L, D);
    flatten outputs and targets in the same order; use BatchNorm with running statistics (track_running_stats=True)
    or a per-example norm (LayerNorm, GroupNorm). Models whose examples interact by design (contrastive in-batch
    losses, set or graph models over the batch) cannot pass this test: ignore it for them (--ignore
    batch_independence)."""
    sources = (
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): use backprop to chart dependencies; set the "
        "loss to something trivial like the sum of all outputs of example i, run backward, and make sure you get "
        "a non-zero gradient only on the i-th input",
        "Thresholds: with per-example computation the cross-example gradient is exactly 0 in floating point "
        "(every row of grad_outputs but i is zero); 1e-6 allows for reductions in odd kernels, 1e-3 relative is "
        "a dependence that no rounding explains",
    )

    pass_leak: float = threshold(1e-6, "pass when the largest gradient on another example is at most this fraction "
                                       "of the largest gradient (rounding)")
    fail_leak: float = threshold(1e-3, "fail above this fraction; in between warn")
    probes: int = threshold(3, f"examples i whose outputs are probed ({', '.join(_PICKS[:3])}; up to "
                               f"{len(_PICKS)}: then the quarter points)")

    # -- measure ------------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> BatchIndependenceMeasured:
        batch, joined = self._batch(session)
        trace = self._trace(session, batch)
        layout = self._layout(session.target.data, trace, batch_size_of(batch) or 0)
        if layout.n < 2:
            self.skip(f"a batch of at least 2 examples is needed (the batch holds {layout.n}){joined}")
        leaves, outs, records = self._placed(trace, layout)
        if not leaves:
            what = ("integer inputs, and no nn.Embedding reads them" if trace.int_shapes else
                    f"no float inputs with a batch dimension of size {layout.n}")
            self.skip(f"no input to take the gradient at: the model gets {what}")
        if not outs:
            self.skip(f"no float output with a batch dimension of size {layout.n} that depends on the inputs "
                      f"(outputs: {type(trace.outputs).__name__})")
        probes = self._chart(layout.n, leaves, outs, records, session.seed)
        if not probes:
            self.skip("no finite, non-zero gradient reaches the inputs from the probed examples' outputs (a "
                      "torch.no_grad() or .detach() in forward?), so dependencies cannot be charted")
        other = self._other(trace, layout, probes, session.seed)
        return self._measured(session.model, probes, layout, leaves, outs, records, other)

    @staticmethod
    def _layout(data: Any, trace: _Traced, n_batch: int) -> _Layout:
        """Which dimension of the model's inputs holds the examples: dimension 0 of batches cut along it (found in
        the model's first input, which a forward may pass transposed), else what the targets or the modules say."""
        first = trace.inputs[0] if trace.inputs else None
        if first is None:
            return _Layout(n_batch)
        targets = next((t for _, t in named_tensors(trace.targets) if t.ndim), None)
        if _cut_along_dim0(data):
            d = next((k for k in (0, 1) if first.ndim > k and first.shape[k] == n_batch), 0)
            found = _next_tokens(first, targets) if targets is not None else None
            return _Layout(n_batch, d, found[1] if found and found[0] == d else _SPLITS[d],
                           "the batches are cut along dimension 0 (a tuple of tensors, a map-style Dataset or a "
                           "DataLoader with the default collate)" + (" and the forward passes them transposed"
                                                                     if d else ""))
        if first.ndim < 2:
            return _Layout(first.shape[0])
        return _by_targets(first, targets) or _by_modules(first, trace.seq_inputs)

    @staticmethod
    def _placed(trace: _Traced, layout: _Layout) -> tuple[list, list, list]:
        """The leaves, the outputs and the module outputs that hold the examples, each with where it holds them;
        only the model's outputs are read as flattened with time (module outputs are for locating)."""
        leaves = [(name, leaf, layout.rows(tuple(leaf.shape), hidden=k in trace.hidden))
                  for k, (name, leaf) in enumerate(trace.leaves)]
        outs = [(t, layout.rows(tuple(t.shape), flattened=True)) for _, t in named_tensors(trace.outputs, "out")
                if t.is_floating_point() and t.requires_grad and t.ndim]
        records = [(name, kind, t, layout.rows(tuple(t.shape))) for name, kind, t in trace.records]
        return ([x for x in leaves if x[2] is not None], [x for x in outs if x[1] is not None],
                [x for x in records if x[3] is not None])

    def _other(self, trace: _Traced, layout: _Layout, probes: list[Probe], seed: int) -> Optional[OtherReading]:
        """The probes along the other dimension of the inputs, when the layout was only assumed and the examples
        leak: the verdict must not rest on an assumption."""
        if not layout.assumed or max(p.leak for p in probes) <= self.pass_leak or not trace.inputs:
            return None
        other = layout.other(tuple(trace.inputs[0].shape))
        if other is None:
            return None
        leaves, outs, records = self._placed(trace, other)
        if not leaves or not outs:
            return None
        try:
            found = [p for p in (self._probe(i, other.n, leaves, outs, records, seed) for i in
                                 self._examples(other.n)) if p is not None]
        except RuntimeError:  # a backward the kernels refuse in this reading: the assumed one stands
            return None
        return OtherReading(other.dim, other.n, max(p.leak for p in found)) if found else None

    @staticmethod
    def _measured(model: nn.Module, probes, layout: _Layout, leaves, outs, records,
                  other: Optional[OtherReading]) -> BatchIndependenceMeasured:
        """The measurements, with the names of the modules the advice may point at."""
        norms = tuple(name for name, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats)
        seq = tuple(name for name, m in model.named_modules()
                    if isinstance(m, _SEQUENCE_MODULES) and not m.batch_first)
        splits = [rows.split for _, rows in outs if rows.split]
        return BatchIndependenceMeasured(
            probes=tuple(probes), n=layout.n, gradient_at=tuple(name for name, _, _ in leaves),
            output_dims=tuple(rows.dim for _, rows in outs), output_shapes=tuple(tuple(t.shape) for t, _ in outs),
            flattened=splits[0] if splits else None, modules=tuple((name, kind) for name, kind, _, _ in records),
            batch_norms=norms, sequence_modules=seq, example_dim=layout.dim, layout=layout.reason,
            assumed=layout.assumed, other=other)

    @staticmethod
    def _batch(session: "Session") -> tuple[Any, str]:
        """The first batch, joined with the second when it holds a single example; and, when the two could not be
        joined, why (for the skip message)."""
        batch = session.batch(0)
        if (batch_size_of(batch) or 0) >= 2 or len(session.pool) < 2:
            return batch, ""
        try:
            return concat_batches([session.batch(0), session.batch(1)]), ""
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as exc:  # batches of unlike structure
            return batch, f"; batches 0 and 1 could not be joined: {type(exc).__name__}: {exc}"

    def _trace(self, session: "Session", batch: Any) -> _Traced:
        """One forward in eval mode with the inputs swapped for gradient-tracking leaves."""
        self._eval_mode(session.model)
        tracer = _Tracer(session.model)
        try:
            with torch.enable_grad(), tracer:
                tracer.trace.outputs, tracer.trace.targets = session.forward(batch)
        except Exception as exc:  # the user's forward on leaves in eval mode: any failure means no test
            self.skip(f"the forward with gradient-tracking input copies in eval mode raised "
                      f"{type(exc).__name__}: {exc}")
        return tracer.trace

    def _chart(self, n: int, leaves, outs, records, seed: int) -> list[Probe]:
        try:
            return [p for p in (self._probe(i, n, leaves, outs, records, seed) for i in self._examples(n))
                    if p is not None]
        except RuntimeError as exc:  # a backward the model's kernels refuse; not a finding about the model
            self.skip(f"the gradient of one example's outputs could not be taken: {exc}")

    # -- the probe ----------------------------------------------------------------------------------------
    @staticmethod
    def _eval_mode(model: nn.Module) -> None:
        """Eval mode, except recurrent modules: cuDNN refuses an RNN backward in eval mode, and their train mode
        differs only by dropout between layers, which acts on each element alone (measured on an H200: exact zero
        cross-example gradient for LSTM/GRU/RNN with dropout in train mode)."""
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                m.train()

    def _examples(self, n: int) -> list[int]:
        picks = [0, n // 2, n - 1, n // 4, (3 * n) // 4]  # in the order of _PICKS
        return sorted(dict.fromkeys(picks[: max(1, self.probes)]))

    @staticmethod
    def _probe(i: int, n: int, leaves, outs, records, seed: int) -> Optional[Probe]:
        gen = torch.Generator().manual_seed(seed + i)
        own = [rows.examples(t, n)[i] for t, rows in outs]
        loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum() for o in own)
        targets = [leaf for _, leaf, _ in leaves] + [t for _, _, t, _ in records]
        grads = torch.autograd.grad(loss, targets, retain_graph=True, allow_unused=True)
        per = [_per_example(g, rows, n) for g, (_, _, rows) in zip(grads, leaves) if g is not None]
        per = [p for p in per if bool(torch.isfinite(p).all())]  # e.g. an additive -inf mask given as input
        if not per:
            return None
        total = torch.stack(per).amax(0).cpu()
        peak = float(total.max())
        if peak == 0:
            return None
        relative = tuple((total / peak).tolist())
        leak = max(v for j, v in enumerate(relative) if j != i)
        at = {}
        for g, (name, _, _, rows) in zip(grads[len(leaves):], records):
            if g is None:
                continue
            r = _per_example(g, rows, n).cpu()
            top = float(r.max())
            at[name] = 0.0 if top == 0 else float(torch.cat([r[:i], r[i + 1:]]).max() / top)
        return Probe(i, relative, leak, at)

    # -- judge --------------------------------------------------------------------------------------------
    def reading(self, m: BatchIndependenceMeasured) -> _Reading:
        """The worst probe under the thresholds, and where its leak enters."""
        worst = max(m.probes, key=lambda p: p.leak)
        status = Status.PASS if worst.leak <= self.pass_leak else \
            Status.WARN if worst.leak <= self.fail_leak else Status.FAIL
        leaked = tuple(j for j, v in enumerate(worst.relative) if j != worst.example and v > self.pass_leak)
        own_zero = worst.relative[worst.example] <= self.pass_leak
        if status == Status.PASS:
            return _Reading(worst, status, leaked, own_zero)
        after, before = self._locate(worst, m.modules)
        return _Reading(worst, status, leaked, own_zero, after, before, self._where(after, before, dict(m.modules)))

    def judge(self, m: BatchIndependenceMeasured) -> Judgment:
        r = self.reading(m)
        leak, n = r.worst.leak, m.n
        if r.status == Status.PASS:
            return Judgment(Status.PASS, f"no gradient crosses examples: leak {fmt.small(leak)} <= "
                                         f"{fmt.num(self.pass_leak)} over {fmt.plural(len(m.probes), 'probed example')}"
                                         f" of {n} (gradient at {fmt.listed(m.gradient_at, 4)})")
        mixed = f", mixed {r.where}" if r.where else ""
        own = "; its own input does not reach them" if r.own_zero else ""
        summary = (f"example {r.worst.example}'s outputs depend on {len(r.leaked)} of {n - 1} other examples "
                   f"(cross-example gradient {fmt.small(leak)} of the largest){mixed}{own}")
        if m.assumed and m.other is not None and m.other.leak <= self.pass_leak:
            return self._undecided(m, r, summary)
        return Judgment(r.status, summary, self._advice(m, r))

    def _undecided(self, m: BatchIndependenceMeasured, r: _Reading, summary: str) -> Judgment:
        """A warning, not a failure, when the examples leak in the assumed reading of the inputs and are
        independent in the other."""
        o = m.other
        return Judgment(Status.WARN, (
            f"the batch dimension is not known: read along dimension {m.example_dim} of the inputs (assumed), "
            f"{summary}; read along dimension {o.dim} ({o.n} examples), no gradient crosses examples "
            f"(leak {fmt.small(o.leak)})"), (
            f"Which dimension of the inputs holds the examples was assumed ({m.layout}). If it is dimension "
            f"{o.dim}, the examples are independent and nothing is wrong. If it is dimension {m.example_dim}, "
            f"they are mixed: {self._advice(m, r)[-2][0].lower()}{self._advice(m, r)[-2][1:]}",
            "To let the check decide, give batches cut along dimension 0 (a tuple (X, y) or a DataLoader), or "
            "targets with one row per example (a language model's next tokens decide by themselves)."))

    def _locate(self, probe: Probe, modules: tuple[tuple[str, str], ...]) -> tuple[Optional[str], Optional[str]]:
        """The last traced module output that still depends on other examples, and the first after it that no
        longer does: the batch is mixed between them."""
        order = [name for name, _ in modules if probe.records.get(name) is not None]
        leaky = [k for k, name in enumerate(order) if probe.records[name] > self.pass_leak]
        if not order:
            return None, None
        if not leaky:
            return "the model's input", order[0]
        k = leaky[-1]
        before = next((name for name in order[k + 1:] if probe.records[name] <= self.pass_leak), None)
        return order[k], before

    @staticmethod
    def _where(after: Optional[str], before: Optional[str], kinds: Mapping[str, str]) -> str:
        name = lambda m: f"`{display(m, '')}`" + (f" ({kinds[m]})" if m in kinds else "")  # noqa: E731
        if after == "the model's input":
            return f"between the model's input and {name(before)}"
        if after and before:
            return f"after {name(after)} and at or before {name(before)}"
        if after:
            return f"after {name(after)}"
        return ""

    @staticmethod
    def _advice(m: BatchIndependenceMeasured, r: _Reading) -> tuple[str, ...]:
        advice = []
        look = f"; look {r.where}" if r.where else ""
        if m.batch_norms and (r.before in m.batch_norms or not r.where):
            advice.append(f"{fmt.listed([display(b, '') for b in m.batch_norms], 4)}: BatchNorm with "
                          f"track_running_stats=False normalizes with the batch's statistics even in eval mode, so "
                          f"every prediction depends on the rest of the batch; set track_running_stats=True or use "
                          f"LayerNorm/GroupNorm.")
        seq = m.sequence_modules if m.example_dim == 0 else ()  # read along dimension 1, they get what they expect
        if m.flattened and r.after and not r.before:
            advice.append(f"The outputs were read {m.flattened}, as the targets are flattened, and the examples are "
                          f"mixed after the model's last module: if the forward flattens the outputs in the other "
                          f"order (a transpose, or a view where a transpose was meant, before .view(-1, V)), each "
                          f"prediction is scored against another example's target; flatten outputs and targets the "
                          f"same way.")
        if len(r.leaked) >= max(1, (m.n - 1) * _MOST) and not r.own_zero:
            advice.append(f"Every other example reaches example i's outputs ({len(r.leaked)} of {m.n - 1}): a "
                          f"statistic over the batch dimension (x - x.mean(0), a softmax or norm over dim 0) or "
                          f"attention/recurrence running along the batch"
                          + (f" ({fmt.listed([display(q, '') for q in seq], 3)} expect (L, N, D) unless "
                             f"batch_first=True)" if seq else "")
                          + look + ".")
        else:
            advice.append("Some examples leak into others: a view/reshape mixes the batch dimension with another one "
                          "(x.view(-1, N) or x.view(L, N, D) on an (N, L, D) tensor, transpose then view). Reorder "
                          "dimensions with permute/transpose and reshape only adjacent dimensions in order "
                          "(x.reshape(N, -1), x.flatten(1))" + look + ".")
        advice.append("If your examples are meant to interact (contrastive in-batch losses, set models over the "
                      "batch), this test does not apply: --ignore batch_independence.")
        return tuple(advice)

    # -- present ------------------------------------------------------------------------------------------
    def present(self, m: BatchIndependenceMeasured, judgment: Judgment) -> CheckResult:
        r = self.reading(m)
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(m, r), advice=judgment.advice,
                           tables=self._tables(m, r.worst), plots=(self._plot(m),), notes=self._notes(m))

    @staticmethod
    def _notes(m: BatchIndependenceMeasured) -> tuple[str, ...]:
        """How the examples were found: the inputs' dimension when it is not plainly 0, the other reading, the
        order of flattened outputs."""
        notes = []
        if m.example_dim == 1 or m.assumed:
            kind = "sequence-first" if m.example_dim == 1 else "batch-first"
            notes.append(f"{kind} batches: the examples are read along dimension {m.example_dim} of the model's "
                         f"inputs ({m.n} of them), " + ("assumed: " if m.assumed else "as ") + m.layout)
        if m.other is not None:
            notes.append(f"read along dimension {m.other.dim} of the inputs ({m.other.n} examples), the leak is "
                         f"{fmt.small(m.other.leak)}")
        if m.flattened == "example-major":
            notes.append("outputs with a leading dimension of N*k were read as (N, k, ...): example-major, as "
                         ".view(-1, C) on (N, L, C) gives")
        elif m.flattened == "time-major":
            notes.append("outputs with a leading dimension of k*N were read as (k, N, ...): time-major, as "
                         ".view(-1, C) on (L, N, C) gives")
        return tuple(notes)

    @staticmethod
    def _metrics(m: BatchIndependenceMeasured, r: _Reading) -> dict:
        return {
            "leak": r.worst.leak, "leak_per_probe": {str(p.example): p.leak for p in m.probes},
            "probes": [p.example for p in m.probes], "batch_size": m.n, "leaked_examples": len(r.leaked),
            "leaked_fraction": len(r.leaked) / (m.n - 1), "own_gradient_zero": r.own_zero,
            "gradient_at": list(m.gradient_at), "output_batch_dims": list(m.output_dims),
            "output_shapes": [list(s) for s in m.output_shapes], "flattened_outputs": m.flattened is not None,
            "flatten_order": m.flattened, "example_dim": m.example_dim, "layout_assumed": m.assumed,
            "other_reading_leak": m.other.leak if m.other else None,
            "mixing_after": r.after, "mixing_before": r.before,
        }

    def _tables(self, m: BatchIndependenceMeasured, worst: Probe) -> tuple[Table, ...]:
        """The probed examples with the largest gradient each sends to another example (the plot has every
        example), and where the worst probe's leak is seen in the modules."""
        rows = []
        for p in m.probes:
            top, into = max((v, j) for j, v in enumerate(p.relative) if j != p.example)
            rows.append((p.example, p.relative[p.example], p.leak, into if top > 0 else None,
                         sum(v > self.pass_leak for j, v in enumerate(p.relative) if j != p.example)))
        tables = [Table("probes", f"Gradient from each probed example's outputs to the other {m.n - 1} examples "
                                  f"(worst: example {worst.example}, leak {fmt.small(worst.leak)}; every example is "
                                  f"in the plot)",
                        ("probed example", "own gradient", "largest leak", "into example", "examples reached"),
                        rows)]
        if worst.records:
            tables.append(Table("modules", f"Cross-example gradient at each module's output (probe {worst.example}, "
                                           f"in execution order)", ("module", "type", "leak"),
                                [(name, kind, worst.records.get(name)) for name, kind in m.modules
                                 if name in worst.records]))
        return tuple(tables)

    def _plot(self, m: BatchIndependenceMeasured) -> Plot:
        return Plot("relative_gradient", "Gradient reaching each example from one example's outputs", "line",
                    tuple(Series(f"outputs of example {p.example}", tuple(range(m.n)),
                                 [max(v, 1e-16) for v in p.relative]) for p in m.probes),
                    x_label="example j in the batch", y_label="max |grad_j| / max |grad| (log)", log_y=True,
                    markers=(Marker(f"pass <= {fmt.num(self.pass_leak)}", self.pass_leak, "y"),
                             Marker(f"fail > {fmt.num(self.fail_leak)}", self.fail_leak, "y")))
