"""How good is lr_range's suggestion? Regret against a grid search, beside torch-lr-finder and Lightning.

Two sets of task/optimizer pairs, each task with its data generated in code, labels flipped at random for a fraction
of examples (or heavy-tailed noise on a regression target) so that the best reachable loss is well above zero, and a
test set of 1024 examples from the same generator that no run trains on.

- The tuning set (``tuning_tasks``, 50), in five parts. ``first_tasks`` (14): MLPs, a 6-layer and a 4-layer MLP,
  CNNs with and without BatchNorm, a GRU, an LSTM, a Transformer encoder, Hugging Face BERT and GPT-2 from tiny random
  configs; SGD, SGD with momentum or Nesterov, Adam, AdamW; cross-entropy and MSE. ``second_tasks`` (12), the first
  held-out set, run once as such and seen since: other data generators and shapes (1-D signals, glyph and dot-count
  images, point sets, moons in 20-D, bags of words, character text, a second-order Markov chain, token counts,
  Friedman's function with Student-t noise, ripples with Laplace noise), other architectures (a 1-D CNN, an
  MLP-Mixer, attention pooling, a wide shallow MLP, an EmbeddingBag classifier, a char-level LSTM language model, a
  GroupNorm CNN, a ResNet, Hugging Face LLaMA and DistilBERT from tiny random configs), other optimizers (RMSprop,
  Adagrad, NAdam, SGD with gradient clipping, AdamW with weight decay 0.05-0.1 and betas 0.9/0.95) and losses
  (Huber, L1). ``third_tasks`` (8), the second held-out set, run once as such and seen since: sine gratings, random
  walks, periodic token sequences, mixed numeric/categorical rows, Poisson counts, multi-label pattern images, points
  near a manifold, chirps; a depthwise-separable CNN, a GRU classifier, a pre-LN causal Transformer decoder with tied
  embeddings, a LayerNorm MLP, a Poisson regression MLP, a multi-label CNN, a denoising autoencoder, a dilated TCN;
  SGD+momentum with weight decay, SGD+Nesterov, AdamW (betas 0.9/0.98), Adamax, plain SGD with weight decay, RAdam,
  centered RMSprop with momentum; Poisson NLL, BCE with logits (multi-label), MSE reconstruction.
  ``fourth_tasks`` (8), the third held-out set, run once as such and seen since: texture images, 2-D point sets on
  shape outlines, token sequences tagged like parts of speech (ambiguous words settled by the next one),
  unstandardized tabular rows labelled by a decision tree, seven-segment digits, a heteroscedastic regression, hidden-Markov token sequences, a three-link
  arm's joint positions with Student-t noise; a Hugging Face ViT from a tiny random config, a Set Transformer
  (induced set attention, attention pooling), a bidirectional LSTM tagger, a BatchNorm1d MLP, a CNN with dropout, a
  mean-and-variance MLP, a GRU language model, a tanh MLP with 6 outputs; AdamW (wd 0.05, 0.1), Adam with L2 weight
  decay, Adam, RMSprop (alpha 0.9), SGD+Nesterov with weight decay, SGD+momentum, Adagrad (initial accumulator
  0.1); cross-entropy with label smoothing, Gaussian NLL, smooth L1 (multi-output), CE per token.
  ``fifth_tasks`` (8), the fourth held-out set, run once as such (blind, ``benchmarks/out/lr_quality_held5_blind.txt``)
  and seen since: images of shapes with a class per pixel, binary bar images, molecule-like graphs,
  waveforms of tone sequences, inputs with a random teacher's noisy soft targets, triplets of identities under a
  nuisance pose, token reviews with negations, sequences to sort; an in-tree U-Net (BatchNorm), an MLP VAE, a GCN
  on dense adjacency, a Hugging Face Wav2Vec2 for CTC and T5 from tiny random configs, a residual SwiGLU MLP with
  RMSNorm, an L2-normalized embedding MLP, Kim's text CNN; SGD with momentum 0.99, Adam with amsgrad, NAdam and
  RAdam with decoupled weight decay, AdamW, ASGD, Adadelta, Hugging Face's Adafactor at an absolute LR; CE per
  pixel, the negative ELBO (BCE + KL), CE, CTC, KL divergence to soft targets, the triplet margin loss, BCE with
  logits on one logit, CE per token. lr_range's rules are chosen on these 50.
- The held-out set (``held_out_tasks``, 8): written and committed before any result on them was seen (only their
  speed, and that their loss stays finite for 30 steps at 1e-3, were checked), and run once, after the rules were
  final (``--half held``): RGB arrow images, 3-D point clouds of solids, explicit 1-5 ratings of user/item pairs,
  daily sales rows with categorical columns, 32x32 stroke letters, token sequences with BIO entity tags, Noise2Noise
  signal pairs, a three-branch (multimodal) regression; a MobileNetV2 (inverted residual blocks, ReLU6), a PointNet,
  NeuMF (GMF + MLP on embeddings), a Deep & Cross Network (DCN-V2), LeNet-5 (tanh, average pooling), a Hugging Face
  RoBERTa token classifier from a tiny random config, a 1-D U-Net, a mixture density network; RMSprop (alpha 0.9,
  momentum 0.9, weight decay 4e-5), Adamax with weight decay, Adagrad with lr_decay, torch's Adafactor, SGD with
  momentum 0.95 and dampening 0.5, AdamW (betas 0.9/0.98, eps 1e-6), Adam (betas 0.5/0.999), NAdam
  (momentum_decay 8e-3); CE, MSE, the pinball loss at 3 quantiles, CE per token, L1, the mixture NLL.

For each task and seed: train from that seed's initial model for a fixed budget (150 steps) at every LR of a
13-point log grid from 1e-4 to 1, and at each finder's suggestion (each finder runs on that same initial model).
Each run is scored on two losses, in eval mode after training: on the test set ('test', the default objective)
and on the training data ('fit'); a diverged run counts as infinite. The reference is the grid LR with the lowest
seed-mean loss; a finder's regret on a seed is its loss over the reference LR's loss on that seed, minus 1 (0% = as
good as the best grid LR; negative = better). Reported per task: the median suggestion, the suggestions' spread
over seeds (largest / smallest), the median regret over seeds and the best and worst seed's.

Peers, with their own documented suggestion rules:
- torch-lr-finder: ``range_test(loader, start_lr=1e-7, end_lr=10, num_iter=100)`` then the steepest gradient of
  its smoothed loss (the rule of its ``plot(suggest_lr=True)``: argmin of np.gradient after skipping 10 / 5 points);
- Lightning: ``Tuner(trainer).lr_find(module, min_lr=1e-7, max_lr=10, num_training=100).suggestion()``.
"range test alone" is lr_range's range-test reading before its race (``range_lr``), from the same runs.

Also measured (``sweep_cost``): wall time of one 100-step sweep of each finder against 100 plain training
steps, and whether each leaves the model's state_dict bitwise as it found it.

The grid's and the peers' results do not depend on this repository's code and are cached beside ``--out``
(``--fresh`` recomputes them).

    python benchmarks/lr_quality.py --fresh --no-cost   # both sets, 5 seeds
    python benchmarks/lr_quality.py --half tune         # the tuning set only
    python benchmarks/lr_quality.py --quick             # a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import babysitter  # noqa: E402
import zoo  # noqa: E402


# -- tasks ------------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    kind: str
    build: Callable[[int], nn.Module]  # seed -> freshly initialised model
    data: tuple  # (x, y) tensors
    loss_fn: Callable  # (outputs, targets) -> scalar
    optimizer: Callable  # (params, lr) -> optimizer
    batch_size: int
    test: tuple = ()  # (x, y) drawn from the same distribution, never trained on

    def loader(self, seed: int) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(seed)
        ds = torch.utils.data.TensorDataset(*self.data)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True)


def _noisy_labels(y: torch.Tensor, classes: int, rate: float, seed: int) -> torch.Tensor:
    """Flip a fraction of labels so the best reachable loss is well above zero (relative regret stays meaningful)."""
    g = torch.Generator().manual_seed(seed + 99)
    flip = torch.rand(len(y), generator=g) < rate
    return torch.where(flip, torch.randint(0, classes, y.shape, generator=g), y)


class DeepMLP(nn.Module):
    """A plain deep MLP (PyTorch's default init, no normalization): depth makes the LR optimum sharper."""

    def __init__(self, d_in: int, width: int, depth: int, classes: int, dropout: float = 0.0):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            d = width
        self.body, self.head = nn.Sequential(*layers), nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


class PlainCNN(nn.Module):
    """Two conv layers without normalization, max-pooled, then a linear head (LeNet-like)."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * 9, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class HFClassifier(nn.Module):
    """A Hugging Face ``BertForSequenceClassification`` from a tiny random config (nothing downloaded); returns the
    logits."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=length, num_labels=2)
        self.bert = BertForSequenceClassification(cfg)

    def forward(self, ids):
        return self.bert(input_ids=ids).logits


class HFCausalLM(nn.Module):
    """A Hugging Face ``GPT2LMHeadModel`` from a tiny random config; returns the logits flattened to (B*T, V), the
    usual pattern before a language model's loss."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                         eos_token_id=0)
        self.gpt2 = GPT2LMHeadModel(cfg)

    def forward(self, ids):
        logits = self.gpt2(input_ids=ids).logits
        return logits.reshape(-1, logits.shape[-1])


def _flat_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets.reshape(-1))


def _markov(n: int, length: int) -> tuple:
    import step_zoo

    ids = step_zoo.markov_tokens(n * (length + 1)).reshape(n, length + 1)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _sgd(momentum: float = 0.0, **kw) -> Callable:
    return lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=momentum, **kw)


def _adam(**kw) -> Callable:
    return lambda p, lr: torch.optim.Adam(p, lr=lr, **kw)


def _adamw(wd: float = 0.01, **kw) -> Callable:
    return lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=wd, **kw)


def _rmsprop(**kw) -> Callable:
    return lambda p, lr: torch.optim.RMSprop(p, lr=lr, **kw)


def _adagrad(**kw) -> Callable:
    return lambda p, lr: torch.optim.Adagrad(p, lr=lr, **kw)


def _nadam(**kw) -> Callable:
    return lambda p, lr: torch.optim.NAdam(p, lr=lr, **kw)


def _adamax(**kw) -> Callable:
    return lambda p, lr: torch.optim.Adamax(p, lr=lr, **kw)


def _radam(**kw) -> Callable:
    return lambda p, lr: torch.optim.RAdam(p, lr=lr, **kw)


#: examples of each task's test set (same generator as its training data, never trained on)
TEST = 1024


def _split(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[tuple, tuple]:
    """The first ``n`` of a seeded permutation for training, the rest (``TEST`` of them) for the test set."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    return (x[order[:n]], y[order[:n]]), (x[order[n:]], y[order[n:]])


def _task(name: str, kind: str, make: Callable[[], nn.Module], data: tuple, n: int, loss_fn: Callable,
          optimizer: Callable, batch_size: int) -> Task:
    train, test = _split(*data, n)
    return Task(name, kind, lambda s: _seeded(s, make), train, loss_fn, optimizer, batch_size, test)


def first_tasks() -> list[Task]:
    """The first 14 tuning tasks, the rules' first tuning set. Labels are flipped at random for a fraction of examples
    (the test set's too), so the best reachable loss is well above zero."""
    t = TEST
    sp, im, sq = zoo.spirals(n=768 + t), zoo.images(n=512 + t, size=12), zoo.sequences(n=512 + t)
    tk, rg = zoo.tokens(n=512 + t), zoo.regression(n=768 + t)
    bl, tb = zoo.blobs(n=768 + t, features=32, classes=8), zoo.blobs(n=768 + t, features=24, classes=6, seed=5)
    lm = _markov(256 + t, 32)
    ce = nn.CrossEntropyLoss()
    return [
        _task("spirals-mlp", "MLP, SGD+momentum, CE", lambda: zoo.FunctionalMLP(hidden=64),
              (sp[0], _noisy_labels(sp[1], 3, 0.1, 0)), 768, ce, _sgd(0.9), 64),
        _task("images-cnn", "CNN+BatchNorm, Adam, CE", lambda: zoo.SmallCNN(width=8),
              (im[0], _noisy_labels(im[1], 4, 0.1, 1)), 512, ce, _adam(), 32),
        _task("sequences-gru", "GRU, AdamW, CE", lambda: zoo.RecurrentClassifier(hidden=24), sq, 512, ce, _adamw(),
              32),
        _task("tokens-transformer", "Transformer encoder, Adam, CE",
              lambda: zoo.TinyTransformer(d_model=16, heads=2, layers=1), (tk[0], _noisy_labels(tk[1], 2, 0.1, 2)),
              512, ce, _adam(), 32),
        _task("regression-mlp", "MLP, plain SGD, MSE",
              lambda: nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1)), rg, 768, nn.MSELoss(), _sgd(), 32),
        _task("blobs-residual", "residual MLP+LayerNorm, SGD+Nesterov, CE",
              lambda: zoo.ResidualMLP(d_in=32, width=32, blocks=2, classes=8),
              (bl[0], _noisy_labels(bl[1], 8, 0.2, 3)), 768, ce, _sgd(0.9, nesterov=True), 64),
        _task("tabular-deep-mlp", "6-layer MLP on tabular data, SGD+momentum, CE", lambda: DeepMLP(24, 64, 6, 6),
              (tb[0], _noisy_labels(tb[1], 6, 0.15, 4)), 768, ce, _sgd(0.9), 64),
        _task("images-deep-mlp", "4-layer MLP on flattened images, SGD+momentum, CE",
              lambda: DeepMLP(3 * 12 * 12, 64, 4, 4), (im[0], _noisy_labels(im[1], 4, 0.1, 5)), 512, ce, _sgd(0.9), 32),
        _task("bert-tiny", "HF BERT (2 layers, d 32) classifier, AdamW, CE", lambda: HFClassifier(50, 16),
              (tk[0], _noisy_labels(tk[1], 2, 0.1, 6)), 512, ce, _adamw(), 32),
        _task("gpt2-tiny", "HF GPT-2 (2 layers, d 32) causal LM, AdamW, CE on (B*T, V)", lambda: HFCausalLM(30, 32),
              lm, 256, _flat_ce, _adamw(), 16),
        _task("sequences-lstm", "LSTM, Adam, CE", lambda: zoo.RecurrentClassifier(hidden=24, cell="lstm"),
              (sq[0], _noisy_labels(sq[1], 3, 0.1, 7)), 512, ce, _adam(), 32),
        _task("regression-adam", "MLP (ReLU, 2 hidden), Adam, MSE",
              lambda: nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)),
              rg, 768, nn.MSELoss(), _adam(), 32),
        _task("tabular-dropout-mlp", "MLP with dropout 0.3 on tabular data, Adam, CE",
              lambda: DeepMLP(24, 128, 2, 6, dropout=0.3), (tb[0], _noisy_labels(tb[1], 6, 0.15, 8)), 768, ce,
              _adam(), 64),
        _task("images-plain-cnn", "CNN without normalization, SGD+momentum, CE", lambda: PlainCNN(width=8),
              (im[0], _noisy_labels(im[1], 4, 0.1, 9)), 512, ce, _sgd(0.9), 32),
    ]


