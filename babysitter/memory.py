"""Memory: the budget on an accelerator, out-of-memory errors, and handing freed memory back.

The checklist holds one copy of the state it protects (the sandbox's snapshot, on the host) beside what a training
step of the model holds. On an accelerator the session keeps to the device's free memory: the batch pool keeps
fewer batches there when it is short (``pool_budget``), a training pass that would not fit is skipped before it
starts (``shortfall``), and an out-of-memory error inside a check makes that check a skip, with the memory
released (``out_of_memory``, ``release_memory``) and the user's state restored by the session.
"""
from __future__ import annotations

import ctypes
import gc
from typing import Any, Optional

import torch
from torch import nn

from .analysis.batches import nbytes
from .pool import DEVICE_POOL_BYTES

MiB = 1 << 20
#: on an accelerator, the batch pool's device copies take at most this share of the device memory free when the
#: session starts (and at most ``pool.DEVICE_POOL_BYTES``); the rest is left to the checks
POOL_SHARE_OF_FREE = 0.05
#: a training pass is skipped, before it starts, when what it would allocate beyond the model's weights does not fit
#: in the free device memory with this margin (for activations and the allocator's rounding)
MEMORY_MARGIN = 0.25
#: optimizer state allocated by a pass, per byte of trainable parameter that has none yet: Adam's two moments, the
#: most that torch's common optimizers keep (SGD with momentum and RMSprop keep one, plain SGD none)
STATE_PER_PARAM = 2


def device_memory(device: torch.device) -> Optional[tuple[int, int]]:
    """``(free, total)`` bytes of an accelerator's memory (``torch.cuda.mem_get_info``), None on the CPU or where
    the backend does not say."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)
    return None


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: an accelerator's out-of-memory error (``torch.cuda.OutOfMemoryError``), the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def release_memory() -> None:
    """Free what unreachable objects hold, empty the CUDA allocator's cache (when CUDA is initialized) and hand the
    host's freed memory back: after an out-of-memory error, so that the next check starts with all of it."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    release_host_memory()


def pool_budget(device: torch.device, batches: list) -> tuple[int, Optional[dict]]:
    """The bytes of batches the pool may keep on ``device`` (``DEVICE_POOL_BYTES``, less when the accelerator's free
    memory is short) and, on an accelerator, the fact the report states (free memory, what the pool keeps there,
    and a note when it keeps less than all)."""
    memory = device_memory(device)
    if memory is None:
        return DEVICE_POOL_BYTES, None
    free, total = memory
    budget = min(DEVICE_POOL_BYTES, int(free * POOL_SHARE_OF_FREE))
    pool = sum(nbytes(b) for b in batches)
    fact = {"free_mib": round(free / MiB), "total_mib": round(total / MiB),
            "pool_on_device_mib": round(min(pool, budget) / MiB, 1)}
    if pool > budget and budget < DEVICE_POOL_BYTES:
        fact["note"] = (f"{free / MiB:.0f} MiB of device memory free: the batch pool keeps {budget / MiB:.0f} MiB of "
                        f"its {pool / MiB:.0f} MiB on the device ({POOL_SHARE_OF_FREE:.0%} of the free memory) and "
                        f"copies the rest from the host at each use")
    return budget, fact


def shortfall(device: torch.device, model: nn.Module, optimizer: Optional[Any]) -> Optional[str]:
    """Why a training pass starting now would not fit in the accelerator's free memory, or None (it would, or the
    device is the CPU). What it allocates beyond the model's weights is estimated from the parameters: gradients
    for those that have none, optimizer state (``STATE_PER_PARAM``) for those whose state in ``optimizer`` (the
    user's instance; None for a factory, whose optimizers start empty) is not allocated, plus ``MEMORY_MARGIN``.
    Activations are not counted: an out-of-memory error inside a check is caught, and the check skipped."""
    memory = device_memory(device)
    if memory is None:
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = optimizer.state if optimizer is not None else {}
    grads = sum(p.numel() * p.element_size() for p in trainable if p.grad is None)
    fresh = sum(p.numel() * p.element_size() for p in trainable if not state.get(p))
    need = int((grads + STATE_PER_PARAM * fresh) * (1 + MEMORY_MARGIN))
    if need <= memory[0]:
        return None
    return (f"device memory: {memory[0] / MiB:.0f} MiB free, below the {need / MiB:.0f} MiB that a training pass "
            f"needs beyond the model's weights (its gradients and optimizer state, estimated from the parameters, and "
            f"a {MEMORY_MARGIN:.0%} margin); not run, so that nothing runs out of memory")


def _malloc_trim() -> Optional[Any]:
    """glibc's ``malloc_trim``, None elsewhere (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_host_memory() -> None:
    """Hand the host memory that freed tensors left in the C heap back to the system (glibc keeps it otherwise, in
    holes that later allocations do not always fit): at the end of a run and after an out-of-memory error. Not at
    each reset: the pages handed back are faulted in again by the next pass, which cost more time than the peak it
    saved (measured on the 82 MiB MLP of benchmarks/memory.py: no lower peak, more page faults)."""
    if _TRIM is not None:
        _TRIM(0)
