"""grad_norms: what healthy gradient norms look like, which clip value follows, and vanishing or exploding."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..analysis.params import display, is_weight_matrix, layers_of
from ..report import Marker, Plot, Series, Table
from .base import Check, threshold


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


@dataclass
class GradNorms(Check):
    id = "grad_norms"
    title = "Gradient norms and a clip threshold"
    what = """Over the optimizer steps of the shared training probe (the user's optimizer and learning rate): the
    total gradient norm per step (its histogram and percentiles), the gradient norm of each layer against depth,
    and the ratio of the first weight layer's gradient norm to the last one's (Linear, convolution, recurrent and
    attention weight matrices; embeddings, biases and norm scales left out). A clip value is suggested from the
    healthy steps: the 90th percentile of the finite total norms that are not spikes."""
    why = """Exploding gradients (a recurrent net whose recurrent weights amplify over a long sequence, a deep
    un-normalized net with too large an init, a learning rate that makes the norm grow step after step) make
    updates overshoot and end in NaN; vanishing gradients (the first layers get a thousandth of the last layer's
    gradient) leave the early layers untrained. Clipping at a value drawn from the healthy distribution removes the
    rare spikes without slowing normal steps."""
    todo = """For exploding gradients: clip (torch.nn.utils.clip_grad_norm_(model.parameters(), suggested_clip)
    between backward() and step()), lower the learning rate, use a gated cell (LSTM/GRU) instead of a vanilla RNN,
    shrink the init (Xavier/Kaiming, orthogonal with gain 1 for recurrent weights), add normalization or residual
    connections. For vanishing gradients: use ReLU-family activations instead of sigmoid/tanh in deep stacks,
    He/Kaiming init, normalization layers and residual connections."""
    sources = (
        "X. Zhang et al., 'AUTOTRAINER: An Automatic DNN Training Problem Detection and Repair System', ICSE 2021: "
        "vanishing gradient when the first layer's gradient norm over the last layer's is below 1e-3, exploding "
        "when it is above 70",
        "R. Pascanu, T. Mikolov, Y. Bengio, 'On the difficulty of training recurrent neural networks', ICML 2013: "
        "exploding gradients in RNNs; clip the gradient norm at a value drawn from the average norm over updates",
        "Y. Bengio, P. Simard, P. Frasconi, 'Learning long-term dependencies with gradient descent is difficult', "
        "IEEE TNN 1994",
        "PyTorch docs: torch.nn.utils.clip_grad_norm_ (rescales the whole gradient, keeps its direction) and "
        "clip_grad_value_ (clamps each element)",
    )

    vanishing_ratio: float = threshold(1e-3, "fail when the first weight layer's gradient norm over the last one's "
                                             "(median over steps) is below this (AUTOTRAINER)")
    exploding_ratio: float = threshold(70.0, "fail when that ratio is above this (AUTOTRAINER)")
    huge_norm: float = threshold(1e4, "fail when the total gradient norm exceeds this at any step: for a "
                                      "mean-reduced loss healthy norms are of order 0.01-10 and common clip values "
                                      "are 0.5-5. A loss summed over the batch (reduction='sum', as in PyTorch's VAE "
                                      "example) has N times the gradient of its mean: its norms are divided by the "
                                      "batch size N before this comparison")
    growth: float = threshold(1e3, "fail when the median norm of the last quarter of the probe is this many times "
                                   "that of the first quarter (orders of magnitude of growth: divergence)")
    zero_steps: float = threshold(0.5, "fail when the total gradient norm is exactly zero on more than this share "
                                       "of the probe's steps (the loss no longer depends on any parameter)")
    spike_fail: float = threshold(100.0, "fail when one step's total norm is this many times the median of its "
                                         "neighbours (three steps either side): two orders of magnitude at once, the "
                                         "sudden jumps of exploding gradients in recurrent nets (Pascanu et al. "
                                         "2013); a loss that falls fast lowers the norm smoothly, a few x per step")
    spike: float = threshold(10.0, "steps whose total norm is this many times the median are spikes, left out of "
                                   "the suggested clip")
    clip_percentile: float = threshold(90.0, "the suggested clip is this percentile of the healthy total norms")

    def run(self, session):
        probe = session.evidence("train_probe")
        if not probe.param_names:
            self.skip("the model has no trainable parameter")
        totals = probe.grad_norm
        if not _finite(totals):
            if len(probe.skipped_steps) == len(totals):
                self.skip("every step's float16 gradient overflowed and was skipped, as a GradScaler would "
                          "(see nonfinite)")
            return self.result("fail", f"exploding gradients: the total norm is non-finite at every one of the "
                                       f"{len(totals)} steps", metrics={"steps": len(totals), "suggested_clip": None},
                               advice=("The nonfinite check names the first module that produced a NaN/Inf.",))
        if not any(v > 0 for v in _finite(totals)):
            self.skip("no parameter received a gradient during the probe (see param_updates)")
        model = session.model
        per_example = session.evidence("loss_facts").batch_factor
        order = {name: i for i, name in enumerate(session.evidence("call_order"))}
        layers = self._weight_layers(model, probe, order)
        per_step = self._layer_norms(probe, layers)  # [layer][step]
        medians = [float(np.median(f)) if (f := _finite(row)) else float("nan") for row in per_step]
        with_grad = [i for i, m in enumerate(medians) if math.isfinite(m) and m > 0]
        ratio, ratios = self._first_last(per_step, with_grad)

        finite = _finite(totals)
        p50 = float(np.median(finite))
        moving = [v for v in finite if v > 0] or finite  # zero-gradient steps say nothing about a clip value
        healthy = [v for v in moving if v <= self.spike * p50] or moving
        clip = float(np.percentile(healthy, self.clip_percentile))
        spikes = [s for s, v in enumerate(totals) if math.isfinite(v) and v > self.spike * p50]
        nonfinite = [s for s, v in enumerate(totals) if not math.isfinite(v) and s not in probe.skipped_steps]
        quarter = max(1, len(totals) // 4)
        early, late = _finite(totals[:quarter]), _finite(totals[-quarter:])
        growth = (float(np.median(late)) / float(np.median(early))) if early and late and np.median(early) > 0 \
            else None

        metrics = {
            "suggested_clip": clip, "p50": p50, "p90": float(np.percentile(finite, 90)),
            "p99": float(np.percentile(finite, 99)), "max": max(finite), "min": min(finite),
            "first_last_ratio": ratio, "growth": growth, "steps": len(totals), "spikes": len(spikes),
            "nonfinite_steps": len(nonfinite), "zero_steps": sum(v == 0 for v in finite), "lr": probe.lr, "batch_sum_factor": per_example,
            "local_spike": self._local_spike(totals),
            "first_layer": display(layers[with_grad[0]][0]) if with_grad else None,
            "last_layer": display(layers[with_grad[-1]][0]) if with_grad else None,
        }
        status, summary, advice = self._verdict(metrics, nonfinite, layers, medians, with_grad, spikes)
        if status == "pass" or "exploding" in summary:
            advice += self._clip_advice(clip)  # a clip is no answer to gradients that vanish
        notes = [f"{len(spikes)} spike step(s) (> {self.spike:g}x the median) left out of the suggested clip: "
                 f"steps {spikes[:10]}"] if spikes else []
        if per_example > 1:
            notes.append(f"the loss is summed over the batch (its value doubles when the batch is repeated): norms "
                         f"are compared with {self.huge_norm:g} after dividing by the batch size {per_example}")
        if probe.skipped_steps:
            notes.append(f"steps {probe.skipped_steps} had non-finite gradients in float16 and were skipped, as "
                         f"a GradScaler skips them")
        return self.result(status, summary, metrics=metrics, advice=tuple(advice), notes=tuple(notes),
                           tables=(self._table(model, layers, per_step, medians),),
                           plots=self._plots(totals, clip, layers, medians, ratios))

    # -- evidence -----------------------------------------------------------------------------------
    @staticmethod
    def _weight_layers(model, probe, order: dict[str, int]) -> list[tuple[str, list[int]]]:
        """Layers (owning modules, in the order the forward first calls them; registration order for the rest)
        with their weight matrices' indices in the probe."""
        out = []
        for owner, idx in layers_of(probe.param_names):
            weights = [i for i in idx if is_weight_matrix(model, probe.param_names[i])]
            if weights:
                out.append((owner, weights))
        rank = {owner: k for k, (owner, _) in enumerate(out)}
        return sorted(out, key=lambda layer: (order.get(layer[0], len(order)), rank[layer[0]]))

    @staticmethod
    def _local_spike(totals, half: int = 3) -> Optional[list]:
        """[step, ratio, norm] of the step whose norm is the largest multiple of the median of its neighbours."""
        best = None
        for step, v in enumerate(totals):
            around = _finite(totals[max(0, step - half):step] + totals[step + 1:step + 1 + half])
            if not math.isfinite(v) or not around:
                continue
            base = float(np.median(around))
            if base <= 0:
                continue
            ratio = v / base
            if best is None or ratio > best[1]:
                best = [step, ratio, v]
        return best

    @staticmethod
    def _layer_norms(probe, layers) -> list[list[float]]:
        rows = []
        for _, idx in layers:
            rows.append([math.sqrt(sum(step[i] ** 2 for i in idx)) for step in probe.param_grad_norms])
        return rows

    @staticmethod
    def _first_last(per_step, with_grad) -> tuple[Optional[float], list[float]]:
        """The median over steps of first/last layer gradient norm, and the per-step ratios."""
        if len(with_grad) < 2:
            return None, []
        first, last = per_step[with_grad[0]], per_step[with_grad[-1]]
        ratios = [a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")
                  for a, b in zip(first, last)]
        good = _finite(ratios)
        return (float(np.median(good)) if good else None), ratios

    # -- verdict ------------------------------------------------------------------------------------
    def _verdict(self, m, nonfinite, layers, medians, with_grad, spikes):
        advice: list[str] = []
        ratio, first, last = m["first_last_ratio"], m["first_layer"], m["last_layer"]
        clip = m["suggested_clip"]
        if nonfinite:
            advice.append(f"The gradient became non-finite at step {nonfinite[0]} (after norms up to "
                          f"{m['max']:.3g}); the nonfinite check names the first module that produced it. Clip "
                          f"the gradient norm and lower the learning rate (now {m['lr']}).")
            return "fail", (f"exploding gradients: the total norm is non-finite at {len(nonfinite)} of "
                            f"{m['steps']} steps (first at step {nonfinite[0]})"), advice
        if m["zero_steps"] > self.zero_steps * m["steps"]:
            advice.append(f"No parameter gets any gradient at {m['zero_steps']} of {m['steps']} steps: the loss has "
                          f"stopped depending on the weights. Usual causes: outputs pinned by a saturated softmax or "
                          f"sigmoid (see saturation; a softmax fed into CrossEntropyLoss), every ReLU dead (see "
                          f"dead_relu), or a learning rate (now {m['lr']}) that wrecked the weights in the first "
                          f"steps (see lr_range).")
            return "fail", (f"vanishing gradients: the total gradient norm is exactly 0 at {m['zero_steps']} of "
                            f"{m['steps']} probe steps"), advice
        if ratio is not None and ratio > self.exploding_ratio:
            advice.append(f"The first layer {first} gets {ratio:.3g}x the gradient of the last layer {last}: "
                          f"gradients grow on their way back. For a recurrent net use an LSTM/GRU or an "
                          f"orthogonal recurrent init with gain <= 1; for a deep net shrink the init and add "
                          f"normalization; clip at {clip:.3g}.")
            return "fail", (f"exploding gradients: first/last layer gradient norm ratio {ratio:.3g} > "
                            f"{self.exploding_ratio:g} ({first} vs {last})"), advice
        if m["max"] / m["batch_sum_factor"] > self.huge_norm:
            advice.append(f"The total gradient norm reaches {m['max']:.3g} (median {m['p50']:.3g}): the forward "
                          f"pass amplifies (too large an init, no normalization, large recurrent weights) or the "
                          f"loss is summed rather than averaged. Fix the scale first, then clip.")
            return "fail", (f"exploding gradients: total norm up to {m['max']:.3g} > {self.huge_norm:g} "
                            f"(median {m['p50']:.3g})"), advice
        spike = m["local_spike"]
        if spike is not None and spike[1] > self.spike_fail:
            step, ratio, value = spike
            advice.append(f"The gradient norm at step {step} ({value:.3g}) is {ratio:.3g}x that of the steps around "
                          f"it: exploding gradients in bursts, typical of recurrent weights that amplify over a "
                          f"sequence. Clip at {clip:.3g}, use an LSTM/GRU or an orthogonal recurrent init with gain "
                          f"<= 1, and lower the learning rate (now {m['lr']}).")
            return "fail", (f"exploding gradients: a spike of {value:.3g} at step {step}, {ratio:.3g}x the steps "
                            f"around it (> {self.spike_fail:g}x; median {m['p50']:.3g})"), advice
        if m["growth"] is not None and m["growth"] > self.growth:
            advice.append(f"The gradient norm grew {m['growth']:.3g}x over {m['steps']} steps: training is "
                          f"diverging. Lower the learning rate (now {m['lr']}) and clip at {clip:.3g}.")
            return "fail", f"exploding gradients: the total norm grew {m['growth']:.3g}x during the probe", advice
        if ratio is not None and ratio < self.vanishing_ratio:
            advice.append(f"The first layer {first} gets {ratio:.3g}x the gradient of the last layer {last}: the "
                          f"early layers barely learn. Use ReLU-family activations, Kaiming init, normalization "
                          f"or residual connections; check for saturated tanh/sigmoid units.")
            return "fail", (f"vanishing gradients: first/last layer gradient norm ratio {ratio:.3g} < "
                            f"{self.vanishing_ratio:g} ({first} vs {last})"), advice
        ratio_text = f", first/last layer ratio {ratio:.3g}" if ratio is not None else ""
        return "pass", (f"gradient norms healthy: median {m['p50']:.3g}, p99 {m['p99']:.3g}{ratio_text}; "
                        f"suggested clip {clip:.3g}"), advice

    @staticmethod
    def _clip_advice(clip: float) -> list[str]:
        return [f"To guard against rare spikes: torch.nn.utils.clip_grad_norm_(model.parameters(), "
                f"max_norm={clip:.3g}) after backward() (with a GradScaler, after scaler.unscale_(optimizer)). "
                f"Prefer norm clipping, which rescales the whole gradient and keeps its direction; "
                f"clip_grad_value_ clamps each element and changes the direction, use it only against isolated "
                f"outlier elements."]

    # -- report -------------------------------------------------------------------------------------
    @staticmethod
    def _table(model, layers, per_step, medians) -> Table:
        rows = []
        for depth, ((owner, _), row, med) in enumerate(zip(layers, per_step, medians)):
            finite = _finite(row)
            module = model.get_submodule(owner) if owner else model
            rows.append((depth, display(owner), type(module).__name__, med,
                         float(np.percentile(finite, 90)) if finite else None, max(finite) if finite else None))
        return Table("layers", "Gradient norm per layer (weight matrices), over the probe's steps",
                     ("depth", "layer", "type", "median", "p90", "max"), rows)

    def _plots(self, totals, clip, layers, medians, ratios) -> tuple[Plot, ...]:
        plots = [
            Plot("total_hist", "Total gradient norm over the probe's steps", "hist",
                 (Series("total norm", (), _finite(totals)),), x_label="||g||", y_label="steps",
                 markers=(Marker(f"suggested clip {clip:.3g}", clip),), bins=20),
            Plot("total_steps", "Total gradient norm per step", "line",
                 (Series("total norm", tuple(range(len(totals))), totals),), x_label="step", y_label="||g||",
                 log_y=True, markers=(Marker("suggested clip", clip, axis="y"),)),
        ]
        if layers:
            plots.append(Plot("depth", "Median gradient norm per layer against depth", "line",
                              (Series("median ||g||", tuple(range(len(layers))), medians),), x_label="layer depth "
                              f"(0 = {display(layers[0][0])})", y_label="||g||", log_y=True))
        if ratios:
            plots.append(Plot("first_last", "First/last layer gradient norm ratio per step", "line",
                              (Series("ratio", tuple(range(len(ratios))), ratios),), x_label="step",
                              y_label="ratio", log_y=True,
                              markers=(Marker(f"vanishing {self.vanishing_ratio:g}", self.vanishing_ratio, "y"),
                                       Marker(f"exploding {self.exploding_ratio:g}", self.exploding_ratio, "y"))))
        return tuple(plots)