# -- the second tuning tasks, the former held-out set: other data generators, shapes, architectures, optimizers and
# losses. Written and committed before any result on them was seen, run once as the held-out set, seen since.
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def waves(n: int, length: int = 64, classes: int = 4, seed: int = 11) -> tuple:
    """1-D signals (N, 1, L): a sine whose frequency band is the class, at a random phase and amplitude, plus a
    random slow trend and noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    freq = 2.0 + 1.5 * y.float() + 0.6 * torch.rand(n, generator=g)
    t = torch.linspace(0, 1, length)
    phase, amp = 2 * math.pi * torch.rand(n, 1, generator=g), 0.5 + torch.rand(n, 1, generator=g)
    trend = torch.randn(n, 1, generator=g) * t[None]
    x = amp * torch.sin(2 * math.pi * freq[:, None] * t[None] + phase) + trend + 0.6 * torch.randn(n, length,
                                                                                                  generator=g)
    return ((x - x.mean()) / x.std())[:, None], y


def glyphs(n: int, size: int = 16, classes: int = 4, seed: int = 12) -> tuple:
    """One-channel images (N, 1, S, S) of a glyph (a square outline, a disk, a cross, a diagonal bar: the class) at a
    random position and scale, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    r = 2.0 + 2.5 * torch.rand(n, generator=g)
    cy, cx = (r + (size - 1 - 2 * r) * torch.rand(n, generator=g) for _ in range(2))
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    rr = r[:, None, None]
    square = ((dy.abs() - rr).abs() < 0.7) & (dx.abs() <= rr) | ((dx.abs() - rr).abs() < 0.7) & (dy.abs() <= rr)
    disk = dy ** 2 + dx ** 2 <= rr ** 2
    cross = ((dy.abs() < 0.8) & (dx.abs() <= rr)) | ((dx.abs() < 0.8) & (dy.abs() <= rr))
    bar = ((dy - dx).abs() < 1.0) & (dy.abs() <= rr)
    shapes = torch.stack([square, disk, cross, bar], 1).float()
    x = shapes[torch.arange(n), y] + 0.7 * torch.randn(n, size, size, generator=g)
    return ((x - x.mean()) / x.std())[:, None], y


def dots(n: int, size: int = 12, classes: int = 4, seed: int = 13) -> tuple:
    """Three-channel images (N, 3, S, S) holding 1 to ``classes`` bright dots of random colours (the class is how
    many), at random places, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for k in range(classes):
        on = (y >= k).float()[:, None, None, None]
        cy, cx = (1.5 + (size - 4) * torch.rand(n, generator=g) for _ in range(2))
        blob = torch.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 1.5)
        colour = 1.0 + torch.rand(n, 3, generator=g)
        x = x + on * colour[:, :, None, None] * blob[:, None]
    return (x - x.mean()) / x.std(), y


def point_sets(n: int, points: int = 16, dim: int = 3, classes: int = 3, seed: int = 14) -> tuple:
    """Sets of points (N, P, D), in random order: a Gaussian cloud, a spherical shell, or two clusters (the class),
    each randomly scaled and shifted."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    z = torch.randn(n, points, dim, generator=g)
    shell = z / z.norm(dim=-1, keepdim=True) * (1.2 + 0.1 * torch.randn(n, points, 1, generator=g))
    sides = torch.where(torch.rand(n, points, 1, generator=g) < 0.5, -1.0, 1.0)
    two = 0.45 * z + sides * torch.tensor([1.0] + [0.0] * (dim - 1))
    x = torch.stack([z, shell, two], 1)[torch.arange(n), y]
    x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, generator=g)) + 0.5 * torch.randn(n, 1, dim, generator=g)
    return x, y


def moons(n: int, dim: int = 20, seed: int = 15) -> tuple:
    """Two interleaved half-moons with noise, embedded in ``dim`` dimensions by a random rotation among noise
    features; standardized."""
    g = _gen(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = math.pi * torch.rand(n, generator=g)
    p = torch.stack([torch.cos(t) + y * 1.0, torch.sin(t) * (1 - 2 * y.float()) + 0.5 * y], 1)
    p = p + 0.15 * torch.randn(n, 2, generator=g)
    x = torch.cat([p, 0.5 * torch.randn(n, dim - 2, generator=g)], 1)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    x = x @ q
    return (x - x.mean(0)) / x.std(0), y


def bags(n: int, vocab: int = 200, length: int = 20, topics: int = 4, seed: int = 16) -> tuple:
    """Documents of ``length`` word ids: a topic (the class) draws a third of the words from its own 30 words, the
    rest from the whole vocabulary by a Zipf law."""
    g = _gen(seed)
    y = torch.randint(0, topics, (n,), generator=g)
    zipf = 1.0 / torch.arange(1, vocab + 1).float()
    common = torch.multinomial(zipf / zipf.sum(), n * length, replacement=True, generator=g).reshape(n, length)
    own = 30 * y[:, None] + torch.randint(0, 30, (n, length), generator=g) + (vocab - 30 * topics)
    pick = torch.rand(n, length, generator=g) < 0.33
    return torch.where(pick, own, common), y


LEXICON = ("the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "its", "red", "ball", "and", "then", "slept",
           "under", "big", "old", "tree", "near", "house")


def chars(n: int, length: int = 48, seed: int = 17) -> tuple:
    """Character-level text (inputs, next characters), ids of a-z, space and '.': sentences of 3-7 words drawn
    from a small lexicon, words following a random sparse preference table."""
    g = _gen(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ."
    follow = torch.rand(len(LEXICON), len(LEXICON), generator=g) ** 4
    words, text = [int(torch.randint(0, len(LEXICON), (1,), generator=g))], []
    total = n * (length + 1)
    while len(text) < total:
        sentence = [LEXICON[words[-1]]]
        for _ in range(int(torch.randint(2, 7, (1,), generator=g))):
            words.append(int(torch.multinomial(follow[words[-1]], 1, generator=g)))
            sentence.append(LEXICON[words[-1]])
        text += list(" ".join(sentence) + ". ")
    ids = torch.tensor([alphabet.index(c) for c in text[:total]]).reshape(n, length + 1)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def ngram_tokens(n: int, length: int = 24, vocab: int = 40, seed: int = 18) -> tuple:
    """Token sequences (inputs, next tokens) from a sparse random second-order Markov chain over ``vocab`` ids."""
    g = _gen(seed)
    table = torch.rand(vocab, vocab, vocab, generator=g) ** 6
    ids = torch.empty(n, length + 1, dtype=torch.long)
    ids[:, :2] = torch.randint(0, vocab, (n, 2), generator=g)
    for t in range(2, length + 1):
        ids[:, t] = torch.multinomial(table[ids[:, t - 2], ids[:, t - 1]], 1, generator=g)[:, 0]
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def counting_tokens(n: int, length: int = 20, vocab: int = 30, seed: int = 19) -> tuple:
    """Token ids; the class is whether token 3 occurs more often than token 4."""
    g = _gen(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    y = ((ids == 3).sum(1) > (ids == 4).sum(1)).long()
    return ids, y


def friedman(n: int, features: int = 10, seed: int = 20) -> tuple:
    """Friedman's #1 regression function of 5 of 10 uniform features, with heavy-tailed (Student t, 2 dof) noise:
    the case for a Huber loss; the target standardized by its median and spread."""
    g = _gen(seed)
    x = torch.rand(n, features, generator=g)
    f = 10 * torch.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    noise = torch.randn(n, generator=g) / torch.sqrt(-torch.log(torch.rand(n, generator=g)))  # Student t, 2 dof
    y = (f + noise)[:, None]
    return (x - 0.5) / 0.29, (y - y.median()) / f.std()


def ripples(n: int, features: int = 6, seed: int = 21) -> tuple:
    """A smooth non-linear regression target (a product of ripples of two projections) with Laplace noise: the
    case for an L1 loss."""
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 2, generator=g) / math.sqrt(features)
    z = x @ w
    f = torch.sin(2 * z[:, 0]) * torch.cos(z[:, 1]) + 0.5 * z[:, 1]
    u = torch.rand(n, generator=g) - 0.5
    noise = -0.3 * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace, scale 0.3
    y = (f + noise)[:, None]
    return x, (y - y.mean()) / y.std()


class Conv1dNet(nn.Module):
    """A 1-D conv net over signals: three conv layers with BatchNorm, pooling, global average, a linear head."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 7, padding=3), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """MLP-Mixer (Tolstikhin et al. 2021): 4x4 patches of a one-channel image, token- and channel-mixing MLPs."""

    def __init__(self, size: int = 16, patch: int = 4, dim: int = 32, blocks: int = 2, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*(MixerBlock((size // patch) ** 2, dim) for _ in range(blocks)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(h).mean(1))


class AttentionPool(nn.Module):
    """A set classifier: each point embedded by an MLP, one self-attention layer, then pooling by attention with a
    learned query (as in Set Transformer's PMA), a linear head."""

    def __init__(self, dim: int = 3, width: int = 32, classes: int = 3):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width))
        self.mix = nn.MultiheadAttention(width, 4, batch_first=True)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.pool = nn.MultiheadAttention(width, 4, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mix(h, h, h, need_weights=False)[0]
        pooled = self.pool(self.query.expand(len(h), -1, -1), h, h, need_weights=False)[0]
        return self.head(pooled[:, 0])


class BagClassifier(nn.Module):
    """A bag-of-words classifier: mean of word embeddings (EmbeddingBag), a linear head."""

    def __init__(self, vocab: int = 200, dim: int = 32, classes: int = 4):
        super().__init__()
        self.bag, self.head = nn.EmbeddingBag(vocab, dim, mode="mean"), nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.bag(ids))


class CharLSTM(nn.Module):
    """A character-level LSTM language model; returns the logits flattened to (B*T, V)."""

    def __init__(self, vocab: int = 28, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, dim), nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.head(out).reshape(-1, self.head.out_features)


class GroupNormCNN(nn.Module):
    """Three conv layers with GroupNorm and SiLU, strided, global average pooling, a linear head."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(4, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """A small ResNet: a strided stem, ``blocks`` basic blocks (two 3x3 convs with BatchNorm and a skip) at one
    width, a global average, a linear head."""

    def __init__(self, blocks: int = 4, width: int = 12, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*(BasicBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class HFLlama(nn.Module):
    """A Hugging Face ``LlamaForCausalLM`` from a tiny random config (RMSNorm, rotary positions, SwiGLU, grouped
    key/value heads); returns the logits flattened to (B*T, V)."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length,
                          bos_token_id=0, eos_token_id=0, pad_token_id=None, tie_word_embeddings=False)
        self.llama = LlamaForCausalLM(cfg)

    def forward(self, ids):
        logits = self.llama(input_ids=ids).logits
        return logits.reshape(-1, logits.shape[-1])


class HFDistilBert(nn.Module):
    """A Hugging Face ``DistilBertForSequenceClassification`` from a tiny random config; returns the logits."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        from transformers import DistilBertConfig, DistilBertForSequenceClassification

        cfg = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                               max_position_embeddings=length, num_labels=2)
        self.distilbert = DistilBertForSequenceClassification(cfg)

    def forward(self, ids):
        return self.distilbert(input_ids=ids).logits


def _clipped_sgd(max_norm: float, momentum: float = 0.0) -> Callable:
    """Plain SGD that clips the gradients' total norm to ``max_norm`` before each step (the word-language-model
    recipe), inside the optimizer so that every tool trains with the same step."""
    return lambda p, lr: ClippedSGD(p, lr=lr, momentum=momentum, max_norm=max_norm)


class ClippedSGD(torch.optim.SGD):
    """``torch.optim.SGD`` with ``clip_grad_norm_(params, max_norm)`` before each step."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, max_norm: float = 1.0):
        super().__init__(params, lr=lr, momentum=momentum)
        for group in self.param_groups:  # a group's setting, so that a rebuild from the groups keeps it
            group["max_norm"] = max_norm

    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning computes the gradients in the closure: clip after it
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.param_groups[0]["max_norm"])
        super().step()
        return loss


def second_tasks() -> list[Task]:
    """The second 12 tuning tasks, the former held-out set: 12 task/optimizer pairs, each with a data generator none
    of ``first_tasks()`` uses and an architecture, optimizer or loss none of them pairs it with; fixed and committed
    before any result on them was seen, run once as the held-out set (commit e490bc4), and seen since."""
    t = TEST
    wv, gl, dt = waves(768 + t), glyphs(768 + t), dots(512 + t)
    ps, mn, bg = point_sets(768 + t), moons(768 + t), bags(768 + t)
    ch, ng, ct = chars(256 + t, 48), ngram_tokens(384 + t), counting_tokens(512 + t)
    fr, rp = friedman(768 + t), ripples(768 + t)
    ce = nn.CrossEntropyLoss()
    return [
        _task("waves-conv1d", "1-D CNN+BatchNorm on signals, SGD+momentum, CE", lambda: Conv1dNet(),
              (wv[0], _noisy_labels(wv[1], 4, 0.1, 20)), 768, ce, _sgd(0.9), 64),
        _task("glyphs-mixer", "MLP-Mixer on image patches, AdamW (wd 0.05), CE", lambda: Mixer(),
              (gl[0], _noisy_labels(gl[1], 4, 0.1, 21)), 768, ce, _adamw(0.05), 64),
        _task("sets-attention-pool", "self-attention + attention pooling over point sets, Adam, CE",
              lambda: AttentionPool(), (ps[0], _noisy_labels(ps[1], 3, 0.1, 22)), 768, ce, _adam(), 32),
        _task("moons-wide-rmsprop", "wide shallow MLP (1 x 512), RMSprop, CE",
              lambda: nn.Sequential(nn.Linear(20, 512), nn.ReLU(), nn.Linear(512, 2)),
              (mn[0], _noisy_labels(mn[1], 2, 0.1, 23)), 768, ce, _rmsprop(), 64),
        _task("bags-adagrad", "bag-of-words EmbeddingBag classifier, Adagrad, CE", lambda: BagClassifier(),
              (bg[0], _noisy_labels(bg[1], 4, 0.15, 24)), 768, ce, _adagrad(), 32),
        _task("chars-lstm-lm", "char-level LSTM LM, plain SGD with clip_grad_norm 0.5, CE on (B*T, V)",
              lambda: CharLSTM(), ch, 256, _flat_ce, _clipped_sgd(0.5), 16),
        _task("dots-cnn-adamw", "CNN+GroupNorm counting dots, AdamW (wd 0.1), CE", lambda: GroupNormCNN(),
              (dt[0], _noisy_labels(dt[1], 4, 0.1, 25)), 512, ce, _adamw(0.1), 32),
        _task("glyphs-resnet", "ResNet (4 basic blocks, BatchNorm), Adam, CE", lambda: ResNet(),
              (gl[0], _noisy_labels(gl[1], 4, 0.1, 26)), 768, ce, _adam(), 32),
        _task("llama-tiny", "HF LLaMA (2 layers, d 32, GQA) causal LM, AdamW (betas 0.9/0.95, wd 0.1), CE on (B*T, V)",
              lambda: HFLlama(40, 24), ng, 384, _flat_ce, _adamw(0.1, betas=(0.9, 0.95)), 16),
        _task("distilbert-tiny", "HF DistilBERT (2 layers, d 32) classifier, AdamW, CE", lambda: HFDistilBert(30, 20),
              (ct[0], _noisy_labels(ct[1], 2, 0.1, 27)), 512, ce, _adamw(), 32),
        _task("friedman-huber", "MLP (SiLU, 2 x 64), SGD+momentum, Huber loss",
              lambda: nn.Sequential(nn.Linear(10, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)),
              fr, 768, nn.HuberLoss(delta=1.0), _sgd(0.9), 32),
        _task("ripples-l1", "MLP (GELU, 2 x 64), NAdam, L1 loss",
              lambda: nn.Sequential(nn.Linear(6, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)),
              rp, 768, nn.L1Loss(), _nadam(), 32),
    ]


