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
_SEQUENCE_MODULES = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


# -- tracing one forward --------------------------------------------------------------------------------------
@dataclass
class _Traced:
    """One eval-mode forward whose inputs (or first embeddings) are leaves that require grad."""

    leaves: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (name, leaf)
    int_shapes: list[tuple] = field(default_factory=list)  # shapes of the model's integer inputs
    records: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)  # (module, type, output) in order
    outputs: Any = None
    targets: Any = None


def _batch_dim(shape: tuple, n: int) -> Optional[int]:
    """The dimension of size ``n``: the leading one when it matches, else the only one that does."""
    if len(shape) and shape[0] == n:
        return 0
    dims = [d for d, s in enumerate(shape) if s == n]
    return dims[0] if len(dims) == 1 else None


def _per_example(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """max |t| of each example along ``dim`` (a length-n vector)."""
    return t.detach().movedim(dim, 0).reshape(n, -1).abs().amax(1).float()


class _Tracer:
    """Hooks that make the model's float inputs (and the outputs of embeddings fed with its integer inputs)
    gradient-tracking leaves, and record every submodule's output, for one forward."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.trace = _Traced()
        self.hooks = HookSet()
        self.names = {m: n for n, m in model.named_modules() if n}
        self.calls = 0

    def __enter__(self) -> "_Tracer":
        self.hooks.add(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
        for module in self.names:
            self.hooks.add(module.register_forward_hook(self._post, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def _leaf(self, name: str, t: torch.Tensor) -> torch.Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        self.trace.leaves.append((name, leaf))
        return leaf.clone()  # the model gets a non-leaf, so in-place ops on its input (x /= 255) stay legal

    def _swap_tensor(self, name: str, t: torch.Tensor) -> torch.Tensor:
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
class BatchIndependenceMeasured:
    """The probes and what the judgment and the advice need of the model."""

    probes: tuple[Probe, ...]
    n: int  # examples in the batch
    gradient_at: tuple[str, ...]  # the inputs (or embedding outputs) the gradient is taken at
    output_dims: tuple[int, ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()
    flattened: bool = False  # (N*k, ...) outputs read as (N, k, ...)
    modules: tuple[tuple[str, str], ...] = ()  # (name, type) of the traced module outputs, in execution order
    batch_norms: tuple[str, ...] = ()  # BatchNorm modules without running statistics
    sequence_modules: tuple[str, ...] = ()  # attention and recurrent modules that read (L, N, D)
    notes: tuple[str, ...] = ()


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
    inputs: the outputs of the embeddings that read them). The loss is a fixed random projection of example i's
    outputs only (for {probes} examples i, taken in this order: the first, middle and last, then the quarter
    points); its gradient on every other example j must be exactly zero. The leak is max_j |grad_j| / max_k |grad_k|
    over j != i: a pass up to {pass_leak:g}, a warning up to {fail_leak:g}, a failure above. The outputs of every
    submodule are traced too, which locates where the examples are mixed. When dimension 0 leaks, batches that a
    DataLoader or a tuple of tensors did not cut along it, fed to sequence-first modules (batch_first=False), are
    probed again along dimension 1 (L, N, ...), and pass when the examples are independent that way."""
    why = """Examples in a batch must not see each other. A view or reshape that mixes the batch dimension with
    another (x.view(-1, N) where x.view(N, -1) was meant, transpose then reshape, (N, L, D) fed to a module that
    expects (L, N, D)), or a statistic over the batch at inference, makes each prediction depend on the rest of
    the batch: training still runs and the loss still falls, but the model learns something else, and results
    change with the batch size and composition."""
    todo = """Reorder dimensions with permute/transpose, never with view/reshape; reshape only adjacent dimensions
    in their order (x.view(N, -1), x.flatten(1)); give batch_first=True to RNN and attention modules fed (N, L, D);
    use BatchNorm with running statistics (track_running_stats=True) or a per-example norm (LayerNorm,
    GroupNorm). Models whose examples interact by design (contrastive in-batch losses, set or graph models over
    the batch) cannot pass this test: ignore it for them (--ignore batch_independence)."""
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
        n_batch = batch_size_of(batch) or 0
        trace = self._trace(session, batch)
        n = self._batch_size(trace, n_batch)
        if n is None or n < 2:
            self.skip(f"a batch of at least 2 examples is needed (the batch holds {n or n_batch}){joined}")
        leaves = [(name, leaf, _batch_dim(tuple(leaf.shape), n)) for name, leaf in trace.leaves]
        leaves = [(name, leaf, d) for name, leaf, d in leaves if d is not None]
        if not leaves:
            what = ("integer inputs, and no nn.Embedding reads them" if trace.int_shapes else
                    "no float inputs with a batch dimension of size " + str(n))
            self.skip(f"no input to take the gradient at: the model gets {what}")
        outs, flattened = self._outputs(trace.outputs, n)
        if not outs:
            self.skip(f"no float output with a batch dimension of size {n} that depends on the inputs "
                      f"(outputs: {type(trace.outputs).__name__})")
        records = [(name, kind, t, _batch_dim(tuple(t.shape), n)) for name, kind, t in trace.records]
        records = [r for r in records if r[3] is not None]
        probes = self._chart(n, leaves, outs, records, session.seed)
        if not probes:
            self.skip("no finite, non-zero gradient reaches the inputs from the probed examples' outputs (a "
                      "torch.no_grad() or .detach() in forward?), so dependencies cannot be charted")
        notes: tuple[str, ...] = ()
        if max(p.leak for p in probes) > self.pass_leak:
            seq_first = self._sequence_first(session, trace, n)
            if seq_first is not None:
                probes, m, leaves, outs, records = seq_first
                flattened, notes = False, (self._sequence_first_note(m, n),)
                n = m
        return self._measured(session.model, probes, n, leaves, outs, flattened, records, notes)

    @staticmethod
    def _measured(model: nn.Module, probes, n, leaves, outs, flattened, records, notes) -> BatchIndependenceMeasured:
        """The measurements, with the names of the modules the advice may point at."""
        norms = tuple(name for name, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats)
        seq = tuple(name for name, m in model.named_modules()
                    if isinstance(m, _SEQUENCE_MODULES) and not getattr(m, "batch_first", True))
        return BatchIndependenceMeasured(
            probes=tuple(probes), n=n, gradient_at=tuple(name for name, _, _ in leaves),
            output_dims=tuple(d for _, d in outs), output_shapes=tuple(tuple(t.shape) for t, _ in outs),
            flattened=flattened, modules=tuple((name, kind) for name, kind, _, _ in records), batch_norms=norms,
            sequence_modules=seq, notes=notes)

    @staticmethod
    def _sequence_first_note(m: int, n: int) -> str:
        return (f"sequence-first batches: examples are read along dimension 1 (size {m}) of the inputs, as the "
                f"model's batch_first=False modules read them; along dimension 0 (size {n}, the time steps) outputs "
                f"depend on earlier steps, as they should")

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

    def _sequence_first(self, session: "Session", trace: _Traced, n: int) -> Optional[tuple]:
        """The probe again with examples along dimension 1, for batches that are sequence-first (L, N, ...), as
        PyTorch's word_language_model feeds its batch_first=False LSTM; the evidence when the model is independent
        that way, else None. Not for data whose batches are cut along dimension 0 by construction (a tuple of
        tensors, a DataLoader with the default collate), where (N, L, D) fed to a sequence-first module is the
        fault this check exists for."""
        if self._dim0_is_batch(session.target.data):
            return None
        seq_first = [m for m in session.model.modules()
                     if isinstance(m, (*_SEQUENCE_MODULES, nn.Transformer)) and not getattr(m, "batch_first", False)]
        shapes = [tuple(leaf.shape) for _, leaf in trace.leaves] + trace.int_shapes
        if not seq_first or not shapes or len(shapes[0]) < 2 or shapes[0][1] < 2 or shapes[0][1] == n:
            return None
        m = shapes[0][1]
        leaves = [(name, leaf, 1) for name, leaf in trace.leaves if leaf.ndim >= 2 and leaf.shape[1] == m]
        outs = self._time_major_outputs(trace.outputs, m, n)
        records = [(name, kind, t, 1) for name, kind, t in trace.records if t.ndim >= 2 and t.shape[1] == m]
        if not leaves or not outs:
            return None
        probes = self._chart(m, leaves, outs, records, session.seed)
        if not probes or max(p.leak for p in probes) > self.pass_leak:
            return None
        return probes, m, leaves, outs, records

    @staticmethod
    def _time_major_outputs(outputs: Any, m: int, n: int) -> list[tuple[torch.Tensor, int]]:
        """Float outputs with the examples along dimension 1; (L*N, ...) from .view(-1, V) read as (L, N, ...)."""
        outs = []
        for _, t in named_tensors(outputs, "out"):
            if not (t.is_floating_point() and t.requires_grad and t.ndim):
                continue
            if t.ndim >= 2 and t.shape[1] == m:
                outs.append((t, 1))
            elif t.shape[0] % m == 0 and t.shape[0] // m == n:
                outs.append((t.reshape(n, m, *t.shape[1:]), 1))
        return outs

    @staticmethod
    def _dim0_is_batch(data: Any) -> bool:
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return True
        return isinstance(data, DataLoader) and data.collate_fn is default_collate and data.batch_size is not None

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

    @staticmethod
    def _batch_size(trace: _Traced, n_batch: int) -> Optional[int]:
        """The number of examples: the inputs' leading dimension, or the targets' when the inputs are
        batch-second (L, N, F); flattened targets (N*L,) keep the inputs' count."""
        shapes = [tuple(l.shape) for _, l in trace.leaves] + trace.int_shapes
        n_in = shapes[0][0] if shapes else n_batch
        targets = trace.targets
        n_t = targets.shape[0] if isinstance(targets, torch.Tensor) and targets.ndim else None
        if n_t is None or n_t == n_in:
            return n_in
        if shapes and any(n_t in s[1:] for s in shapes) and n_t not in (s[0] for s in shapes):
            return n_t
        return n_in

    @staticmethod
    def _outputs(outputs: Any, n: int) -> tuple[list[tuple[torch.Tensor, int]], bool]:
        """Float outputs that require grad, each with its batch dimension; (N*k, ...) outputs (a flattened
        sequence, example-major as .view(-1, C) makes it) are viewed as (N, k, ...)."""
        out, flattened = [], False
        for _, t in named_tensors(outputs, "out"):
            if not (t.is_floating_point() and t.requires_grad and t.ndim):
                continue
            d = _batch_dim(tuple(t.shape), n)
            if d is None and t.shape[0] % n == 0:
                t, d, flattened = t.reshape(n, t.shape[0] // n, *t.shape[1:]), 0, True
            if d is not None:
                out.append((t, d))
        return out, flattened

    def _examples(self, n: int) -> list[int]:
        picks = [0, n // 2, n - 1, n // 4, (3 * n) // 4]  # in the order of _PICKS
        return sorted(dict.fromkeys(picks[: max(1, self.probes)]))

    @staticmethod
    def _probe(i: int, n: int, leaves, outs, records, seed: int) -> Optional[Probe]:
        gen = torch.Generator().manual_seed(seed + i)
        loss = sum((t.select(d, i) * torch.randn(t.select(d, i).shape, generator=gen).to(t.device, t.dtype)).sum()
                   for t, d in outs)
        targets = [leaf for _, leaf, _ in leaves] + [t for _, _, t, _ in records]
        grads = torch.autograd.grad(loss, targets, retain_graph=True, allow_unused=True)
        per = [_per_example(g, d, n) for g, (_, _, d) in zip(grads, leaves) if g is not None]
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
        for g, (name, _, _, d) in zip(grads[len(leaves):], records):
            if g is None:
                continue
            r = _per_example(g, d, n).cpu()
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
        return Judgment(r.status, summary, self._advice(m, r))

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
            advice.append(f"{fmt.listed([display(b, '') for b in m.batch_norms], 4)}: BatchNorm with track_running_stats=False normalizes with "
                          f"the batch's statistics even in eval mode, so every prediction depends on the rest of the "
                          f"batch; set track_running_stats=True or use LayerNorm/GroupNorm.")
        seq = m.sequence_modules
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
        notes = (("outputs with a leading dimension of N*k were read as (N, k, ...): example-major, as "
                  ".view(-1, C) on (N, L, C) gives",) if m.flattened else ()) + m.notes
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(m, r), advice=judgment.advice,
                           tables=self._tables(m, r.worst), plots=(self._plot(m),), notes=notes)

    @staticmethod
    def _metrics(m: BatchIndependenceMeasured, r: _Reading) -> dict:
        return {
            "leak": r.worst.leak, "leak_per_probe": {str(p.example): p.leak for p in m.probes},
            "probes": [p.example for p in m.probes], "batch_size": m.n, "leaked_examples": len(r.leaked),
            "leaked_fraction": len(r.leaked) / (m.n - 1), "own_gradient_zero": r.own_zero,
            "gradient_at": list(m.gradient_at), "output_batch_dims": list(m.output_dims),
            "output_shapes": [list(s) for s in m.output_shapes], "flattened_outputs": m.flattened,
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
