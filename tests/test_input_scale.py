"""input_scale in both directions: unscaled inputs warn or fail, healthy inputs of every kind pass or skip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import babysitter
import zoo

CE = nn.CrossEntropyLoss()


def check(options=None, **fields):
    opts = {"input_scale": options} if options else None
    return babysitter.check(**fields, select=["input_scale"], options=opts)["input_scale"]


def mlp(d_in: int = 16, classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, classes))


def strokes(n: int = 256, size: int = 16, seed: int = 0) -> torch.Tensor:
    """MNIST-like digits: a few anti-aliased strokes near the centre on a black background, in 1/255 steps."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(size).float()
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    start = torch.randn(n, 3, 1, 2, generator=g) * size / 10 + size / 2
    end = start + torch.randn(n, 3, 1, 2, generator=g) * size / 5
    t = torch.linspace(0, 1, 12)[None, None, :, None]
    pts = (start * (1 - t) + end * t).reshape(n, -1, 2)  # (n, points, 2)
    d = ((yy.reshape(1, 1, -1) - pts[..., :1]) ** 2 + (xx.reshape(1, 1, -1) - pts[..., 1:]) ** 2).amin(1).sqrt()
    return ((1.5 - d).clamp(0, 1) * 255).round().reshape(n, size, size) / 255


def tabular(n: int = 512, seed: int = 0):
    x, y = zoo.blobs(n=n, features=8, seed=seed)
    return x, y


# -- healthy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_zoo_models_pass_or_skip_token_ids(name):
    result = check(**zoo.HEALTHY[name]())
    if name == "transformer":
        assert result.status == "skip" and "integers" in result.summary
    else:
        assert result.status == "pass", result.summary
        assert 0.5 < result.metrics["max_rms"] < 2


@pytest.mark.parametrize("kind", ["uniform", "strokes"])
def test_images_in_zero_one_pass_with_normalization_note(kind):
    x = torch.rand(256, 3, 16, 16) if kind == "uniform" else strokes()[:, None]
    y = torch.randint(0, 4, (256,))
    model = nn.Sequential(nn.Conv2d(x.shape[1], 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    result = check(model=model, data=(x, y), loss_fn=CE)
    assert result.status == "pass", result.summary
    assert result.metrics["layout"] == "channel" and result.metrics["features"] == x.shape[1]
    assert any("[0, 1]" in n and "Normalize(mean=" in n for n in result.notes)


@pytest.mark.parametrize("scale", ["unit", "normalized"])
def test_flattened_digits_pass_despite_faint_edge_pixels(scale):
    x = strokes().flatten(1)
    if scale == "normalized":
        x = (x - 0.1307) / 0.3081  # the usual global MNIST constants
    result = check(model=mlp(256, 10), data=(x, torch.randint(0, 10, (256,))), loss_fn=CE)
    assert result.status == "pass", result.summary


def test_per_pixel_standardized_digits_pass_despite_long_ranges_of_rare_pixels():
    # StandardScaler on flattened digits: a rarely inked edge pixel gets unit std but a range of 10-30
    g = torch.Generator().manual_seed(0)
    ink = torch.cat([torch.full((40,), 0.4), torch.full((60,), 0.002)])  # centre pixels, then edge pixels
    x = (torch.rand(2048, 100, generator=g) < ink).float() * torch.rand(2048, 100, generator=g)
    x = x[:, x.std(0) > 0]
    x = (x - x.mean(0)) / x.std(0)
    result = check(model=mlp(x.shape[1], 10), data=(x, torch.randint(0, 10, (2048,))), loss_fn=CE)
    assert result.status == "pass", result.summary


def test_one_hot_columns_beside_standardized_ones_pass():
    x, y = tabular()
    x = torch.cat([x, nn.functional.one_hot(y, 4).float()], 1)
    result = check(model=mlp(12), data=(x, y), loss_fn=CE)
    assert result.status == "pass", result.summary
    assert result.metrics["binary_features"] == 4
    assert any("binary" in n for n in result.notes)


def test_dict_batches_judge_the_tensors_the_forward_passes():
    result = check(**zoo.dict_batch_target())
    assert result.status == "pass"
    assert result.metrics["input"] == "input_values" and "attention_mask" in result.metrics["inputs"]
    assert any("attention_mask" in n and "not judged" in n for n in result.notes)


def test_conv1d_signals_are_judged_per_channel():
    x = torch.randn(256, 4, 32) * torch.tensor([1.0, 1.0, 1.0, 40.0])[:, None]
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2))
    result = check(model=model, data=(x, torch.randint(0, 2, (256,))), loss_fn=CE)
    assert result.metrics["layout"] == "channel" and result.metrics["features"] == 4
    assert result.status == "fail" and "channel 3" in result.summary