# -- the third tuning tasks (the second held-out set, seen since): other again in data, architecture, optimizer, loss --
# Written and committed before any result on them was seen (only their speed, and that their loss stays finite for
# 30 steps at 1e-3, were checked), run once as the held-out set, and seen since.
def gratings(n: int, size: int = 12, classes: int = 4, seed: int = 31) -> tuple:
    """One-channel images (N, 1, S, S) of a sine grating whose orientation (0, 45, 90, 135 degrees, jittered) is
    the class, at a random spatial frequency and phase, with a random contrast, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    angle = math.pi * y.float() / classes + 0.15 * torch.randn(n, generator=g)
    freq = 0.15 + 0.2 * torch.rand(n, generator=g)
    phase, contrast = 2 * math.pi * torch.rand(n, generator=g), 0.4 + 0.8 * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    along = torch.cos(angle)[:, None, None] * xx[None] + torch.sin(angle)[:, None, None] * yy[None]
    x = contrast[:, None, None] * torch.sin(2 * math.pi * freq[:, None, None] * along + phase[:, None, None])
    x = x + 0.9 * torch.randn(n, size, size, generator=g)
    return ((x - x.mean()) / x.std())[:, None], y


def walks(n: int, length: int = 30, classes: int = 3, seed: int = 32) -> tuple:
    """Random walks (N, L, 2): noisy increments whose drift (down, none, up) is the class, and their running sum."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    drift = 0.12 * (y.float() - 1)
    steps = drift[:, None] + 0.5 * torch.randn(n, length, generator=g)
    pos = steps.cumsum(1)
    return torch.stack([steps / 0.5, pos / pos.std()], -1), y


def periodic_tokens(n: int, length: int = 40, vocab: int = 16, seed: int = 33) -> tuple:
    """Token sequences (inputs, next tokens): a random motif of 2 to 5 tokens repeated, 10% of tokens replaced at
    random; the next token is predictable by copying from one period back."""
    g = _gen(seed)
    period = torch.randint(2, 6, (n,), generator=g)
    motif = torch.randint(0, vocab, (n, 5), generator=g)
    pos = torch.arange(length + 1)[None] % period[:, None]
    ids = motif.gather(1, pos)
    noise = torch.rand(n, length + 1, generator=g) < 0.1
    ids = torch.where(noise, torch.randint(0, vocab, ids.shape, generator=g), ids)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def mixed_tabular(n: int, numeric: int = 10, cards: tuple = (5, 3, 7), classes: int = 5, seed: int = 34) -> tuple:
    """Tabular rows (N, numeric + one-hot categoricals): the class is the argmax of a random quadratic score of the
    numeric features plus an effect per category, with Gumbel noise (so classes overlap)."""
    g = _gen(seed)
    xn = torch.randn(n, numeric, generator=g) * torch.linspace(0.5, 2.0, numeric)
    cats = [torch.randint(0, c, (n,), generator=g) for c in cards]
    w = torch.randn(numeric, classes, generator=g) / math.sqrt(numeric)
    q = torch.randn(classes, numeric, numeric, generator=g) / numeric
    z = (xn - xn.mean(0)) / xn.std(0)
    score = 1.5 * z @ w + 0.5 * torch.einsum("ni,kij,nj->nk", z, q, z)
    for c, card in zip(cats, cards):
        score = score + torch.randn(card, classes, generator=g)[c]
    gumbel = -torch.log(-torch.log(torch.rand(n, classes, generator=g)))
    y = (score + 0.7 * gumbel).argmax(1)
    onehot = [nn.functional.one_hot(c, card).float() for c, card in zip(cats, cards)]
    return torch.cat([xn] + onehot, 1), y


def counts(n: int, features: int = 8, seed: int = 35) -> tuple:
    """Count data (Poisson regression): y ~ Poisson(exp(f(x))) with f a smooth non-linear function of 4 of 8
    Gaussian features; the target is the count as a float."""
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    f = 0.8 + 0.6 * torch.sin(x[:, 0]) + 0.4 * x[:, 1] * x[:, 2] - 0.3 * x[:, 3] ** 2
    y = torch.poisson(torch.exp(f.clamp(max=3.0)), generator=g)
    return x, y[:, None]


def multi_shapes(n: int, size: int = 12, labels: int = 5, seed: int = 36) -> tuple:
    """One-channel images (N, 1, S, S) holding any subset of 5 patterns (a horizontal bar, a vertical bar, a ring, a
    corner dot, a diagonal), each present with probability 0.4, at a jittered place; the targets are the 5 presence
    bits, 5% of them flipped (multi-label)."""
    g = _gen(seed)
    y = (torch.rand(n, labels, generator=g) < 0.4).float()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x = 0.6 * torch.randn(n, size, size, generator=g)
    jy, jx = (torch.randint(-2, 3, (n, 1, 1), generator=g).float() for _ in range(2))
    c = (size - 1) / 2
    dy, dx = yy[None] - c - jy, xx[None] - c - jx
    patterns = [dy.abs() < 0.8, dx.abs() < 0.8, ((dy ** 2 + dx ** 2).sqrt() - 3.5).abs() < 0.7,
                (dy + c - 1.5) ** 2 + (dx + c - 1.5) ** 2 < 2.5, (dy - dx).abs() < 0.8]
    for k, p in enumerate(patterns):
        x = x + y[:, k, None, None] * p.float()
    flip = torch.rand(n, labels, generator=g) < 0.05
    return ((x - x.mean()) / x.std())[:, None], torch.where(flip, 1 - y, y)


def manifold(n: int, dim: int = 32, latent: int = 3, seed: int = 37) -> tuple:
    """Points near a 3-D non-linear manifold in 32-D (a random two-layer tanh map of 3 latent factors), with noise:
    (noisy point, clean point), for a denoising autoencoder."""
    g = _gen(seed)
    z = torch.randn(n, latent, generator=g)
    a, b = torch.randn(latent, 16, generator=g), torch.randn(16, dim, generator=g) / 4
    clean = torch.tanh(z @ a) @ b
    clean = (clean - clean.mean(0)) / clean.std(0)
    return clean + 0.5 * torch.randn(n, dim, generator=g), clean


def chirps(n: int, length: int = 96, seed: int = 38) -> tuple:
    """1-D signals (N, 1, L): a chirp whose frequency rises or falls (the class), starting at a random time and
    frequency, in noise."""
    g = _gen(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.linspace(0, 1, length)[None]
    f0, rate = 3 + 3 * torch.rand(n, 1, generator=g), 6 + 6 * torch.rand(n, 1, generator=g)
    sign = (2 * y.float() - 1)[:, None]
    freq = f0 + sign * rate * t
    start = 0.4 * torch.rand(n, 1, generator=g)
    window = ((t > start) & (t < start + 0.6)).float()
    x = window * torch.sin(2 * math.pi * freq * t + 2 * math.pi * torch.rand(n, 1, generator=g))
    x = x + 0.8 * torch.randn(n, length, generator=g)
    return (x / x.std())[:, None], y


class SeparableCNN(nn.Module):
    """A MobileNet-style CNN: a conv stem, two depthwise-separable blocks (a 3x3 depthwise conv, strided, then a 1x1
    pointwise conv, each with BatchNorm and hardswish), a global average, a linear head."""

    def __init__(self, classes: int = 4, width: int = 12):
        super().__init__()

        def block(c_in: int, c_out: int) -> list:
            return [nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                    nn.Hardswish(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.Hardswish()]

        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                      nn.Hardswish(), *block(width, 2 * width), *block(2 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class GRUClassifier(nn.Module):
    """A GRU over a sequence of feature vectors, classified from the mean of its outputs."""

    def __init__(self, d_in: int = 2, hidden: int = 32, classes: int = 3):
        super().__init__()
        self.gru, self.head = nn.GRU(d_in, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.gru(x)[0].mean(1))


class CausalDecoder(nn.Module):
    """A pre-LayerNorm causal Transformer decoder (PyTorch's own layers with a causal mask, GELU), learned
    positions, the output projection tied to the token embedding; returns the logits flattened to (B*T, V)."""

    def __init__(self, vocab: int = 16, length: int = 40, dim: int = 32, layers: int = 2):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.blocks(self.embed(ids) + self.pos[:, :t], mask=self.mask[:t, :t], is_causal=True)
        return (self.norm(h) @ self.embed.weight.T).reshape(-1, self.embed.num_embeddings)


class LayerNormMLP(nn.Module):
    """A tabular MLP: two hidden layers, each Linear -> LayerNorm -> GELU, a linear head."""

    def __init__(self, d_in: int, width: int = 64, classes: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, width),
                                 nn.LayerNorm(width), nn.GELU(), nn.Linear(width, classes))

    def forward(self, x):
        return self.net(x)


class MultiLabelCNN(nn.Module):
    """Two conv layers (ReLU, max-pooling), a linear head giving one logit per label."""

    def __init__(self, labels: int = 5, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * 9, labels)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class DenoisingAE(nn.Module):
    """A denoising autoencoder: an MLP encoder to a 4-D code and an MLP decoder back (ELU)."""

    def __init__(self, dim: int = 32, code: int = 4, width: int = 24):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, width), nn.ELU(), nn.Linear(width, code))
        self.decoder = nn.Sequential(nn.Linear(code, width), nn.ELU(), nn.Linear(width, dim))

    def forward(self, x):
        return self.decoder(self.encoder(x))


class DilatedTCN(nn.Module):
    """A temporal conv net: four 1-D convs with dilations 1, 2, 4, 8 and residual connections (no normalization),
    a global max, a linear head."""

    def __init__(self, classes: int = 2, width: int = 16):
        super().__init__()
        self.stem = nn.Conv1d(1, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, 3, padding=d, dilation=d) for d in (1, 2, 4, 8))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.stem(x)
        for conv in self.convs:
            h = h + torch.relu(conv(h))
        return self.head(h.amax(2))


def third_tasks() -> list[Task]:
    """The third 8 tuning tasks, the second held-out set: 8 task/optimizer pairs, each with a data generator none of
    ``first_tasks()`` and ``second_tasks()`` uses and an architecture, optimizer or loss none of them pairs it with;
    fixed and committed before any result on them was seen (commit 3492b39), run once as the held-out set, and seen
    since."""
    t = TEST
    gr, wk, pt, mx = gratings(768 + t), walks(512 + t), periodic_tokens(256 + t), mixed_tabular(768 + t)
    cn, ms, mf, cp = counts(768 + t), multi_shapes(768 + t), manifold(768 + t), chirps(512 + t)
    ce = nn.CrossEntropyLoss()
    return [
        _task("gratings-separable", "depthwise-separable CNN (BatchNorm, hardswish), SGD+momentum (wd 5e-4), CE",
              lambda: SeparableCNN(), (gr[0], _noisy_labels(gr[1], 4, 0.1, 40)), 768, ce, _sgd(0.9, weight_decay=5e-4),
              64),
        _task("walks-gru-nesterov", "GRU classifier (mean of outputs) on random walks, SGD+Nesterov, CE",
              lambda: GRUClassifier(), (wk[0], _noisy_labels(wk[1], 3, 0.1, 41)), 512, ce,
              _sgd(0.9, nesterov=True), 32),
        _task("periodic-decoder", "pre-LN causal Transformer decoder, tied embeddings, AdamW (betas 0.9/0.98), CE on "
              "(B*T, V)", lambda: CausalDecoder(), pt, 256, _flat_ce, _adamw(0.01, betas=(0.9, 0.98)), 16),
        _task("tabular-layernorm-adamw", "MLP with LayerNorm (2 x 64, GELU) on mixed numeric/one-hot data, AdamW "
              "(wd 0.05), CE", lambda: LayerNormMLP(25), mx, 768, ce, _adamw(0.05), 64),
        _task("counts-poisson-adamax", "MLP (2 x 64, ReLU) giving a log-rate, Adamax, Poisson NLL",
              lambda: nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)),
              cn, 768, nn.PoissonNLLLoss(log_input=True), _adamax(), 32),
        _task("shapes-multilabel-sgd", "CNN, 5 labels, plain SGD with weight decay 1e-4 (no momentum), BCE with "
              "logits", lambda: MultiLabelCNN(), ms, 768, nn.BCEWithLogitsLoss(), _sgd(0.0, weight_decay=1e-4), 32),
        _task("manifold-dae-radam", "denoising autoencoder (MLP, 4-D code, ELU), RAdam, MSE", lambda: DenoisingAE(),
              mf, 768, nn.MSELoss(), _radam(), 32),
        _task("chirps-tcn-rmsprop", "dilated residual 1-D TCN (no normalization), RMSprop (centered, momentum 0.9), "
              "CE", lambda: DilatedTCN(), (cp[0], _noisy_labels(cp[1], 2, 0.1, 42)), 512, ce,
              _rmsprop(centered=True, momentum=0.9), 32),
    ]


