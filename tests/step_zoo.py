"""Targets trained with a step that is not plain ``zero_grad, backward, step``, after the official PyTorch examples
(pytorch/examples): word-language-model (SGD 20 with gradient clipping, sequence-first batches),
time-sequence-prediction (LBFGS), AMP with a GradScaler, gradient accumulation, a GAN with two optimizers, and an
LR scheduler.

Every builder returns a dict of target fields, seeded, with data generated in code, small enough that a whole
checklist runs in seconds on a CPU.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import babysitter

from corpus.recurrent import RNNModel, lm_batches, lm_forward, markov_tokens  # noqa: F401 (re-exported)
from zoo import FunctionalMLP, blobs, sgd


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- a. word-language-model: LSTM LM, SGD lr 20, clip_grad_norm 0.25, (T, B) batches ----------------------------
# markov_tokens, lm_batches, RNNModel and lm_forward are the corpus's (corpus/recurrent.py), imported above


def lm_target(seed: int = 0, clip: bool = True, tie_weights: bool = False) -> dict:
    """The example's settings: plain SGD at lr 20, clip_grad_norm_(0.25). ``clip=False``: the same without the
    Step (what the checks saw before a target could declare it)."""
    torch.manual_seed(seed)
    fields = dict(model=RNNModel(tie_weights=tie_weights), data=lm_batches(seed=seed), loss_fn=nn.NLLLoss(),
                  optimizer=lambda params: torch.optim.SGD(params, lr=20.0), forward=lm_forward)
    if clip:
        fields["step"] = babysitter.Step(clip_grad_norm=0.25)
    return fields


# -- b. time-sequence-prediction: LBFGS on sine waves ------------------------------------------------------------
def sine_windows(n: int = 128, window: int = 8, period: float = 8.0, seed: int = 0):
    """The example's generate_sine_wave.py data (sine waves at random phases), cut into windows: the input is
    ``window`` consecutive values, the target the next one; double precision, as the example."""
    g = _gen(seed)
    start = torch.randint(-4 * int(period), 4 * int(period), (n, 1), generator=g).double()
    wave = torch.sin((torch.arange(window + 1).double()[None] + start) / period)
    return wave[:, :-1].contiguous(), wave[:, -1:].contiguous()


def lbfgs_target(seed: int = 0) -> dict:
    """LBFGS at lr 0.8 (the example's; max_iter 20: one optimizer step is up to 20 iterations), MSE, double
    precision, full batch (as the example: LBFGS's curvature pairs assume one deterministic objective); its step
    needs a closure (found from the optimizer). The example's two LSTMCells stepped over time are replaced by an
    MLP over a window of past values: LBFGS evaluates the loss up to 25 times a step, and a Python loop over time
    steps would make the checklist cost tens of seconds."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    return dict(model=model, data=[sine_windows(seed=seed)], loss_fn=nn.MSELoss(),
                optimizer=lambda params: torch.optim.LBFGS(params, lr=0.8))


# -- c. AMP: autocast + GradScaler -------------------------------------------------------------------------------
def amp_target(seed: int = 0, dtype: str = "bfloat16") -> dict:
    """A classifier trained under ``torch.autocast(dtype)`` with a GradScaler (on the CPU: GradScaler("cpu"))."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    return dict(model=model, data=blobs(seed=seed), loss_fn=nn.CrossEntropyLoss(), optimizer=sgd(0.05),
                step=babysitter.Step(autocast=dtype, grad_scaler=True))


# -- d. gradient accumulation ------------------------------------------------------------------------------------
def accumulate_target(seed: int = 0, accumulate: int = 4, **step) -> dict:
    """A small MLP classifier, micro-batches of 16 accumulated ``accumulate`` at a time (an effective 64)."""
    torch.manual_seed(seed)
    return dict(model=FunctionalMLP(d_in=16, hidden=32, d_out=4), data=blobs(seed=seed), batch_size=16,
                loss_fn=nn.CrossEntropyLoss(), optimizer=sgd(0.1), step=babysitter.Step(accumulate=accumulate, **step))


# -- e. a GAN: two optimizers and a step function ----------------------------------------------------------------
def ring_of_gaussians(n: int = 512, modes: int = 8, radius: float = 2.0, std: float = 0.1, seed: int = 0):
    """2-D points from ``modes`` Gaussians on a ring (the classic toy GAN data)."""
    g = _gen(seed)
    k = torch.randint(0, modes, (n,), generator=g)
    angle = k.float() * 2 * math.pi / modes
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius
    return centres + std * torch.randn(n, 2, generator=g)


class GAN(nn.Module):
    """A generator and a discriminator as one module (the checks see both)."""

    def __init__(self, latent: int = 4, hidden: int = 32):
        super().__init__()
        self.latent = latent
        self.G = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                               nn.Linear(hidden, 2))
        self.D = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                               nn.Linear(hidden, 1))

    def noise(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(n, self.latent, device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits."""
        return self.D(x)

    def fake(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return self.G(self.noise(n, like))


def gan_forward(model: GAN, batch):
    """For the checks that do not train (initial loss, activations, input scale, batch independence): the
    discriminator's logits for the real batch, labelled real (1). Training is ``gan_step``'s."""
    real, labels = batch
    return model(real), labels[:, None]


def gan_step(model: GAN, batch, optimizers):
    """DCGAN's loop: D on real (1) and detached fakes (0), then G so that D calls its fakes real."""
    opt_G, opt_D = optimizers
    real, _ = batch
    bce = nn.functional.binary_cross_entropy_with_logits
    ones = torch.ones(len(real), 1, device=real.device)
    zeros = torch.zeros(len(real), 1, device=real.device)
    fake = model.fake(len(real), real)
    opt_D.zero_grad(set_to_none=True)
    loss_D = bce(model.D(real), ones) + bce(model.D(fake.detach()), zeros)
    loss_D.backward()
    opt_D.step()
    opt_G.zero_grad(set_to_none=True)
    loss_G = bce(model.D(fake), ones)
    loss_G.backward()
    opt_G.step()
    return (loss_D + loss_G).detach()


def gan_target(seed: int = 0) -> dict:
    """Adam(2e-4, betas (0.5, 0.999)) for each network, as DCGAN's example; the factory closes over the model."""
    torch.manual_seed(seed)
    model = GAN()
    x = ring_of_gaussians(seed=seed)

    def optimizers(params):
        return (torch.optim.Adam(model.G.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                torch.optim.Adam(model.D.parameters(), lr=2e-4, betas=(0.5, 0.999)))

    return dict(model=model, data=(x, torch.ones(len(x))), loss_fn=nn.BCEWithLogitsLoss(), optimizer=optimizers,
                forward=gan_forward, step=gan_step)


# -- f. an LR scheduler ------------------------------------------------------------------------------------------
def scheduler_target(seed: int = 0, warmup: bool = False) -> dict:
    """SGD 0.1 (momentum 0.9) with StepLR(10, 0.5) (ImageNet's example, shortened), or a 10-step linear warmup."""
    torch.manual_seed(seed)
    if warmup:
        def schedule(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    else:
        def schedule(opt):
            return torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)
    return dict(model=FunctionalMLP(d_in=16, hidden=32, d_out=4), data=blobs(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=sgd(0.1), step=babysitter.Step(scheduler=schedule))


#: the targets of issue 12, by name: each runs the whole checklist with no error and no false alarm
STEPPED = {
    "lm_clip": lm_target,
    "lbfgs": lbfgs_target,
    "amp_bf16": amp_target,
    "accumulate": accumulate_target,
    "gan": gan_target,
    "scheduler": scheduler_target,
}