# -- faulty ----------------------------------------------------------------------------------------------
def test_raw_pixels_fail_with_constants_for_normalize():
    x, y = zoo.images()
    raw = ((x - x.min()) / (x.max() - x.min()) * 255).round()
    result = check(**{**zoo.cnn_target(), "data": (raw, y)})
    assert result.status == "fail" and "raw 0-255 pixel" in result.summary
    advice = " ".join(result.advice)
    assert "/ 255" in advice and "transforms.Normalize(mean=[0.4" in advice


def test_flattened_raw_pixels_fail():
    x = strokes().flatten(1) * 255
    result = check(model=mlp(256, 10), data=(x, torch.randint(0, 10, (256,))), loss_fn=CE)
    assert result.status == "fail" and "raw 0-255 pixel" in result.summary


def test_feature_with_mean_around_100_fails_with_its_constants():
    x, y = tabular()
    x[:, 3] = x[:, 3] * 5 + 100
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "fail" and "feature 3" in result.summary and "off-centre" in result.summary
    assert result.metrics["max_abs_mean"] == pytest.approx(100, rel=0.01)
    advice = " ".join(result.advice)
    assert "x = (x - mean) / std" in advice and "100" in advice


def test_feature_scales_three_orders_apart_fail():
    x, y = tabular()
    x[:, 5] *= 1e-3  # a length in km beside lengths in m
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "fail" and "feature 5" in result.summary
    assert result.metrics["scale_ratio"] > 100


def test_features_ten_times_apart_warn_and_large_features_fail():
    x, y = tabular()
    x[:, :2] *= 0.05
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "warn" and 10 < result.metrics["scale_ratio"] < 100, result.summary
    x, y = tabular()
    x[:, :2] *= 30
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "fail" and "too large" in result.summary


def test_offset_features_warn_as_not_centred():
    x, y = tabular()
    x[:, 2] = x[:, 2] * 0.2 + 3  # mean 3, std 0.2: RMS 3 is fine, the offset is not
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "warn" and "not centred" in result.summary and "feature 2" in result.summary


def test_tiny_inputs_warn():
    x, y = tabular()
    result = check(model=mlp(8), data=(x / 1000, y), loss_fn=CE)
    assert result.status == "warn" and "tiny" in result.summary


def test_non_finite_inputs_fail():
    x, y = tabular()
    x[7, 1] = float("nan")
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    assert result.status == "fail" and result.metrics["nonfinite_values"] >= 1


def test_thresholds_are_options():
    x, y = tabular()
    x[:, 2] = x[:, 2] * 5 + 10
    assert check(model=mlp(8), data=(x, y), loss_fn=CE).status == "warn"
    assert check(options={"warn_scale": 50.0, "offset_sigmas": 5.0}, model=mlp(8), data=(x, y),
                 loss_fn=CE).status == "pass"


def test_sequences_with_an_offset_feature_name_it():
    x, y = zoo.sequences()
    x[..., 6] += 200
    result = check(**{**zoo.gru_target(), "data": (x, y)})
    assert result.status == "fail" and "feature 6" in result.summary and result.metrics["layout"] == "feature"