# -- the fourth tuning tasks (the third held-out set, seen since): other again in data, architecture, optimizer, loss
# Written and committed before any result on them was seen (only their speed, and that their loss stays finite for
# 30 steps at 1e-3, were checked), run once as the held-out set, and seen since.
def textures(n: int, size: int = 16, classes: int = 4, seed: int = 50) -> tuple:
    """One-channel images (N, 1, S, S) of a texture (a checkerboard, concentric rings, a plaid of two crossed waves at
    a random angle, a smooth random field: the class) at a random scale, offset and contrast, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    yy, xx = yy[None], xx[None]
    scale = (2.0 + 3.0 * torch.rand(n, generator=g))[:, None, None]
    oy, ox = (size * torch.rand(n, 1, 1, generator=g) for _ in range(2))
    checker = torch.sign(torch.sin(math.pi * (yy - oy) / scale) * torch.sin(math.pi * (xx - ox) / scale))
    rings = torch.sin(math.pi * ((yy - oy) ** 2 + (xx - ox) ** 2).sqrt() / scale)
    a = math.pi * torch.rand(n, 1, 1, generator=g)
    u, v = torch.cos(a) * xx + torch.sin(a) * yy, torch.cos(a) * yy - torch.sin(a) * xx
    plaid = 0.5 * (torch.sin(math.pi * u / scale) + torch.sin(math.pi * v / scale))
    field = nn.functional.avg_pool2d(torch.randn(n, 1, size + 4, size + 4, generator=g), 5, 1)[:, 0]
    field = field / field.flatten(1).std(1)[:, None, None]
    x = torch.stack([checker, rings, plaid, field], 1)[torch.arange(n), y]
    x = (0.4 + 0.6 * torch.rand(n, 1, 1, generator=g)) * x + 0.5 * torch.randn(n, size, size, generator=g)
    return ((x - x.mean()) / x.std())[:, None], y


def constellations(n: int, points: int = 12, seed: int = 51) -> tuple:
    """Sets of 2-D points (N, P, 2), in random order, on the outline of a circle, a triangle or a square (the class),
    randomly rotated, scaled and shifted, with noise."""
    g = _gen(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.rand(n, points, generator=g)

    def outline(k: int) -> torch.Tensor:  # a regular k-gon on the unit circle, walked at t
        e = (t * k).floor()
        f = (t * k - e)[..., None]
        a0, a1 = 2 * math.pi * e / k, 2 * math.pi * (e + 1) / k
        return (1 - f) * torch.stack([a0.cos(), a0.sin()], -1) + f * torch.stack([a1.cos(), a1.sin()], -1)

    circle = torch.stack([(2 * math.pi * t).cos(), (2 * math.pi * t).sin()], -1)
    x = torch.stack([circle, outline(3), outline(4)], 1)[torch.arange(n), y]
    a = 2 * math.pi * torch.rand(n, generator=g)
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
    x = (x @ rot) * (0.7 + 0.6 * torch.rand(n, 1, 1, generator=g)) + 0.5 * torch.randn(n, 1, 2, generator=g)
    return x + 0.12 * torch.randn(n, points, 2, generator=g), y


def ambiguous_tags(n: int, length: int = 24, vocab: int = 30, seed: int = 52) -> tuple:
    """Token ids (N, L) and a tag per token (N, L), like parts of speech: ids 0-9 are nouns (tag 0), 10-19 verbs
    (tag 1), 20-23 determiners (tag 2); ids 24-29 are ambiguous, a noun when the next token is a verb and a verb
    otherwise (so a tagger must look right); 10% of tags replaced at random."""
    g = _gen(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    tags = torch.where(ids < 10, 0, torch.where(ids < 20, 1, 2))
    following = torch.cat([tags[:, 1:], torch.full((n, 1), 2)], 1)
    tags = torch.where(ids >= 24, torch.where(following == 1, 0, 1), tags)
    flip = torch.rand(n, length, generator=g) < 0.1
    return ids, torch.where(flip, torch.randint(0, 3, tags.shape, generator=g), tags)


def tree_rows(n: int, features: int = 12, classes: int = 3, seed: int = 53) -> tuple:
    """Tabular rows (N, F) of correlated Gaussian features on scales from 0.5 to 5 (unstandardized); the class is the
    leaf of a random depth-3 axis-aligned decision tree on them (splits near the middle, the classes spread over its 8
    leaves)."""
    g = _gen(seed)
    mix = torch.eye(features) + 0.4 * torch.randn(features, features, generator=g)
    z = torch.randn(n, features, generator=g) @ mix
    x = z / z.std(0) * torch.logspace(math.log10(0.5), math.log10(5.0), features)
    feat = torch.randint(0, features, (7,), generator=g)
    thr = 0.3 * torch.randn(7, generator=g) * x.std(0)[feat]
    leaves = torch.randperm(8, generator=g) % classes
    node = torch.zeros(n, dtype=torch.long)
    for _ in range(3):
        node = 2 * node + 1 + (x[torch.arange(n), feat[node]] > thr[node]).long()
    return x, leaves[node - 7]


#: which of the seven segments (top, top right, bottom right, bottom, bottom left, top left, middle) each digit lights
SEVEN_SEGMENTS = ((1, 1, 1, 1, 1, 1, 0), (0, 1, 1, 0, 0, 0, 0), (1, 1, 0, 1, 1, 0, 1), (1, 1, 1, 1, 0, 0, 1),
                  (0, 1, 1, 0, 0, 1, 1), (1, 0, 1, 1, 0, 1, 1), (1, 0, 1, 1, 1, 1, 1), (1, 1, 1, 0, 0, 0, 0),
                  (1, 1, 1, 1, 1, 1, 1), (1, 1, 1, 1, 0, 1, 1))


def segments(n: int, size: int = 14, seed: int = 54) -> tuple:
    """One-channel images (N, 1, S, S) of a seven-segment digit 0-9 (the class) of random height, width and
    brightness at a random place, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    h = (7.0 + 3.0 * torch.rand(n, generator=g))[:, None, None]
    w = (4.0 + 2.0 * torch.rand(n, generator=g))[:, None, None]
    y0, x0 = ((0.5 + (size - 1.5 - d) * torch.rand(n, 1, 1, generator=g)) for d in (h, w))
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dy, dx = yy[None] - y0, xx[None] - x0

    def across(level: float) -> torch.Tensor:
        return ((dy - level * h).abs() < 0.7) & (dx >= 0) & (dx <= w)

    def down(side: int, half: int) -> torch.Tensor:
        return ((dx - side * w).abs() < 0.7) & (dy >= half * h / 2) & (dy <= (half + 1) * h / 2)

    segs = torch.stack([across(0), down(1, 0), down(1, 1), across(1), down(0, 1), down(0, 0), across(0.5)], 1)
    lit = torch.tensor(SEVEN_SEGMENTS, dtype=torch.bool)[y][:, :, None, None]
    x = (segs & lit).any(1).float() * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=g))
    x = x + 0.5 * torch.randn(n, size, size, generator=g)
    return ((x - x.mean()) / x.std())[:, None], y


def heteroscedastic(n: int, features: int = 5, seed: int = 55) -> tuple:
    """A regression whose noise level depends on the input: y = f(x) + s(x) e, with f a smooth non-linear function
    of 4 of 5 uniform features and s from 0.4 to 1.2 set by the fifth (and the first); standardized."""
    g = _gen(seed)
    x = 4 * torch.rand(n, features, generator=g) - 2
    f = torch.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.3 * x[:, 3]
    s = 0.4 + 0.8 * torch.sigmoid(2 * x[:, 4] + x[:, 0])
    y = (f + s * torch.randn(n, generator=g))[:, None]
    return x, (y - y.mean()) / y.std()


def hmm_tokens(n: int, length: int = 32, vocab: int = 24, states: int = 4, seed: int = 56) -> tuple:
    """Token sequences (inputs, next tokens) from a hidden Markov model: sticky hidden states (kept with probability
    0.85), each emitting from its own sparse random distribution over ``vocab`` ids."""
    g = _gen(seed)
    emit = torch.rand(states, vocab, generator=g) ** 4
    state = torch.randint(0, states, (n,), generator=g)
    ids = torch.empty(n, length + 1, dtype=torch.long)
    for t in range(length + 1):
        ids[:, t] = torch.multinomial(emit[state], 1, generator=g)[:, 0]
        jump = torch.rand(n, generator=g) >= 0.85
        state = torch.where(jump, torch.randint(0, states, (n,), generator=g), state)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def arm(n: int, links: tuple = (1.0, 0.8, 0.6), seed: int = 57) -> tuple:
    """A planar three-link arm: joint angles in [-pi, pi] (N, 3) to the (x, y) positions of its elbow, wrist and tip
    (N, 6), each with heavy-tailed (Student t, 3 dof) noise; standardized."""
    g = _gen(seed)
    q = math.pi * (2 * torch.rand(n, len(links), generator=g) - 1)
    heading = q.cumsum(1)
    joints = (torch.tensor(links) * torch.stack([heading.cos(), heading.sin()], -1).transpose(1, 2)).cumsum(2)
    y = joints.transpose(1, 2).reshape(n, -1)
    chi2 = sum(torch.randn(n, y.shape[1], generator=g) ** 2 for _ in range(3))
    y = y + 0.15 * torch.randn(n, y.shape[1], generator=g) / (chi2 / 3).sqrt()
    return q / math.pi, (y - y.mean(0)) / y.std(0)


class HFViT(nn.Module):
    """A Hugging Face ``ViTForImageClassification`` from a tiny random config (one channel, 4x4 patches); returns the
    logits."""

    def __init__(self, size: int = 16, classes: int = 4):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(image_size=size, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=classes)
        self.vit = ViTForImageClassification(cfg)

    def forward(self, x):
        return self.vit(pixel_values=x).logits


class AttentionBlock(nn.Module):
    """Set Transformer's MAB: multi-head attention of queries to a set, then a feed-forward layer, each with a
    residual connection and a LayerNorm after it (post-LN)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q, kv):
        h = self.norm1(q + self.attn(q, kv, kv, need_weights=False)[0])
        return self.norm2(h + self.ff(h))


class SetTransformer(nn.Module):
    """A Set Transformer (Lee et al. 2019): points embedded linearly, two induced set attention blocks (ISAB: the set
    attends to itself through 8 learned inducing points), pooling by attention with a learned seed (PMA), a head."""

    def __init__(self, dim_in: int = 2, dim: int = 32, heads: int = 4, inducing: int = 8, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(dim_in, dim)
        self.inducing = nn.ParameterList(nn.Parameter(torch.randn(1, inducing, dim) * 0.1) for _ in range(2))
        self.down = nn.ModuleList(AttentionBlock(dim, heads) for _ in range(2))
        self.up = nn.ModuleList(AttentionBlock(dim, heads) for _ in range(2))
        self.seed = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pool, self.head = AttentionBlock(dim, heads), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        for points, down, up in zip(self.inducing, self.down, self.up):
            h = up(h, down(points.expand(len(h), -1, -1), h))
        return self.head(self.pool(self.seed.expand(len(h), -1, -1), h)[:, 0])


class BiLSTMTagger(nn.Module):
    """A sequence tagger: token embeddings, a bidirectional LSTM, a linear layer per position; returns the logits
    flattened to (B*T, tags)."""

    def __init__(self, vocab: int = 30, dim: int = 16, hidden: int = 32, tags: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0]).reshape(-1, self.head.out_features)


class BatchNormMLP(nn.Module):
    """A tabular MLP: ``depth`` hidden layers, each Linear -> BatchNorm1d -> ReLU, a linear head."""

    def __init__(self, d_in: int = 12, width: int = 512, depth: int = 3, classes: int = 3):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, classes))

    def forward(self, x):
        return self.net(x)


class DropoutCNN(nn.Module):
    """The classic small digit CNN: two conv layers (ReLU, max-pooling), dropout 0.25, a hidden layer of 64,
    dropout 0.5, a linear head."""

    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * 9, 64), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


class WideMLP(nn.Module):
    """An MLP of ``depth`` hidden layers of one width and one activation, a linear head of ``d_out`` outputs."""

    def __init__(self, d_in: int, width: int, depth: int, d_out: int, act: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), act()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, d_out))

    def forward(self, x):
        return self.net(x)


def _gaussian_nll(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The Gaussian negative log-likelihood (with its constant, so that the best loss stays well above zero) of a
    mean and a variance (softplus of the second output, plus 1e-3)."""
    var = nn.functional.softplus(outputs[:, 1:]) + 1e-3
    return nn.functional.gaussian_nll_loss(outputs[:, :1], targets, var, full=True)


class GRULM(nn.Module):
    """A GRU language model: token embeddings, one GRU layer, a linear head; returns the logits flattened to
    (B*T, V)."""

    def __init__(self, vocab: int = 24, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.embed, self.gru = nn.Embedding(vocab, dim), nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.gru(self.embed(ids))[0]).reshape(-1, self.head.out_features)


def fourth_tasks() -> list[Task]:
    """The third held-out set, run once as such (blind) and seen since: 8 task/optimizer pairs, each with a data
    generator none of the 34 tuning tasks of its round used and an architecture, optimizer or loss none of them
    paired it with."""
    t = TEST
    tx, cs, at, tr = textures(768 + t), constellations(768 + t), ambiguous_tags(512 + t), tree_rows(768 + t)
    sg, hs, hm, ar = segments(768 + t), heteroscedastic(768 + t), hmm_tokens(256 + t), arm(768 + t)
    ce = nn.CrossEntropyLoss()
    return [
        _task("textures-vit", "HF ViT (2 layers, d 32, 4x4 patches) on texture images, AdamW (wd 0.05), CE",
              lambda: HFViT(), (tx[0], _noisy_labels(tx[1], 4, 0.1, 60)), 768, ce, _adamw(0.05), 64),
        _task("constellations-set-transformer", "Set Transformer (2 ISABs, PMA) on 2-D point sets, Adam with L2 "
              "weight decay 1e-4, CE", lambda: SetTransformer(), (cs[0], _noisy_labels(cs[1], 3, 0.1, 61)), 768, ce,
              _adam(weight_decay=1e-4), 32),
        _task("tags-bilstm-rmsprop", "bidirectional LSTM tagger, RMSprop (alpha 0.9), CE on (B*T, tags)",
              lambda: BiLSTMTagger(), at, 512, _flat_ce, _rmsprop(alpha=0.9), 32),
        _task("tree-rows-batchnorm-nesterov", "MLP with BatchNorm1d (3 x 512) on unstandardized tabular rows, "
              "SGD+Nesterov (wd 1e-4), CE", lambda: BatchNormMLP(), (tr[0], _noisy_labels(tr[1], 3, 0.1, 63)), 768,
              ce, _sgd(0.9, nesterov=True, weight_decay=1e-4), 64),
        _task("segments-dropout-cnn", "CNN with dropout 0.25/0.5 on seven-segment digits, SGD+momentum, CE with "
              "label smoothing 0.1", lambda: DropoutCNN(), (sg[0], _noisy_labels(sg[1], 10, 0.1, 64)), 768,
              nn.CrossEntropyLoss(label_smoothing=0.1), _sgd(0.9), 32),
        _task("heteroscedastic-gaussian-nll", "MLP (3 x 512, ReLU) giving a mean and a variance, Adam, Gaussian "
              "NLL", lambda: WideMLP(5, 512, 3, 2), hs, 768, _gaussian_nll, _adam(), 32),
        _task("hmm-gru-lm", "GRU language model on hidden-Markov tokens, AdamW (wd 0.1), CE on (B*T, V)",
              lambda: GRULM(), hm, 256, _flat_ce, _adamw(0.1), 16),
        _task("arm-multioutput-adagrad", "MLP (3 x 512, tanh), 6 outputs (arm joint positions), Adagrad (initial "
              "accumulator 0.1), smooth L1 (beta 0.5)", lambda: WideMLP(3, 512, 3, 6, nn.Tanh), ar, 768,
              nn.SmoothL1Loss(beta=0.5), _adagrad(initial_accumulator_value=0.1), 32),
    ]


def tuning_tasks() -> list[Task]:
    """The tuning set: the 50 tasks the rules are chosen on (``first_tasks()``, ``second_tasks()``,
    ``third_tasks()``, ``fourth_tasks()``, then ``fifth_tasks()``)."""
    return first_tasks() + second_tasks() + third_tasks() + fourth_tasks() + fifth_tasks()


