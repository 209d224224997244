"""Targets: what a user hands babysitter, how they are found, loaded and validated.

A target is a function with no arguments returning a :class:`Target` or a plain dict with the same
fields. ``babysit check`` discovers ``checks/*.py`` (each file's ``babysit()``; files that define none are helper
modules, skipped with a note), or takes ``FILE.py``, ``FILE.py:func``, ``package.module:func`` or a directory.
While a target is imported, called and checked, its own folder and the project's root are importable, as pytest
makes them for tests; every RNG is seeded first, so that an unseeded target builds the same model each time.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import itertools
import numbers
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .analysis.batches import describe, short_repr, type_name
from .errors import NoTargetsError, TargetError
from .optim import default_optimizer  # noqa: F401  (re-exported: the optimizer of targets that give none)
from .pool import is_map_dataset

#: the function ``babysit check`` looks for in a file when none is named
DEFAULT_FUNCTION = "babysit"
#: the folder discovered when ``babysit check`` gets no path
DEFAULT_DIR = "checks"

#: what ``data`` may be, as messages say it
DATA_KINDS = "a DataLoader, an iterable of batches, a map-style Dataset or a tuple (X, y) of tensors"

FIELDS = ("model", "data", "loss_fn", "optimizer", "forward", "batch_size", "name", "step")
REQUIRED = ("model", "data", "loss_fn")


@dataclass
class Target:
    """Everything babysitter needs to check a training setup.

    Attributes:
        model: the ``nn.Module`` about to be trained.
        data: a DataLoader or any iterable of batches, a map-style ``torch.utils.data.Dataset`` of examples, or
            a tuple ``(X, y)`` of tensors (the last two shuffled with the session's seed and split into batches of
            ``batch_size`` for you, as a DataLoader would). A batch is ``(inputs, targets)`` (or
            ``(*inputs, targets)``) unless ``forward`` says otherwise.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        optimizer: the user's real optimizer settings: a factory ``params -> torch.optim.Optimizer``, or an
            optimizer instance over the model's parameters (its state is restored afterwards). When absent,
            babysitter uses Adam(lr=1e-3), PyTorch's default Adam, and says so in the report.
        forward: ``forward(model, batch) -> (outputs, targets)`` for batches of any other shape (dicts,
            HuggingFace models).
        batch_size: for tuple data and a map-style Dataset (default 64).
        name: the name used for the report folder; defaults to the file's stem.
        step: how the user trains, when it is not a plain ``zero_grad, backward, step``: a
            :class:`babysitter.Step` (or a dict of its fields: gradient clipping, accumulation, autocast, a
            GradScaler, an LR scheduler, a closure), or a function ``step(model, batch, optimizer) -> loss`` doing
            the whole step (several optimizers: the factory may then return a list, tuple or dict of them).
    """

    model: nn.Module
    data: Any
    loss_fn: Callable
    optimizer: Optional[Any] = None
    forward: Optional[Callable] = None
    batch_size: Optional[int] = None
    name: Optional[str] = None
    step: Optional[Any] = None

    def __post_init__(self):
        validate(self)


_type_name, _short = type_name, short_repr


def validate(target: Target, where: str | None = None) -> None:
    """Check field types up front; raises :class:`TargetError` naming the field and the value."""
    where = where or (target.name and f"target '{target.name}'") or None
    if not isinstance(target.model, nn.Module):
        raise TargetError(f"expected a torch.nn.Module, got {_type_name(target.model)}: {_short(target.model)}",
                          where=where, field="model")
    lazy = [n for n, p in itertools.chain(target.model.named_parameters(), target.model.named_buffers())
            if nn.parameter.is_lazy(p)]
    if lazy:
        raise TargetError(f"{type(target.model).__name__} has uninitialized lazy parameters ({', '.join(lazy[:4])}"
                          f"{', ...' if len(lazy) > 4 else ''}): run one forward pass on a batch before checking, "
                          f"so that their shapes exist", where=where, field="model")
    _validate_data(target.data, where)
    if not callable(target.loss_fn):
        raise TargetError(f"expected a callable loss_fn(outputs, targets) -> scalar tensor, got "
                          f"{_type_name(target.loss_fn)}: {_short(target.loss_fn)}", where=where, field="loss_fn")
    opt = target.optimizer
    if opt is not None and not (callable(opt) or isinstance(opt, torch.optim.Optimizer)):
        raise TargetError(f"expected a factory params -> torch.optim.Optimizer (for example "
                          f"lambda params: torch.optim.SGD(params, lr=0.1)) or an optimizer, got "
                          f"{_type_name(opt)}: {_short(opt)}", where=where, field="optimizer")
    if target.forward is not None and not callable(target.forward):
        raise TargetError(f"expected a callable forward(model, batch) -> (outputs, targets), got "
                          f"{_type_name(target.forward)}: {_short(target.forward)}", where=where, field="forward")
    _validate_step(target, where)
    if target.batch_size is not None and (not isinstance(target.batch_size, int) or isinstance(target.batch_size, bool)
                                          or target.batch_size < 1):
        raise TargetError(f"expected a positive int, got {_short(target.batch_size)}", where=where, field="batch_size")


def _validate_data(data: Any, where: Optional[str]) -> None:
    if data is None:
        raise TargetError(f"is missing (None): give {DATA_KINDS}", where=where, field="data")
    if is_map_dataset(data) and not hasattr(data, "__len__"):
        raise TargetError(f"{_type_name(data)} is a map-style Dataset without __len__(), so it cannot be shuffled "
                          f"and batched as a DataLoader would", where=where, field="data",
                          hint="define __len__(), or give a DataLoader (or an IterableDataset that yields batches)")
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise TargetError(
                f"tuple (X, y) needs tensors with the same first (example) dimension, got X{tuple(x.shape)} "
                f"and y{tuple(y.shape)}", where=where, field="data")
        if x.shape[0] == 0:
            raise TargetError("tuple (X, y) holds no examples (X has shape "
                              f"{tuple(x.shape)})", where=where, field="data")
    elif isinstance(data, (str, bytes, torch.Tensor)) or not _is_iterable(data):
        raise TargetError(f"expected {DATA_KINDS}, got {_type_name(data)}: {_short(data)}", where=where, field="data")


def _validate_step(target: Target, where: Optional[str]) -> None:
    from .step import Step, coerce_step

    try:
        target.step = coerce_step(target.step)
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{exc}, got {_type_name(target.step)}: {_short(target.step)}", where=where,
                          field="step") from exc
    if isinstance(target.step, Step):
        for name, value, wanted in target.step.problems():
            raise TargetError(f"{name} must be {wanted}, got {_short(value)}", where=where, field="step")


def _is_iterable(value: Any) -> bool:
    """Whether iter() would work, without calling it: a DataLoader's iter() draws its base seed from the global
    torch RNG (and starts workers), before the session has taken its snapshot."""
    cls = type(value)
    return callable(getattr(cls, "__iter__", None)) or callable(getattr(cls, "__getitem__", None))


def coerce(value: Any, *, where: str, default_name: str) -> Target:
    """Turn what a target function returned (a Target or a dict) into a validated Target."""
    if isinstance(value, Target):
        target = value
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise TargetError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                              f"{', '.join(FIELDS)}", where=where)
        missing = [f for f in REQUIRED if f not in value]
        if missing:
            raise TargetError(f"required field '{missing[0]}' is missing; a target needs "
                              f"{', '.join(REQUIRED)} (optimizer and forward are optional)", where=where)
        target = Target.__new__(Target)
        for f in dataclasses.fields(Target):
            setattr(target, f.name, value.get(f.name, None))
    else:
        raise TargetError(f"the target function returned {_type_name(value)}: {_short(value)}; it must return "
                          f"a babysitter.Target or a dict with fields model, data, loss_fn (and optionally "
                          f"optimizer, forward)", where=where)
    if target.name is None:
        target.name = default_name
    validate(target, where=where)
    return target


# -- finding and loading ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetRef:
    """Where a target lives: a file or module, and the function in it."""

    source: str  # a file path or a dotted module name
    function: str
    is_file: bool

    @property
    def name(self) -> str:
        stem = Path(self.source).stem if self.is_file else self.source.rsplit(".", 1)[-1]
        return stem if self.function == DEFAULT_FUNCTION else f"{stem}-{self.function}"

    def __str__(self) -> str:
        return f"{self.source}:{self.function}"


@dataclass(frozen=True)
class Skipped:
    """A file of a discovered folder that is not a target: a helper module the targets import."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} skipped: {self.reason}"


