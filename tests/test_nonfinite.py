"""nonfinite in both directions: the first NaN/Inf is located (data, forward op, loss, backward, update)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import babysitter
import zoo


def check(**fields):
    return babysitter.check(**fields, select=["nonfinite"])["nonfinite"]


class LogOfNegative(zoo.FunctionalMLP):
    """log() of a pre-activation that takes negative values: NaN at the first step."""

    def __init__(self):
        super().__init__()
        self.squash = Log()

    def forward(self, x):
        h = F.relu(self.layers[0](x))
        return self.head(self.squash(self.layers[1](h)))


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class SafeBelow(nn.Module):
    """sqrt(limit - |x|): finite while activations stay below ``limit``, NaN once training grows them."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        return torch.sqrt(self.limit - x.abs())


class GrowsIntoNaN(zoo.FunctionalMLP):
    def __init__(self, limit: float = 6.0):
        super().__init__()
        self.guard = SafeBelow(limit)

    def forward(self, x):
        h = F.relu(self.layers[0](x))
        return self.head(self.guard(self.layers[1](h)))


class ZeroNorm(zoo.FunctionalMLP):
    """Adds the norm of a zero vector: finite forward, NaN gradient (d||v||/dv at v=0)."""

    def forward(self, x):
        h = F.relu(self.layers[0](x))
        return self.head(h) + torch.sqrt((h * 0).pow(2).sum(1, keepdim=True))


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_models_pass(name):
    result = check(**zoo.HEALTHY[name]())
    assert result.status == "pass", result.summary
    assert result.metrics["first_step"] is None


def test_attention_style_minus_inf_masking_is_healthy():
    class Masked(zoo.FunctionalMLP):
        def forward(self, x):
            h = F.relu(self.layers[0](x))
            weights = h.masked_fill(h == 0, float("-inf")).softmax(1).nan_to_num(0.0)
            return self.head(h * weights)

    fields = zoo.mlp_target()
    fields["model"] = Masked()
    assert check(**fields).status == "pass"


def test_log_of_negative_values_is_located_at_step_0_with_its_inputs():
    fields = zoo.mlp_target()
    fields["model"] = LogOfNegative()
    result = check(**fields)
    assert result.status == "fail"
    m = result.metrics
    assert (m["phase"], m["where"], m["op"], m["first_step"], m["call"]) == ("forward", "model.squash", "torch.log", 0, 1)
    assert "min -" in result.advice[-1]  # the negative inputs that triggered it
    assert result.tables and result.tables[0].rows[0][2] < 0


def test_module_that_breaks_only_after_training_with_a_large_lr():
    fields = zoo.mlp_target()
    fields["model"] = GrowsIntoNaN()
    fields["optimizer"] = zoo.sgd(0.5)
    result = check(**fields)
    m = result.metrics
    assert result.status == "fail"
    assert m["first_step"] > 0 and m["replay_step"] == m["first_step"]
    assert m["where"] == "model.guard" and m["op"] == "torch.sqrt"


def test_lr_1e6_blow_up_reports_the_first_nonfinite_step_and_divergence():
    fields = zoo.mlp_target()
    fields["optimizer"] = zoo.sgd(1e6, momentum=0.0)
    result = check(**fields)
    assert result.status == "fail"
    assert 0 < result.metrics["first_step"] < 5
    assert any("diverged" in a and "learning rate" in a for a in result.advice)


def test_nan_in_an_input_batch_is_an_input_problem():
    fields = zoo.mlp_target()
    x, y = fields["data"]
    x = x.clone()
    x[130, 1] = float("nan")
    fields["data"] = (x, y)
    result = check(**fields)
    assert result.status == "fail" and result.metrics["phase"] == "data"
    assert "inputs" in result.summary and "1 NaN" in result.summary


def test_inf_in_regression_targets_is_a_target_problem():
    fields = zoo.regression_target()
    x, y = fields["data"]
    y = y.clone()
    y[3] = float("inf")
    fields["data"] = (x, y)
    result = check(**fields)
    assert result.status == "fail" and "targets" in result.summary


def masked_mse(outputs, targets):
    keep = torch.isfinite(targets)
    return ((outputs[keep] - targets[keep]) ** 2).mean()