# -- not applicable --------------------------------------------------------------------------------------
def test_forward_that_bypasses_the_model_call_skips_with_the_reason():
    fields = zoo.dict_batch_target()
    fields["forward"] = lambda model, b: (model.body(b["input_values"]), b["labels"])
    result = check(**fields)
    assert result.status == "skip" and "never calls the model" in result.summary


def test_report_tables_and_plots():
    x, y = tabular()
    result = check(model=mlp(8), data=(x, y), loss_fn=CE)
    table = result.tables[0]
    assert table.columns[:4] == ("feature", "kind", "mean", "std") and len(table.rows) == 8
    assert result.plots[0].kind == "bar" and result.plots[0].log_y


def test_model_is_left_untouched():
    fields = zoo.cnn_target()
    before = {k: v.clone() for k, v in fields["model"].state_dict().items()}
    check(**fields)
    assert all(torch.equal(before[k], v) for k, v in fields["model"].state_dict().items())


# -- judge on synthetic statistics, without a model ---------------------------------------------------------
from babysitter.checklist.input_scale import FeatureStats, InputScale, InputScaleMeasured  # noqa: E402


def feature_stats(mean, std, name="x", shape=None, integer=False, lo=None, hi=None, nonfinite=0) -> FeatureStats:
    """Per-feature statistics of a table (N, F), with ranges of +-3 std unless given."""
    mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    lo = mean - 3 * std if lo is None else torch.tensor(lo, dtype=torch.float64)
    hi = mean + 3 * std if hi is None else torch.tensor(hi, dtype=torch.float64)
    f = len(mean)
    shape = shape or (64, f)
    return FeatureStats(name, shape, 1, "feature" if len(shape) <= 2 else "channel", 512, mean, std, lo, hi,
                        torch.full((f,), integer), torch.zeros(f, dtype=torch.bool), nonfinite)


def judged(*stats, **thresholds):
    return InputScale(**thresholds).judge(InputScaleMeasured(stats))


def test_judge_unit_scale_passes():
    j = judged(feature_stats([0.0] * 4, [1.0] * 4))
    assert j.status == "pass" and "of unit scale" in j.summary and not j.advice


@pytest.mark.parametrize("std, status", [(4.9, "pass"), (5.1, "warn"), (19.9, "warn"), (20.1, "fail")])
def test_judge_rms_against_warn_scale_and_fail_scale(std, status):
    j = judged(feature_stats([0.0] * 4, [std] * 4))
    assert j.status == status, j.summary
    if status != "pass":
        assert "too large" in j.summary and "x = (x - mean) / std" in j.advice[0]


@pytest.mark.parametrize("small, status", [(0.101, "pass"), (0.099, "warn"), (0.0101, "warn"), (0.0099, "fail")])
def test_judge_scale_ratio_against_warn_ratio_and_fail_ratio(small, status):
    j = judged(feature_stats([0.0] * 4, [1.0, 1.0, 1.0, small]))
    assert j.status == status, j.summary
    if status != "pass":
        assert "differ by" in j.summary and "feature 3" in j.summary


@pytest.mark.parametrize("mean, std, status", [(2.9, 1.0, "pass"), (3.1, 1.0, "warn"), (0.9, 0.1, "pass"),
                                               (1.1, 0.1, "warn")])
def test_judge_offset_needs_both_offset_sigmas_and_offset_floor(mean, std, status):
    j = judged(feature_stats([0.0, 0.0, 0.0, mean], [std] * 4))
    assert j.status == status, j.summary
    if status == "warn":
        assert "feature 3 of x is not centred" in j.summary


@pytest.mark.parametrize("std, status", [(0.0101, "pass"), (0.0099, "warn")])
def test_judge_tiny_inputs_against_small_scale(std, status):
    j = judged(feature_stats([0.0] * 4, [std] * 4))
    assert j.status == status and (status == "pass" or "tiny" in j.summary)