# -- the fifth tuning tasks: the fourth held-out set, run once as such (blind) and seen since ---------------------
# Written and committed before any result on them was seen (only their speed, and that their loss stays finite for
# 30 steps at 1e-3, were checked).
def scenes(n: int, size: int = 16, seed: int = 70) -> tuple:
    """One-channel images (N, 1, S, S) of one to three shapes (a disk: class 1, a square: class 2) of random size,
    place and brightness on a smooth random background, plus noise; a class per pixel (N, S, S), a later shape drawn
    over an earlier one, 5% of the pixels' classes replaced at random (annotation noise)."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x = 2 * nn.functional.avg_pool2d(torch.randn(n, 1, size + 6, size + 6, generator=g), 7, 1)[:, 0]
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for k in range(3):
        present = (torch.rand(n, 1, 1, generator=g) < (1.0 if k == 0 else 0.6))
        kind = torch.randint(1, 3, (n, 1, 1), generator=g)
        r = 1.5 + 2.5 * torch.rand(n, 1, 1, generator=g)
        cy, cx = (size * torch.rand(n, 1, 1, generator=g) for _ in range(2))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        square = ((yy - cy).abs() <= 0.85 * r) & ((xx - cx).abs() <= 0.85 * r)
        inside = present & torch.where(kind == 1, disk, square)
        labels = torch.where(inside, kind, labels)
        x = torch.where(inside, 0.6 + 0.8 * torch.rand(n, 1, 1, generator=g), x)
    x = x + 0.5 * torch.randn(n, size, size, generator=g)
    flip = torch.rand(n, size, size, generator=g) < 0.05
    labels = torch.where(flip, torch.randint(0, 3, labels.shape, generator=g), labels)
    return ((x - x.mean()) / x.std())[:, None], labels


def bars(n: int, size: int = 12, seed: int = 71) -> tuple:
    """Binary images, flattened (N, S*S), of the bars problem: each of the S horizontal and S vertical bars is on
    with probability 1.5/S (setting the pixels it covers), then 5% of the pixels flipped; the target is the image."""
    g = _gen(seed)
    rows = torch.rand(n, size, 1, generator=g) < 1.5 / size
    cols = torch.rand(n, 1, size, generator=g) < 1.5 / size
    x = (rows | cols).float()
    flip = torch.rand(n, size, size, generator=g) < 0.05
    x = torch.where(flip, 1 - x, x).flatten(1)
    return x, x.clone()


def molecules(n: int, nodes: int = 14, types: int = 4, seed: int = 72) -> tuple:
    """Molecule-like graphs: a random tree on V nodes plus a few extra edges (probability 0.05 a pair), nodes in
    random order, each of one of 4 types; the input packs each graph's adjacency and its nodes' one-hot types side by
    side (N, V, V + 4). The class: which of three bonds (type 0-1, 1-2, 0-2) the graph has most of (ties at
    random)."""
    g = _gen(seed)
    parents = (torch.rand(n, nodes - 1, generator=g) * torch.arange(1, nodes)).long()
    adj = torch.zeros(n, nodes, nodes)
    adj[torch.arange(n)[:, None], torch.arange(1, nodes)[None], parents] = 1.0
    extra = torch.triu((torch.rand(n, nodes, nodes, generator=g) < 0.05).float(), 1)
    adj = (adj + adj.transpose(1, 2) + extra + extra.transpose(1, 2)).clamp(max=1.0)
    perm = torch.rand(n, nodes, generator=g).argsort(1)
    adj = adj[torch.arange(n)[:, None, None], perm[:, :, None], perm[:, None, :]]
    onehot = nn.functional.one_hot(torch.randint(0, types, (n, nodes), generator=g), types).float()
    bonds = onehot.transpose(1, 2) @ adj @ onehot  # (N, types, types): edges between each pair of types
    counts = torch.stack([bonds[:, 0, 1], bonds[:, 1, 2], bonds[:, 0, 2]], 1)
    y = (counts + 0.1 * torch.rand(n, 3, generator=g)).argmax(1)
    return torch.cat([adj, onehot], 2), y


def tone_words(n: int, length: int = 800, tones: int = 6, symbols: int = 3, seed: int = 73) -> tuple:
    """Waveforms (N, L) of ``symbols`` tones in a row, like a spoken word of three phonemes: each a sine at one of
    ``tones`` frequencies (its symbol, 1 to ``tones``; 0 is CTC's blank) of random length, amplitude and phase, apart
    by random gaps, plus noise; the targets (N, symbols) are the symbols in order, 10% of them replaced at random."""
    g = _gen(seed)
    y = torch.randint(1, tones + 1, (n, symbols), generator=g)
    gaps = 0.1 + 0.3 * torch.rand(n, symbols + 1, generator=g)
    durations = 0.6 + 0.6 * torch.rand(n, symbols, generator=g)
    widths = torch.stack([gaps[:, :-1], durations], 2).flatten(1)
    edges = torch.cat([widths, gaps[:, -1:]], 1).cumsum(1)
    edges = length * edges / edges[:, -1:]
    t = torch.arange(length).float()
    on = (t >= edges[:, 0::2][:, :symbols, None]) & (t < edges[:, 1::2][:, :, None])  # (N, symbols, L)
    freq = (0.02 + 0.03 * (y.float() - 1))[:, :, None]
    phase, amp = 2 * math.pi * torch.rand(n, symbols, 1, generator=g), 0.5 + torch.rand(n, symbols, 1, generator=g)
    x = (on * amp * torch.sin(2 * math.pi * freq * t + phase)).sum(1) + 0.4 * torch.randn(n, length, generator=g)
    flip = torch.rand(n, symbols, generator=g) < 0.1
    y = torch.where(flip, torch.randint(1, tones + 1, y.shape, generator=g), y)
    return (x - x.mean()) / x.std(), y


def soft_targets(n: int, features: int = 16, classes: int = 10, seed: int = 74) -> tuple:
    """Inputs (N, F), Gaussian, and soft targets (N, C) for distillation: a random teacher's (a tanh MLP's) class
    probabilities at temperature 2, mixed 70/30 with a Dirichlet(1) draw per example (so that no student matches
    them exactly)."""
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    w1 = 1.5 * torch.randn(features, 64, generator=g) / math.sqrt(features)
    w2 = 3.0 * torch.randn(64, classes, generator=g) / math.sqrt(64)
    teacher = (torch.tanh(x @ w1) @ w2 / 2).softmax(-1)
    e = -torch.rand(n, classes, generator=g).log()  # Exp(1) draws: normalized, a Dirichlet(1) draw
    return x, 0.7 * teacher + 0.3 * e / e.sum(1, keepdim=True)


def triplets(n: int, dim: int = 32, identities: int = 40, seed: int = 75) -> tuple:
    """Triplets (N, 3, D) for metric learning: an anchor and a positive of one identity, a negative of another; each
    tanh of its identity's prototype (random, rank 8) plus a random pose (4-D, through a shared random map, larger
    than the prototypes' spread), plus noise; 10% of triplets have positive and negative swapped. The targets are the
    anchors' identities (the loss does not read them)."""
    g = _gen(seed)
    proto = torch.randn(identities, 8, generator=g) @ torch.randn(8, dim, generator=g) / math.sqrt(8)
    pose = 0.75 * torch.randn(4, dim, generator=g)
    ids = torch.randint(0, identities, (n,), generator=g)
    other = (ids + torch.randint(1, identities, (n,), generator=g)) % identities
    who = torch.stack([ids, ids, other], 1)
    x = torch.tanh(proto[who] + torch.randn(n, 3, 4, generator=g) @ pose) + 0.2 * torch.randn(n, 3, dim, generator=g)
    swap = torch.rand(n, generator=g) < 0.1
    return torch.where(swap[:, None, None], x[:, [0, 2, 1]], x), ids


def reviews(n: int, length: int = 32, vocab: int = 60, seed: int = 76) -> tuple:
    """Token ids (N, L) like short reviews, and their sentiment (N,) in {0, 1}: ids 0-7 are positive words, 8-15
    negative ones, 16-19 negators ('not', flipping the next word's polarity), the rest neutral (70% of tokens); the
    label is whether the summed polarity is positive (ties at random)."""
    g = _gen(seed)
    neutral, marked = torch.randint(20, vocab, (n, length), generator=g), torch.randint(0, 20, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < 0.3, marked, neutral)
    polarity = torch.where(ids < 8, 1.0, torch.where(ids < 16, -1.0, 0.0))
    negated = torch.cat([torch.zeros(n, 1, dtype=torch.bool), (ids[:, :-1] >= 16) & (ids[:, :-1] < 20)], 1)
    score = torch.where(negated, -polarity, polarity).sum(1) + 0.5 * (torch.rand(n, generator=g) - 0.5)
    return ids, (score > 0).long()


def sorting(n: int, length: int = 10, vocab: int = 16, seed: int = 77) -> tuple:
    """Sequence-to-sequence pairs: a source of ``length`` ids from 1 to vocab - 1 (0 is the pad and decoder-start id)
    and its sorted copy as the target (N, L), 10% of the target's ids replaced at random; the input packs the source
    and the decoder's input (the target shifted right after a 0) side by side (N, 2L)."""
    g = _gen(seed)
    src = torch.randint(1, vocab, (n, length), generator=g)
    tgt = src.sort(1).values
    flip = torch.rand(n, length, generator=g) < 0.1
    tgt = torch.where(flip, torch.randint(1, vocab, tgt.shape, generator=g), tgt)
    return torch.cat([src, torch.zeros(n, 1, dtype=torch.long), tgt[:, :-1]], 1), tgt


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    """A small U-Net: two encoder levels (two 3x3 convs with BatchNorm and ReLU each, then max-pooling), a
    bottleneck, transposed-conv upsampling with skip connections, a 1x1 conv to per-pixel logits (N, C, H, W)."""

    def __init__(self, classes: int = 3, width: int = 8):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = _double_conv(1, w), _double_conv(w, 2 * w), _double_conv(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _double_conv(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        a = self.enc1(x)
        b = self.enc2(nn.functional.max_pool2d(a, 2))
        m = self.mid(nn.functional.max_pool2d(b, 2))
        b = self.dec2(torch.cat([self.up2(m), b], 1))
        return self.head(self.dec1(torch.cat([self.up1(b), a], 1)))


class VAE(nn.Module):
    """A variational autoencoder: MLP encoder and decoder, a Gaussian latent of ``code`` dims sampled by the
    reparameterization trick (its mean in eval mode); returns the decoder's logits, the latent's mean and its
    log-variance side by side (N, D + 2 code)."""

    def __init__(self, dim: int = 144, code: int = 8, width: int = 128):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, 2 * code))
        self.decoder = nn.Sequential(nn.Linear(code, width), nn.ReLU(), nn.Linear(width, dim))

    def forward(self, x):
        mu, logvar = self.encoder(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return torch.cat([self.decoder(z), mu, logvar], -1)


def _elbo(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The negative ELBO per example, averaged over the batch: the Bernoulli reconstruction loss (BCE with logits,
    summed over pixels) plus the KL divergence of the latent's diagonal Gaussian from N(0, I)."""
    d = targets.shape[1]
    mu, logvar = outputs[:, d:].chunk(2, -1)
    recon = nn.functional.binary_cross_entropy_with_logits(outputs[:, :d], targets, reduction="sum")
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()
    return (recon + kl) / len(targets)


class GCN(nn.Module):
    """A graph convolutional network (Kipf and Welling 2017) on dense adjacency: each input packs a graph's adjacency
    (V, V) and its nodes' features; layers H <- ReLU(A' H W) with A' = D^-1/2 (A + I) D^-1/2, mean pooling over
    nodes, a linear head."""

    def __init__(self, nodes: int = 14, features: int = 4, width: int = 32, layers: int = 3, classes: int = 3):
        super().__init__()
        self.nodes = nodes
        self.layers = nn.ModuleList(nn.Linear(features if i == 0 else width, width) for i in range(layers))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        adj, h = x[..., :self.nodes] + torch.eye(self.nodes), x[..., self.nodes:]
        d = adj.sum(-1).rsqrt()
        adj = d[..., :, None] * adj * d[..., None, :]
        for layer in self.layers:
            h = torch.relu(adj @ layer(h))
        return self.head(h.mean(1))


class HFWav2Vec2CTC(nn.Module):
    """A Hugging Face ``Wav2Vec2ForCTC`` from a tiny random config (three conv feature layers, 20x downsampling, two
    Transformer layers of d 32, no SpecAugment masking, no layer drop); returns the per-frame logits (N, T, vocab)."""

    def __init__(self, vocab: int = 7):
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

        cfg = Wav2Vec2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0,
                             layerdrop=0.0, pad_token_id=0)
        self.w2v = Wav2Vec2ForCTC(cfg)

    def forward(self, x):
        return self.w2v(input_values=x).logits


def _ctc(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CTC loss (blank 0) of per-frame logits (N, T, C) against target symbols (N, S), every sequence at full length;
    each sequence's loss over its target length, averaged over the batch (torch's 'mean')."""
    n, t = outputs.shape[:2]
    logp = outputs.float().log_softmax(-1).transpose(0, 1)
    return nn.functional.ctc_loss(logp, targets, torch.full((n,), t, dtype=torch.long),
                                  torch.full((n,), targets.shape[1], dtype=torch.long))


class GatedMLP(nn.Module):
    """A residual MLP of pre-norm SwiGLU blocks (RMSNorm, then W2 (SiLU(W1 h) * W3 h), as LLaMA's feed-forward
    layers), a final RMSNorm and a linear head."""

    def __init__(self, d_in: int = 16, dim: int = 64, hidden: int = 128, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.norms = nn.ModuleList(nn.RMSNorm(dim) for _ in range(blocks))
        self.gates = nn.ModuleList(nn.Linear(dim, 2 * hidden, bias=False) for _ in range(blocks))
        self.downs = nn.ModuleList(nn.Linear(hidden, dim, bias=False) for _ in range(blocks))
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        for norm, gate, down in zip(self.norms, self.gates, self.downs):
            a, b = gate(norm(h)).chunk(2, -1)
            h = h + down(nn.functional.silu(a) * b)
        return self.head(self.norm(h))


def _distill(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Distillation's loss: the KL divergence of the student's softmax from the soft targets, per example."""
    return nn.functional.kl_div(outputs.log_softmax(-1), targets, reduction="batchmean")


class TripletEmbedder(nn.Module):
    """An embedding MLP (2 x 64, BatchNorm1d, ReLU) applied to each point of a triplet, its 16-D output L2-normalized;
    returns (N, 3, 16)."""

    def __init__(self, d_in: int = 32, width: int = 64, dim: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, dim))

    def forward(self, x):
        return nn.functional.normalize(self.net(x.flatten(0, 1)), dim=-1).unflatten(0, x.shape[:2])