def test_missing_labels_as_nan_with_a_masked_loss_pass_with_a_note():
    fields = zoo.regression_target()
    x, y = fields["data"]
    y = y.repeat(1, 3)
    y[torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < 0.2] = float("nan")
    fields.update(data=(x, y), loss_fn=masked_mse, model=nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)))
    result = check(**fields)
    assert result.status == "pass", result.summary
    assert result.metrics["bad_batches"] > 0 and any("missing labels" in n for n in result.notes)
    # the same targets with a loss that does not mask them still fail
    fields["loss_fn"] = nn.MSELoss()
    assert check(**fields).status == "fail"


def test_nan_gradient_with_finite_forward_is_located_in_the_backward():
    fields = zoo.mlp_target()
    fields["model"] = ZeroNorm()
    result = check(**fields)
    assert result.status == "fail" and result.metrics["phase"] == "backward"
    assert "Sqrt" in result.metrics["op"]


def test_loss_that_produces_nan_is_located_in_the_loss():
    fields = zoo.binary_target()
    fields["loss_fn"] = lambda o, t: -(t * torch.log(o) + (1 - t) * torch.log(1 - o)).mean()  # o are logits
    result = check(**fields)
    assert result.status == "fail" and result.metrics["phase"] == "loss"
    assert result.metrics["where"] == "loss_fn"


def test_healthy_run_leaves_no_hook_behind():
    fields = zoo.mlp_target()
    fields["model"] = LogOfNegative()
    model = fields["model"]
    check(**fields)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class AutocastMLP(zoo.FunctionalMLP):
    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.float16):
            return super().forward(x)


def test_float16_autocast_model_passes():
    fields = zoo.mlp_target()
    fields["model"] = AutocastMLP()
    result = check(**fields)
    assert result.status == "pass" and result.metrics["precision"] == "float16 (autocast)"


def test_float16_gradient_overflow_is_skipped_like_a_grad_scaler_not_failed():
    fields = zoo.mlp_target()
    fields["model"] = AutocastMLP()
    fields["loss_fn"] = lambda o, t: F.cross_entropy(o.float(), t) * 1e7  # finite loss, fp16 grads overflow
    result = check(**fields)
    assert result.status == "warn", result.summary  # skipped steps, never a failure
    assert result.metrics["skipped_steps"] == result.metrics["steps"]
    assert any("GradScaler" in n for n in result.notes)


# -- the replay's op watch ---------------------------------------------------------------------------------
def test_the_op_watch_sees_each_op_once():
    from babysitter.checklist.nonfinite import watch_forward

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    watch, out = watch_forward(model, lambda: torch.sum(model(x)))
    assert watch.ops == 3  # F.linear, F.relu, torch.sum: one each (a mode entered twice saw 6)
    assert sorted(op for op, _ in watch.nodes.values()) == ["F.linear", "F.relu", "torch.sum"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_op_watch_names_the_op_and_module_of_the_first_nan():
    from babysitter.checklist.nonfinite import watch_forward

    model = nn.Sequential(nn.Linear(4, 4), Log())
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    x = torch.zeros(2, 4)
    watch, _ = watch_forward(model, lambda: model(x))
    found = watch.culprit()
    assert (found["op"], found["where"], found["inputs_finite"], found["index"]) == ("torch.log", "model.1", True, 1)


# -- judge on synthetic measurements ----------------------------------------------------------------------
from babysitter.checklist.nonfinite import (  # noqa: E402
    BadField, NonFinite, NonFiniteMeasured, Origin, ProbeFacts, growth_advice, masked_targets)


def probe_facts(steps=24, skipped=(), losses=None, norms=None, lr=0.1):
    return ProbeFacts(steps=steps, lr=lr, losses=tuple(losses or [1.0] * steps),
                      grad_norm=tuple(norms or [1.0] * steps), skipped_steps=tuple(skipped))


def nan_field(batch=0, path="batch[1]", target=True):
    return BadField(batch, path, {"shape": [4], "min": 0.0, "max": 1.0, "nan": 2, "inf": 0, "zeros": 0, "numel": 4},
                    target)


def test_judge_finite_probe_passes():
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(), None))
    assert j.status == "pass" and "24 probe steps" in j.summary


@pytest.mark.parametrize("skipped, status", [(12, "pass"), (13, "warn")])
def test_judge_float16_skipped_steps_warn_only_above_the_fraction(skipped, status):
    j = NonFinite(skipped_warn=0.5).judge(NonFiniteMeasured(probe_facts(skipped=range(skipped)), None))
    assert j.status == status and str(skipped) in j.summary


def test_judge_nan_in_the_inputs_fails_as_data():
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(), None, (nan_field(3, "batch[0]", target=False),), 8))
    assert j.status == "fail" and "batch 3 inputs batch[0] (2 NaN, 0 Inf)" in j.summary


