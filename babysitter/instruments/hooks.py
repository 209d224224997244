"""Hook plumbing shared by every instrument: handles that are always removed, and the module stack."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Owns hook handles and removes every one of them on ``close()`` (or on leaving a ``with``)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._exits: list[Callable[[], None]] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on close (for things that are not hook handles, such as a torch function mode)."""
        self._exits.append(fn)

    def close(self) -> None:
        errors = []
        while self._exits:
            try:
                self._exits.pop()()
            except BaseException as exc:  # keep removing the rest
                errors.append(exc)
        while self._handles:
            self._handles.pop().remove()
        if errors:
            raise errors[0]

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModuleStack:
    """Tracks which module is executing (qualified name), through forward pre- and post-hooks.

    Used to attribute functional calls (``F.relu`` inside a ``forward``) to the module that made them,
    and to say how far a failing forward got.
    """

    def __init__(self, model: nn.Module, root_name: str = "model"):
        self.model = model
        self.root_name = root_name
        self.names = {m: (f"{root_name}.{n}" if n else root_name) for n, m in model.named_modules(remove_duplicate=False)}
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self.hooks = HookSet()

    @property
    def current(self) -> Optional[str]:
        return self.stack[-1] if self.stack else None

    def _pre(self, module, args):
        name = self.names.get(module, type(module).__name__)
        self.calls[name] = self.calls.get(name, 0) + 1
        self.stack.append(name)

    def _post(self, module, args, output):
        if self.stack:
            self.stack.pop()

    def __enter__(self) -> "ModuleStack":
        seen = set()
        for module in self.names:
            if id(module) in seen:
                continue
            seen.add(id(module))
            self.hooks.add(module.register_forward_pre_hook(self._pre))
            # no always_call: when a forward raises, the stack keeps the path it was executing
            self.hooks.add(module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def reset(self) -> None:
        self.stack.clear()

    def reached(self) -> str:
        """The module path that the last failure was executing, with module types."""
        if not self.stack:
            return ""
        types = {n: type(m).__name__ for m, n in self.names.items()}
        return " > ".join(f"{n} ({types.get(n, '?')})" for n in self.stack)


@contextlib.contextmanager
def module_stack(model: nn.Module) -> Iterator[ModuleStack]:
    with ModuleStack(model) as stack:
        yield stack


class CallOrder:
    """Instrument: the modules that run in the forward, by qualified name ('' for the model), in the order of
    their first call. Which weight layer is the first and which the last is the call order, not the order in
    which ``__init__`` registers modules (a head defined before the body)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.order: dict[str, int] = {}
        self.hooks = HookSet()

    def _hook(self, name: str) -> Callable:
        def pre(module, args):
            self.order.setdefault(name, len(self.order))  # returns None: the inputs are left alone
        return pre

    def __enter__(self) -> "CallOrder":
        for name, module in self.model.named_modules():
            self.hooks.add(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()

    def result(self, reduce: Optional[Callable] = None) -> tuple[str, ...]:
        """The modules in the order of their first call (``reduce``, for device accumulators, has none here)."""
        return tuple(self.order)


@contextlib.contextmanager
def attached(factories: Mapping[str, Callable[[nn.Module], Any]], model: nn.Module) -> Iterator[dict]:
    """Enter one instrument per ``factories`` entry (``factory(model)`` -> a context manager with ``result()``),
    yield them by name, and leave every one on exit, whatever happens."""
    active = {}
    with contextlib.ExitStack() as stack:
        for name, factory in factories.items():
            active[name] = stack.enter_context(factory(model))
        yield active
