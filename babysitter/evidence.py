"""The evidence table: every pass and fact that checks read, and the instruments each pass carries.

Evidence is computed once per session, from the state the user handed over (the session resets the model before
and after each provider), whichever check asks first, and is frozen. Reading it is ``session.evidence(name)``.
Options given to a check (``options={"lr_range": {...}}``) reach the evidence that check's readings come from,
so that every check that reads the LR sweep reads it under the same settings.

| evidence      | what it is                                                        | read by                       |
| ------------- | ----------------------------------------------------------------- | ----------------------------- |
| init_pass     | forward + backward on 4 batches at init, instruments below        | initial_loss, dead_relu, ...  |
| train_probe   | 24 real steps with the user's optimizer, instruments below        | grad_norms, param_updates, ...|
| lr_sweep      | the LR range test's repeats                                       | lr_curve, lr_race             |
| lr_curve      | the sweep read under lr_range's rules (range, its suggestion)     | lr_race, lr_reading           |
| lr_race       | candidate LRs from the range trained briefly, held-out losses     | lr_reading                    |
| lr_reading    | the curve's reading with the race's winner as the suggestion, and | lr_range, overfit_batch       |
|               | the verdict on the user's LR                                      |                               |
| loss_facts    | the loss model and its reduction over the batch                   | initial_loss, overfit_batch, grad_norms |
| call_order    | modules in the order of their first call                          | grad_norms, param_updates     |
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Mapping

from .analysis.lr_curve import RaceRules, ReadingRules, SweepSettings, read_sweep, with_race
from .instruments.activations import ActivationInstrument
from .instruments.hooks import CallOrder
from .memory import out_of_memory, release_memory
from .passes.facts import call_order, loss_facts
from .passes.init_pass import init_pass
from .passes.lr_race import lr_race
from .passes.lr_sweep import lr_sweep
from .passes.train_probe import TRAIN_STEPS, train_probe

#: training steps at the end of the probe over which activations are measured after training
TRAIN_WINDOW = 6

#: the instruments each pass carries: name -> factory(model) -> context manager with result()
INSTRUMENTS: Mapping[str, Mapping[str, Callable]] = {
    "init_pass": {
        "activations": ActivationInstrument,
        "calls": CallOrder,
    },
    "train_probe": {
        "activations": lambda model: ActivationInstrument(model, skip_forwards=max(TRAIN_STEPS - TRAIN_WINDOW, 0)),
    },
}


def _settings(cls, options: Mapping) -> Any:
    """A settings dataclass with the fields that ``options`` (one check's thresholds) override."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names})


def _race_rules(options: Mapping) -> RaceRules:
    """The race's rules from lr_range's ``race_*`` thresholds (``race_steps`` -> ``steps``, ...)."""
    names = {f.name for f in dataclasses.fields(RaceRules)}
    return RaceRules(**{k[5:]: v for k, v in options.items() if k.startswith("race_") and k[5:] in names})


def _lr_reading(s) -> Any:
    """The range test's reading with the race's winner as its suggestion and the user's LR judged with it."""
    options = s.options.get("lr_range", {})
    return with_race(s.evidence("lr_curve"), s.evidence("lr_race"), _race_rules(options),
                     _settings(ReadingRules, options), s.evidence("lr_sweep").multiplier)


#: evidence name -> provider(session)
PROVIDERS: Mapping[str, Callable] = {
    "init_pass": lambda s: init_pass(s, INSTRUMENTS["init_pass"]),
    "train_probe": lambda s: train_probe(s, INSTRUMENTS["train_probe"]),
    "lr_sweep": lambda s: lr_sweep(s, _settings(SweepSettings, s.options.get("lr_range", {}))),
    "lr_curve": lambda s: read_sweep(s.evidence("lr_sweep"), _settings(ReadingRules, s.options.get("lr_range", {}))),
    "lr_race": lambda s: lr_race(s, s.evidence("lr_sweep"), s.evidence("lr_curve"),
                                 _race_rules(s.options.get("lr_range", {}))),
    "lr_reading": _lr_reading,
    "loss_facts": loss_facts,
    "call_order": call_order,
}


class EvidenceCache:
    """Evidence by name, computed on first use. A provider that raised raises again for every later reader (the
    checks that need it report the error), without running twice."""

    def __init__(self, reset: Callable[[], None], timings: dict):
        self._reset, self._timings = reset, timings
        self._values: dict[str, tuple[str, Any]] = {}

    def get(self, name: str, session) -> Any:
        if name not in PROVIDERS:
            raise KeyError(f"no evidence provider named {name!r}; known: {sorted(PROVIDERS)}")
        if name not in self._values:
            self._values[name] = self._compute(name, session)
        kind, value = self._values[name]
        if kind == "error":
            raise value
        if kind == "oom":  # a copy each time: a raised exception keeps the frames it passes through
            raise copy.copy(value)
        return value

    def _compute(self, name: str, session) -> tuple[str, Any]:
        t0 = time.perf_counter()
        self._reset()
        oom = False
        try:
            return "ok", PROVIDERS[name](session)
        except Exception as exc:  # kept, and raised to each reader: the check that needs it reports it
            oom = out_of_memory(exc)
            if oom:  # kept without its traceback, whose frames hold what the pass allocated
                return "oom", copy.copy(exc)
            return "error", exc
        finally:
            if oom:  # the frames are gone: hand their memory back before anything else runs
                release_memory()
            self._reset()
            self._timings[f"evidence:{name}"] = time.perf_counter() - t0

    def clear(self) -> None:
        self._values.clear()