@pytest.mark.parametrize("top, status", [(255.0, "fail"), (31.0, "pass")])
def test_judge_raw_pixels_need_integer_images_reaching_the_pixel_maximum(top, status):
    # [0, top] images, mean top/2, std top/4: raw pixels from 32 on; below, a scale judged as any other
    s = feature_stats([top / 2], [top / 4], shape=(64, 1, 16, 16), integer=True, lo=[0.0], hi=[top])
    j = judged(s, warn_scale=50.0, fail_scale=100.0, offset_sigmas=5.0)
    assert j.status == status, j.summary
    if status == "fail":
        assert "raw 0-255 pixel" in j.summary and "/ 255" in j.advice[0]


def test_judge_non_finite_values_fail_first():
    assert judged(feature_stats([0.0] * 4, [1.0] * 4, nonfinite=2)).status == "fail"


def test_judge_takes_the_worst_input_and_the_advice_of_each():
    healthy, offset, large = (feature_stats([0.0] * 2, [1.0] * 2, name="a"),
                              feature_stats([0.0, 4.0], [1.0] * 2, name="b"),
                              feature_stats([0.0] * 2, [30.0] * 2, name="c"))
    j = judged(healthy, offset, large)
    assert j.status == "fail" and j.summary.startswith("feature 0 of c") and len(j.advice) == 2
    assert InputScale().worst(InputScaleMeasured((healthy, offset)),
                              InputScale().verdicts(InputScaleMeasured((healthy, offset)))).name == "b"


# -- per-feature lists in metrics are never cut silently (issue 13) -------------------------------------------
def present(*stats):
    check, m = InputScale(), InputScaleMeasured(stats)
    return check.present(m, check.judge(m))


def test_per_feature_metrics_list_every_feature():
    # the report: 16 values for 20 features
    result = present(feature_stats([float(k) for k in range(20)], [1.0] * 20))
    m = result.metrics
    assert m["features"] == 20 and len(m["mean"]) == 20 and len(m["std"]) == 20
    assert m["per_feature_listed"] == 20 and m["mean"][19] == 19.0


def test_per_feature_metrics_cut_beyond_the_table_say_so_with_the_count():
    f = 600
    result = present(feature_stats([0.5] * f, [1.0] * f))
    m = result.metrics
    assert m["features"] == f and m["per_feature_listed"] == len(m["mean"]) == len(m["std"]) < f
    assert f"of {f}" in result.tables[0].title
    assert f"of {f}" in result.plots[0].title  # the plot's bars are cut too, and say so


def test_a_real_20_feature_input_lists_all_its_features():
    torch.manual_seed(0)
    x = torch.randn(256, 20) * 30 + 100  # unscaled: a failure whose constants people will copy
    y = torch.randint(0, 4, (256,))
    result = check(model=mlp(20), data=(x, y), loss_fn=CE)
    assert result.status == "fail" and len(result.metrics["mean"]) == 20


def test_the_inputs_are_read_after_the_users_own_pre_hooks():
    """A root pre-hook that standardizes raw pixels: input_scale judges what the model receives, after the hook."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    model.register_forward_pre_hook(lambda module, args: ((args[0] - 127.5) / 73.6,))
    x, y = torch.randint(0, 256, (256, 4)).float(), torch.randint(0, 2, (256,))
    report = babysitter.check(model, (x, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32, device="cpu",
                              select=["input_scale"])
    assert report["input_scale"].status == "pass", report["input_scale"].summary
    raw = babysitter.check(nn.Sequential(nn.Linear(4, 2)), (x, y), loss_fn=nn.CrossEntropyLoss(), batch_size=32,
                           device="cpu", select=["input_scale"])
    assert raw["input_scale"].status != "pass"  # the same pixels without the hook are flagged