def _triplet(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The triplet margin loss (margin 0.5, Euclidean) of (anchor, positive, negative) embeddings; targets unread."""
    return nn.functional.triplet_margin_loss(outputs[:, 0], outputs[:, 1], outputs[:, 2], margin=0.5)


class TextCNN(nn.Module):
    """Kim's (2014) sentence CNN: token embeddings, 1-D convolutions of widths 2, 3 and 4 (16 filters each, ReLU),
    max over time, dropout 0.5, one logit."""

    def __init__(self, vocab: int = 60, dim: int = 24, filters: int = 16, widths: tuple = (2, 3, 4)):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w) for w in widths)
        self.drop, self.head = nn.Dropout(0.5), nn.Linear(filters * len(widths), 1)

    def forward(self, ids):
        e = self.embed(ids).transpose(1, 2)
        return self.head(self.drop(torch.cat([torch.relu(conv(e)).amax(2) for conv in self.convs], 1)))


class HFT5(nn.Module):
    """A Hugging Face ``T5ForConditionalGeneration`` from a tiny random config (2 encoder and 2 decoder layers, d 32),
    teacher-forced: the input packs the source ids and the decoder's input ids side by side; returns the logits
    flattened to (B*T, V)."""

    def __init__(self, vocab: int = 16, length: int = 10):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                       num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        self.t5, self.length = T5ForConditionalGeneration(cfg), length

    def forward(self, x):
        logits = self.t5(input_ids=x[:, :self.length], decoder_input_ids=x[:, self.length:]).logits
        return logits.reshape(-1, logits.shape[-1])


def _asgd(**kw) -> Callable:
    return lambda p, lr: torch.optim.ASGD(p, lr=lr, **kw)


def _adadelta(**kw) -> Callable:
    return lambda p, lr: torch.optim.Adadelta(p, lr=lr, **kw)


def _hf_adafactor(**kw) -> Callable:
    """Hugging Face's ``Adafactor`` at an absolute LR (no relative step, no parameter scaling), as its docs advise for
    fine-tuning T5."""
    from transformers.optimization import Adafactor

    return lambda p, lr: Adafactor(p, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False, **kw)


def fifth_tasks() -> list[Task]:
    """The fourth held-out set, run once as such (blind) and seen since: 8 task/optimizer pairs, each with a data
    generator none of the 42 tuning tasks of its round used and an architecture, optimizer or loss none of them
    paired it with."""
    t = TEST
    sc, br, mo, tw = scenes(512 + t), bars(768 + t), molecules(512 + t), tone_words(384 + t)
    st, tp, rv, so = soft_targets(768 + t), triplets(768 + t), reviews(768 + t), sorting(384 + t)
    return [
        _task("scenes-unet", "U-Net (2 levels, BatchNorm) segmenting shapes, SGD+momentum 0.99, CE per pixel",
              lambda: UNet(), sc, 512, nn.CrossEntropyLoss(), _sgd(0.99), 16),
        _task("bars-vae", "VAE (MLP, 8-D latent) on binary bar images, Adam (amsgrad), negative ELBO (BCE + KL)",
              lambda: VAE(), br, 768, _elbo, _adam(amsgrad=True), 32),
        _task("molecules-gcn", "GCN (3 layers, dense adjacency, mean pooling) on molecule-like graphs, NAdam with "
              "decoupled weight decay 0.01, CE", lambda: GCN(), (mo[0], _noisy_labels(mo[1], 3, 0.1, 82)), 512,
              nn.CrossEntropyLoss(), _nadam(weight_decay=0.01, decoupled_weight_decay=True), 32),
        _task("tones-wav2vec2-ctc", "HF Wav2Vec2 (conv features, 2 layers, d 32) on tone-sequence waveforms, AdamW, "
              "CTC", lambda: HFWav2Vec2CTC(), tw, 384, _ctc, _adamw(), 16),
        _task("teacher-distill-swiglu", "residual SwiGLU MLP with RMSNorm, RAdam with decoupled weight decay 0.01, "
              "KL divergence to noisy soft targets", lambda: GatedMLP(), st, 768, _distill,
              _radam(weight_decay=0.01, decoupled_weight_decay=True), 64),
        _task("triplets-asgd", "embedding MLP (BatchNorm1d, L2-normalized), ASGD, triplet margin loss",
              lambda: TripletEmbedder(), tp, 768, _triplet, _asgd(), 64),
        _task("reviews-textcnn-adadelta", "Kim's text CNN (widths 2-4, dropout 0.5), Adadelta (rho 0.95, eps 1e-6), "
              "BCE with logits on one logit", lambda: TextCNN(),
              (rv[0], _noisy_labels(rv[1], 2, 0.1, 86).float()[:, None]), 768, nn.BCEWithLogitsLoss(),
              _adadelta(rho=0.95, eps=1e-6), 32),
        _task("sort-t5-adafactor", "HF T5 (2+2 layers, d 32) sorting sequences, HF Adafactor (absolute LR), CE on "
              "(B*T, V)", lambda: HFT5(), so, 384, _flat_ce, _hf_adafactor(), 16),
    ]


# -- the held-out set: other again in data, architecture, optimizer, loss ------------------------------------------
# Written and committed before any result on them was seen (only their speed, and that their loss stays finite for
# 30 steps at 1e-3, were checked).
def arrows(n: int, size: int = 16, seed: int = 90) -> tuple:
    """RGB images (N, 3, S, S) of an arrow (a shaft and a triangular head) pointing right, down, left or up (the
    class, its angle jittered) at a random place, length, width and colour, on a background of another random colour
    with a smooth random shading, plus noise; standardized per channel."""
    g = _gen(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    c = torch.arange(size).float() - (size - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    angle = (math.pi / 2 * y.float() + 0.2 * torch.randn(n, generator=g))[:, None, None]
    ox, oy = (6 * torch.rand(n, 1, 1, generator=g) - 3 for _ in range(2))
    along = (xx - ox) * angle.cos() + (yy - oy) * angle.sin()
    across = ((yy - oy) * angle.cos() - (xx - ox) * angle.sin()).abs()
    half = 3.5 + 2.5 * torch.rand(n, 1, 1, generator=g)
    width = 0.5 + 0.6 * torch.rand(n, 1, 1, generator=g)
    shaft = (along >= -half) & (along <= 0.3 * half) & (across <= width)
    head = (along >= 0.3 * half) & (along <= half) & (across <= 0.8 * (half - along) + 0.3)
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    shade = nn.functional.avg_pool2d(torch.randn(n, 1, size + 6, size + 6, generator=g), 7, 1)
    x = torch.where((shaft | head)[:, None], fg, bg) + shade + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), y


def solids(n: int, points: int = 64, seed: int = 91) -> tuple:
    """Point clouds (N, P, 3) sampled on the surface of a solid (a sphere, a cube, a cylinder's side, a torus: the
    class), stretched along each axis by 0.7-1.3, turned by a random rotation, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    z = torch.randn(n, points, 3, generator=g)
    sphere = z / z.norm(dim=-1, keepdim=True)
    u = 2 * torch.rand(n, points, 3, generator=g) - 1
    face = nn.functional.one_hot(torch.randint(0, 3, (n, points), generator=g), 3).bool()
    cube = torch.where(face, torch.sign(u), u)
    theta, phi = (2 * math.pi * torch.rand(n, points, generator=g) for _ in range(2))
    h = 2 * torch.rand(n, points, generator=g) - 1
    cylinder = torch.stack([theta.cos(), theta.sin(), h], -1)
    ring = 0.7 + 0.3 * phi.cos()
    torus = torch.stack([ring * theta.cos(), ring * theta.sin(), 0.3 * phi.sin()], -1)
    x = torch.stack([sphere, cube, cylinder, torus], 1)[torch.arange(n), y]
    x = x * (0.7 + 0.6 * torch.rand(n, 1, 3, generator=g))
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))
    x = x @ (q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :])
    return x + 0.05 * torch.randn(n, points, 3, generator=g), y


def ratings(n: int, users: int = 60, items: int = 40, rank: int = 4, seed: int = 92) -> tuple:
    """Explicit ratings: (user, item) id pairs (N, 2), items drawn by a Zipf-like popularity, and their ratings
    (N, 1) from 1 to 5: a global mean, user and item biases and a rank-4 user-item affinity, plus heavy-tailed
    (Student t, 3 dof) noise, rounded and clipped to 1-5."""
    g = _gen(seed)
    pu, qi = torch.randn(users, rank, generator=g), torch.randn(items, rank, generator=g)
    bu, bi = 0.5 * torch.randn(users, generator=g), 0.5 * torch.randn(items, generator=g)
    u = torch.randint(0, users, (n,), generator=g)
    i = torch.multinomial(1.0 / torch.arange(1, items + 1).float() ** 0.7, n, replacement=True, generator=g)
    chi2 = sum(torch.randn(n, generator=g) ** 2 for _ in range(3))
    noise = 0.5 * torch.randn(n, generator=g) / (chi2 / 3).sqrt()
    score = 3.3 + bu[u] + bi[i] + 0.4 * (pu[u] * qi[i]).sum(1) + noise
    return torch.stack([u, i], 1), score.round().clamp(1, 5)[:, None]


def demand(n: int, stores: int = 20, seed: int = 93) -> tuple:
    """Daily sales rows: 4 numeric columns (log price, promotion flag, temperature, trend) then 2 categorical ones
    (store id, weekday) stored as floats (N, 6); the demand (N, 1) is log-normal around a price-elastic mean set by
    all six (more elastic on promotion, more weekend sales when warm), with heavy-tailed (Student t, 4 dof) noise in
    log space."""
    g = _gen(seed)
    log_price, temp, trend = torch.randn(n, generator=g), torch.randn(n, generator=g), torch.rand(n, generator=g)
    promo = (torch.rand(n, generator=g) < 0.2).float()
    store, day = torch.randint(0, stores, (n,), generator=g), torch.randint(0, 7, (n,), generator=g)
    store_effect, day_effect = 0.5 * torch.randn(stores, generator=g), 0.3 * torch.randn(7, generator=g)
    weekend = (day >= 5).float()
    mean = (0.5 + store_effect[store] + day_effect[day] - 0.6 * log_price * (1 + 0.5 * promo) + 0.4 * promo
            + 0.3 * temp * weekend + 0.5 * trend)
    chi2 = sum(torch.randn(n, generator=g) ** 2 for _ in range(4))
    noise = 0.4 * torch.randn(n, generator=g) / (chi2 / 4).sqrt()
    x = torch.stack([log_price, promo, temp, trend, store.float(), day.float()], 1)
    return x, (mean + noise).exp()[:, None]


#: stroke letters L, T, X, V, Z, N, K, Y: three segments each (x, y from -1 to 1; a repeated segment where two do)
STROKES = torch.tensor([
    [[[-.5, .8], [-.5, -.8]], [[-.5, -.8], [.5, -.8]], [[-.5, -.8], [.5, -.8]]],
    [[[-.6, .8], [.6, .8]], [[0., .8], [0., -.8]], [[0., .8], [0., -.8]]],
    [[[-.6, .8], [.6, -.8]], [[-.6, -.8], [.6, .8]], [[-.6, -.8], [.6, .8]]],
    [[[-.6, .8], [0., -.8]], [[0., -.8], [.6, .8]], [[0., -.8], [.6, .8]]],
    [[[-.6, .8], [.6, .8]], [[.6, .8], [-.6, -.8]], [[-.6, -.8], [.6, -.8]]],
    [[[-.6, -.8], [-.6, .8]], [[-.6, .8], [.6, -.8]], [[.6, -.8], [.6, .8]]],
    [[[-.5, .8], [-.5, -.8]], [[.5, .8], [-.5, 0.]], [[-.5, 0.], [.5, -.8]]],
    [[[-.6, .8], [0., 0.]], [[.6, .8], [0., 0.]], [[0., 0.], [0., -.8]]],
])


def letters(n: int, size: int = 32, seed: int = 94) -> tuple:
    """One-channel images (N, 1, S, S), LeNet-5's 32x32, of a stroke letter (one of 8: the class) under a random
    affine map (rotation, scale, shear, shift) drawn with a stroke of random width, plus noise."""
    g = _gen(seed)
    y = torch.randint(0, len(STROKES), (n,), generator=g)
    rot = 0.2 * torch.randn(n, generator=g)
    scale = 7 + 3 * torch.rand(n, 2, generator=g)
    shear = 0.3 * torch.randn(n, generator=g)
    a = torch.stack([torch.stack([rot.cos(), -rot.sin()], 1), torch.stack([rot.sin(), rot.cos()], 1)], 1)
    a = a @ torch.stack([torch.stack([scale[:, 0], shear * scale[:, 1]], 1),
                         torch.stack([torch.zeros(n), scale[:, 1]], 1)], 1)
    shift = (size - 1) / 2 + 3 * (2 * torch.rand(n, 1, 1, 2, generator=g) - 1)
    ends = STROKES[y] @ a[:, None].transpose(-1, -2) + shift  # (N, 3, 2, 2): each segment's two ends in pixels
    c = torch.arange(size).float()
    grid = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(1, 1, -1, 2)
    start, step = ends[:, :, :1], ends[:, :, 1:] - ends[:, :, :1]
    t = (((grid - start) * step).sum(-1, keepdim=True) / (step ** 2).sum(-1, keepdim=True)).clamp(0, 1)
    dist = (grid - start - t * step).norm(dim=-1).amin(1)  # (N, S*S): each pixel's distance to the nearest stroke
    width = 0.7 + 1.0 * torch.rand(n, 1, generator=g)
    x = torch.sigmoid(2 * (width - dist)).reshape(n, 1, size, size) + 0.2 * torch.randn(n, 1, size, size, generator=g)
    return (x - x.mean()) / x.std(), y


def entity_tags(n: int, length: int = 24, vocab: int = 50, seed: int = 95) -> tuple:
    """Token ids (N, L) with BIO entity tags (N, L) (0: O, 1/2: B/I person, 3/4: B/I place), like named-entity
    recognition: id 0 is never used (the pad), 1 a person cue ('Mr'), 2 a place cue ('in'), 3-14 names, the rest
    ordinary words. Up to three spans of 1-3 names; a cued span's kind is its cue's, an uncued one's is its first
    name's (3-8: a person, 9-14: a place); 5% of the tags replaced at random."""
    g = _gen(seed)
    ids = torch.randint(15, vocab, (n, length), generator=g)
    tags, rows, part = torch.zeros(n, length, dtype=torch.long), torch.arange(n), length // 3
    for k in range(3):
        start = part * k + torch.randint(0, part - 4, (n,), generator=g)
        size = torch.randint(1, 4, (n,), generator=g)
        person, cued = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.75
        present = torch.rand(n, generator=g) < 0.8
        names = torch.randint(3, 15, (n, 3), generator=g)
        first = torch.where(person, names[:, 0] % 6 + 3, names[:, 0] % 6 + 9)
        names[:, 0] = torch.where(cued, names[:, 0], first)
        ids[rows, start] = torch.where(present & cued, torch.where(person, 1, 2), ids[rows, start])
        for j in range(3):
            on, at = present & (j < size), start + 1 + j
            ids[rows, at] = torch.where(on, names[:, j], ids[rows, at])
            tags[rows, at] = torch.where(on, torch.where(person, 1, 3) + (j > 0), tags[rows, at])
    return ids, _noisy_labels(tags.flatten(), 5, 0.05, 105).reshape(n, length)