@dataclass(frozen=True)
class Collection:
    """What discovery found: the target references, and the files of discovered folders it skipped."""

    refs: tuple[TargetRef, ...]
    skipped: tuple[Skipped, ...] = ()


def discover(specs: Iterable[str] = (), root: Path | None = None) -> list[TargetRef]:
    """Resolve command-line specs into target references; no specs means ``checks/*.py``."""
    return list(collect(specs, root).refs)


def collect(specs: Iterable[str] = (), root: Path | None = None) -> Collection:
    """Resolve command-line specs into target references, with the helper modules skipped in discovered folders
    (files that define no ``babysit()``); no specs means ``checks/*.py``. A file named explicitly is never
    skipped: one without the function is a target error when it is loaded."""
    root = Path.cwd() if root is None else root
    specs = list(specs)
    if not specs:
        folder = root / DEFAULT_DIR
        if not folder.is_dir():
            raise NoTargetsError(f"no targets: there is no '{DEFAULT_DIR}/' folder in {root}; write "
                                 f"{DEFAULT_DIR}/my_model.py with a function {DEFAULT_FUNCTION}(), or pass FILE.py[:func]")
        return _discover_dir(folder, f"{DEFAULT_DIR}/")
    found = [_resolve(spec, root) for spec in specs]
    return Collection(tuple(r for c in found for r in c.refs), tuple(s for c in found for s in c.skipped))


