"""nonfinite: where does the first NaN or Inf appear: data, a forward op, the loss, the backward, the update?"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..analysis import fmt
from ..analysis.batches import dense_values, float_tensors
from ..analysis.status import Status
from ..distributed import averages_itself
from ..instruments.hooks import HookSet, ModuleStack
from ..passes.stepper import Stepper, closure_optimizer
from ..passes.train_probe import TRAIN_STEPS, TrainProbe
from ..report import CheckResult, Marker, Plot, Series, Table
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session

#: at most this many parameter names in a location, this many op inputs described
_NAMES, _OP_INPUTS = 8, 4
#: the forward ops a replayed step remembers that produced NaN/Inf from finite inputs
_CANDIDATES = 64
#: the growth before a non-finite step that says training diverged first: loss x10 or gradient norm x100
_LOSS_GROWTH, _NORM_GROWTH = 10, 100
#: where ops outside the model's modules are placed: the target's loss, or everything a step function runs
_LOSS_FN, _STEP_FN = "loss_fn", "your step function (outside the model's modules)"
_FORWARD_FN = "your forward function (outside the model's modules)"
#: the calls that run a backward pass, which a watched step follows node by node
_BACKWARDS = (torch.Tensor.backward, torch.autograd.backward)


# -- what a tensor holds ------------------------------------------------------------------------------------
def tensor_stats(t: torch.Tensor) -> dict:
    """What a tensor holds, for messages: shape, finite min/max, counts of NaN, Inf and zeros."""
    t = t.detach()
    finite = torch.isfinite(t)
    vals = t[finite].float()
    return {"shape": list(t.shape), "min": float(vals.min()) if vals.numel() else None,
            "max": float(vals.max()) if vals.numel() else None, "nan": int(torch.isnan(t).sum()),
            "inf": int(torch.isinf(t).sum()), "zeros": int((t == 0).sum()), "numel": t.numel()}


def _stats_text(s: Mapping) -> str:
    rng = f"min {fmt.num(s['min'])}, max {fmt.num(s['max'])}" if s["min"] is not None else "no finite value"
    extra = "".join(f", {s[k]} {k}" for k in ("nan", "inf", "zeros") if s[k])
    return f"{tuple(s['shape'])} {rng}{extra}"


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for _, t in tensors)


def _nonfinite_params(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def _op_name(func) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)
    module = getattr(func, "__module__", "") or ""
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"F.{name.rpartition('.')[2]}"
    if name.startswith("_VariableFunctionsClass.") or name.startswith("_TensorBase."):
        name = name.rpartition(".")[2]
        return f"torch.{name}" if not name.startswith("_TensorBase") else name
    return name if "." in name else f"torch.{name}"


def _input_name(path: str) -> str:
    """'[0][1]' -> 'arg 1', "[1]['dim']" -> 'dim' (the path of an op input inside (args, kwargs))."""
    if path.startswith("[0]"):
        rest = path[3:]
        head, _, tail = rest[1:].partition("]")
        return f"arg {head}{tail}" if rest else "arg"
    return path[3:].strip("[]'")


@dataclass(frozen=True)
class Origin:
    """Where a non-finite value first appeared in a replayed step."""

    phase: str  # data, forward, loss, backward, update
    step: int
    where: str  # module (or 'loss_fn', a parameter list, a batch path)
    op: str = ""
    call: Optional[int] = None
    inputs: tuple = ()  # (name, stats) of the op's inputs
    inputs_finite: bool = True
    detail: str = ""


# -- watching every op of one step --------------------------------------------------------------------------
class FiniteWatch(TorchFunctionMode):
    """Checks every torch op's output for NaN/Inf (one host sync per op: only for the replayed step).

    Remembers the first op whose output is non-finite, with the module executing it and its inputs, and the
    op and module that created each autograd node, so the backward pass can be attributed too. Enter it once:
    a torch function mode entered twice sees every op twice.
    """

    def __init__(self, stack: ModuleStack, outside: "str | Callable[[], str]" = _LOSS_FN):
        super().__init__()
        self.stack = stack
        self.outside = outside
        self.paused = False  # ops run unwatched (an optimizer step, the watcher's own reads)
        #: called instead of a backward call (``func, args, kwargs``), to follow it node by node
        self.on_backward: Optional[Callable[[Any, tuple, dict], Any]] = None
        self.first: Optional[dict] = None  # the first op with a non-finite output
        self.candidates: list[dict] = []  # every op producing a non-finite output from finite inputs, in order
        self.ops = 0
        self.first_module: Optional[tuple[str, int, int]] = None  # innermost module first returning NaN/Inf
        self.nodes: dict = {}
        self._starts: list[int] = []
        self.hooks = HookSet()

    def module_hooks(self, model: nn.Module) -> HookSet:
        """Note the op counter around every module call, to know which ops ran inside the first module whose
        output is non-finite: a masked -inf or a NaN discarded by torch.where elsewhere is not the culprit.
        Returns the hooks, a context manager that removes them."""
        for module in {id(m): m for m in model.modules()}.values():
            self.hooks.add(module.register_forward_pre_hook(self._pre))
            self.hooks.add(module.register_forward_hook(self._post))
        return self.hooks

    def _pre(self, module, args):
        self._starts.append(self.ops)

    def _post(self, module, args, output):
        start = self._starts.pop() if self._starts else 0
        if self.first_module is None:
            tensors = float_tensors(output)
            if tensors and not _all_finite(tensors):
                self.first_module = (self.stack.names.get(module, type(module).__name__), start, self.ops)

    def culprit(self) -> Optional[dict]:
        """The first candidate op inside the first module that returned NaN/Inf; else the first candidate."""
        if self.first_module is not None:
            _, start, end = self.first_module
            inside = [c for c in self.candidates if start <= c["index"] < end]
            if inside:
                return min(inside, key=self._priority)
        return min(self.candidates, key=self._priority) if self.candidates else self.first

    @staticmethod
    def _priority(c: dict) -> tuple:
        """A NaN before an Inf, and an Inf written on purpose (masked_fill(-inf), full(inf)) last."""
        intended = any(k in c["op"] for k in ("fill", "full", "where", "tensor"))
        return intended, not c["nan"], c["index"]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.paused:
            return func(*args, **(kwargs or {}))
        if self.on_backward is not None and func in _BACKWARDS:
            return self.on_backward(func, args, kwargs or {})
        out = func(*args, **(kwargs or {}))
        tensors = float_tensors(out)
        if not tensors:
            return out
        self.ops += 1
        where = self.stack.current or (self.outside() if callable(self.outside) else self.outside)
        for _, t in tensors:
            if t.grad_fn is not None and t.grad_fn not in self.nodes:
                self.nodes[t.grad_fn] = (_op_name(func), where)
        if not _all_finite(tensors):
            self._record(func, args, kwargs or {}, tensors, where)
        return out

    def _record(self, func, args, kwargs, tensors, where: str) -> None:
        inputs = float_tensors((args, kwargs))
        finite_in = _all_finite(inputs)
        if self.first is None or (finite_in and len(self.candidates) < _CANDIDATES):
            record = {"op": _op_name(func), "where": where, "call": self.stack.calls.get(where),
                      "inputs": tuple((_input_name(p), tensor_stats(t)) for p, t in inputs[:_OP_INPUTS]),
                      "inputs_finite": finite_in, "index": self.ops - 1,
                      "nan": any(bool(torch.isnan(t).any()) for _, t in tensors)}
            self.first = self.first or record
            if finite_in:
                self.candidates.append(record)


def watch_forward(model: nn.Module, run: Callable[[], Any]) -> tuple[FiniteWatch, Any]:
    """``run()`` (a forward and loss) under one :class:`FiniteWatch` and its module hooks; the watch and the
    value ``run`` returned."""
    stack = ModuleStack(model)
    watch = FiniteWatch(stack)
    with stack, watch.module_hooks(model), watch:
        out = run()
    return watch, out


def _graph_nodes(roots: list) -> list:
    seen, todo, out = set(), list(roots), []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        out.append(node)
        todo.extend(n for n, _ in getattr(node, "next_functions", ()))
    return out


def hook_graph(roots: list, nodes: Mapping, step: int, found: list) -> HookSet:
    """A hook on every node of the graphs below ``roots`` that appends to ``found`` the first node turning finite
    incoming gradients into non-finite ones; returns the hooks (a context manager that removes them)."""

    def hook_for(node):
        def hook(grad_inputs, grad_outputs):
            if found:
                return None
            incoming = [("grad_out", g) for g in grad_outputs if isinstance(g, torch.Tensor)]
            outgoing = [("grad_in", g) for g in grad_inputs if isinstance(g, torch.Tensor)]
            if _all_finite(incoming) and not _all_finite(outgoing):
                op, where = nodes.get(node, ("", "?"))
                found.append(Origin("backward", step, where, f"{node.name()} (backward of {op or '?'})",
                                    inputs=tuple((f"incoming gradient {i}", tensor_stats(g))
                                                 for i, (_, g) in enumerate(incoming[:2]))))
            return None
        return hook

    hooks = HookSet()
    for node in _graph_nodes(roots):
        hooks.add(node.register_hook(hook_for(node)))
    return hooks


# -- one replayed step, watched the user's way --------------------------------------------------------------
class _Found(BaseException):
    """Ends a watched step at its origin. A BaseException, so that a broad ``except Exception`` in a user's step
    function cannot swallow it."""

    def __init__(self, origin: Origin):
        super().__init__(origin.phase)
        self.origin = origin


def _raise(origin: Optional[Origin]) -> None:
    if origin is not None:
        raise _Found(origin)


class StepWatch:
    """One replayed step, run by the Stepper as the user's step runs, under one :class:`FiniteWatch`.

    Watched op by op: the forward and loss of every micro-batch (under the step's autocast), of a closure
    optimizer's first evaluation, and everything a step function runs outside its optimizers' steps; every
    backward call node by node. The gradients are read where the user's step reads them (unscaled, before
    clipping), and the parameters after each optimizer step. Not watched: clipping and the optimizer's own ops
    (their result is the parameters, checked), a closure optimizer's later evaluations; with a GradScaler,
    non-finite gradients are the steps the scaler skips, as the probe counts them.
    """

    def __init__(self, session: "Session", stepper: Stepper, step: int):
        self.model, self.stepper, self.step = session.model, stepper, step
        self.stack = ModuleStack(self.model)
        code = session.code
        self.watch = FiniteWatch(self.stack, outside=_STEP_FN if stepper.custom is not None else
                                 lambda: _FORWARD_FN if code.calling == "forward" else _LOSS_FN)
        self.watch.on_backward = self._backward
        self.found: list[Origin] = []  # backward nodes that made gradients non-finite
        self.settled = False  # past the gradients of a declared step (or a closure's first evaluation)
        self.backwards = 0  # backward calls so far: the forward before each is checked there
        self.gmax = 0.0

    def run(self, batches: list, skip: bool) -> Optional[Origin]:
        """The step; the first place a non-finite value appeared, or None. ``skip``: the probe skipped it."""
        bad = _nonfinite_params(self.model)
        if bad:
            return Origin("update", self.step - 1, ", ".join(bad[:_NAMES]),
                          detail="parameters were already non-finite before this step")
        try:
            with self.stack, self.watch.module_hooks(self.model), self._optimizer_hooks(), self.watch:
                self.stepper.step(batches, lambda loss, params: self._on_grads(params, skip))
            # ops after the last backward (clipping, a scaler) are no forward: the forward was checked before it
            return (None if self.backwards else self._forward_origin()) or self._update_origin()
        except _Found as found:
            return found.origin

    def _optimizer_hooks(self) -> HookSet:
        """Each optimizer step unwatched (a closure optimizer's evaluations run inside it), its result checked."""
        hooks, opt = HookSet(), self.stepper.optimizer
        for o in getattr(opt, "optimizers", (opt,)):
            if not closure_optimizer(o):
                hooks.add(o.register_step_pre_hook(lambda *_: setattr(self.watch, "paused", True)))
            hooks.add(o.register_step_post_hook(self._after_update))
        return hooks

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """The watcher's own reads, unwatched."""
        paused, self.watch.paused = self.watch.paused, True
        try:
            yield
        finally:
            self.watch.paused = paused

    def _backward(self, func, args: tuple, kwargs: dict) -> Any:
        """A backward call of the step: the forward before it first, then every node of its graph."""
        _raise(self._forward_origin())
        self.backwards += 1
        roots = args[0] if args else kwargs.get("tensors", kwargs.get("self"))
        roots = [roots] if isinstance(roots, torch.Tensor) else list(roots)
        with hook_graph([r.grad_fn for r in roots], self.watch.nodes, self.step, self.found):
            return func(*args, **kwargs)

    def _on_grads(self, params: list, skip: bool) -> bool:
        """Where the user's step reads the gradients: a non-finite one is the origin (unless a GradScaler skips
        the step). Returns True to skip the step as the probe did."""
        with self._quiet():
            if self.stepper.scaler is None:
                _raise(self.found[0] if self.found else self._gradient_origin(params))
            grads = [dense_values(p.grad.detach()) for p in params if p.grad is not None and p.grad.numel()]
            self.gmax = max([self.gmax] + [float(g.abs().max()) for g in grads if g.numel()])
        self.settled = self.stepper.custom is None
        self.watch.paused = self.watch.paused or self.settled
        return skip and self.stepper.scaler is None

    def _after_update(self, optimizer, args, kwargs) -> None:
        with self._quiet():
            _raise(self._update_origin())
        self.watch.paused = self.settled

    def _forward_origin(self) -> Optional[Origin]:
        f = self.watch.culprit()
        if f is None:
            return None
        phase = "loss" if f["where"] == _LOSS_FN else "forward"
        return Origin(phase, self.step, f["where"], f["op"], f["call"], f["inputs"], f["inputs_finite"])

    def _gradient_origin(self, params: list) -> Optional[Origin]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        bad = [names.get(id(p), "?") for p in params
               if p.grad is not None and not bool(torch.isfinite(dense_values(p.grad.detach())).all())]
        return Origin("backward", self.step, ", ".join(bad[:_NAMES]), detail="non-finite gradients of parameters") \
            if bad else None

    def _update_origin(self) -> Optional[Origin]:
        bad = _nonfinite_params(self.model)
        clipped = " before clipping" if any(p.startswith("clip") for p in self.stepper.kept()) else ""
        return Origin("update", self.step, ", ".join(bad[:_NAMES]),
                      detail=f"finite gradients (max |g| {fmt.num(self.gmax)}{clipped}) made these parameters "
                             f"non-finite") if bad else None


# -- measured data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadField:
    """A batch field holding NaN/Inf: the batch index, its path, what it holds, whether it is a target."""

    batch: int
    path: str
    stats: Mapping
    target: bool


@dataclass(frozen=True)
class ProbeFacts:
    """What the check reads of the shared training probe."""

    steps: int
    lr: Optional[float]
    losses: tuple[float, ...]
    grad_norm: tuple[float, ...]
    skipped_steps: tuple[int, ...] = ()
    precision: str = "float32"

    @classmethod
    def of(cls, probe: TrainProbe) -> "ProbeFacts":
        return cls(probe.steps, probe.lr, tuple(probe.losses), tuple(probe.grad_norm), tuple(probe.skipped_steps),
                   probe.precision)


@dataclass(frozen=True)
class NonFiniteMeasured:
    """The data scan, the probe's first non-finite step (step, 'loss' | 'gradient' | 'parameters') and, when the
    data is finite and the probe saw one, the origin the replay found (None: not reproduced)."""

    probe: ProbeFacts
    event: Optional[tuple[int, str]]
    bad_data: tuple[BadField, ...] = ()
    pool_size: int = 1
    origin: Optional[Origin] = None
    step: tuple[str, ...] = ()  # the parts of the user's step the replay ran
    unwatched: tuple[str, ...] = ()  # what the replay's watched steps did not watch op by op
    not_replayed: str = ""  # why the replay did not watch the steps ('' when it did)


class Replay(NamedTuple):
    """What the replay found, and how it ran."""

    origin: Optional[Origin] = None
    step: tuple[str, ...] = ()
    unwatched: tuple[str, ...] = ()
    not_replayed: str = ""


def masked_targets(m: NonFiniteMeasured) -> bool:
    """Only the targets hold NaN/Inf, and the probe trained finitely on batches that hold them: the loss masks
    them (missing labels)."""
    if not m.bad_data or m.event is not None or not all(b.target for b in m.bad_data):
        return False
    seen = {step % max(m.pool_size, 1) for step in range(m.probe.steps)}
    return any(b.batch in seen for b in m.bad_data)


@dataclass
class NonFinite(Check):
    id = "nonfinite"
    title = "First NaN or Inf"
    constants = {"train_steps": TRAIN_STEPS, "loss_growth": _LOSS_GROWTH, "norm_growth": _NORM_GROWTH}
    what = """Scans every batch of the pool for NaN/Inf, and reads the shared training probe ({train_steps} steps),
    which records on the device whether the loss, the total gradient norm and every parameter are finite at each
    step (no extra host sync, no anomaly mode). When the probe saw a non-finite value, the check replays the same
    steps from the user's state (same batches, same seed, the user's step as the probe ran it: clipping,
    accumulation, autocast, GradScaler, scheduler, closure or step function) and, from the failing step on (and
    up to {replay_extra} steps past it), checks the output of every torch op (a torch function mode) and of every
    backward node: it names the first op and module that produced a NaN/Inf in the forward pass (with the
    statistics of its inputs), the loss, the first backward node that turned finite gradients into non-finite
    ones, or the parameters that an optimizer step made non-finite (a step function is watched whole, but for the
    ops inside its optimizers' steps, whose result, the parameters, is checked after each). When the loss grew
    {loss_growth}x or the gradient norm {norm_growth}x before that step, training diverged first. NaN/Inf in the
    targets that the loss masks (the probe stays finite on batches that hold them) pass with a note."""
    why = """A single NaN spreads to every weight within a step and the run is lost; the place where it first
    appears (log or sqrt of a negative number, a division by zero, an overflowing exp, a learning rate that blows
    the weights up, a NaN in the data) is the bug to fix, and it is hard to find once everything is NaN.
    torch.autograd.detect_anomaly finds it too but slows every step several times over; here healthy runs pay
    nothing. With float16 mixed precision, a step whose gradients overflow is skipped by torch.amp.GradScaler,
    which then lowers its scale: that is not a failure, and the probe skips such steps the same way (a warning
    when more than {skipped_warn:.0%} of the steps are skipped)."""
    todo = """Guard the operation that produced it (clamp before log/sqrt/pow, add an epsilon to denominators,
    use log_softmax/logsumexp/BCEWithLogitsLoss instead of log(softmax)/log(sigmoid)); clean the data (the report
    names the batch and field); lower the learning rate and clip gradients when the weights blow up; in float16
    use a GradScaler or bfloat16."""
    sources = (
        "PyTorch docs, torch.autograd.detect_anomaly: 'This mode should be enabled only for debugging as the "
        "different tests will slow down your program execution'",
        "PyTorch docs, Automatic Mixed Precision: GradScaler skips optimizer.step() when the unscaled gradients "
        "contain infs or NaNs and reduces the scale",
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019); CS231n babysitting: a loss of NaN means a "
        "too-high learning rate or a numerical bug",
    )

    skipped_warn: float = threshold(0.5, "with float16 mixed precision, warn when more than this fraction of the "
                                         "probe's steps would be skipped by a GradScaler (overflow at every scale)")
    replay_extra: int = threshold(3, "steps past the probe's first non-finite step that the replay also watches "
                                     "(in case a nondeterministic kernel shifts it)")

    # -- measure ------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> NonFiniteMeasured:
        bad_data = session.ranks.first_found(self._scan_data(session) or None) or ()  # under torchrun: any rank's
        probe = session.evidence("train_probe")
        event = probe.first_nonfinite()
        replay = self._replay(session, probe, event[0]) if event is not None and not bad_data else Replay()
        return NonFiniteMeasured(ProbeFacts.of(probe), event, bad_data, len(session.pool), *replay)

    @classmethod
    def _scan_data(cls, session: "Session") -> tuple[BadField, ...]:
        return tuple(BadField(i, path, tensor_stats(t), cls._is_target(session, path))
                     for i, batch in enumerate(session.pool) for path, t in float_tensors(batch, "batch")
                     if not bool(torch.isfinite(t).all()))

    @staticmethod
    def _is_target(session: "Session", path: str) -> bool:
        if session.target.forward is not None:
            return any(k in path for k in ("label", "target", "'y'"))
        n = len(session.pool[0]) if isinstance(session.pool[0], (list, tuple)) else 0
        return n > 0 and path.startswith(f"batch[{n - 1}]")

    def _replay(self, session: "Session", probe: TrainProbe, first: int) -> Replay:
        """Train again from the user's state to ``first`` the probe's way (the user's step, the same batches,
        the steps the probe skipped skipped), then watch each step until a non-finite value."""
        session.reset()
        session.model.train()
        stepper = Stepper(session, session.make_optimizer())
        k, last = stepper.accumulate, min(first + self.replay_extra, probe.steps - 1)
        facts = (tuple(stepper.kept()), _unwatched(stepper))
        if session.ranks.active and averages_itself(session.model):
            return Replay(None, *facts, "under torchrun the steps of a DDP or FSDP model are collective, and the "
                                        "replay stops inside a step: it is not run there; run the target in one "
                                        "process to find the op")
        origin = None
        for step in range(last + 1):
            batches = [session.batch(step * k + j) for j in range(k)]
            skip = step in probe.skipped_steps
            if step < first:
                stepper.step(batches, lambda loss, params, skip=skip: skip and stepper.scaler is None)
                continue
            stepper.local()  # under torchrun: a watched step may stop mid-way, so each rank watches its own
            origin = StepWatch(session, stepper, step).run(batches, skip)
            if origin is not None:
                break
        return Replay(session.ranks.first_found(origin), *facts)

    # -- judge --------------------------------------------------------------------------------------
    def judge(self, m: NonFiniteMeasured) -> Judgment:
        if m.bad_data:
            return self._masked_judgment(m) if masked_targets(m) else self._data_judgment(m)
        if m.event is None:
            return self._finite_judgment(m.probe)
        return self._origin_judgment(m.origin, m.event, m.probe, m.not_replayed)

    @staticmethod
    def _masked_judgment(m: NonFiniteMeasured) -> Judgment:
        b = m.bad_data[0]
        return Judgment(Status.PASS, f"no NaN/Inf in the loss, gradients or parameters over {m.probe.steps} probe "
                                     f"steps; the targets hold NaN/Inf ({fmt.plural(len(m.bad_data), 'batch field')}"
                                     f", first batch {b.batch} {b.path}) that the loss leaves out (missing labels)")

    @staticmethod
    def _data_judgment(m: NonFiniteMeasured) -> Judgment:
        b = m.bad_data[0]
        part = "targets" if b.target else "inputs"
        nan, inf = b.stats["nan"], b.stats["inf"]
        return Judgment(
            Status.FAIL, f"the data holds NaN/Inf: {fmt.plural(len(m.bad_data), 'batch field')}, first batch "
                         f"{b.batch} {part} {b.path} ({nan} NaN, {inf} Inf)",
            (f"Fix the data pipeline: batch {b.batch}, {part} {b.path} holds {nan} NaN and {inf} Inf values "
             f"(missing values, a division by a zero std in normalization, a log of 0). Filter or impute them "
             f"(torch.nan_to_num, dropping rows) before training.",))

    def _finite_judgment(self, probe: ProbeFacts) -> Judgment:
        skipped = probe.skipped_steps
        if not skipped:
            return Judgment(Status.PASS, f"no NaN/Inf: loss, gradients and parameters finite over all "
                                         f"{probe.steps} probe steps; data finite")
        if len(skipped) / max(probe.steps, 1) > self.skipped_warn:
            return Judgment(Status.WARN, f"float16 gradients overflow at {len(skipped)} of {probe.steps} steps "
                                         f"(skipped as a GradScaler would)",
                            ("Most steps overflow float16 even without loss scaling: use bfloat16 autocast, or find "
                             "the layer whose activations exceed 65504 (normalize it).",))
        return Judgment(Status.PASS, f"no NaN/Inf beyond {len(skipped)} float16 overflow step(s) a GradScaler "
                                     f"skips; loss and parameters finite over {probe.steps} steps")

    def _origin_judgment(self, origin: Optional[Origin], event: tuple[int, str], probe: ProbeFacts,
                         not_replayed: str = "") -> Judgment:
        step, kind = event
        if origin is None and not_replayed:
            return Judgment(Status.FAIL, f"non-finite {kind} at step {step} of the probe; not localised: "
                                         f"{not_replayed}", ("Run the target in one process (babysit check without "
                                                             "torchrun) to find the op that produced it.",))
        if origin is None:
            return Judgment(Status.FAIL, f"non-finite {kind} at step {step} of the probe; the replay did not "
                                         f"reproduce it (a nondeterministic kernel)",
                            ("Re-run with torch.use_deterministic_algorithms(True), or with "
                             f"torch.autograd.detect_anomaly() around the first {step + 1} steps, to find the op.",))
        if origin.phase in ("forward", "loss"):
            return self._forward_judgment(origin, probe)
        inputs = "; ".join(f"input {p}: {_stats_text(s)}" for p, s in origin.inputs)
        if origin.phase == "backward":
            return Judgment(
                Status.FAIL, f"first NaN/Inf at step {origin.step} in the backward pass: {origin.op or 'gradients'} "
                             f"in {origin.where} (forward and loss finite)",
                (f"The forward pass is finite but the backward of {origin.op or 'an op'} in {origin.where} produced "
                 f"NaN/Inf{' (' + inputs + ')' if inputs else ''}: typical of sqrt or pow at 0, norms of zero "
                 f"vectors, acos/asin at +-1, or division by a value near 0. Add an epsilon "
                 f"(torch.sqrt(x + 1e-12)), or clamp. In float16, use a GradScaler or bfloat16.",))
        return Judgment(Status.FAIL, f"first NaN/Inf at step {origin.step} after the optimizer step: parameters "
                                     f"{origin.where} became non-finite",
                        (f"{origin.detail}. The learning rate ({fmt.lr(probe.lr)}) is far too large for these "
                         f"weights, or the gradient explodes: lower the learning rate, clip the gradient norm (see "
                         f"grad_norms).",))

    @staticmethod
    def _forward_judgment(origin: Origin, probe: ProbeFacts) -> Judgment:
        """A forward op (or the loss) made the first NaN/Inf: from finite inputs (the op is the bug, or an
        overflow after divergence), or from non-finite ones (the batch or the parameters)."""
        call = f" (call {origin.call})" if origin.call else ""
        inputs = "; ".join(f"input {p}: {_stats_text(s)}" for p, s in origin.inputs)
        growth = growth_advice(probe, origin.step)
        place = "in the loss" if origin.phase == "loss" else "in the forward pass"
        head = f"first NaN/Inf at step {origin.step} {place}: {origin.op} in {origin.where}{call}"
        if origin.inputs_finite:
            guard = ("an overflow of values grown huge" if growth else "Guard it: clamp the input of "
                     "log/sqrt/pow into its domain, add an epsilon to denominators, use log_softmax/logsumexp "
                     "instead of log(softmax(x))/log(sum(exp(x))).")
            advice = (growth, f"{origin.op} in {origin.where} produced NaN/Inf from finite inputs ({inputs}): {guard}")
            return Judgment(Status.FAIL, f"{head}, from finite inputs", tuple(a for a in advice if a))
        advice = (f"{origin.op} in {origin.where}: {inputs}.", growth)
        return Judgment(Status.FAIL, f"{head} received non-finite inputs (from the batch or the parameters)",
                        tuple(a for a in advice if a))

    # -- present ------------------------------------------------------------------------------------
    def present(self, m: NonFiniteMeasured, judgment: Judgment) -> CheckResult:
        probe, event = m.probe, m.event
        metrics = {"steps": probe.steps, "first_step": event[0] if event else None,
                   "first_kind": event[1] if event else None, "bad_batches": len(m.bad_data),
                   "skipped_steps": len(probe.skipped_steps), "precision": probe.precision}
        tables, notes = (), ()
        if m.bad_data:
            tables = (self._data_table(m.bad_data),)
            b = m.bad_data[0]
            if masked_targets(m):
                metrics.update(phase=None, where=None,
                               nonfinite_targets=sum(x.stats["nan"] + x.stats["inf"] for x in m.bad_data))
                notes = (self._masked_note(b.path),)
            else:
                metrics.update(phase="data", where=f"batch {b.batch} {b.path}")
        elif event is None:
            notes = (self._skipped_note(probe),) if probe.skipped_steps else ()
        else:
            metrics.update(self._origin_metrics(m.origin))
            tables = (self._origin_table(m.origin),) if m.origin is not None and m.origin.inputs else ()
            notes = self._replay_notes(m)
        return self.result(judgment.status, judgment.summary, metrics=metrics, advice=judgment.advice,
                           tables=tables, plots=(self._plot(probe, event),), notes=notes)

    @staticmethod
    def _replay_notes(m: NonFiniteMeasured) -> tuple[str, ...]:
        notes = [f"the replay ran your step: {', '.join(m.step)}"] if m.step else []
        if m.unwatched:
            notes.append(f"not watched op by op in the replay: {'; '.join(m.unwatched)}")
        return tuple(notes)

    @staticmethod
    def _masked_note(path: str) -> str:
        return (f"targets {path} hold NaN/Inf values, yet the loss and the gradients stayed finite at every probe "
                f"step, on batches that hold them: the loss masks them, as is usual for missing labels in "
                f"multi-task data. Make sure every batch of the real data is masked the same way.")

    @staticmethod
    def _skipped_note(probe: ProbeFacts) -> str:
        skipped = probe.skipped_steps
        return (f"{len(skipped)} of {probe.steps} steps had non-finite gradients in float16 with a finite loss and "
                f"were skipped, as torch.amp.GradScaler skips them (steps {skipped[:10]})")

    @staticmethod
    def _origin_metrics(origin: Optional[Origin]) -> dict:
        if origin is None:
            return {"phase": None, "where": None, "op": None}
        return {"phase": origin.phase, "where": origin.where, "op": origin.op or None, "call": origin.call,
                "replay_step": origin.step}

    @staticmethod
    def _data_table(bad_data: tuple[BadField, ...]) -> Table:
        return Table("data", "Batches holding NaN/Inf", ("batch", "field", "shape", "nan", "inf"),
                     [(b.batch, b.path, "x".join(map(str, b.stats["shape"])), b.stats["nan"], b.stats["inf"])
                      for b in bad_data])

    @staticmethod
    def _origin_table(origin: Origin) -> Table:
        rows = [(p, "x".join(map(str, s["shape"])), s["min"], s["max"], s["nan"], s["inf"], s["zeros"])
                for p, s in origin.inputs]
        return Table("origin", f"Inputs of {origin.op} in {origin.where} at step {origin.step}",
                     ("input", "shape", "min", "max", "nan", "inf", "zeros"), rows)

    @staticmethod
    def _plot(probe: ProbeFacts, event: Optional[tuple[int, str]]) -> Plot:
        steps = tuple(range(len(probe.losses)))
        markers = (Marker(f"first non-finite ({event[1]})", event[0]),) if event else ()
        return Plot("loss", "Loss over the probe's steps (non-finite values are gaps)", "line",
                    (Series("loss", steps, probe.losses), Series("grad norm", steps, probe.grad_norm)),
                    x_label="step", y_label="value", log_y=True, markers=markers)


