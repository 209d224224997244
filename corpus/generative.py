"""Generative models: PyTorch's VAE example (shrunk from 784-400-20 to 64-32-8, its summed ELBO, Adam 1e-3) and a
denoising autoencoder with sigmoid units (Vincent et al. 2008; MSE, Adam 1e-3), on 8x8 grey-level images of blobs
(values in [0, 1], not binary); with the bugs people make in them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Case, Fault
from .data import generator


def blob_images(n: int = 512, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` grey-level images (n, size * size) of one Gaussian blob each: random centre, width and brightness
    (4 factors of variation, so a small latent code explains them); values in [0, 1], mostly near 0."""
    g = generator(seed)
    centre = 1.0 + (size - 3.0) * torch.rand(n, 2, generator=g)
    width = 0.8 + 0.8 * torch.rand(n, 1, 1, generator=g)
    bright = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=g)
    coords = torch.arange(size, dtype=torch.float32)
    dy = (coords[None, :, None] - centre[:, 0, None, None]) ** 2
    dx = (coords[None, None, :] - centre[:, 1, None, None]) ** 2
    img = bright * torch.exp(-(dx + dy) / (2 * width ** 2))
    return img.reshape(n, size * size).clamp(0, 1)


# -- vae: pytorch/examples vae ------------------------------------------------------------------------------------
class VAE(nn.Module):
    """vae/main.py's VAE with its layer sizes shrunk (784-400-20 -> 64-32-8): fc1, fc21 (mu), fc22 (logvar), fc3,
    fc4, ReLU hidden units, sigmoid output."""

    def __init__(self, d: int = 64, hidden: int = 32, latent: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.fc1.in_features))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae_loss(outputs, x):
    """The example's loss_function: reconstruction BCE summed over pixels and batch, plus the KL divergence
    (Kingma & Welling 2014, appendix B), also summed."""
    recon_x, mu, logvar = outputs
    bce = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[1]), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def vae_forward(model: VAE, batch):
    """The model returns (recon, mu, logvar); they travel to the loss packed in one tuple, the target is the input."""
    x, _ = batch
    recon, mu, logvar = model(x)
    return (recon, mu, logvar), x


def vae(seed: int = 0) -> dict:
    """The example's Adam(lr=1e-3), batches of 32 (the example's 128, scaled with the data)."""
    torch.manual_seed(seed)
    x = blob_images(seed=seed)
    return dict(model=VAE(), data=(x, x.clone()), batch_size=32, loss_fn=vae_loss,
                forward=vae_forward, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))


# -- dae: a denoising autoencoder ---------------------------------------------------------------------------------
class DAE(nn.Module):
    """Vincent et al. (2008): a sigmoid encoder and a sigmoid decoder; inputs corrupted outside the model. The
    default (Kaiming-uniform) init of nn.Linear; ``normal_init``: every weight drawn by ``nn.init.normal_`` at its
    default std of 1."""

    def __init__(self, d: int = 64, hidden: int = 48, normal_init: bool = False):
        super().__init__()
        self.enc = nn.Linear(d, hidden)
        self.dec = nn.Linear(hidden, d)
        if normal_init:
            for m in (self.enc, self.dec):
                nn.init.normal_(m.weight)  # the bug: std defaults to 1.0, meant 0.01 or a fan-in scaled init
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return torch.sigmoid(self.dec(torch.sigmoid(self.enc(x))))


def dae(seed: int = 0, normal_init: bool = False, per_image_max: bool = False) -> dict:
    """Masking noise (a quarter of the pixels zeroed, as Vincent et al.) on the input, the clean image as target;
    MSE, Adam 1e-3. The images arrive as 8-bit grey levels, one frame in 16 blank (an empty field of view), and are
    divided by 255. ``per_image_max``: each image divided by its own maximum instead (contrast stretching), which
    is 0/0 on a blank frame."""
    torch.manual_seed(seed)
    raw = torch.round(255 * blob_images(seed=seed))
    raw[::16] = 0.0
    if per_image_max:
        clean = raw / raw.amax(dim=1, keepdim=True)  # the bug: NaN on every blank frame
    else:
        clean = raw / 255.0
    keep = (torch.rand(clean.shape, generator=generator(seed + 1)) > 0.25).float()
    return dict(model=DAE(normal_init=normal_init), data=(clean * keep, clean), batch_size=32, loss_fn=nn.MSELoss(),
                optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))


CASES = [
    Case("vae", "generative", vae,
         "PyTorch VAE example (784-400-20 shrunk to 64-32-8): ReLU MLP encoder/decoder, sigmoid output, BCE "
         "summed plus KL (the example's loss_function), Adam 1e-3, on 8x8 grey-level blob images in [0, 1]"),
    Case("dae", "generative", dae,
         "denoising autoencoder (Vincent et al. 2008): sigmoid encoder 64-48 and decoder, masking noise 25%, "
         "MSE, Adam 1e-3, on 8x8 grey-level blob images"),
]

FAULTS = [
    Fault("dae-per-image-max", "dae", "nonfinite", lambda seed: dae(seed, per_image_max=True),
          "images scaled by their own maximum (img / img.max(), contrast stretching) instead of by 255: "
          "0/0 = NaN on the blank frames"),
    Fault("dae-normal-init", "dae", "saturation", lambda seed: dae(seed, normal_init=True),
          "weights initialised with nn.init.normal_(w) at its default std 1.0 (meant std=0.01 or a fan-in "
          "scaled init): the sigmoid units start pinned at 0 or 1"),
]