def test_judge_nan_targets_pass_only_when_the_probe_trained_on_them_finitely():
    seen = NonFiniteMeasured(probe_facts(steps=4), None, (nan_field(batch=2),), pool_size=8)
    unseen = NonFiniteMeasured(probe_facts(steps=4), None, (nan_field(batch=5),), pool_size=8)
    diverged = NonFiniteMeasured(probe_facts(steps=4), (1, "loss"), (nan_field(batch=2),), pool_size=8)
    assert masked_targets(seen) and NonFinite().judge(seen).status == "pass"
    assert not masked_targets(unseen) and NonFinite().judge(unseen).status == "fail"
    assert not masked_targets(diverged) and NonFinite().judge(diverged).status == "fail"


def test_judge_a_forward_op_from_finite_inputs_fails_with_a_guard():
    origin = Origin("forward", 0, "model.squash", "torch.log", 1,
                    (("arg 0", {"shape": [4], "min": -2.0, "max": 1.0, "nan": 0, "inf": 0, "zeros": 0}),))
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(), (0, "loss"), origin=origin))
    assert j.status == "fail" and j.summary.endswith("torch.log in model.squash (call 1), from finite inputs")
    assert "Guard it" in j.advice[-1] and "min -2" in j.advice[-1]


def test_judge_the_loss_and_the_update_phases():
    loss = Origin("loss", 2, "loss_fn", "torch.log", None, (), False)
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(), (2, "loss"), origin=loss))
    assert "in the loss" in j.summary and "received non-finite inputs" in j.summary
    update = Origin("update", 3, "fc.weight", detail="finite gradients made these parameters non-finite")
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(lr=1e6), (3, "parameters"), origin=update))
    assert j.status == "fail" and "after the optimizer step" in j.summary and "(1e+06)" in j.advice[0]


def test_judge_a_step_the_replay_does_not_reproduce_still_fails():
    j = NonFinite().judge(NonFiniteMeasured(probe_facts(), (5, "gradient"), origin=None))
    assert j.status == "fail" and "did not reproduce" in j.summary


@pytest.mark.parametrize("last_loss, diverged", [(9.9, False), (10.1, True)])
def test_growth_before_the_step_says_training_diverged_first(last_loss, diverged):
    probe = probe_facts(losses=[1.0, 2.0, last_loss] + [float("nan")] * 21)
    assert bool(growth_advice(probe, 3)) is diverged
    assert growth_advice(probe, 0) == ""


# -- the user's step (issue 12): the replay trains as the probe did ---------------------------------------
from test_overfit_batch import lm_target  # noqa: E402  (the sequence-first word language model)


def test_sequence_first_lm_with_or_without_its_clipped_step_stays_finite():
    result = check(**lm_target())
    assert result.status == "pass" and result.metrics["first_step"] is None, result.summary
    result = check(**lm_target(step=False))  # SGD 20 unclipped: the loss grows, but stays finite (as before)
    assert result.status == "pass" and result.metrics["first_step"] is None, result.summary


def test_clipping_declared_in_the_step_keeps_a_growing_model_finite():
    fields = zoo.mlp_target()
    fields.update(model=GrowsIntoNaN(), optimizer=zoo.sgd(0.5))
    assert check(**fields).status == "fail"
    fields = zoo.mlp_target()
    fields.update(model=GrowsIntoNaN(), optimizer=zoo.sgd(0.5), step=babysitter.Step(clip_grad_norm=0.5))
    assert check(**fields).status == "pass"


def located(result):
    m = result.metrics
    return m["phase"], m["where"], m["op"], m["first_step"], m["replay_step"]


@pytest.mark.parametrize("step, first", [
    (babysitter.Step(accumulate=2), 4),  # two micro-batches per step: a plain replay found it at step 5
    (babysitter.Step(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.5 ** s)), 10),
    (babysitter.Step(autocast="bfloat16"), 5),
])
def test_the_replay_follows_accumulation_the_scheduler_and_autocast(step, first):
    fields = zoo.mlp_target()
    lr = 0.02 if step.scheduler else 0.5  # the scheduler raises the LR 1.5x per step
    fields.update(model=GrowsIntoNaN(), optimizer=zoo.sgd(lr), step=step)
    result = check(**fields)
    assert located(result) == ("forward", "model.guard", "torch.sqrt", first, first), result.summary
    assert f"the replay ran your step: {', '.join(step.parts())}" in result.notes