def _unwatched(stepper: Stepper) -> tuple[str, ...]:
    """What a watched step of this stepper does not watch op by op, for the report."""
    out = []
    if stepper.custom is not None:
        out.append("the ops inside your optimizers' steps (the parameters are checked after each step)")
    if stepper.closure:
        out.append("the closure optimizer's evaluations after the first in each watched step (the parameters are "
                   "checked after the step)")
    if stepper.scaler is not None:
        out.append("non-finite gradients under your GradScaler: the scaler skips those steps, as the probe did")
    return tuple(out)


def growth_advice(probe: ProbeFacts, step: int) -> str:
    """Advice when training diverged before ``step`` (the loss grew tenfold or the gradient norm a hundredfold):
    the op that overflowed is where it ended, not the cause; '' otherwise."""
    losses = [v for v in probe.losses[:step] if math.isfinite(v)]
    norms = [v for v in probe.grad_norm[:step] if math.isfinite(v)]
    if step == 0 or not losses:
        return ""
    if losses[-1] > _LOSS_GROWTH * losses[0] or (norms and norms[-1] > _NORM_GROWTH * norms[0]):
        return (f"Before step {step} the loss went from {fmt.num(losses[0])} to {fmt.num(losses[-1])} and the "
                f"gradient norm from {fmt.num(norms[0] if norms else None)} to "
                f"{fmt.num(norms[-1] if norms else None)}: training diverged first. Lower the learning rate "
                f"({fmt.lr(probe.lr)}) and clip the gradient norm; the op above is where the overflow ended.")
    return ""
