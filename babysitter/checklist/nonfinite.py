"""nonfinite: where does the first NaN or Inf appear: data, a forward op, the loss, the backward, the update?"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode

from ..instruments.hooks import HookSet, ModuleStack
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


# -- walking structures of tensors --------------------------------------------------------------------------
def float_tensors(obj: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a (nested) structure, with its path ('[0]', "['x']")."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)] if obj.is_floating_point() or obj.is_complex() else []
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in float_tensors(v, f"{path}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in float_tensors(v, f"{path}[{i}]")]
    return []


def tensor_stats(t: torch.Tensor) -> dict:
    """What a tensor holds, for messages: shape, finite min/max, counts of NaN, Inf and zeros."""
    t = t.detach()
    finite = torch.isfinite(t)
    vals = t[finite].float()
    return {"shape": list(t.shape), "min": float(vals.min()) if vals.numel() else None,
            "max": float(vals.max()) if vals.numel() else None, "nan": int(torch.isnan(t).sum()),
            "inf": int(torch.isinf(t).sum()), "zeros": int((t == 0).sum()), "numel": t.numel()}


def _stats_text(s: dict) -> str:
    rng = f"min {s['min']:.4g}, max {s['max']:.4g}" if s["min"] is not None else "no finite value"
    extra = "".join(f", {s[k]} {k}" for k in ("nan", "inf", "zeros") if s[k])
    return f"{tuple(s['shape'])} {rng}{extra}"


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for _, t in tensors)


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


@dataclass
class Origin:
    """Where a non-finite value first appeared in a replayed step."""

    phase: str  # data, forward, loss, backward, update
    step: int
    where: str  # module (or 'loss_fn', a parameter list, a batch path)
    op: str = ""
    call: Optional[int] = None
    inputs: list = field(default_factory=list)  # (name, stats) of the op's inputs
    inputs_finite: bool = True
    detail: str = ""


class FiniteWatch(TorchFunctionMode):
    """Checks every torch op's output for NaN/Inf (one host sync per op: only for the replayed step).

    Remembers the first op whose output is non-finite, with the module executing it and its inputs, and the
    op and module that created each autograd node, so the backward pass can be attributed too.
    """

    def __init__(self, stack: ModuleStack, outside: str = "loss_fn"):
        super().__init__()
        self.stack = stack
        self.outside = outside
        self.first: Optional[dict] = None  # the first op with a non-finite output from finite inputs
        self.candidates: list[dict] = []  # every op producing a non-finite output from finite inputs, in order
        self.ops = 0
        self.first_module: Optional[tuple[str, int, int]] = None  # innermost module first returning NaN/Inf
        self.nodes: dict = {}
        self._starts: list[int] = []
        self.hooks = HookSet()

    def watch_modules(self, model) -> "FiniteWatch":
        """Note the op counter around every module call, to know which ops ran inside the first module whose
        output is non-finite: a masked -inf or a NaN discarded by torch.where elsewhere is not the culprit."""
        for module in {id(m): m for m in model.modules()}.values():
            self.hooks.add(module.register_forward_pre_hook(self._pre))
            self.hooks.add(module.register_forward_hook(self._post))
        return self

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
        out = func(*args, **(kwargs or {}))
        tensors = float_tensors(out)
        if not tensors:
            return out
        self.ops += 1
        where = self.stack.current or self.outside
        for _, t in tensors:
            if t.grad_fn is not None and t.grad_fn not in self.nodes:
                self.nodes[t.grad_fn] = (_op_name(func), where)
        if not _all_finite(tensors):
            inputs = float_tensors((args, kwargs or {}))
            finite_in = _all_finite(inputs)
            if self.first is None or (finite_in and len(self.candidates) < 64):
                record = {"op": _op_name(func), "where": where, "call": self.stack.calls.get(where),
                          "inputs": [(_input_name(p), tensor_stats(t)) for p, t in inputs[:4]],
                          "inputs_finite": finite_in, "index": self.ops - 1,
                          "nan": any(bool(torch.isnan(t).any()) for _, t in tensors)}
                self.first = self.first or record
                if finite_in:
                    self.candidates.append(record)
        return out


def _graph_nodes(root) -> list:
    seen, todo, out = set(), [root], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        out.append(node)
        todo.extend(n for n, _ in getattr(node, "next_functions", ()))
    return out


@dataclass
class NonFinite(Check):
    id = "nonfinite"
    title = "First NaN or Inf"
    what = """Scans every batch of the pool for NaN/Inf, and reads the shared training probe, which records on the
    device whether the loss, the total gradient norm and every parameter are finite at each step (no extra host
    sync, no anomaly mode). When the probe saw a non-finite value, the check replays the same steps from the
    user's state (same batches, same seed) and, at the failing step only, checks the output of every torch op
    (a torch function mode) and of every backward node: it names the first op and module that produced a NaN/Inf
    in the forward pass (with the statistics of its inputs), the loss, the first backward node that turned finite
    gradients into non-finite ones, or the parameters that an optimizer step made non-finite."""
    why = """A single NaN spreads to every weight within a step and the run is lost; the place where it first
    appears (log or sqrt of a negative number, a division by zero, an overflowing exp, a learning rate that blows
    the weights up, a NaN in the data) is the bug to fix, and it is hard to find once everything is NaN.
    torch.autograd.detect_anomaly finds it too but slows every step several times over; here healthy runs pay
    nothing. With float16 mixed precision, a step whose gradients overflow is skipped by torch.amp.GradScaler,
    which then lowers its scale: that is not a failure, and the probe skips such steps the same way."""
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

    def run(self, session):
        bad_data = self._scan_data(session)
        probe = session.evidence("train_probe")
        event = probe.first_nonfinite()
        metrics = {"steps": probe.steps, "first_step": event[0] if event else None,
                   "first_kind": event[1] if event else None, "bad_batches": len(bad_data),
                   "skipped_steps": len(probe.skipped_steps), "precision": probe.precision}
        plots = (self._plot(probe, event),)
        data_table = Table("data", "Batches holding NaN/Inf", ("batch", "field", "shape", "nan", "inf"),
                           [(b, p, "x".join(map(str, s["shape"])), s["nan"], s["inf"]) for b, p, s in bad_data])
        if bad_data and event is None and self._masked_targets(session, probe, bad_data):
            b, p, s = bad_data[0]
            metrics.update(phase=None, where=None, nonfinite_targets=sum(x["nan"] + x["inf"] for _, _, x in bad_data))
            return self.result(
                "pass", f"no NaN/Inf in the loss, gradients or parameters over {probe.steps} probe steps; the "
                        f"targets hold NaN/Inf ({len(bad_data)} batch field(s), first batch {b} {p}) that the loss "
                        f"leaves out (missing labels)", metrics=metrics, tables=(data_table,), plots=plots,
                notes=(f"targets {p} hold NaN/Inf values, yet the loss and the gradients stayed finite at every "
                       f"probe step, on batches that hold them: the loss masks them, as is usual for missing labels "
                       f"in multi-task data. Make sure every batch of the real data is masked the same way.",))
        if bad_data:
            b, p, s = bad_data[0]
            part = "targets" if self._is_target(session, p) else "inputs"
            metrics.update(phase="data", where=f"batch {b} {p}")
            return self.result(
                "fail", f"the data holds NaN/Inf: {len(bad_data)} batch field(s), first batch {b} {part} {p} "
                        f"({s['nan']} NaN, {s['inf']} Inf)",
                metrics=metrics, tables=(data_table,), plots=plots,
                advice=(f"Fix the data pipeline: batch {b}, {part} {p} holds {s['nan']} NaN and {s['inf']} Inf "
                        f"values (missing values, a division by a zero std in normalization, a log of 0). Filter "
                        f"or impute them (torch.nan_to_num, dropping rows) before training.",))
        if event is None:
            return self._finite_result(probe, metrics, plots)
        origin = self._replay(session, probe, event[0])
        metrics.update(self._origin_metrics(origin))
        status, summary, advice = self._describe(origin, event, probe)
        tables = (self._origin_table(origin),) if origin is not None and origin.inputs else ()
        return self.result(status, summary, metrics=metrics, advice=tuple(advice), tables=tables, plots=plots)

    # -- data ---------------------------------------------------------------------------------------
    @staticmethod
    def _scan_data(session) -> list[tuple[int, str, dict]]:
        bad = []
        for i, batch in enumerate(session.pool):
            for path, t in float_tensors(batch, "batch"):
                if not bool(torch.isfinite(t).all()):
                    bad.append((i, path, tensor_stats(t)))
        return bad

    @classmethod
    def _masked_targets(cls, session, probe, bad_data) -> bool:
        """Whether only the targets hold NaN/Inf and the probe trained finitely on batches that hold them."""
        if not all(cls._is_target(session, p) for _, p, _ in bad_data):
            return False
        seen = {step % len(session.pool) for step in range(probe.steps)}
        return any(b in seen for b, _, _ in bad_data)

    @staticmethod
    def _is_target(session, path: str) -> bool:
        if session.target.forward is not None:
            return any(k in path for k in ("label", "target", "'y'"))
        n = len(session.pool[0]) if isinstance(session.pool[0], (list, tuple)) else 0
        return n > 0 and path.startswith(f"batch[{n - 1}]")

    # -- healthy run --------------------------------------------------------------------------------
    def _finite_result(self, probe, metrics, plots):
        skipped = probe.skipped_steps
        if not skipped:
            return self.result("pass", f"no NaN/Inf: loss, gradients and parameters finite over all "
                                       f"{probe.steps} probe steps; data finite", metrics=metrics, plots=plots)
        frac = len(skipped) / max(probe.steps, 1)
        note = (f"{len(skipped)} of {probe.steps} steps had non-finite gradients in float16 with a finite loss and "
                f"were skipped, as torch.amp.GradScaler skips them (steps {skipped[:10]})")
        if frac > self.skipped_warn:
            return self.result("warn", f"float16 gradients overflow at {len(skipped)} of {probe.steps} steps "
                                       f"(skipped as a GradScaler would)", metrics=metrics, plots=plots,
                               notes=(note,), advice=("Most steps overflow float16 even without loss scaling: use "
                                                      "bfloat16 autocast, or find the layer whose activations "
                                                      "exceed 65504 (normalize it).",))
        return self.result("pass", f"no NaN/Inf beyond {len(skipped)} float16 overflow step(s) a GradScaler skips; "
                                   f"loss and parameters finite over {probe.steps} steps", metrics=metrics,
                           plots=plots, notes=(note,))

    # -- replay -------------------------------------------------------------------------------------
    def _replay(self, session, probe, first: int) -> Optional[Origin]:
        """Train again from the user's state to ``first``, then watch every op until a non-finite value."""
        session.reset()
        model = session.model
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = session.make_optimizer()
        last = min(first + self.replay_extra, probe.steps - 1)
        for step in range(last + 1):
            batch = session.batch(step)
            optimizer.zero_grad(set_to_none=True)
            if step < first:
                loss, _, _ = session.forward_loss(batch)
                if loss.requires_grad:
                    loss.backward()
                if step not in probe.skipped_steps:
                    optimizer.step()
                continue
            origin = self._watched_step(session, model, params, optimizer, batch, step,
                                        skip=step in probe.skipped_steps)
            if origin is not None:
                return origin
        return None

    def _watched_step(self, session, model, params, optimizer, batch, step, skip) -> Optional[Origin]:
        bad_params = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad_params:
            return Origin("update", step - 1, ", ".join(bad_params[:8]),
                          detail="parameters were already non-finite before this step")
        stack = ModuleStack(model)
        watch = FiniteWatch(stack)
        try:
            with stack, watch.watch_modules(model), watch:
                loss, _, _ = session.forward_loss(batch)
        finally:
            watch.hooks.close()
        f = watch.culprit()
        if f is not None:
            phase = "loss" if f["where"] == "loss_fn" else "forward"
            return Origin(phase, step, f["where"], f["op"], f["call"], f["inputs"], f["inputs_finite"])
        if not loss.requires_grad:
            return None
        origin = self._watched_backward(loss, watch.nodes, step)
        if origin is not None:
            return origin
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        if bad:
            return Origin("backward", step, ", ".join(bad[:8]), detail="non-finite gradients of parameters")
        if skip:
            return None
        gmax = max((float(g.detach().abs().max()) for _, g in grads if g.numel()), default=0.0)
        optimizer.step()
        bad_params = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad_params:
            return Origin("update", step, ", ".join(bad_params[:8]),
                          detail=f"finite gradients (max |g| {gmax:.3g}) made these parameters non-finite")
        return None

    @staticmethod
    def _watched_backward(loss, nodes: dict, step: int) -> Optional[Origin]:
        found: list[Origin] = []
        hooks = HookSet()

        def hook_for(node):
            def hook(grad_inputs, grad_outputs):
                if found:
                    return None
                incoming = [("grad_out", g) for g in grad_outputs if isinstance(g, torch.Tensor)]
                outgoing = [("grad_in", g) for g in grad_inputs if isinstance(g, torch.Tensor)]
                if _all_finite(incoming) and not _all_finite(outgoing):
                    op, where = nodes.get(node, ("", "?"))
                    found.append(Origin("backward", step, where, f"{node.name()} (backward of {op or '?'})",
                                        inputs=[(f"incoming gradient {i}", tensor_stats(g))
                                                for i, (_, g) in enumerate(incoming[:2])]))
                return None
            return hook

        try:
            for node in _graph_nodes(loss.grad_fn):
                hooks.add(node.register_hook(hook_for(node)))
            loss.backward()
        finally:
            hooks.close()
        return found[0] if found else None

    # -- verdict ------------------------------------------------------------------------------------
    @staticmethod
    def _origin_metrics(origin: Optional[Origin]) -> dict:
        if origin is None:
            return {"phase": None, "where": None, "op": None}
        return {"phase": origin.phase, "where": origin.where, "op": origin.op or None, "call": origin.call,
                "replay_step": origin.step}

    def _describe(self, origin: Optional[Origin], event, probe) -> tuple[str, str, list[str]]:
        step, kind = event
        lr = probe.lr
        if origin is None:
            return "fail", (f"non-finite {kind} at step {step} of the probe; the replay did not reproduce it "
                            f"(a nondeterministic kernel)"), [
                "Re-run with torch.use_deterministic_algorithms(True), or with torch.autograd.detect_anomaly() "
                f"around the first {step + 1} steps, to find the op."]
        inputs = "; ".join(f"input {p}: {_stats_text(s)}" for p, s in origin.inputs)
        if origin.phase in ("forward", "loss"):
            call = f" (call {origin.call})" if origin.call else ""
            growth = self._growth_advice(probe, origin.step, lr)
            if origin.inputs_finite:
                summary = (f"first NaN/Inf at step {origin.step} in the forward pass: {origin.op} in "
                           f"{origin.where}{call}, from finite inputs")
                guard = ("an overflow of values grown huge" if growth else "Guard it: clamp the input of "
                         "log/sqrt/pow into its domain, add an epsilon to denominators, use log_softmax/logsumexp "
                         "instead of log(softmax(x))/log(sum(exp(x))).")
                advice = [growth, f"{origin.op} in {origin.where} produced NaN/Inf from finite inputs ({inputs}): "
                                  f"{guard}"]
            else:
                summary = (f"first NaN/Inf at step {origin.step} in the forward pass: {origin.op} in "
                           f"{origin.where}{call} received non-finite inputs (from the batch or the parameters)")
                advice = [f"{origin.op} in {origin.where}: {inputs}.", growth]
            if origin.phase == "loss":
                summary = summary.replace("in the forward pass", "in the loss")
            return "fail", summary, [a for a in advice if a]
        if origin.phase == "backward":
            summary = (f"first NaN/Inf at step {origin.step} in the backward pass: {origin.op or 'gradients'} in "
                       f"{origin.where} (forward and loss finite)")
            return "fail", summary, [
                f"The forward pass is finite but the backward of {origin.op or 'an op'} in {origin.where} produced "
                f"NaN/Inf{' (' + inputs + ')' if inputs else ''}: typical of sqrt or pow at 0, norms of zero "
                f"vectors, acos/asin at +-1, or division by a value near 0. Add an epsilon (torch.sqrt(x + 1e-12)), "
                f"or clamp. In float16, use a GradScaler or bfloat16."]
        summary = (f"first NaN/Inf at step {origin.step} after the optimizer step: parameters {origin.where} "
                   f"became non-finite")
        return "fail", summary, [f"{origin.detail}. The learning rate ({lr}) is far too large for these weights, or "
                                 f"the gradient explodes: lower the learning rate, clip the gradient norm (see "
                                 f"grad_norms)."]

    @staticmethod
    def _growth_advice(probe, step: int, lr) -> str:
        losses = [v for v in probe.losses[:step] if math.isfinite(v)]
        norms = [v for v in probe.grad_norm[:step] if math.isfinite(v)]
        if step == 0 or not losses:
            return ""
        if losses[-1] > 10 * losses[0] or (norms and norms[-1] > 100 * norms[0]):
            return (f"Before step {step} the loss went from {losses[0]:.3g} to {losses[-1]:.3g} and the gradient "
                    f"norm from {norms[0]:.3g} to {norms[-1]:.3g}: training diverged first. Lower the learning "
                    f"rate ({lr}) and clip the gradient norm; the op above is where the overflow ended.")
        return ""

    # -- report -------------------------------------------------------------------------------------
    @staticmethod
    def _origin_table(origin: Origin) -> Table:
        rows = [(p, "x".join(map(str, s["shape"])), s["min"], s["max"], s["nan"], s["inf"], s["zeros"])
                for p, s in origin.inputs]
        return Table("origin", f"Inputs of {origin.op} in {origin.where} at step {origin.step}",
                     ("input", "shape", "min", "max", "nan", "inf", "zeros"), rows)

    @staticmethod
    def _plot(probe, event) -> Plot:
        steps = tuple(range(len(probe.losses)))
        markers = (Marker(f"first non-finite ({event[1]})", event[0]),) if event else ()
        return Plot("loss", "Loss over the probe's steps (non-finite values are gaps)", "line",
                    (Series("loss", steps, probe.losses), Series("grad norm", steps, probe.grad_norm)),
                    x_label="step", y_label="value", log_y=True, markers=markers)
