"""A corpus of real architectures, healthy and with injected faults, that the whole checklist runs on (issue 18).

Each healthy :class:`Case` builds the target fields of a model people actually train (Hugging Face ``transformers``
from small random configs, classic vision networks written to their published designs, recurrent models, a VAE,
regression and multi-label heads), with the optimizer and LR its community uses and data generated in code that
training can learn. Each :class:`Fault` is one real-world bug injected into one of those cases, named with the
check that must flag it. ``corpus.plain`` trains every case and fault by a plain PyTorch loop at the same settings
(a declared LR scheduler left out: the optimizer's LR throughout): the evidence that a healthy case trains and that
a fault hurts training.

The corpus is split in two halves, ``tune`` and ``held``, by a rule nobody chose per model (within each family,
cases sorted by the SHA-1 of their names alternate between the halves): thresholds and rules are tuned on ``tune``
only, and ``held`` is reported beside it. ``python benchmarks/corpus.py`` prints both.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

#: the halves of the corpus
SPLITS = ("tune", "held")


@dataclass(frozen=True)
class Case:
    """A healthy model with its settings.

    Attributes:
        name: unique, short (``bert``, ``resnet``, ...).
        family: ``transformers``, ``vision``, ``recurrent``, ``generative`` or ``tabular``.
        build: seed -> the target fields for ``babysitter.check(**fields)`` (model, data, loss_fn, optimizer, and
            forward, step, batch_size where needed). Data is a list of batches or an ``(X, y)`` pair with batch_size.
        what: one line: the model, after which published design or example, with which optimizer and LR and why.
        plain_steps: optimizer steps of the plain-loop evidence.
    """

    name: str
    family: str
    build: Callable[[int], dict]
    what: str
    plain_steps: int = 150


@dataclass(frozen=True)
class Fault:
    """A real-world bug injected into one healthy case.

    Attributes:
        name: unique (``bert-nan-mask``, ...).
        base: the name of the healthy :class:`Case` it is injected into.
        check: the id of the check that must flag it (fail or warn).
        build: seed -> the faulty target fields.
        what: one line: the bug, as people make it.
    """

    name: str
    base: str
    check: str
    build: Callable[[int], dict]
    what: str


def _modules():
    from . import generative, recurrent, tabular, transformers_models, vision  # noqa: F401  (imported for the lists)

    return (transformers_models, vision, recurrent, generative, tabular)


def cases() -> list[Case]:
    """Every healthy case, in family order."""
    return [c for m in _modules() for c in m.CASES]


def faults() -> list[Fault]:
    """Every injected fault."""
    return [f for m in _modules() for f in m.FAULTS]


def _key(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def split_of(items) -> dict[str, str]:
    """name -> 'tune' or 'held': within each group (a case's family, a fault's check), items sorted by the SHA-1 of
    their names alternate, the first going to 'tune'."""
    groups: dict[str, list[str]] = {}
    for item in items:
        group = item.family if isinstance(item, Case) else item.check
        groups.setdefault(group, []).append(item.name)
    out = {}
    for names in groups.values():
        for i, name in enumerate(sorted(names, key=_key)):
            out[name] = SPLITS[i % 2]
    return out
