"""input_scale: are the inputs zero-centred and unit-scaled?"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ..analysis import fmt
from ..analysis.status import Status, level
from ..report import CheckResult, Plot, Series, Table
from ..usercode import ModelInputs
from .base import Check, Judgment, threshold

if TYPE_CHECKING:
    from ..session import Session


# -- per-feature statistics ------------------------------------------------------------------------------
def _first_weighted(model: nn.Module) -> Optional[nn.Module]:
    """The first module (in definition order) that holds parameters of its own: usually the one the input meets."""
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            return m
    return None


def feature_dim(x: torch.Tensor, model: nn.Module) -> int:
    """The dimension that indexes features: the last one for tables (N, F) and sequences (N, L, F), the channel
    dimension for images (N, C, H, W), volumes and signals fed to a Conv1d (N, C, L). Channels-last images
    are recognised when the first convolution's in_channels match the last dimension only."""
    if x.ndim <= 2:
        return x.ndim - 1
    first = _first_weighted(model)
    conv = isinstance(first, nn.modules.conv._ConvNd)
    if x.ndim == 3:
        return 1 if conv and first.in_channels == x.shape[1] != x.shape[2] else 2
    if conv and first.in_channels == x.shape[-1] != x.shape[1]:
        return x.ndim - 1
    return 1


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature statistics of one input over several batches (host tensors of length F)."""

    name: str
    shape: tuple
    dim: int
    layout: str  # "feature" or "channel"
    count: int
    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    integer: torch.Tensor  # bool: every value integer-valued
    binary: torch.Tensor  # bool: every value 0 or 1
    nonfinite: int

    @property
    def features(self) -> int:
        return int(self.mean.numel())

    @property
    def rms(self) -> torch.Tensor:
        """sqrt(E[x^2]): the scale a linear layer sees (LeCun et al. 1998: the Hessian of a linear unit is E[x x^T])."""
        return (self.mean ** 2 + self.std ** 2).sqrt()

    @property
    def constant(self) -> torch.Tensor:
        return (self.max - self.min) <= 1e-12 * torch.maximum(self.max.abs(), torch.ones_like(self.max))

    @property
    def continuous(self) -> torch.Tensor:
        """Features judged for scale: neither constant nor binary (0/1 flags, one-hot codes, masks)."""
        return ~self.constant & ~self.binary


class _Accumulator:
    """Streams per-feature sums on the device, shifted by the first batch's means (no cancellation for features
    such as a year, mean 2000 and std 10); one small host transfer per batch."""

    def __init__(self) -> None:
        self.shift: Optional[torch.Tensor] = None
        self.parts: list[torch.Tensor] = []

    def update(self, rows: torch.Tensor) -> None:  # rows: (S, F)
        x = rows.float()
        finite = torch.isfinite(x)
        if self.shift is None:
            self.shift = torch.where(finite, x, 0.0).sum(0) / finite.sum(0).clamp_min(1)
        shifted = torch.where(finite, x - self.shift, 0.0)
        big = torch.finfo(torch.float32).max
        self.parts.append(torch.stack([
            finite.sum(0).float(), shifted.sum(0), shifted.pow(2).sum(0),
            torch.where(finite, x, big).amin(0), torch.where(finite, x, -big).amax(0),
            ((x != x.round()) & finite).any(0).float(), ((x != 0) & (x != 1) & finite).any(0).float(),
            (~finite).sum(0).float(),
        ]).cpu().double())  # float64 on the host: MPS has none

    def result(self, name: str, shape: tuple, dim: int, layout: str) -> FeatureStats:
        p = torch.stack(self.parts)  # (batches, 8, F)
        n = p[:, 0].sum(0).clamp_min(1)
        s1, s2 = p[:, 1].sum(0), p[:, 2].sum(0)
        centred = s1 / n
        var = (s2 / n - centred ** 2).clamp_min(0) * n / (n - 1).clamp_min(1)
        return FeatureStats(name=name, shape=shape, dim=dim, layout=layout, count=int(n.min()),
                            mean=self.shift.cpu().double() + centred, std=var.sqrt(), min=p[:, 3].amin(0),
                            max=p[:, 4].amax(0), integer=p[:, 5].amax(0) == 0, binary=p[:, 6].amax(0) == 0,
                            nonfinite=int(p[:, 7].sum()))


def input_stats(session: "Session", batches: int) -> tuple[list[FeatureStats], Optional[ModelInputs]]:
    """Per-feature (tables, sequences) or per-channel (images) statistics of every float input of the model."""
    accs: dict[str, tuple[_Accumulator, tuple, int]] = {}
    first = None
    for i in range(min(batches, len(session.pool))):
        seen = session.inputs_of(session.batch(i))
        if seen is None:
            return [], None
        first = first or seen
        for name, x in seen.floats():
            if name not in accs:
                accs[name] = (_Accumulator(), tuple(x.shape), feature_dim(x, session.model))
            acc, shape, dim = accs[name]
            if x.ndim != len(shape) or x.shape[dim] != shape[dim]:
                continue  # a batch whose feature count differs (ragged data) is left out
            acc.update(x.detach().movedim(dim, -1).reshape(-1, x.shape[dim]) if x.ndim > 1 else x.reshape(-1, 1))
    out = []
    for name, (acc, shape, dim) in accs.items():
        layout = "feature" if len(shape) <= 2 or dim == len(shape) - 1 and len(shape) == 3 else "channel"
        out.append(acc.result(name, shape, dim, layout))
    return out, first


# -- reading the statistics ------------------------------------------------------------------------------
#: a feature-scale ratio compares the largest range with the smallest one; from this many features on (flattened
#: images, spectra) with the 10% quantile of the ranges instead, so that faint edge pixels do not count
_MANY_FEATURES, _SPREAD_QUANTILE = 64, 0.1
#: integer-valued images in [0, 255] whose maximum reaches this are raw 8-bit pixels
_RAW_PIXEL_MAX = 32
#: at most this many per-feature constants are written out in the advice
_ADVICE_FEATURES = 16
#: at most this many rows per table, bars per plot
_TABLE_ROWS, _PLOT_BARS = 512, 64


def _per_feature(s: FeatureStats) -> dict:
    """The per-feature means and stds for the metrics: every feature, or, past the table's ``_TABLE_ROWS``, the
    first ones with ``per_feature_listed`` saying how many (``features`` holds the full count); 6 digits."""
    n = min(s.features, _TABLE_ROWS)
    digits = lambda values: [float(f"{float(v):.6g}") for v in values[:n]]  # noqa: E731
    return {"mean": digits(s.mean), "std": digits(s.std), "per_feature_listed": n}


def _nums(values) -> str:
    return "[" + ", ".join(fmt.num(float(v)) for v in values) + "]"


def _spread(rng: torch.Tensor) -> tuple[float, int, int]:
    """Largest range over a low quantile of the ranges: (ratio, index of the low one, index of the high one)."""
    if rng.numel() < 2:
        return 1.0, 0, 0
    order = rng.argsort()
    q = _SPREAD_QUANTILE if rng.numel() >= _MANY_FEATURES else 0.0
    lo = int(order[int(math.floor(q * (rng.numel() - 1)))])
    hi = int(order[-1])
    return float(rng[hi] / rng[lo].clamp_min(1e-30)), lo, hi


def uneven(rng: torch.Tensor, std: torch.Tensor) -> tuple[float, int, int, bool]:
    """How unevenly the features are scaled: the smaller of the range ratio and the std ratio, with the index
    of the low and the high feature and whether the std ratio was the smaller.

    Each statistic alone misreads common healthy inputs: sparse raw features (MNIST's rarely inked edge
    pixels in [0, 1]) have full ranges but tiny stds; sparse or skewed features that were standardized
    (StandardScaler on MNIST, a log-normal income) have unit std but long ranges. Features really on different
    scales (one in metres, one in millimetres) differ in both.
    """
    by_range, by_std = _spread(rng), _spread(std)
    if by_std[0] < by_range[0]:
        return (*by_std, True)
    return (*by_range, False)


@dataclass(frozen=True)
class _Continuous:
    """The continuous features of one input (indices into its features) and their statistics."""

    idx: torch.Tensor
    rms: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    rng: torch.Tensor

    @classmethod
    def of(cls, s: FeatureStats) -> "_Continuous":
        idx = s.continuous.nonzero().flatten()
        return cls(idx, s.rms[idx], s.mean[idx], s.std[idx], (s.max - s.min)[idx])

    def label(self, s: FeatureStats, k: int) -> str:
        """'feature 3 of x' for the k-th continuous feature."""
        return f"{s.layout} {int(self.idx[k])} of {s.name}"


def raw_pixels(s: FeatureStats) -> bool:
    """Integer values in [0, 255] reaching ``_RAW_PIXEL_MAX``, in an image or in many features: 8-bit pixels."""
    return ((len(s.shape) >= 3 or s.features >= _MANY_FEATURES) and bool(s.integer.all()) and float(s.min.min()) >= 0
            and _RAW_PIXEL_MAX <= float(s.max.max()) <= 255)


def norm_constants(s: FeatureStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardizing constants; binary and constant features keep mean 0 and std 1 (left as they are)."""
    keep = s.continuous
    std = torch.where(keep, s.std.clamp_min(1e-8), torch.ones_like(s.std))
    mean = torch.where(keep & (s.mean.abs() > 1e-4 * std), s.mean, torch.zeros_like(s.mean))  # no 1e-9 noise
    return mean, std


