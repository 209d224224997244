"""batch_independence: does example i's output depend on example j (a reshape that mixes the batch)?"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..instruments.hooks import HookSet
from ..report import Marker, Plot, Series, Table
from ..analysis.batches import batch_size_of, concat_batches, named_tensors
from ..usercode import positional_names
from .base import Check, threshold


@dataclass
class _Traced:
    """One eval-mode forward whose inputs (or first embeddings) are leaves that require grad."""

    leaves: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (name, leaf)
    int_shapes: list[tuple] = field(default_factory=list)  # shapes of the model's integer inputs
    records: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)  # (module, type, output) in order
    outputs: Any = None
    targets: Any = None


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    for _, t in named_tensors(obj, "out"):
        return t
    return None


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

    def __enter__(self) -> "_Tracer":
        self.hooks.add(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
        for module, name in self.names.items():
            self.hooks.add(module.register_forward_hook(self._post, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def _leaf(self, name: str, t: torch.Tensor) -> torch.Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        self.trace.leaves.append((name, leaf))
        return leaf.clone()  # the model gets a non-leaf, so in-place ops on its input (x /= 255) stay legal

    def _swap(self, obj: Any, name: str) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.ndim >= 1:
                return self._leaf(name, obj)
            if not obj.is_floating_point() and not obj.is_complex() and obj.ndim >= 1:
                self.trace.int_shapes.append(tuple(obj.shape))
            return obj
        if isinstance(obj, dict):
            return type(obj)({k: self._swap(v, f"{name}[{k!r}]") for k, v in obj.items()}) \
                if type(obj) is dict else {k: self._swap(v, f"{name}[{k!r}]") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._swap(v, f"{name}[{i}]") for i, v in enumerate(obj))
        return obj

    def _pre(self, module, args, kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        call = f" (call {self.calls})" if self.calls > 1 else ""  # a siamese forward calls the model twice
        names = [n + call for n in positional_names(module, len(args))]
        return (tuple(self._swap(a, n) for n, a in zip(names, args)),
                {k: self._swap(v, k + call) for k, v in kwargs.items()})

    def _post(self, module, args, kwargs, output):
        name = self.names[module]
        if isinstance(module, nn.Embedding) and isinstance(output, torch.Tensor):
            ids = args[0] if args else kwargs.get("input")
            if isinstance(ids, torch.Tensor) and tuple(ids.shape) in self.trace.int_shapes:
                out = self._leaf(f"output of {name} (Embedding)", output)
                self.trace.records.append((name, type(module).__name__, out))
                return out
        t = _first_tensor(output)
        if t is not None and t.requires_grad and t.is_floating_point():
            self.trace.records.append((name, type(module).__name__, t))
        return None


@dataclass(frozen=True)
class _Probe:
    example: int
    relative: list[float]  # per example j: max |grad_j| / max_k max |grad_k|
    leak: float
    records: dict  # module name -> leak of its output's gradient (None: not reached)


@dataclass
class BatchIndependence(Check):
    id = "batch_independence"
    title = "Batch independence"
    what = """Karpathy's dependency test. With the model in eval mode (BatchNorm on its running statistics, dropout
    off), one batch goes through with the inputs as gradient-tracking copies (for integer inputs: the outputs of
    the embeddings that read them). The loss is a fixed random projection of example i's outputs only (for i
    the first, middle and last example); its gradient on every other example j must be exactly zero. The leak is
    max_j |grad_j| / max_k |grad_k| over j != i; the outputs of every submodule are traced too, which locates
    where the examples are mixed."""
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
    probes: int = threshold(3, "examples i whose outputs are probed (first, middle, last)")

    def run(self, session):
        batch = self._batch(session)
        n_batch = batch_size_of(batch) or 0
        model = session.model
        self._eval_mode(model)
        tracer = _Tracer(model)
        try:
            with torch.enable_grad(), tracer:
                outputs, targets = session.forward(batch)
        except Exception as exc:
            self.skip(f"the forward with gradient-tracking input copies in eval mode raised "
                      f"{type(exc).__name__}: {exc}")
        trace = tracer.trace
        n = self._batch_size(trace, targets, n_batch)
        if n is None or n < 2:
            self.skip(f"a batch of at least 2 examples is needed (the batch holds {n or n_batch})")
        leaves = [(name, leaf, _batch_dim(tuple(leaf.shape), n)) for name, leaf in trace.leaves]
        leaves = [(name, leaf, d) for name, leaf, d in leaves if d is not None]
        if not leaves:
            what = ("integer inputs, and no nn.Embedding reads them" if trace.int_shapes else
                    "no float inputs with a batch dimension of size " + str(n))
            self.skip(f"no input to take the gradient at: the model gets {what}")
        outs, flattened = self._outputs(outputs, n)
        if not outs:
            self.skip(f"no float output with a batch dimension of size {n} that depends on the inputs "
                      f"(outputs: {type(outputs).__name__})")
        records = [(name, kind, t, _batch_dim(tuple(t.shape), n)) for name, kind, t in trace.records]
        records = [r for r in records if r[3] is not None]
        probes = self._chart(n, leaves, outs, records, session)
        if not probes:
            self.skip("no finite, non-zero gradient reaches the inputs from the probed examples' outputs (a "
                      "torch.no_grad() or .detach() in forward?), so dependencies cannot be charted")
        if max(p.leak for p in probes) > self.pass_leak:
            seq_first = self._sequence_first(session, trace, outputs, n)
            if seq_first is not None:
                probes, m, leaves, outs, records = seq_first
                return self._verdict(probes, m, leaves, outs, False, model, records, notes=(
                    f"sequence-first batches: examples are read along dimension 1 (size {m}) of "
                    f"the inputs, as the model's batch_first=False modules read them; along dimension 0 (size "
                    f"{n}, the time steps) outputs depend on earlier steps, as they should",))
        return self._verdict(probes, n, leaves, outs, flattened, model, records)

    def _chart(self, n, leaves, outs, records, session) -> list:
        try:
            return [p for p in (self._probe(i, n, leaves, outs, records, session) for i in self._examples(n))
                    if p is not None]
        except RuntimeError as exc:  # a backward the model's kernels refuse; not a finding about the model
            self.skip(f"the gradient of one example's outputs could not be taken: {exc}")

    def _sequence_first(self, session, trace, outputs, n):
        """The probe again with examples along dimension 1, for batches that are sequence-first (L, N, ...), as
        PyTorch's word_language_model feeds its batch_first=False LSTM; the evidence when the model is independent
        that way, else None. Not for data whose batches are cut along dimension 0 by construction (a tuple of
        tensors, a DataLoader with the default collate), where (N, L, D) fed to a sequence-first module is the
        fault this check exists for."""
        if self._dim0_is_batch(session.target.data):
            return None
        seq_first = [m for m in session.model.modules()
                     if isinstance(m, (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                       nn.TransformerDecoderLayer, nn.Transformer))
                     and not getattr(m, "batch_first", False)]
        shapes = [tuple(leaf.shape) for _, leaf in trace.leaves] + trace.int_shapes
        if not seq_first or not shapes or len(shapes[0]) < 2 or shapes[0][1] < 2 or shapes[0][1] == n:
            return None
        m = shapes[0][1]
        leaves = [(name, leaf, 1) for name, leaf in trace.leaves if leaf.ndim >= 2 and leaf.shape[1] == m]
        outs = []
        for _, t in named_tensors(outputs, "out"):
            if not (t.is_floating_point() and t.requires_grad and t.ndim):
                continue
            if t.ndim >= 2 and t.shape[1] == m:
                outs.append((t, 1))
            elif t.shape[0] % m == 0 and t.shape[0] // m == n:  # (L*N, ...) from .view(-1, V): time-major
                outs.append((t.reshape(n, m, *t.shape[1:]), 1))
        records = [(name, kind, t, 1) for name, kind, t in trace.records if t.ndim >= 2 and t.shape[1] == m]
        if not leaves or not outs:
            return None
        probes = self._chart(m, leaves, outs, records, session)
        if not probes or max(p.leak for p in probes) > self.pass_leak:
            return None
        return probes, m, leaves, outs, records

    @staticmethod
    def _dim0_is_batch(data) -> bool:
        from torch.utils.data import DataLoader
        from torch.utils.data._utils.collate import default_collate

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
    def _batch(session):
        batch = session.batch(0)
        if (batch_size_of(batch) or 0) < 2 and len(session.pool) > 1:
            try:
                batch = concat_batches([session.batch(0), session.batch(1)])
            except Exception:
                pass
        return batch

    @staticmethod
    def _batch_size(trace: _Traced, targets, n_batch: int) -> Optional[int]:
        """The number of examples: the inputs' leading dimension, or the targets' when the inputs are
        batch-second (L, N, F); flattened targets (N*L,) keep the inputs' count."""
        shapes = [tuple(l.shape) for _, l in trace.leaves] + trace.int_shapes
        n_in = shapes[0][0] if shapes else n_batch
        n_t = targets.shape[0] if isinstance(targets, torch.Tensor) and targets.ndim else None
        if n_t is None or n_t == n_in:
            return n_in
        if shapes and any(n_t in s[1:] for s in shapes) and n_t not in (s[0] for s in shapes):
            return n_t
        return n_in

    @staticmethod
    def _outputs(outputs, n: int) -> tuple[list[tuple[torch.Tensor, int]], bool]:
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
        picks = [0, n // 2, n - 1, n // 4, (3 * n) // 4]
        return sorted(dict.fromkeys(picks[: max(1, self.probes)]))

    @staticmethod
    def _probe(i, n, leaves, outs, records, session) -> Optional[_Probe]:
        gen = torch.Generator().manual_seed(session.seed + i)
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
        relative = (total / peak).tolist()
        leak = max(v for j, v in enumerate(relative) if j != i)
        at = {}
        for g, (name, _, _, d) in zip(grads[len(leaves):], records):
            if g is None:
                continue
            r = _per_example(g, d, n).cpu()
            top = float(r.max())
            at[name] = 0.0 if top == 0 else float(torch.cat([r[:i], r[i + 1:]]).max() / top)
        return _Probe(i, relative, leak, at)

    # -- verdict ------------------------------------------------------------------------------------------
    def _verdict(self, probes, n, leaves, outs, flattened, model, records, notes: tuple = ()):
        worst = max(probes, key=lambda p: p.leak)
        leak = worst.leak
        status = "pass" if leak <= self.pass_leak else "warn" if leak <= self.fail_leak else "fail"
        leaked = [j for j, v in enumerate(worst.relative) if j != worst.example and v > self.pass_leak]
        own_zero = worst.relative[worst.example] <= self.pass_leak
        via = ", ".join(name for name, _, _ in leaves[:4])
        metrics = {
            "leak": leak, "leak_per_probe": {str(p.example): p.leak for p in probes}, "probes": [p.example for p in probes],
            "batch_size": n, "leaked_examples": len(leaked), "leaked_fraction": len(leaked) / (n - 1),
            "own_gradient_zero": own_zero, "gradient_at": [name for name, _, _ in leaves],
            "output_batch_dims": [d for _, d in outs], "output_shapes": [list(t.shape) for t, _ in outs],
            "flattened_outputs": flattened,
        }
        after, before = self._locate(worst, records) if status != "pass" else (None, None)
        metrics.update(mixing_after=after, mixing_before=before)
        tables = [Table("examples", f"Gradient on each example from example {worst.example}'s outputs",
                        ("example", "relative_gradient", "probed"),
                        [(j, v, j == worst.example) for j, v in enumerate(worst.relative)])]
        if worst.records:
            tables.append(Table("modules", f"Cross-example gradient at each module's output (probe {worst.example}, "
                                           f"in execution order)", ("module", "type", "leak"),
                                [(name, kind, worst.records.get(name)) for name, kind, _, _ in records
                                 if name in worst.records]))
        plots = (Plot("relative_gradient", "Gradient reaching each example from one example's outputs", "line",
                      tuple(Series(f"outputs of example {p.example}", tuple(range(n)),
                                   [max(v, 1e-16) for v in p.relative]) for p in probes),
                      x_label="example j in the batch", y_label="max |grad_j| / max |grad| (log)", log_y=True,
                      markers=(Marker(f"pass <= {self.pass_leak:g}", self.pass_leak, "y"),
                               Marker(f"fail > {self.fail_leak:g}", self.fail_leak, "y"))),)
        if status == "pass":
            summary = (f"no gradient crosses examples: leak {leak:.2g} <= {self.pass_leak:g} over {len(probes)} "
                       f"probed examples of {n} (gradient at {via})")
            return self.result(status, summary, metrics=metrics, tables=tuple(tables), plots=plots,
                               notes=self._notes(flattened) + tuple(notes))
        kinds = {name: kind for name, kind, _, _ in records}
        where = self._where(after, before, kinds)
        summary = (f"example {worst.example}'s outputs depend on {len(leaked)} of {n - 1} other examples (cross-"
                   f"example gradient {leak:.3g} of the largest)" + (f", mixed {where}" if where else "")
                   + ("; its own input does not reach them" if own_zero else ""))
        advice = self._advice(leaked, n, own_zero, where, model, after, before)
        return self.result(status, summary, metrics=metrics, advice=tuple(advice), tables=tuple(tables),
                           plots=plots, notes=self._notes(flattened))

    def _locate(self, probe: _Probe, records) -> tuple[Optional[str], Optional[str]]:
        """The last traced module output that still depends on other examples, and the first after it that no
        longer does: the batch is mixed between them."""
        order = [name for name, _, _, _ in records if probe.records.get(name) is not None]
        leaky = [k for k, name in enumerate(order) if probe.records[name] > self.pass_leak]
        if not order:
            return None, None
        if not leaky:
            return "the model's input", order[0]
        k = leaky[-1]
        after = order[k]
        before = next((name for name in order[k + 1:] if probe.records[name] <= self.pass_leak), None)
        return after, before

    @staticmethod
    def _where(after, before, kinds) -> str:
        name = lambda m: f"`{m}` ({kinds[m]})" if m in kinds else f"`{m}`"  # noqa: E731
        if after == "the model's input":
            return f"between the model's input and {name(before)}"
        if after and before:
            return f"after {name(after)} and at or before {name(before)}"
        if after:
            return f"after {name(after)}"
        return ""

    @staticmethod
    def _advice(leaked, n, own_zero, where, model, after, before) -> list[str]:
        advice = []
        norms = [name for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]
        if norms and (before in norms or not where):
            advice.append(f"{', '.join(norms[:4])}: BatchNorm with track_running_stats=False normalizes with the "
                          f"batch's statistics even in eval mode, so every prediction depends on the rest of the "
                          f"batch; set track_running_stats=True or use LayerNorm/GroupNorm.")
        seq = [name for name, m in model.named_modules()
               if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                                 nn.RNNBase)) and not getattr(m, "batch_first", True)]
        if len(leaked) >= max(1, (n - 1) * 0.9) and not own_zero:
            advice.append(f"Every other example reaches example i's outputs ({len(leaked)} of {n - 1}): a statistic "
                          f"over the batch dimension (x - x.mean(0), a softmax or norm over dim 0) or attention/"
                          f"recurrence running along the batch"
                          + (f" ({', '.join(seq[:3])} expect (L, N, D) unless batch_first=True)" if seq else "")
                          + (f"; look {where}" if where else "") + ".")
        else:
            advice.append("Some examples leak into others: a view/reshape mixes the batch dimension with another one "
                          "(x.view(-1, N) or x.view(L, N, D) on an (N, L, D) tensor, transpose then view). Reorder "
                          "dimensions with permute/transpose and reshape only adjacent dimensions in order "
                          "(x.reshape(N, -1), x.flatten(1))" + (f"; look {where}" if where else "") + ".")
        advice.append("If your examples are meant to interact (contrastive in-batch losses, set models over the "
                      "batch), this test does not apply: --ignore batch_independence.")
        return advice

    @staticmethod
    def _notes(flattened: bool) -> tuple[str, ...]:
        return ("outputs with a leading dimension of N*k were read as (N, k, ...): example-major, as "
                ".view(-1, C) on (N, L, C) gives",) if flattened else ()
