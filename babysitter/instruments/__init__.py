"""Instruments: context managers that attach hooks, reduce statistics on the device and detach on exit."""
from .hooks import HookSet, ModuleStack, module_stack

__all__ = ["HookSet", "ModuleStack", "module_stack"]