def _discover_dir(folder: Path, shown: str) -> Collection:
    """Every ``*.py`` of the folder not starting with '_' that defines ``babysit()``; the others are skipped."""
    refs, skipped = [], []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        if defines_function(path, DEFAULT_FUNCTION):
            refs.append(TargetRef(str(path), DEFAULT_FUNCTION, True))
        else:
            skipped.append(Skipped(_shown_path(path), f"defines no {DEFAULT_FUNCTION}() (a helper module: targets "
                                                      f"can import it)"))
    if not refs:
        helpers = f"; skipped, since none defines {DEFAULT_FUNCTION}(): {', '.join(Path(s.path).name for s in skipped)}"
        raise NoTargetsError(f"no targets: {shown} holds no .py file that defines {DEFAULT_FUNCTION}() (files "
                             f"starting with '_' are skipped){helpers if skipped else ''}")
    return Collection(tuple(refs), tuple(skipped))


def _shown_path(path: Path) -> str:
    """The path as people read it: relative to the current folder when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def defines_function(path: Path, name: str) -> bool:
    """Whether the file's module level binds ``name`` (a def, a class, an assignment or an import), read without
    importing it. A file that cannot be parsed, or has a ``from ... import *``, counts as defining it, so that
    loading it says what is wrong."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return True
    names = _module_level_names(tree)
    return name in names or "*" in names


def _module_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # their bodies are another scope
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.Lambda):
            continue
        else:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            stack.extend(ast.iter_child_nodes(node))
    return names


def _resolve(spec: str, root: Path) -> Collection:
    path_part, _, func = spec.partition(":")
    if len(path_part) == 1 and func and ("\\" in func or "/" in func):  # a Windows drive letter, C:\...
        path_part, _, func = spec.rpartition(":") if spec.count(":") > 1 else (spec, "", "")
    path = Path(path_part)
    if not path.is_absolute():
        path = root / path
    looks_like_file = path_part.endswith(".py") or "/" in path_part or "\\" in path_part
    if path.is_dir():
        if func:
            raise TargetError(f"'{spec}' names a folder and a function; name a file: FOLDER/FILE.py:{func}")
        return _discover_dir(path, path_part)
    if looks_like_file:
        if not path.is_file():
            raise TargetError(f"file not found: {path_part}", where=spec,
                              hint="give FILE.py, FILE.py:function or package.module:function")
        return Collection((TargetRef(str(path), func or DEFAULT_FUNCTION, True),))
    if not func:
        raise TargetError(f"'{spec}' is neither a file nor a folder; for a module name the function too: "
                          f"package.module:function")
    return Collection((TargetRef(path_part, func, False),))


#: files that mark a project's root folder, looked for upward from the target's folder (as pytest finds its rootdir)
ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg")