def signal_pairs(n: int, length: int = 64, seed: int = 96) -> tuple:
    """Noise2Noise pairs (N, 1, L) each: a clean signal (a step function of three jumps plus a Gaussian bump) seen
    twice, with Gaussian noise (the input) and with independent Laplace noise (the target), so the target's noise
    sets a floor on the L1 loss."""
    g = _gen(seed)
    t = torch.arange(length).float()
    jumps, heights = length * torch.rand(n, 3, 1, generator=g), torch.randn(n, 3, 1, generator=g)
    clean = (heights * (t >= jumps)).sum(1)
    centre, spread = length * torch.rand(n, 1, generator=g), 2 + 6 * torch.rand(n, 1, generator=g)
    clean = clean + 1.5 * torch.randn(n, 1, generator=g) * torch.exp(-((t - centre) / spread) ** 2)
    x = clean + 0.4 * torch.randn(n, length, generator=g)
    u = torch.rand(n, length, generator=g) - 0.5
    target = clean - 0.3 * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace, scale 0.3
    return x[:, None], target[:, None]


def branches(n: int, seed: int = 97) -> tuple:
    """A multimodal regression: inputs (N, 2) uniform in [-1, 1], the target (N, 1) on one of three branches (a
    parabola, a sine, a line) picked at random with input-dependent odds, plus Gaussian noise (sd 0.3): a mean
    cannot fit it, a mixture density can."""
    g = _gen(seed)
    x = 2 * torch.rand(n, 2, generator=g) - 1
    odds = torch.stack([2 * x[:, 0], 2 * x[:, 1], torch.zeros(n)], 1).softmax(1)
    branch = torch.multinomial(odds, 1, generator=g)[:, 0]
    means = torch.stack([1.5 + x[:, 0] + x[:, 1] ** 2, -1.5 + torch.sin(3 * x[:, 0]), 2 * x[:, 1] - x[:, 0]], 1)
    return x, (means[torch.arange(n), branch] + 0.3 * torch.randn(n, generator=g))[:, None]