def table_id(s: FeatureStats) -> str:
    return "".join(c if c.isalnum() else "_" for c in f"stats_{s.name}").strip("_")


@dataclass(frozen=True)
class InputScaleMeasured:
    """Per-feature statistics of every float input the model receives (host tensors)."""

    stats: tuple[FeatureStats, ...]

    @property
    def judged(self) -> tuple[FeatureStats, ...]:
        """The inputs with a scale to judge: some continuous feature, or non-finite values."""
        return tuple(s for s in self.stats if bool(s.continuous.any()) or s.nonfinite)


# -- the check -------------------------------------------------------------------------------------------
@dataclass
class InputScale(Check):
    id = "input_scale"
    title = "Input scale"
    constants = {"raw_pixel_max": _RAW_PIXEL_MAX, "many_features": _MANY_FEATURES,
                 "spread_quantile": _SPREAD_QUANTILE}
    what = """Per-feature (tables (N, F), sequences (N, L, F)) or per-channel (images (N, C, H, W), signals fed to a
    Conv1d (N, C, L)) mean, std, min and max of the float tensors that the forward passes to the model, over up to
    {batches} batches of the user's data. Fails on non-finite values, on raw 0-255 pixels (integer values in [0, 255]
    whose maximum reaches {raw_pixel_max}, in images or in {many_features} or more features), on a
    feature whose RMS sqrt(mean^2 + std^2) exceeds {fail_scale:g} (warns above {warn_scale:g}: means around 100,
    a year, an income) and on feature scales that differ by more than {fail_ratio:g}x in range and in std (warns
    above {warn_ratio:g}x; the largest against the smallest, or against the {spread_quantile:.0%} quantile from
    {many_features} features on). Warns on features that are not centred (|mean| above {offset_floor:g} and
    above {offset_sigmas:g} std) and on inputs that are all tiny (median RMS below {small_scale:g}). Constant and
    binary features (flags, one-hot codes, masks) are listed but not judged; integer inputs (token ids) are
    skipped."""
    why = """A linear layer's loss surface has the curvature E[x x^T] of its inputs: a large mean or one feature
    much larger than the others makes it ill-conditioned, so the learning rate that is safe for the largest
    direction crawls along the others (LeCun et al., Efficient BackProp). Large inputs also blow up the first
    layer's pre-activations under the standard inits, which assume unit-variance inputs, saturating units and
    inflating the initial loss."""
    todo = """Standardize each feature (tables) or channel (images) with constants computed on the training set:
    (x - mean) / std, transforms.Normalize(mean, std) for images, or StandardScaler; divide raw pixels by 255 first.
    The advice gives the constants computed from your own data. Images in [0, 1] are fine as they are; normalizing
    per channel is the usual practice."""
    sources = (
        "Y. LeCun, L. Bottou, G. Orr, K.-R. Mueller, 'Efficient BackProp' (1998), sec. 4.3: normalize the inputs "
        "to zero mean, equal (unit) variance; means and unequal scales slow learning",
        "CS231n, 'Neural Networks Part 2: data preprocessing': zero-centre and normalize; for images subtract the "
        "per-channel mean",
        "K. He et al. (2015) and X. Glorot & Y. Bengio (2010): the standard inits keep activations at unit scale "
        "only for unit-scale inputs; an input RMS of 20 makes first-layer pre-activations ~20x larger",
        "Thresholds: warn at 10x and fail at 100x between feature ranges (one and two orders of magnitude); "
        "[0, 1] images (mean ~0.5, std ~0.3, RMS ~0.6) pass by design",
    )

    batches: int = threshold(8, "batches of the user's data whose inputs are measured")
    warn_scale: float = threshold(5.0, "warn when a feature's RMS sqrt(mean^2 + std^2) exceeds this (inputs should "
                                       "be of order 1)")
    fail_scale: float = threshold(20.0, "fail when a feature's RMS exceeds this (raw pixels, means around 100)")
    offset_sigmas: float = threshold(3.0, "warn when a feature's |mean| exceeds this many standard deviations "
                                          "and also exceeds `offset_floor` (not centred)")
    offset_floor: float = threshold(1.0, "means below this in absolute value are fine whatever the std ([0, 1] "
                                         "data has mean/std ~1.7)")
    warn_ratio: float = threshold(10.0, f"warn when the largest feature range is this many times a small one "
                                        f"(the smallest; the {_SPREAD_QUANTILE:.0%} quantile from {_MANY_FEATURES} "
                                        f"features on), and the largest std this many times a small one too")
    fail_ratio: float = threshold(100.0, "fail when feature ranges and stds both differ by this factor (two orders "
                                         "of magnitude)")
    small_scale: float = threshold(0.01, "warn when the median feature RMS is below this (inputs divided twice, "
                                         "units far too large)")

    # -- measure ------------------------------------------------------------------------------------------
    def measure(self, session: "Session") -> InputScaleMeasured:
        stats, seen = input_stats(session, self.batches)
        if seen is None:
            self.skip("the forward never calls the model (it calls model.forward or submodules directly), so the "
                      "inputs it passes cannot be seen; call model(...) in forward")
        measured = InputScaleMeasured(tuple(stats))
        if not measured.judged:
            self.skip(self._nothing_to_judge(measured.stats, seen))
        return measured

    @staticmethod
    def _nothing_to_judge(stats: tuple[FeatureStats, ...], seen: ModelInputs) -> str:
        names = ", ".join(s.name for s in stats)
        ints = seen.integers()
        if ints:
            dtypes = fmt.listed([f"{n} ({str(t.dtype).replace('torch.', '')})" for n, t in ints], 4)
            return (f"the model's inputs are integers ({dtypes}): token ids or indices into an embedding have no "
                    f"scale to normalize" + (f"; float inputs {names} are binary or constant (masks)" if stats else ""))
        if stats:
            return (f"every float input is binary or constant ({names}: masks, one-hot codes); there is no scale "
                    f"to judge")
        return "the model receives no float tensor inputs"

    # -- judge --------------------------------------------------------------------------------------------
    def judge(self, m: InputScaleMeasured) -> Judgment:
        """The worst input's verdict, with the advice of every input."""
        verdicts = self.verdicts(m)
        worst = self.worst(m, verdicts)
        verdict = verdicts[worst.name]
        advice = [a for s in m.judged for a in verdicts[s.name].advice]
        if verdict.status != Status.PASS and not advice:
            advice.append(self._constants(worst))
        return Judgment(verdict.status, verdict.summary, tuple(dict.fromkeys(advice)))

    def verdicts(self, m: InputScaleMeasured) -> dict[str, Judgment]:
        return {s.name: self.judge_input(s) for s in m.judged}

    @staticmethod
    def worst(m: InputScaleMeasured, verdicts: dict[str, Judgment]) -> FeatureStats:
        """The first of the judged inputs with the worst verdict."""
        return max(m.judged, key=lambda s: level(verdicts[s.name].status))

    def judge_input(self, s: FeatureStats) -> Judgment:
        """The worst problem of one input: non-finite values, raw pixels, too large, uneven, not centred, tiny."""
        if s.nonfinite:
            return Judgment(Status.FAIL, f"{s.name} holds {s.nonfinite} non-finite values (NaN/Inf)",
                            (f"Find where NaN/Inf enter {s.name} (missing values, log(0), division by zero) and "
                             f"impute or drop them before training.",))
        if raw_pixels(s):
            return Judgment(Status.FAIL, f"{s.name} holds raw 0-255 pixel values (max {fmt.num(s.max.max())}, mean "
                                         f"{fmt.num(s.mean.mean())}, std {fmt.num(s.std.mean())})",
                            (self._pixel_advice(s),))
        c = _Continuous.of(s)
        fail, warn = Status.FAIL, Status.WARN
        return (self._too_large(s, c, self.fail_scale, fail) or self._uneven(s, c, self.fail_ratio, fail)
                or self._too_large(s, c, self.warn_scale, warn) or self._uneven(s, c, self.warn_ratio, warn)
                or self._off_centre(s, c) or self._tiny(s, c) or self._unit_scale(s, c))

    def _too_large(self, s: FeatureStats, c: _Continuous, limit: float, status: Status) -> Optional[Judgment]:
        k = int(c.rms.argmax())
        top = float(c.rms[k])
        if not top > limit:
            return None
        kind = "off-centre" if c.mean[k].abs() > c.std[k] else "too large"
        tail = ", far from unit scale" if status == Status.FAIL else " for unit-scale inputs"
        return Judgment(status, f"{c.label(s, k)} has mean {fmt.num(c.mean[k])} and std {fmt.num(c.std[k])} (RMS "
                                f"{fmt.num(top)} > {fmt.num(limit)}): {kind}{tail}", (self._constants(s),))

    def _uneven(self, s: FeatureStats, c: _Continuous, limit: float, status: Status) -> Optional[Judgment]:
        ratio, lo, hi, by_std = uneven(c.rng, c.std)
        if not ratio > limit:
            return None
        spread, verb = (c.std, "has std") if by_std else (c.rng, "spans")
        return Judgment(status, f"{s.layout} scales of {s.name} differ by {fmt.ratio(ratio)} (in range and in std): "
                                f"{s.layout} {int(c.idx[hi])} {verb} {fmt.num(spread[hi])}, {s.layout} "
                                f"{int(c.idx[lo])} {verb} {fmt.num(spread[lo])}", (self._constants(s),))

    def _off_centre(self, s: FeatureStats, c: _Continuous) -> Optional[Judgment]:
        offset = c.mean.abs() / c.std.clamp_min(1e-12)
        off = (c.mean.abs() > self.offset_floor) & (offset > self.offset_sigmas)
        if not off.any():
            return None
        j = int(torch.where(off, offset, torch.zeros_like(offset)).argmax())
        return Judgment(Status.WARN, f"{c.label(s, j)} is not centred: mean {fmt.num(c.mean[j])} is "
                                     f"{fmt.num(offset[j], 3)} std ({fmt.num(c.std[j])}); {int(off.sum())} such",
                        (self._constants(s),))

    def _tiny(self, s: FeatureStats, c: _Continuous) -> Optional[Judgment]:
        median = float(c.rms.median())
        if not median < self.small_scale:
            return None
        return Judgment(Status.WARN, f"{s.name} is tiny: median {s.layout} RMS {fmt.num(median)} < "
                                     f"{fmt.num(self.small_scale)} (divided twice?)", (self._constants(s),))

    @staticmethod
    def _unit_scale(s: FeatureStats, c: _Continuous) -> Judgment:
        ratio = uneven(c.rng, c.std)[0]
        return Judgment(Status.PASS, f"{s.name} is of unit scale: {s.layout} RMS {fmt.num(c.rms.min(), 3)} to "
                                     f"{fmt.num(c.rms.max(), 3)}, |mean| <= {fmt.num(c.mean.abs().max(), 3)}, scales "
                                     f"(range, std) within {fmt.ratio(ratio)} over {fmt.plural(len(c.idx), s.layout)}")

    # -- advice ---------------------------------------------------------------------------------------------
    @staticmethod
    def _constants(s: FeatureStats) -> str:
        mean, std = norm_constants(s)
        trail = len(s.shape) - 1 - s.dim  # dimensions after the feature one: the constants broadcast over them
        view = "[:, " + ", ".join(["None"] * trail) + "]" if trail else ""
        if s.layout == "channel" and len(s.shape) >= 4 and s.dim == 1:
            return (f"Normalize each channel of {s.name} with constants from your data: "
                    f"transforms.Normalize(mean={_nums(mean)}, std={_nums(std)}) (or (x - mean{view}) / std{view} "
                    f"on tensors).")
        if s.layout == "channel" or s.features <= _ADVICE_FEATURES:
            skip = int((~s.continuous).sum())
            return (f"Standardize each {s.layout} of {s.name} with constants from your data: mean = "
                    f"torch.tensor({_nums(mean)}){view}; std = torch.tensor({_nums(std)}){view}; x = (x - mean) / std"
                    + (f" ({skip} binary/constant features keep mean 0, std 1)" if skip else "") + ".")
        return (f"Standardize the {s.features} features of {s.name}: mean = X_train.mean(0), "
                f"std = X_train.std(0).clamp_min(1e-8), x = (x - mean) / std (or sklearn StandardScaler); the "
                f"per-feature constants measured on your data are in the table '{table_id(s)}'.")

    @staticmethod
    def _pixel_advice(s: FeatureStats) -> str:
        if s.layout == "feature":  # flattened images: one mean and std for every pixel
            m = float(s.mean.mean())
            sd = float(((s.std ** 2 + s.mean ** 2).mean() - m ** 2).clamp_min(0).sqrt())
            return (f"Scale the pixels of {s.name} to [0, 1] and standardize them with constants from your data: "
                    f"x = (x / 255 - {fmt.num(m / 255)}) / {fmt.num(sd / 255)}.")
        mean, std = norm_constants(s)
        return (f"Scale the pixels of {s.name} to [0, 1] (x.float() / 255, or transforms.ToTensor() on uint8 "
                f"images), then normalize per channel: transforms.Normalize(mean={_nums(mean / 255)}, "
                f"std={_nums(std / 255)}); in one step on the raw values: (x - {_nums(mean)}) / {_nums(std)} per "
                f"channel.")

    # -- present ----------------------------------------------------------------------------------------------
    def present(self, m: InputScaleMeasured, judgment: Judgment) -> CheckResult:
        worst = self.worst(m, self.verdicts(m))
        notes = tuple(n for n in (self._note(s) for s in m.stats) if n)
        return self.result(judgment.status, judgment.summary, metrics=self._metrics(worst, m.stats),
                           advice=judgment.advice, notes=notes, tables=tuple(self._table(s) for s in m.stats),
                           plots=tuple(self._plot(s) for s in m.judged))

    @staticmethod
    def _note(s: FeatureStats) -> str:
        cont = s.continuous
        if not cont.any():
            return f"{s.name} is all 0/1 or constant (a mask, flags): not judged"
        notes = []
        if len(s.shape) >= 3 and float(s.min.min()) >= 0 and float(s.max.max()) <= 1 \
                and float(s.mean[cont].mean()) > 0.1:
            mean, std = norm_constants(s)
            notes.append(f"{s.name} is in [0, 1] (mean {fmt.num(s.mean.mean(), 3)}, std {fmt.num(s.std.mean(), 3)}): "
                         f"fine; the usual practice normalizes per {s.layout}: Normalize(mean={_nums(mean)}, "
                         f"std={_nums(std)})")
        n_const, n_bin = int(s.constant.sum()), int((s.binary & ~s.constant).sum())
        if n_const:
            notes.append(f"{n_const} of {s.features} {s.layout}s of {s.name} are constant over {s.count} rows "
                         f"(they carry no information; drop them unless they vary in other batches)")
        if n_bin:
            notes.append(f"{n_bin} {s.layout}s of {s.name} are binary (0/1: flags, one-hot codes, masks): not judged")
        return "; ".join(notes)

    @staticmethod
    def _metrics(s: FeatureStats, stats: tuple[FeatureStats, ...]) -> dict:
        c = _Continuous.of(s)
        some = c.idx.numel() > 0
        offset = c.mean.abs() / c.std.clamp_min(1e-12)
        return {
            "input": s.name, "inputs": [x.name for x in stats], "layout": s.layout, "features": s.features,
            "rows": s.count, "max_rms": float(c.rms.max()) if some else None,
            "median_rms": float(c.rms.median()) if some else None, "min_rms": float(c.rms.min()) if some else None,
            "max_abs_mean": float(c.mean.abs().max()) if some else None,
            "max_offset_sigmas": float(offset.max()) if some else None,
            "scale_ratio": uneven(c.rng, c.std)[0] if some else None,
            "overall_min": float(s.min.min()), "overall_max": float(s.max.max()),
            "constant_features": int(s.constant.sum()), "binary_features": int((s.binary & ~s.constant).sum()),
            "nonfinite_values": s.nonfinite, **_per_feature(s),
        }

    @staticmethod
    def _table(s: FeatureStats) -> Table:
        kind = ["constant" if c else "binary" if b else "continuous" for c, b in
                zip(s.constant.tolist(), s.binary.tolist())]
        rows = [(i, kind[i], float(s.mean[i]), float(s.std[i]), float(s.min[i]), float(s.max[i]), float(s.rms[i]))
                for i in range(min(s.features, _TABLE_ROWS))]
        more = f" (first {_TABLE_ROWS} of {s.features})" if s.features > _TABLE_ROWS else ""
        return Table(table_id(s), f"Per-{s.layout} statistics of {s.name} {tuple(s.shape)}{more}",
                     (s.layout, "kind", "mean", "std", "min", "max", "rms"), rows)

    @staticmethod
    def _plot(s: FeatureStats) -> Plot:
        n = min(s.features, _PLOT_BARS)
        xs = [str(i) for i in range(n)]
        more = f" (first {n} of {s.features})" if s.features > n else ""
        return Plot(f"scale_{table_id(s)}", f"Per-{s.layout} |mean| and std of {s.name}{more}", "bar",
                    (Series("|mean|", xs, s.mean[:n].abs().tolist()), Series("std", xs, s.std[:n].tolist())),
                    x_label=s.layout, y_label="value (log)", log_y=True)