def rootdir(start: Path, cwd: Path | None = None) -> Path:
    """The project's root: the nearest folder at or above ``start`` that holds one of ``ROOT_MARKERS``, else
    ``cwd`` (the folder babysit runs from)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).is_file() for marker in ROOT_MARKERS):
            return folder
    return Path.cwd().resolve() if cwd is None else Path(cwd).resolve()


def import_paths(ref: TargetRef) -> list[str]:
    """The folders a target imports from, first first: the target's own folder (for a file), the project's root
    (see :func:`rootdir`) and the folder babysit runs from."""
    cwd = Path.cwd().resolve()
    folder = Path(ref.source).resolve().parent if ref.is_file else cwd
    paths = [str(p) for p in (folder, rootdir(folder, cwd), cwd)]
    return list(dict.fromkeys(paths))


@contextlib.contextmanager
def importable(ref: TargetRef):
    """Put the target's :func:`import_paths` first on ``sys.path`` (those not there yet) while the target is
    imported, called and checked, so that it imports the user's own modules; only they are removed after."""
    added = [p for p in import_paths(ref) if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


@contextlib.contextmanager
def seeded(seed: int):
    """Every RNG (torch and CUDA, numpy, ``random``) seeded with ``seed`` inside; their states restored after."""
    from .sandbox import RngState, seed_everything

    saved = RngState.capture()
    seed_everything(seed)
    try:
        yield
    finally:
        saved.restore()


def _user_frames_message(exc: BaseException) -> str:
    """The exception's last line and the innermost frame in the user's code."""
    tb = traceback.extract_tb(exc.__traceback__)
    frame = tb[-1] if tb else None
    where = f" (at {frame.filename}:{frame.lineno}, in {frame.name})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _import(ref: TargetRef) -> Any:
    """The target's file or module, imported; every failure a TargetError."""
    where = ref.source
    try:
        if not ref.is_file:
            return importlib.import_module(ref.source)
        module_name = f"babysitter_target_{abs(hash(str(Path(ref.source).resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, ref.source)
        if spec is None or spec.loader is None:
            raise TargetError("cannot be imported as a Python file", where=where)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(module_name, None)
        return module
    except SyntaxError as exc:
        raise TargetError(f"syntax error at line {exc.lineno}: {exc.msg}"
                          + (f"\n    {exc.text.rstrip()}" if exc.text else ""), where=f"{exc.filename or where}") from exc
    except TargetError:
        raise
    except ModuleNotFoundError as exc:
        if not ref.is_file and exc.name and ref.source.startswith(exc.name):
            raise TargetError(f"module '{ref.source}' not found (is it installed or on PYTHONPATH?)",
                              where=str(ref)) from exc
        raise TargetError(f"importing it failed: {_user_frames_message(exc)}", where=where) from exc
    except Exception as exc:  # any failure of the user's module at import is a target error
        raise TargetError(f"importing it failed: {_user_frames_message(exc)}", where=where) from exc


def _target_function(ref: TargetRef, module: Any) -> Callable:
    fn = getattr(module, ref.function, None)
    if fn is None:
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
        raise TargetError(f"has no function '{ref.function}()'"
                          + (f"; functions defined there: {', '.join(available)}" if available else ""),
                          where=ref.source, hint=f"define def {ref.function}(): return dict(model=..., data=..., "
                                                 f"loss_fn=..., optimizer=...)")
    if not callable(fn):
        raise TargetError(f"'{ref.function}' is a {_type_name(fn)}, not a function", where=ref.source)
    return fn


def load(ref: TargetRef, *, seed: int = 0) -> Target:
    """Import the file or module and call its target function; every failure becomes a TargetError.

    The user's own modules are importable (see :func:`importable`), and every RNG is seeded with ``seed`` first
    (see :func:`seeded`), so that a target that seeds nothing builds the same model and data each time.
    """
    with importable(ref), seeded(seed):
        fn = _target_function(ref, _import(ref))
        try:
            value = fn()
        except TargetError:
            raise
        except Exception as exc:  # any failure of the user's target function is a target error
            raise TargetError(f"calling {ref.function}() raised {_user_frames_message(exc)}",
                              where=ref.source) from exc
    return coerce(value, where=ref.source, default_name=ref.name)


# -- the first batch: the target's code run once, each failure a TargetError -------------------------------
def validate_pool(pool: list, data: Any, where: Optional[str]) -> None:
    """The data yielded batches, and a batch is ``(inputs, targets)`` when no ``forward`` says otherwise."""
    if not pool:
        raise TargetError(f"yielded no batch ({_type_name(data)} is empty)", where=where, field="data")


def _check_batch_shape(target: Target, batch: Any, where: Optional[str]) -> None:
    if target.forward is None and (not isinstance(batch, (list, tuple)) or len(batch) < 2):
        raise TargetError(
            f"a batch must be (inputs, targets) unless a 'forward' is given; the first batch is "
            f"{_type_name(batch)}: {_short(batch)}", where=where, field="data",
            hint="add forward=lambda model, batch: (model(batch['x']), batch['y']) for other shapes")
    if target.forward is None:
        _check_not_an_example(target.data, batch[-1], "its targets are", where)


def _check_not_an_example(data: Any, targets: Any, said: str, where: Optional[str]) -> None:
    """Targets with no batch dimension (a number, a 0-d tensor) mean that the data yields single examples: checks
    run on them would measure the wrong unit, so this is a target error."""
    if isinstance(targets, numbers.Number) or (isinstance(targets, torch.Tensor) and targets.ndim == 0):
        raise TargetError(
            f"{_type_name(data)} yields single examples, not batches: the first batch looks like one example, "
            f"{said} {_type_name(targets)}: {_short(targets)}, with no batch dimension", where=where, field="data",
            hint="give batches: data=DataLoader(examples, batch_size=64), or the map-style Dataset itself with "
                 "batch_size=..., which babysitter batches as a DataLoader would")


def _first_forward(code, batch: Any, where: Optional[str]) -> tuple[Any, Any]:
    from .instruments.hooks import ModuleStack

    stack = ModuleStack(code.model)
    try:
        with stack, torch.no_grad():
            result = code.forward(batch)
    except Exception as exc:  # any failure of the user's forward is a target error that names how far it got
        reached = stack.reached()
        raise TargetError(f"the forward pass on the first batch raised {type(exc).__name__}: {exc}"
                          + (f"\n  it was executing {reached}" if reached else ""), where=where,
                          field="forward" if code.target.forward is not None else "model") from exc
    if code.target.forward is not None and not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TargetError(f"forward(model, batch) must return (outputs, targets), it returned "
                          f"{_type_name(result)}: {_short(result)}", where=where, field="forward")
    return result


def _first_loss(code, outputs: Any, targets: Any, where: Optional[str]) -> None:
    try:
        with torch.no_grad():
            loss = code.loss(outputs, targets)
    except Exception as exc:  # any failure of the user's loss is a target error
        raise TargetError(f"loss_fn(outputs, targets) raised {type(exc).__name__}: {exc}"
                          f" (outputs: {describe(outputs)}; targets: {describe(targets)})",
                          where=where, field="loss_fn") from exc
    if not isinstance(loss, torch.Tensor):
        raise TargetError(f"loss_fn must return a scalar tensor, it returned {_type_name(loss)}: {_short(loss)}",
                          where=where, field="loss_fn", hint="do not call .item() inside loss_fn; return the tensor")
    if loss.numel() != 1:
        raise TargetError(f"loss_fn must return a scalar tensor, it returned shape {tuple(loss.shape)}",
                          where=where, field="loss_fn", hint="reduce it with .mean() (or reduction='mean')")


def _first_optimizer(make: Callable[[], Any], where: Optional[str], custom_step: bool) -> torch.optim.Optimizer:
    try:
        optimizer = make()
    except Exception as exc:  # any failure of the user's factory is a target error
        raise TargetError(f"calling the optimizer factory raised {type(exc).__name__}: {exc}",
                          where=where, field="optimizer") from exc
    from .optim import OptimizerGroup

    if isinstance(optimizer, OptimizerGroup) and not custom_step:
        raise TargetError(f"the optimizer factory returned {len(optimizer.optimizers)} optimizers: several "
                          f"optimizers need a step function that says how each is used", where=where,
                          field="optimizer", hint="add step=lambda model, batch, optimizers: ... (it returns the "
                                                  "loss), or return one optimizer")
    if not isinstance(optimizer, (torch.optim.Optimizer, OptimizerGroup)):
        raise TargetError(f"the optimizer factory must return a torch.optim.Optimizer, it returned "
                          f"{_type_name(optimizer)}: {_short(optimizer)}", where=where, field="optimizer")
    return optimizer


def _is_step(value: Any) -> bool:
    from .step import Step

    return isinstance(value, Step)


def validate_first_batch(code, batch: Any, make_optimizer: Callable[[], Any], where: Optional[str]
                         ) -> torch.optim.Optimizer:
    """Run the target's code once on the first batch (forward, loss, optimizer factory), turning each failure
    into a :class:`TargetError` that names the field; returns the optimizer the factory built."""
    _check_batch_shape(code.target, batch, where)
    outputs, targets = _first_forward(code, batch, where)
    if code.target.forward is not None:
        _check_not_an_example(code.target.data, targets, "forward(model, batch) returned targets", where)
    _first_loss(code, outputs, targets, where)
    return _first_optimizer(make_optimizer, where, callable(code.step) and not _is_step(code.step))