def test_the_replay_clips_as_the_step_does():
    fields = zoo.mlp_target()
    fields.update(optimizer=zoo.sgd(1e37, momentum=0.0), loss_fn=lambda o, t: F.cross_entropy(o, t) * 1e4,
                  step=babysitter.Step(clip_grad_value=0.01))
    result = check(**fields)  # clipped, the first update is finite; a replay without clipping blew up at step 0
    assert located(result) == ("forward", "model.layers.1", "F.linear", 1, 1), result.summary


def test_the_replay_runs_a_closure_optimizer():
    fields = zoo.mlp_target()
    fields.update(model=LogOfNegative(), optimizer=lambda p: torch.optim.LBFGS(p))
    result = check(**fields)
    assert located(result) == ("forward", "model.squash", "torch.log", 0, 0), result.summary
    assert any(n.startswith("not watched op by op in the replay: the closure optimizer's evaluations after the "
                            "first") for n in result.notes)
    fields = zoo.mlp_target()
    fields.update(optimizer=lambda p: torch.optim.LBFGS(p, lr=1e37, max_iter=1),
                  loss_fn=lambda o, t: F.cross_entropy(o, t) * 1e4)
    assert located(check(**fields)) == ("forward", "model.layers.1", "F.linear", 1, 1)  # crashed before


def step_function(model, batch, optimizer):
    x, y = batch
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y) * getattr(model, "loss_scale", 1.0)
    loss.backward()
    optimizer.step()
    return loss


class HugeLoss(zoo.FunctionalMLP):
    loss_scale = 1e4  # with an LR of 1e37, the first update overflows


@pytest.mark.parametrize("model, lr, phase, where, op", [
    (LogOfNegative, 1e-2, "forward", "model.squash", "torch.log"),
    (ZeroNorm, 1e-2, "backward", "model", "SqrtBackward0 (backward of torch.sqrt)"),
    (HugeLoss, 1e37, "update", "layers.0.weight, layers.0.bias, layers.1.weight, layers.1.bias, "
                                        "head.weight, head.bias", None),
])
def test_a_step_function_is_watched_whole(model, lr, phase, where, op):
    fields = zoo.mlp_target()
    fields.update(model=model(), optimizer=zoo.sgd(lr, momentum=0.0), step=step_function)
    result = check(**fields)
    assert located(result) == (phase, where, op, 0, 0), result.summary
    assert "not watched op by op in the replay: the ops inside your optimizers' steps (the parameters are checked " \
           "after each step)" in result.notes
    if phase == "update":  # the optimizer's own ops are not mistaken for a forward op
        assert "finite gradients (max |g|" in result.advice[0]


def test_a_grad_scaler_step_is_replayed_with_its_scaler():
    fields = zoo.mlp_target()
    fields.update(model=GrowsIntoNaN(), optimizer=zoo.sgd(0.5),
                  step=babysitter.Step(autocast="float16", grad_scaler=True))
    result = check(**fields)
    assert located(result) == ("forward", "model.guard", "torch.sqrt", 5, 5), result.summary
    assert any("under your GradScaler" in n for n in result.notes)


def test_an_op_in_the_users_forward_function_is_named_there_not_in_the_loss():
    """A mask built in forward(model, batch) as (1 - mask) * -inf: 0 * -inf is NaN at every kept position."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    mask = torch.ones(64, 8)

    def forward(m, batch):
        inputs, targets, keep = batch
        return m(inputs + (1 - keep) * float("-inf")), targets

    data = [(x[i:i + 16], y[i:i + 16], mask[i:i + 16]) for i in range(0, 64, 16)]
    result = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), forward=forward,
                              select=["nonfinite"])["nonfinite"]
    assert result.status == "fail" and "your forward function" in result.summary, result.summary
    assert result.metrics["phase"] == "forward"


def test_a_healthy_users_forward_function_passes():
    """The same forward(model, batch), masking by multiplication: nothing non-finite, nothing blamed on it."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    mask = (torch.rand(64, 8) > 0.25).float()

    def forward(m, batch):
        inputs, targets, keep = batch
        return m(inputs * keep), targets

    data = [(x[i:i + 16], y[i:i + 16], mask[i:i + 16]) for i in range(0, 64, 16)]
    result = babysitter.check(model, data, loss_fn=nn.CrossEntropyLoss(), forward=forward,
                              select=["nonfinite"])["nonfinite"]
    assert result.status == "pass", result.summary
    assert "your forward function" not in result.summary
