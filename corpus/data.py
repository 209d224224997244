"""Helpers the corpus modules share: seeded generators, batching, and the stripe images two families use."""
from __future__ import annotations

import math

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: each data maker draws from its own, never from the global RNG."""
    return torch.Generator().manual_seed(seed)


def batches(*tensors: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    """Consecutive batches of ``size`` rows of ``tensors`` (sliced together), as tuples; a last partial one dropped."""
    n = len(tensors[0])
    return [tuple(t[i:i + size] for t in tensors) for i in range(0, n - size + 1, size)]


def dict_batches(tensors: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """:func:`batches` for a dict of tensors (the Hugging Face Trainer's batches): a list of dicts."""
    n = len(next(iter(tensors.values())))
    return [{k: v[i:i + size] for k, v in tensors.items()} for i in range(0, n - size + 1, size)]


def stripes(n: int, size: int, classes: int, seed: int, *, jitter: float = 0.15,
            tint: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB images in [0, 1] whose class sets the orientation of a stripe pattern (orientation jittered by ``jitter``
    radians, random frequency and phase, a random tint per image unless ``tint=False``) under pixel noise."""
    g = generator(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = y.float() * math.pi / classes + jitter * torch.randn(n, generator=g)
    freq = 4 + 3 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    proj = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
    pattern = torch.sin(freq[:, None, None] * proj + phase[:, None, None])  # (n, H, W)
    scale = 0.35 * (0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)) if tint else 0.35
    x = 0.5 + scale * pattern[:, None] + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 1), y
