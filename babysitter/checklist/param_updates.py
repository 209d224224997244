"""param_updates: does every trainable parameter get a gradient and move, and by how much per step?"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.params import grouped as _group
from ..analysis.params import is_weight_matrix, layers_of, module_at, owner_of, reference_norm
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


@dataclass
class ParamUpdates(Check):
    id = "param_updates"
    title = "Every parameter gets a gradient and moves"
    what = """From the shared training probe (the user's optimizer, a few real steps): which trainable parameters
    the optimizer does not hold, which never receive a gradient (in a module that runs in the forward pass: the
    gradient path is cut; in a module that never runs: an unused module), which never move, and which layers are
    frozen (requires_grad=False) between or after layers that train. Per parameter, the update-to-weight ratio
    ||w_after - w_before|| / ||w_before|| (median over the measured steps), judged on weight matrices."""
    why = """A parameter that the loss depends on but the optimizer does not hold (a module created after the
    optimizer, a param group that forgot it) or whose gradient path is cut (.detach(), .data, torch.no_grad(),
    an argmax or integer cast in the forward) silently stays at its initial value. A frozen layer in the middle of
    a trainable stack is usually a leftover from a fine-tuning recipe. The update/weight ratio says whether the
    learning rate fits the parameters' scale: about 1e-3 is healthy; far below, the weights barely change; far
    above, each step rewrites them."""
    todo = """Create the optimizer after the model is complete and pass it model.parameters() (or check the param
    groups); remove .detach()/.data/no_grad from the forward path; delete unused modules or pass
    find_unused_parameters where intended; set requires_grad=True on layers meant to train. For a ratio far from
    1e-3, tune the learning rate (see lr_range)."""
    sources = (
        "CS231n, 'Neural Networks Part 3: Learning and Evaluation', ratio of weights:updates: 'a rough heuristic is "
        "that this ratio should be somewhere around 1e-3. If it is lower than this then the learning rate might be "
        "too low. If it is higher then the learning rate is likely too high'",
        "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): verify that every parameter gets a gradient "
        "and trains",
        "Thresholds 1e-5 and 1e-1: two orders of magnitude either side of CS231n's 1e-3; Adam's first steps move "
        "each weight by about the learning rate, so lr 1e-3 on weights of std 0.02-0.1 gives 1e-2-5e-2, inside",
    )

    low_ratio: float = threshold(1e-5, "warn when a weight matrix's median update/weight ratio is below this")
    high_ratio: float = threshold(1e-1, "warn when it is above this")
    rewrite_ratio: float = threshold(1.0, "warn when a single measured step of a weight matrix changes it by more "
                                          "than this fraction of its norm (the median hides this when the weights "
                                          "blow up and the ratio falls as they grow). Ratios of a weight matrix "
                                          "initialised below the standard scale are taken against the norm of that "
                                          "scale (std 1/sqrt(3 max(fan_in, fan_out)))")

    def run(self, session):
        probe = session.evidence("train_probe")
        model = session.model
        named = list(model.named_parameters())
        if not probe.param_names:
            return self.result("fail", f"no trainable parameter: all {len(named)} parameters have "
                                       f"requires_grad=False", metrics={"trainable": 0, "frozen": len(named)},
                               advice=("Set requires_grad=True on the layers meant to train.",))
        called = {id(module_at(model, n)) for n in session.evidence("call_order")}
        idx = {n: i for i, n in enumerate(probe.param_names)}
        moved = self._moved(probe)
        floored = self._floored(probe, model)
        ratios = self._median_ratios(probe, floored)
        peaks = self._peak_ratios(probe, floored)
        zero_init = {n for n, p in named if p.requires_grad and is_weight_matrix(model, n)
                     and float(p.detach().float().norm()) == 0.0}

        not_in_opt = [n for n in probe.not_in_optimizer if n not in probe.no_grad]
        cut, unused = [], []
        for n in probe.no_grad:
            owner = module_at(model, owner_of(n))
            if id(owner) not in called:
                unused.append(n)
            elif not list(owner.children()):
                cut.append(n)
            else:  # a parameter registered on a container: unused or cut, cannot tell
                unused.append(n)
        # a 1-D parameter with a tiny but nonzero gradient (a bias before BatchNorm) may not move in float32:
        # only weight matrices, or parameters whose gradient is exactly zero at every step, count as stuck
        still = [n for n in probe.param_names if n not in probe.no_grad and n not in probe.not_in_optimizer
                 and not moved[idx[n]] and (is_weight_matrix(model, n) or self._zero_grad(probe, idx[n]))]
        sandwiched, suffix, prefix = self._frozen(named)
        # a frozen scalar or vector (a fixed temperature, a frozen norm's affine in a fine-tuned backbone) is a
        # constant by design far more often than a forgotten layer: only layers with frozen tensors of >= 2
        # dimensions (weight matrices, tables) are warned about
        constants = [n for n in sandwiched + suffix if not self._frozen_layer_has_matrix(named, n)]
        sandwiched = [n for n in sandwiched if n not in constants]
        suffix = [n for n in suffix if n not in constants]
        judged = {n: r for n, r in ratios.items() if is_weight_matrix(model, n) and n not in zero_init
                  and n not in probe.no_grad and n not in probe.not_in_optimizer and math.isfinite(r) and r > 0}
        low = [n for n, r in judged.items() if r < self.low_ratio]
        high = [n for n, r in judged.items() if r > self.high_ratio or peaks[n] > self.rewrite_ratio]

        metrics = {
            "trainable": len(probe.param_names), "frozen": len(probe.frozen), "not_in_optimizer": len(not_in_opt),
            "no_grad_path": len(cut), "unused": len(unused), "never_moved": len(still),
            "frozen_between_trainable": len(sandwiched), "frozen_after_trainable": len(suffix),
            "frozen_prefix": len(prefix), "ratio_median": float(np.median(list(judged.values()))) if judged else None,
            "ratio_min": min(judged.values()) if judged else None, "ratio_max": max(judged.values()) if judged
            else None, "ratio_low": len(low), "ratio_high": len(high), "lr": probe.lr,
        }
        metrics["ratio_peak"] = max((peaks[n] for n in judged), default=None)
        status, summary, advice = self._verdict(metrics, not_in_opt, cut, still, unused, sandwiched, suffix, low,
                                                high, judged, probe.lr, peaks)
        notes = []
        if constants:
            notes.append(f"{len(constants)} frozen scalar/vector parameter(s) among trainable layers (constants "
                         f"by design, such as a fixed temperature or frozen norm scales): {_group(constants)}")
        if prefix:
            notes.append(f"{len(prefix)} frozen parameters before the first trainable layer (a frozen backbone, "
                         f"as in fine-tuning): {_group(prefix)}")
        if zero_init:
            notes.append(f"zero-initialised parameters have no meaningful update/weight ratio: {_group(sorted(zero_init))}")
        rows = self._rows(model, named, probe, idx, ratios, moved, not_in_opt, cut, unused, still,
                          sandwiched + suffix, judged)
        table = Table("parameters", "Parameters: gradient, optimizer, update/weight ratio (median over steps)",
                      ("parameter", "shape", "requires_grad", "in optimizer", "got grad", "update/weight",
                       "judged", "verdict"), rows)
        return self.result(status, summary, metrics=metrics, advice=tuple(advice), notes=tuple(notes),
                           tables=(table,), plots=(self._plot(judged, ratios, model),))

    # -- evidence -----------------------------------------------------------------------------------
    @staticmethod
    def _moved(probe) -> list[bool]:
        rows = probe.update_ratios
        return [any(isinstance(r[i], float) and (r[i] != 0.0) for r in rows) for i in range(len(probe.param_names))]

    @staticmethod
    def _floored(probe, model) -> list[list[float]]:
        """Update ratios ||dw|| / max(||w||, ||w_ref||): a weight matrix initialised far below the standard scale
        (a head at std 1e-3, a residual branch near zero) is measured against the norm the standard init would
        give it, so that its first Adam steps (each moves every weight by about lr) are not read as rewrites."""
        refs = [reference_norm(tuple(model.get_parameter(n).shape)) if is_weight_matrix(model, n) else 0.0
                for n in probe.param_names]
        if not probe.weight_norms:
            return probe.update_ratios
        return [[r * w / max(w, ref) if math.isfinite(r) and w > 0 else r for r, w, ref in zip(row, norms, refs)]
                for row, norms in zip(probe.update_ratios, probe.weight_norms)]

    @staticmethod
    def _peak_ratios(probe, rows) -> dict[str, float]:
        return {n: max((r[i] for r in rows if math.isfinite(r[i])), default=float("nan"))
                for i, n in enumerate(probe.param_names)}

    @staticmethod
    def _zero_grad(probe, i: int) -> bool:
        return all(row[i] == 0.0 for row in probe.param_grad_norms)

    @staticmethod
    def _median_ratios(probe, rows) -> dict[str, float]:
        out = {}
        for i, n in enumerate(probe.param_names):
            vals = [r[i] for r in rows if math.isfinite(r[i])]
            out[n] = float(np.median(vals)) if vals else float("nan")
        return out

    @staticmethod
    def _frozen_layer_has_matrix(named, name: str) -> bool:
        owner = owner_of(name)
        return any(owner_of(n) == owner and not p.requires_grad and p.ndim >= 2 for n, p in named)

    @staticmethod
    def _frozen(named) -> tuple[list[str], list[str], list[str]]:
        """Frozen parameters between trainable layers, after the last trainable one, and before the first one."""
        names = [n for n, _ in named]
        grad = {n: p.requires_grad for n, p in named}
        layers = layers_of(names)
        trains = [any(grad[names[i]] for i in idx) for _, idx in layers]
        if not any(trains):
            return [], [], []
        first = trains.index(True)
        last = len(trains) - 1 - trains[::-1].index(True)
        sandwiched, suffix, prefix = [], [], []
        for k, (_, idx) in enumerate(layers):
            frozen = [names[i] for i in idx if not grad[names[i]]]
            (prefix if k < first else suffix if k > last else sandwiched).extend(frozen)
        return sandwiched, suffix, prefix

    # -- verdict ------------------------------------------------------------------------------------
    def _verdict(self, m, not_in_opt, cut, still, unused, sandwiched, suffix, low, high, judged, lr, peaks):
        advice, fails, warns = [], [], []
        if not_in_opt:
            fails.append(f"{len(not_in_opt)} parameter(s) get a gradient but are not in the optimizer")
            advice.append(f"Not in the optimizer, so never updated although the loss depends on them: "
                          f"{_group(not_in_opt)}. Build the optimizer from model.parameters() after the model is "
                          f"complete, or add them to a param group.")
        if cut:
            fails.append(f"{len(cut)} parameter(s) in modules that run get no gradient")
            advice.append(f"These layers run in the forward pass but receive no gradient: the path to the loss is "
                          f"cut (.detach(), .data, torch.no_grad(), argmax/round or an integer cast after them): "
                          f"{_group(cut)}.")
        if still:
            fails.append(f"{len(still)} parameter(s) never move")
            advice.append(f"These get a gradient and are in the optimizer but did not change over the probe "
                          f"(gradient exactly zero, or a param group with lr 0): {_group(still)}.")
        if unused:
            warns.append(f"{len(unused)} parameter(s) of modules never called in the forward pass")
            advice.append(f"Unused: never called in the forward pass, so they get no gradient: {_group(unused)}. "
                          f"Delete them if they are leftovers (a head from another task); if they are meant to "
                          f"be used, the forward skips them.")
        if sandwiched or suffix:
            frozen = sandwiched + suffix
            where = "between trainable layers" if sandwiched else "after the last trainable layer"
            warns.append(f"{len(frozen)} frozen parameter(s) {where}")
            advice.append(f"requires_grad=False {where}: {_group(frozen)}. Freezing a backbone prefix is common in "
                          f"fine-tuning; a frozen layer in the middle or at the end of a trained stack is usually "
                          f"a leftover. Set requires_grad=True if it should train.")
        if low:
            warns.append(f"{_matrices(len(low))} with update/weight below {self.low_ratio:g}")
            advice.append(f"Update/weight ratio below {self.low_ratio:g} (CS231n: ~1e-3): "
                          f"{self._ratios_text(low, judged, peaks)}; the learning rate ({lr}) is too low for them.")
        if high:
            warns.append(f"{_matrices(len(high))} with update/weight above {self.high_ratio:g} "
                         f"(median) or {self.rewrite_ratio:g} (one step)")
            advice.append(f"Update/weight ratio too high (CS231n: ~1e-3): "
                          f"{self._ratios_text(high, judged, peaks)}; each step rewrites these weights: lower "
                          f"the learning rate ({lr}) or check their init scale.")
        median = m["ratio_median"]
        tail = f"; median update/weight {median:.2g}" if median is not None else ""
        if fails:
            return "fail", "; ".join(fails) + tail, advice
        if warns:
            return "warn", "; ".join(warns) + tail, advice
        return "pass", (f"all {m['trainable']} trainable parameters get a gradient and move{tail} "
                        f"(CS231n: ~1e-3)"), advice

    @staticmethod
    def _ratios_text(names, judged, peaks, limit: int = 6) -> str:
        return ", ".join(f"{n} {judged[n]:.2g} (max {peaks[n]:.2g})" for n in names[:limit]) + (
            f" and {len(names) - limit} more" if len(names) > limit else "")

    # -- report -------------------------------------------------------------------------------------
    def _rows(self, model, named, probe, idx, ratios, moved, not_in_opt, cut, unused, still, frozen_bad, judged):
        labels = {**{n: "not in optimizer" for n in not_in_opt}, **{n: "gradient path cut" for n in cut},
                  **{n: "unused module" for n in unused}, **{n: "never moves" for n in still},
                  **{n: "frozen (between/after trainable layers)" for n in frozen_bad}}
        rows = []
        for n, p in named:
            if n in labels:
                verdict = labels[n]
            elif not p.requires_grad:
                verdict = "frozen"
            elif n in judged:
                r = judged[n]
                verdict = "low" if r < self.low_ratio else "high" if r > self.high_ratio else "ok"
            else:
                verdict = "ok (not judged)"
            i = idx.get(n)
            rows.append((n, "x".join(map(str, p.shape)) or "scalar", p.requires_grad,
                         n not in probe.not_in_optimizer if p.requires_grad else None,
                         (n not in probe.no_grad) if i is not None else None, ratios.get(n), n in judged, verdict))
        return rows

    def _plot(self, judged, ratios, model) -> Plot:
        names = list(judged) or [n for n, r in ratios.items() if math.isfinite(r) and r > 0]
        return Plot("ratios", "Update/weight ratio per weight matrix (median over the probe's steps)", "bar",
                    (Series("update/weight", tuple(names), tuple(ratios[n] for n in names)),), x_label="parameter",
                    y_label="||dw|| / ||w||", log_y=True,
                    markers=(Marker(f"low {self.low_ratio:g}", self.low_ratio, "y"), Marker("CS231n 1e-3", 1e-3, "y"),
                             Marker(f"high {self.high_ratio:g}", self.high_ratio, "y")))


def _matrices(n: int) -> str:
    return f"{n} weight matri{'x' if n == 1 else 'ces'}"