def _inverted_residual(c_in: int, c_out: int, stride: int, expand: int = 4) -> nn.Sequential:
    h = c_in * expand
    return nn.Sequential(nn.Conv2d(c_in, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                         nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                         nn.Conv2d(h, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class MobileNetV2(nn.Module):
    """A small MobileNetV2 (Sandler et al. 2018): a strided conv stem, four inverted residual blocks (1x1 expansion by
    4, 3x3 depthwise conv, the second one strided, 1x1 linear bottleneck, BatchNorm, ReLU6; a residual connection
    where the shape allows), a 1x1 conv, a global average, dropout 0.2, a linear head."""

    def __init__(self, classes: int = 4, width: int = 12):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU6())
        self.blocks = nn.ModuleList([_inverted_residual(w, w, 1), _inverted_residual(w, 2 * w, 2),
                                     _inverted_residual(2 * w, 2 * w, 1), _inverted_residual(2 * w, 3 * w, 1)])
        self.last = nn.Sequential(nn.Conv2d(3 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(8 * w, classes)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            out = block(h)
            h = h + out if out.shape == h.shape else out
        return self.head(self.last(h))


class PointNet(nn.Module):
    """PointNet (Qi et al. 2017) without its T-nets: a shared per-point MLP (1x1 convs to 32, 64, 128 with
    BatchNorm and ReLU), a max over points, an MLP head (64, BatchNorm, ReLU, dropout 0.3)."""

    def __init__(self, classes: int = 4, widths: tuple = (32, 64, 128)):
        super().__init__()
        layers, d = [], 3
        for w in widths:
            layers += [nn.Conv1d(d, w, 1), nn.BatchNorm1d(w), nn.ReLU()]
            d = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(d, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x.transpose(1, 2)).amax(2))


class NeuMF(nn.Module):
    """Neural matrix factorization (He et al. 2017): a GMF branch (the elementwise product of user and item
    embeddings, 8-D) beside an MLP branch (on the concatenation of other 16-D embeddings; 32, 16, ReLU), both
    concatenated, a linear head; embeddings initialized N(0, 0.01) as in the paper. Returns (N, 1)."""

    def __init__(self, users: int = 60, items: int = 40, gmf: int = 8, mlp: int = 16):
        super().__init__()
        self.gmf_user, self.gmf_item = nn.Embedding(users, gmf), nn.Embedding(items, gmf)
        self.mlp_user, self.mlp_item = nn.Embedding(users, mlp), nn.Embedding(items, mlp)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=0.01)
        self.mlp = nn.Sequential(nn.Linear(2 * mlp, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(gmf + 16, 1)

    def forward(self, x):
        u, i = x[:, 0], x[:, 1]
        deep = self.mlp(torch.cat([self.mlp_user(u), self.mlp_item(i)], 1))
        return self.head(torch.cat([self.gmf_user(u) * self.gmf_item(i), deep], 1))


class DCN(nn.Module):
    """A Deep & Cross Network (DCN-V2, Wang et al. 2021): 4-D embeddings of the categorical columns beside the
    numeric ones give x0; two cross layers x <- x0 * (W x + b) + x beside a 2 x 64 ReLU MLP on x0, concatenated,
    a linear head with one output per quantile."""

    def __init__(self, numeric: int = 4, cards: tuple = (20, 7), dim: int = 4, width: int = 64, outputs: int = 3):
        super().__init__()
        self.numeric, d = numeric, numeric + dim * len(cards)
        self.embeds = nn.ModuleList(nn.Embedding(c, dim) for c in cards)
        self.cross = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.deep = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(d + width, outputs)

    def forward(self, x):
        cats = x[:, self.numeric:].long()
        x0 = torch.cat([x[:, :self.numeric]] + [e(cats[:, k]) for k, e in enumerate(self.embeds)], 1)
        h = x0
        for layer in self.cross:
            h = x0 * layer(h) + h
        return self.head(torch.cat([h, self.deep(x0)], 1))


#: the quantiles a quantile regression predicts, one output each
QUANTILES = (0.1, 0.5, 0.9)


def _pinball(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The pinball (quantile) loss of one output per quantile of ``QUANTILES`` against the target (N, 1), averaged
    over quantiles and examples."""
    q = torch.tensor(QUANTILES)
    err = targets - outputs
    return torch.maximum(q * err, (q - 1) * err).mean()


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) as designed, on 32x32 inputs: 5x5 convs to 6 and 16 maps (C3 fully connected),
    each followed by tanh and 2x2 average pooling, a 5x5 conv to 120, a 120-84 tanh layer, a linear head."""

    def __init__(self, classes: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                                      nn.AvgPool2d(2), nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, classes))

    def forward(self, x):
        return self.head(self.features(x))


class HFRobertaTagger(nn.Module):
    """A Hugging Face ``RobertaForTokenClassification`` from a tiny random config (2 layers, d 32, pad id 0);
    returns the per-token logits flattened to (B*T, tags)."""

    def __init__(self, vocab: int = 50, length: int = 24, tags: int = 5):
        super().__init__()
        from transformers import RobertaConfig, RobertaForTokenClassification

        cfg = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=length + 2, num_labels=tags, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)
        self.roberta = RobertaForTokenClassification(cfg)

    def forward(self, ids):
        logits = self.roberta(input_ids=ids).logits
        return logits.reshape(-1, logits.shape[-1])


def _conv1d_pair(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv1d(c_out, c_out, 3, padding=1),
                         nn.ReLU())


class UNet1d(nn.Module):
    """A 1-D U-Net without normalization: two encoder levels (two 3-wide convs with ReLU, then max-pooling), a
    bottleneck, linear upsampling with skip connections, a 1-wide conv to the output signal (N, 1, L)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = _conv1d_pair(1, w), _conv1d_pair(w, 2 * w), _conv1d_pair(2 * w, 4 * w)
        self.dec2, self.dec1 = _conv1d_pair(6 * w, 2 * w), _conv1d_pair(3 * w, w)
        self.head = nn.Conv1d(w, 1, 1)

    def forward(self, x):
        def up(h):
            return nn.functional.interpolate(h, scale_factor=2, mode="linear")

        a = self.enc1(x)
        b = self.enc2(nn.functional.max_pool1d(a, 2))
        m = self.mid(nn.functional.max_pool1d(b, 2))
        b = self.dec2(torch.cat([up(m), b], 1))
        return self.head(self.dec1(torch.cat([up(b), a], 1)))


class MDN(nn.Module):
    """A mixture density network (Bishop 1994): a tanh MLP (2 x 64) giving, for each of K Gaussian components, a
    mixing logit, a mean and a raw scale; returns them side by side (N, 3K)."""

    def __init__(self, d_in: int = 2, width: int = 64, components: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 3 * components))

    def forward(self, x):
        return self.net(x)


def _mixture_nll(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood (with its constant) of the targets (N, 1) under each row's Gaussian mixture
    (mixing logits, means, scales as softplus of the raw scales plus 1e-3), averaged over the batch."""
    logits, mean, raw = outputs.chunk(3, -1)
    scale = nn.functional.softplus(raw) + 1e-3
    log_p = -0.5 * ((targets - mean) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    return -(log_p + logits.log_softmax(-1)).logsumexp(-1).mean()


def _torch_adafactor(**kw) -> Callable:
    """``torch.optim.Adafactor``: its LR caps the relative step size (min(lr, 1/sqrt(step))), scaled by each
    parameter's RMS."""
    return lambda p, lr: torch.optim.Adafactor(p, lr=lr, **kw)


def held_out_tasks() -> list[Task]:
    """The held-out set: 8 task/optimizer pairs, each with a data generator none of the 50 tuning tasks uses and an
    architecture, optimizer or loss none of them pairs it with; written and committed before any result on them was
    seen (only their speed, and that their loss stays finite for 30 steps at 1e-3, were checked)."""
    t = TEST
    ar, so, ra, de = arrows(768 + t), solids(768 + t), ratings(768 + t), demand(768 + t)
    le, en, sp, br = letters(768 + t), entity_tags(512 + t), signal_pairs(512 + t), branches(768 + t)
    ce = nn.CrossEntropyLoss()
    return [
        _task("arrows-mobilenetv2", "MobileNetV2 (4 inverted residual blocks, BatchNorm, ReLU6) on RGB arrow images, "
              "RMSprop (alpha 0.9, momentum 0.9, wd 4e-5), CE", lambda: MobileNetV2(),
              (ar[0], _noisy_labels(ar[1], 4, 0.1, 100)), 768, ce,
              _rmsprop(alpha=0.9, momentum=0.9, weight_decay=4e-5), 32),
        _task("solids-pointnet", "PointNet (shared MLP, BatchNorm, max pooling) on 3-D point clouds of solids, Adamax "
              "with weight decay 1e-4, CE", lambda: PointNet(), (so[0], _noisy_labels(so[1], 4, 0.1, 101)), 768, ce,
              _adamax(weight_decay=1e-4), 32),
        _task("ratings-neumf", "NeuMF (GMF + MLP on user/item embeddings) on explicit 1-5 ratings, Adagrad (lr_decay "
              "0.01), MSE", lambda: NeuMF(), ra, 768, nn.MSELoss(), _adagrad(lr_decay=0.01), 64),
        _task("demand-dcn-quantile", "Deep & Cross Network (DCN-V2, embeddings of 2 categorical columns) on sales "
              "rows, torch Adafactor, pinball loss at 3 quantiles", lambda: DCN(), de, 768, _pinball,
              _torch_adafactor(), 64),
        _task("letters-lenet5", "LeNet-5 (tanh, average pooling) on 32x32 stroke letters, SGD (momentum 0.95, "
              "dampening 0.5), CE", lambda: LeNet5(), (le[0], _noisy_labels(le[1], 8, 0.1, 104)), 768, ce,
              _sgd(0.95, dampening=0.5), 32),
        _task("entities-roberta", "HF RoBERTa (2 layers, d 32) token classifier on BIO entity tags, AdamW (betas "
              "0.9/0.98, eps 1e-6, wd 0.01), CE on (B*T, tags)", lambda: HFRobertaTagger(), en, 512, _flat_ce,
              _adamw(0.01, betas=(0.9, 0.98), eps=1e-6), 16),
        _task("signals-unet1d-n2n", "1-D U-Net (no normalization) denoising Noise2Noise pairs, Adam (betas 0.5/0.999), "
              "L1", lambda: UNet1d(), sp, 512, nn.L1Loss(), _adam(betas=(0.5, 0.999)), 16),
        _task("branches-mdn", "mixture density network (tanh MLP, 5 Gaussians) on a three-branch regression, NAdam "
              "(momentum_decay 8e-3), mixture NLL", lambda: MDN(), br, 768, _mixture_nll,
              _nadam(momentum_decay=8e-3), 64),
    ]


#: the split: the 50 tuning tasks (all of them seen while the rules were tuned) and the held-out tasks, written and
#: committed before any result on them was seen
SPLITS: dict[str, Callable[[], list[Task]]] = {"tune": tuning_tasks, "held": held_out_tasks}


def split_of(name: str) -> str:
    """'tune' or 'held': the set a task belongs to."""
    return next(half for half, make in SPLITS.items() if name in {t.name for t in make()})


def tasks() -> list[Task]:
    """Every task: the tuning set, then the held-out set."""
    return tuning_tasks() + held_out_tasks()


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(seed)
    return make()


# -- training at one LR -----------------------------------------------------------------------------
def final_loss(task: Task, seed: int, lr: float, steps: int) -> tuple[float, float]:
    """Train the seed's initial model at ``lr`` for ``steps`` steps; the mean loss afterwards (eval mode) on the
    training data ('fit') and on the test set ('test'); a run that diverged is infinite on both."""
    model = task.build(seed)
    opt = task.optimizer(model.parameters(), lr)
    torch.manual_seed(seed)
    done = 0
    while done < steps:
        for x, y in task.loader(seed + done):
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x), y)
            if not torch.isfinite(loss):
                return math.inf, math.inf
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model.eval()
    with torch.no_grad():
        fit, test = (float(task.loss_fn(model(x), y)) for x, y in (task.data, task.test))
    return (fit, test) if math.isfinite(fit) and math.isfinite(test) else (math.inf, math.inf)


# -- the finders ------------------------------------------------------------------------------------
REF_LR = 1e-3  # the LR the optimizer is built with before a finder sweeps (finders express LRs absolutely)


#: lr_range options for ``ours`` (``--options``: the race's budget, ablations)
OPTIONS: dict = {}
#: lr_range's metrics per (task, seed) from the last run of ``ours``: what the range test alone suggested, the race
METRICS: dict = {}


def ours(task: Task, seed: int) -> Optional[float]:
    model = task.build(seed)
    report = babysitter.check(model=model, data=task.loader(seed), loss_fn=task.loss_fn,
                              optimizer=lambda p: task.optimizer(p, REF_LR), select=["lr_range"], seed=seed,
                              options={"lr_range": OPTIONS} if OPTIONS else None)
    result = report["lr_range"]
    if result.status == "error":
        raise RuntimeError(result.summary)
    METRICS[task.name, seed] = dict(result.metrics)
    return result.metrics.get("suggested_lr")


def range_only(task: Task, seed: int) -> Optional[float]:
    """The range test's own reading, before the race (read from the run of ``ours`` on the same seed)."""
    if (task.name, seed) not in METRICS:
        ours(task, seed)
    m = METRICS[task.name, seed]
    return m.get("range_lr", m.get("suggested_lr"))


def torch_lr_finder(task: Task, seed: int, num_iter: int = 100) -> Optional[float]:
    from torch_lr_finder import LRFinder

    model = task.build(seed)
    opt = task.optimizer(model.parameters(), REF_LR)
    finder = LRFinder(model, opt, task.loss_fn, device="cpu")
    torch.manual_seed(seed)
    with _quiet():
        finder.range_test(task.loader(seed), start_lr=1e-7, end_lr=10, num_iter=num_iter)
    lrs, losses = finder.history["lr"][10:-5], finder.history["loss"][10:-5]
    finder.reset()
    if len(losses) < 2:
        return None
    return float(lrs[int(np.gradient(np.asarray(losses)).argmin())])


def _lightning_module(task: Task, model: nn.Module):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            x, y = batch
            return task.loss_fn(self.model(x), y)

        def configure_optimizers(self):
            return task.optimizer(self.model.parameters(), REF_LR)

    return Module()


def lightning(task: Task, seed: int, num_training: int = 100) -> Optional[float]:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    model = task.build(seed)
    module = _lightning_module(task, model)
    torch.manual_seed(seed)
    with _quiet(), _in_tmpdir():
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        result = Tuner(trainer).lr_find(module, train_dataloaders=task.loader(seed), min_lr=1e-7, max_lr=10,
                                        num_training=num_training, update_attr=False)
        return result.suggestion() if result is not None else None


@contextlib.contextmanager
def _quiet():
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _in_tmpdir():
    import tempfile

    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


FINDERS = {"babysitter": ours, "range test alone": range_only, "torch-lr-finder": torch_lr_finder,
           "lightning": lightning}
#: finders whose results do not depend on this repository's code: cached between runs
PEERS = ("torch-lr-finder", "lightning")


# -- the comparison ---------------------------------------------------------------------------------
class Cache:
    """Final losses of the grid and the peers' results, which this repository's code does not change, kept in a
    JSON file between runs (``--fresh`` ignores it)."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.data = {} if fresh or not path.exists() else json.loads(path.read_text())

    def get(self, key: str, compute: Callable):
        if key not in self.data:
            self.data[key] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data))
        return self.data[key]


def _finite(losses: tuple) -> Optional[list]:
    return list(losses) if all(math.isfinite(v) for v in losses) else None


def _run(task: Task, name: str, seed: int, steps: int) -> tuple:
    """(suggested LR, [fit, test] losses at it or None, error) of one finder on one seed; a crash is reported."""
    try:
        lr = FINDERS[name](task, seed)
    except Exception as exc:  # a finder that crashes is reported, not fatal
        return None, None, f"{type(exc).__name__}: {exc}"
    return lr, (_finite(final_loss(task, seed, lr, steps)) if lr else None), None


#: the two losses every run is scored on: on the test set (the default: what the race compares) and on the
#: training data itself
OBJECTIVES = ("test", "fit")


def _score(table: dict, runs: list, objective: str) -> tuple[float, dict]:
    """The reference LR (lowest seed-mean loss on the grid) and each run's regret against its seed's loss there."""
    k = ("fit", "test").index(objective)  # the order final_loss returns them in
    means = {lr: statistics.mean(math.inf if v is None else v[k] for v in vs) for lr, vs in table.items()}
    best = min(means, key=means.get)
    regrets = [(losses[k] / ref[k] - 1) if losses is not None else math.inf
               for (_, losses, _), ref in zip(runs, table[best])]
    good = [lr for lr, m in means.items() if m <= 1.1 * means[best]]
    return best, {"regrets": regrets, "median": statistics.median(regrets), "worst": max(regrets),
                  "best": min(regrets), "good_lrs": [min(good), max(good)], "best_loss": means[best]}


def evaluate(task: Task, grid: list[float], seeds: list[int], steps: int, cache: Cache, names: list[str]) -> dict:
    """The grid's final losses per seed, the reference per objective (the grid LR of lowest seed-mean loss), and
    each finder's per-seed regret against the reference LR's loss on the same seed."""
    table = {lr: [cache.get(f"grid|{task.name}|{s}|{steps}|{lr:.6g}", lambda: _finite(final_loss(task, s, lr, steps)))
                  for s in seeds] for lr in grid}
    row = {"task": task.name, "kind": task.kind, "methods": {}, "ours": {},
           "grid": {f"{lr:.3g}": vs for lr, vs in table.items()}}
    for objective in OBJECTIVES:
        row[f"best_lr_{objective}"], _ = _score(table, [(None, None, None)] * len(seeds), objective)
    for name in names:
        runs = [cache.get(f"peer|{name}|{task.name}|{s}|{steps}", lambda: _run(task, name, s, steps))
                if name in PEERS else _run(task, name, s, steps) for s in seeds]
        lrs = [lr for lr, _, _ in runs if lr]
        row["methods"][name] = {"suggestions": [lr for lr, _, _ in runs], "losses": [v for _, v, _ in runs],
                                "lr_spread": max(lrs) / min(lrs) if lrs else None,
                                "errors": sorted({e for _, _, e in runs if e}),
                                **{o: _score(table, runs, o)[1] for o in OBJECTIVES}}
    row["ours"] = {str(s): METRICS.get((task.name, s)) for s in seeds}
    return row


def sweep_cost(task: Task, num_iter: int = 100, repeats: int = 3) -> dict:
    """Wall time of one ``num_iter``-step sweep per finder against ``num_iter`` plain steps, and bitwise restore.

    babysitter's time is its sweep alone (one repeat, read from the check's metrics), so the figure compares
    like with like; 'restores' compares the model's state_dict before and after, bitwise.
    """
    from babysitter.checklist.lr_range import END_LR, START_LR

    batches = list(task.loader(0))

    def plain():  # over batches drawn beforehand, as babysitter's pool is: the cost of the training math
        model = task.build(0)
        opt = task.optimizer(model.parameters(), REF_LR)
        t0 = time.perf_counter()
        for i in range(num_iter):
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()
        return time.perf_counter() - t0

    def ours_t():
        model = task.build(0)
        before = _state(model)
        t0 = time.perf_counter()
        report = babysitter.check(model=model, data=task.loader(0), loss_fn=task.loss_fn,
                                  optimizer=lambda p: task.optimizer(p, REF_LR), select=["lr_range"],
                                  options={"lr_range": {"repeats": 1, "steps": num_iter, "start_lr": START_LR,
                                                        "end_lr": END_LR}})
        total = time.perf_counter() - t0
        return report["lr_range"].metrics["sweep_seconds"], total, _same(before, _state(model))

    def tlf_t():
        from torch_lr_finder import LRFinder

        model = task.build(0)
        opt = task.optimizer(model.parameters(), REF_LR)
        before = _state(model)
        t0 = time.perf_counter()
        finder = LRFinder(model, opt, task.loss_fn, device="cpu")
        with _quiet():
            finder.range_test(task.loader(0), start_lr=1e-7, end_lr=10, num_iter=num_iter)
        finder.reset()
        total = time.perf_counter() - t0
        return total, total, _same(before, _state(model))

    def pl_t():
        model = task.build(0)
        before = _state(model)
        t0 = time.perf_counter()
        lightning_sweep(task, model, num_iter)
        total = time.perf_counter() - t0
        return total, total, _same(before, _state(model))

    finders = {"babysitter": ours_t, "torch-lr-finder": tlf_t, "lightning": pl_t}
    plains, runs = [], {name: [] for name in finders}
    plain()  # warm-up
    for _ in range(repeats):  # round-robin, so that drift in the machine hits every tool alike
        plains.append(plain())
        for name, fn in finders.items():
            runs[name].append(fn())
    out = {"task": task.name, "num_iter": num_iter, "plain_s": statistics.median(plains)}
    for name, rs in runs.items():
        ratios = [r[0] / p for r, p in zip(rs, plains)]
        out[name] = {"sweep_s": statistics.median(r[0] for r in rs), "total_s": statistics.median(r[1] for r in rs),
                     "ratio_to_plain": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "restores_bitwise": all(r[2] for r in rs)}
    return out


def lightning_sweep(task: Task, model: nn.Module, num_iter: int) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    module = _lightning_module(task, model)
    with _quiet(), _in_tmpdir():
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        Tuner(trainer).lr_find(module, train_dataloaders=task.loader(0), min_lr=1e-7, max_lr=10,
                               num_training=num_iter, update_attr=False, early_stop_threshold=None)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- output -----------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _lr(values) -> str:
    vals = [v for v in values if v]
    if not vals:
        return "none"
    return f"{statistics.median(vals):.2g}"


def _cell(m: dict, objective: str) -> str:
    spread = f", x{m['lr_spread']:.1f}" if m["lr_spread"] else ""
    o = m[objective]
    return f"{_lr(m['suggestions'])}{spread} / **{_pct(o['median'])}** [{_pct(o['best'])}, {_pct(o['worst'])}]"


def markdown(rows: list[dict], names: list[str], objective: str = "test") -> str:
    """One table for one objective: per task the best grid LR, then per finder its median suggestion, the
    suggestions' spread over seeds (largest / smallest), its median regret over seeds in bold and the best and
    worst seed's regret."""
    head = "| task | kind | best LR (within 10%) | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for r in rows:
        ref = r["methods"][names[0]][objective]["good_lrs"]
        lines.append(f"| {r['task']} | {r['kind']} | {r[f'best_lr_{objective}']:.2g} ({ref[0]:.2g}-{ref[1]:.2g}) | "
                     + " | ".join(_cell(r["methods"][n], objective) for n in names) + " |")
    summary = []
    for n in names:
        medians = [r["methods"][n][objective]["median"] for r in rows]
        mean = statistics.mean(medians) if all(math.isfinite(x) for x in medians) else math.inf
        lowest = sum(all(r["methods"][n][objective]["median"] < r["methods"][o][objective]["median"]
                         for o in PEERS if o != n and o in names) for r in rows)
        summary.append(f"worst median {_pct(max(medians))}, mean {_pct(mean)}, {sum(x <= 0.05 for x in medians)}/"
                       f"{len(medians)} within 5%" + (f", below every peer on {lowest}/{len(rows)}"
                                                      if n not in PEERS else ""))
    lines.append("| **all** | | | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def cost_markdown(rows: list[dict]) -> str:
    names = [n for n in FINDERS if rows and n in rows[0]]
    lines = ["| task | 100 plain steps | " + " | ".join(f"{n} (x plain, restores)" for n in names) + " |",
             "|" + "---|" * (2 + len(names))]
    for r in rows:
        cells = [f"{r[n]['sweep_s']:.2f}s ({r[n]['ratio_to_plain']:.2f}x [{r[n]['ratio_min']:.2f}-"
                 f"{r[n]['ratio_max']:.2f}], {'bitwise' if r[n]['restores_bitwise'] else 'NOT restored'})"
                 for n in names]
        lines.append(f"| {r['task']} | {r['plain_s']:.2f}s | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer LRs, seeds and steps: a smoke run")
    ap.add_argument("--steps", type=int, default=None, help="training budget per run (default 150; 100 quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task (default 5; 2 quick)")
    ap.add_argument("--half", choices=("tune", "held", "all"), default="all",
                    help="which set: the 50 tuning tasks, the held-out tasks, or both")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: all of the half)")
    ap.add_argument("--methods", default="", help="comma-separated finders (default: all)")
    ap.add_argument("--options", default="", help="lr_range options for babysitter, as JSON")
    ap.add_argument("--fresh", action="store_true", help="recompute the grid and the peers (ignore the cache)")
    ap.add_argument("--no-cost", action="store_true", help="skip the sweep-cost measurement")
    ap.add_argument("--cost-only", action="store_true", help="only the sweep-cost measurement")
    ap.add_argument("--cost-repeats", type=int, default=None, help="rounds of the cost measurement (default 5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "lr_quality.json"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print the tables of runs saved by --out as one (written to --out) and run nothing")
    return ap.parse_args(argv)


def print_tables(rows: list[dict], grid: list[float], seeds: list[int], steps: int, names: list[str]) -> None:
    """The regret tables of ``rows`` (both objectives, each half present)."""
    print(f"LR suggestion regret: {len(grid)} LRs {grid[0]:.0e}..{grid[-1]:.0e}, {len(seeds)} seeds, {steps} steps "
          f"per run, torch {torch.__version__}, one thread; each cell: median suggestion, its spread over seeds "
          f"(largest / smallest), **median regret** [best, worst seed]" + (f"; options {OPTIONS}" if OPTIONS else ""))
    for objective, half in itertools.product(OBJECTIVES, ("tune", "held")):
        part = [r for r in rows if r["half"] == half]
        if part:
            print(f"\n{'Tuning' if half == 'tune' else 'Held-out'} set ({len(part)} tasks), regret of the loss on "
                  f"{'the test set' if objective == 'test' else 'the training data'}:\n")
            print(markdown(part, names, objective))


def merge(paths: list[str], out: str) -> int:
    """The tables of runs saved by ``--out`` (e.g. the halves of a set run in two processes) as one, saved to
    ``out``, each task in the set it belongs to now (``split_of``: a held-out set's blind run is a part of the tuning
    set once that set has joined it); the runs must share their grid, seeds and steps."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    if any((r["grid"], r["seeds"], r["steps"]) != (first["grid"], first["seeds"], first["steps"]) for r in runs):
        raise SystemExit(f"refused: {paths} were run with other grids, seeds or steps")
    rows = [{**row, "half": split_of(row["task"])} for r in runs for row in r["rows"]]
    names = [n for n in FINDERS if any(n in row["methods"] for row in rows)]
    OPTIONS.update(first.get("options") or {})
    print_tables(rows, first["grid"], first["seeds"], first["steps"], names)
    Path(out).write_text(json.dumps({**first, "rows": rows, "cost": []}, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    args = _args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    torch.set_num_threads(1)
    OPTIONS.update(json.loads(args.options) if args.options else {})
    steps = args.steps or (100 if args.quick else 150)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    grid = [float(v) for v in np.logspace(-4, 0, 5 if args.quick else 13)]
    names = [n for n in FINDERS if not args.methods or n in args.methods.split(",")]
    halves = ("tune", "held") if args.half == "all" else (args.half,)
    chosen = [(half, t) for half in halves for t in SPLITS[half]()
              if not args.tasks or t.name in args.tasks.split(",")]
    cache = Cache(Path(args.out).with_name("lr_quality_cache.json"), args.fresh)
    t0 = time.perf_counter()
    rows = []
    for half, task in ([] if args.cost_only else chosen):
        rows.append({**evaluate(task, grid, seeds, steps, cache, names), "half": half})
        print(f"  {half} {task.name}: done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    print_tables(rows, grid, seeds, steps, names)
    cost = []
    if not args.no_cost:
        repeats = args.cost_repeats or (1 if args.quick else 5)
        cost = [sweep_cost(t, repeats=repeats) for _, t in chosen[:2]]
        print(f"\nmedian [min-max] over {repeats} rounds:")
        print("\nCost of one 100-step sweep against 100 plain training steps, and whether the model is restored:\n")
        print(cost_markdown(cost))
    print(f"\n({time.perf_counter() - t0:.0f}s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cost": cost, "grid": grid, "seeds": seeds, "steps": steps,
                               "options": OPTIONS}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
