"""Hugging Face ``transformers`` models from small random configs (nothing downloaded), healthy and with faults.

Every model has 2 layers, 2 heads and a hidden size of 32-64 (vocabularies of at most 100), trained with AdamW as the
Hugging Face examples and the pretraining recipes do, on data generated in code that training can learn, 16 batches
of 16 examples (ViT: 8 of 32). A tiny randomly initialised Transformer trains well at 5e-4..1e-3, above the 2e-5..5e-5
of fine-tuning a pretrained one.

- ``bert``: BertForSequenceClassification (post-LN encoder, tanh pooler on [CLS]), 32 tokens: does token 7 occur
  (balanced); AdamW 5e-4.
- ``distilbert``: DistilBertForSequenceClassification on rows of 8-32 real tokens padded with 0 to 32, with their
  attention mask: are most real tokens below 50; AdamW 5e-4, weight decay 0.01, the HF Trainer's default schedule
  (``get_linear_schedule_with_warmup``, 10 warmup steps of 150) as ``babysitter.Step(scheduler=...)``.
- ``gpt2``: GPT2LMHeadModel (tied embeddings) with the usual next-token logits flattened to (B*T, V), on 17-token
  rows of a Markov chain; AdamW 5e-4, clip_grad_norm 1.0 (the GPT-2 / nanoGPT recipes clip at 1.0).
- ``llama``: LlamaForCausalLM (RMSNorm, rotary positions, SwiGLU, untied lm_head) on 33-token rows, each from one of
  4 Markov chains (which one is context only attention can read); the LLaMA paper's AdamW betas (0.9, 0.95), weight
  decay 0.1 and clip_grad_norm 1.0, lr 1e-3.
- ``t5``: T5ForConditionalGeneration (relative position buckets, ReLU feed-forward, tied head scaled by
  d_model**-0.5) reversing 10 tokens; AdamW 1e-3 (T5's fine-tuning LR; the HF seq2seq examples use AdamW).
- ``vit``: ViTForImageClassification, 16px RGB images in 4x4 patches, 4 stripe orientations, normalised as
  ViTImageProcessor does (mean 0.5, std 0.5); AdamW 1e-3 with DeiT's weight decay 0.05.
- ``wav2vec2``: Wav2Vec2ForSequenceClassification (conv feature encoder with GroupNorm, conv positional embedding,
  post-LN Transformer, mean pooling) on 25 ms waveforms at 16 kHz, normalised per clip (the feature extractor's
  do_normalize), whose class is a tone's pitch (4 classes, 300-2400 Hz) under noise; AdamW 1e-3.

Faults, each one change to a healthy build:

- ``bert-sgd-lr`` (lr_range): AdamW at lr 0.1, copied from an SGD recipe.
- ``distilbert-inf-mask`` (nonfinite): the additive mask built as ``(1 - mask) * float("-inf")``.
- ``gpt2-init-std1`` (initial_loss): an init loop with ``nn.init.normal_(p)`` (std 1) on every matrix.
- ``llama-init-std1`` (grad_norms): ``model.apply`` with ``nn.init.normal_(m.weight)`` (std 1) on every nn.Linear.
- ``llama-seq-first-attention`` (batch_independence): a custom attention returning (T, B, H, D).
- ``vit-frozen-head`` (param_updates): a freeze loop that leaves the new classifier frozen at its random init.
- ``wav2vec2-softmax`` (overfit_batch): probabilities fed to CrossEntropyLoss.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import babysitter

from . import Case, Fault
from .data import batches, dict_batches, generator, stripes
from .recurrent import markov_tokens

FAMILY = "transformers"


def _cls_forward(model, batch):
    """A sequence classifier's logits and labels from a dict batch (the HF Trainer's batches)."""
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    return out.logits, batch["labels"]


# -- data -------------------------------------------------------------------------------------------
def token_presence(n: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids in 1..vocab-1; label 1 for the half of the rows that hold token 7 (at a random place), 0
    for the rest (which hold none)."""
    g = generator(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    ids[ids == 7] = 8
    y = torch.randint(0, 2, (n,), generator=g)
    where = torch.randint(0, length, (n,), generator=g)
    rows = torch.nonzero(y).flatten()
    ids[rows, where[rows]] = 7
    return ids, y


def padded_majority(n: int, vocab: int, seed: int, lo: int = 8, hi: int = 32) -> dict:
    """Rows of 8-32 real tokens padded with 0 to 32, with their attention mask; label 1 when most real tokens are
    below vocab/2."""
    g = generator(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    mask = (torch.arange(hi)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (n, hi), generator=g) * mask
    low = ((ids > 0) & (ids < vocab // 2)).sum(1)
    y = (2 * low > lengths).long()
    return dict(input_ids=ids, attention_mask=mask, labels=y)


def chain_mixture(n: int, length: int, vocab: int, chains: int, seed: int, successors: int = 2) -> torch.Tensor:
    """Token rows, each from one of ``chains`` Markov chains over ``vocab`` tokens (each token has ``successors``
    likely next tokens in each chain, 95% of the mass): the next token depends on the current one and on which
    chain the row follows, which only the context (attention) tells."""
    g = generator(seed)
    tables = torch.stack([torch.stack([torch.randperm(vocab, generator=g)[:successors] for _ in range(vocab)])
                          for _ in range(chains)])  # (chains, vocab, successors)
    which = torch.randint(0, chains, (n,), generator=g)
    out = torch.empty(n, length, dtype=torch.long)
    out[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(1, length):
        follow = torch.rand(n, generator=g) < 0.95
        pick = torch.randint(0, successors, (n,), generator=g)
        nxt = tables[which, out[:, t - 1], pick]
        out[:, t] = torch.where(follow, nxt, torch.randint(0, vocab, (n,), generator=g))
    return out


def tones(n: int, samples: int, classes: int, seed: int, rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms at ``rate`` Hz: a sine whose pitch (one of ``classes`` between 300 and 2400 Hz, +-3%) is the class,
    of random phase and amplitude, under noise; zero mean, unit variance per row (Wav2Vec2FeatureExtractor's
    do_normalize)."""
    g = generator(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    base = 300 * 2 ** (3 * y.float() / (classes - 1))
    freq = base * (1 + 0.03 * (2 * torch.rand(n, generator=g) - 1))
    t = torch.arange(samples) / rate
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    amp = 0.5 + torch.rand(n, 1, generator=g)
    x = amp * torch.sin(2 * math.pi * freq[:, None] * t[None] + phase) + 0.5 * torch.randn(n, samples, generator=g)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True), y


# -- BERT -------------------------------------------------------------------------------------------
def bert(seed: int, *, lr: float = 5e-4) -> dict:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(cfg)
    ids, y = token_presence(256, 32, 100, seed)
    data = dict_batches(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y), 16)
    return dict(model=model, data=data, loss_fn=nn.CrossEntropyLoss(), forward=_cls_forward,
                optimizer=lambda params: torch.optim.AdamW(params, lr=lr))


# -- DistilBERT -------------------------------------------------------------------------------------
DISTILBERT_STEPS = 150


def _inf_mask_forward(model, batch):
    # fault: the additive mask built as (1 - mask) * -inf: 0 * -inf is NaN at every position that is kept
    mask = batch["attention_mask"][:, None, None, :].float()
    extended = (1.0 - mask) * float("-inf")
    return model(input_ids=batch["input_ids"], attention_mask=extended).logits, batch["labels"]


def distilbert(seed: int, *, inf_mask: bool = False) -> dict:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                           max_position_embeddings=64, num_labels=2, pad_token_id=0)
    model = DistilBertForSequenceClassification(cfg)
    data = dict_batches(padded_majority(256, 100, seed + 1), 16)
    return dict(
        model=model, data=data, loss_fn=nn.CrossEntropyLoss(),
        forward=_inf_mask_forward if inf_mask else _cls_forward,
        optimizer=lambda params: torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01),
        step=babysitter.Step(scheduler=lambda opt: get_linear_schedule_with_warmup(opt, 10, DISTILBERT_STEPS)),
    )


# -- GPT-2 ------------------------------------------------------------------------------------------
def _lm_forward(model, batch):
    """The usual causal-LM forward: next-token logits flattened to (B*T, V) against the shifted ids."""
    x = batch[0]
    logits = model(input_ids=x).logits
    return logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)


def gpt2(seed: int, *, init_std: float = 0.0) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=30, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    if init_std:  # fault: a custom init loop with nn.init.normal_(p) (std 1), the initializer_range forgotten
        for p in model.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=init_std)
    ids = markov_tokens(256 * 17, seed=seed).reshape(256, 17)
    return dict(model=model, data=batches(ids, size=16), loss_fn=nn.CrossEntropyLoss(),
                forward=_lm_forward, optimizer=lambda params: torch.optim.AdamW(params, lr=5e-4),
                step=babysitter.Step(clip_grad_norm=1.0))


# -- LLaMA ------------------------------------------------------------------------------------------
def seq_first_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A hand-written attention registered with transformers.AttentionInterface, ported from sequence-first code
    (nn.MultiheadAttention, fairseq: (T, B, ...) tensors): its output is returned as (T, B, H, D) where the model
    reads (B, T, H, D), so the attention outputs of different examples are mixed (the fault)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(-1)
    out = torch.matmul(probs, value)  # (B, H, T, D)
    return out.permute(2, 0, 1, 3), probs  # should be out.transpose(1, 2)


def _register_seq_first() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("corpus_seq_first", seq_first_attention)
    AttentionMaskInterface.register("corpus_seq_first", eager_mask)
    return "corpus_seq_first"


def llama(seed: int, *, seq_first: bool = False, linear_std: float = 0.0) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # the fault: the hand-written attention above, registered and chosen by attn_implementation
    attention = dict(attn_implementation=_register_seq_first()) if seq_first else {}
    cfg = LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **attention)
    model = LlamaForCausalLM(cfg)
    if linear_std:  # fault: model.apply(init) with nn.init.normal_(m.weight) on every nn.Linear (std 1)
        model.apply(lambda m: nn.init.normal_(m.weight, std=linear_std) if isinstance(m, nn.Linear) else None)
    ids = chain_mixture(256, 33, 32, 4, seed + 2)
    return dict(model=model, data=batches(ids, size=16), loss_fn=nn.CrossEntropyLoss(),
                forward=_lm_forward,
                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1),
                step=babysitter.Step(clip_grad_norm=1.0))


# -- T5 ---------------------------------------------------------------------------------------------
def _seq2seq_forward(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.logits.reshape(-1, out.logits.shape[-1]), batch["labels"].reshape(-1)


def t5(seed: int) -> dict:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=2,
                   relative_attention_num_buckets=16, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    g = generator(seed + 3)
    src = torch.randint(2, 64, (256, 10), generator=g)
    data = dict_batches(dict(input_ids=src, attention_mask=torch.ones_like(src), labels=src.flip(1)), 16)
    return dict(model=model, data=data, loss_fn=nn.CrossEntropyLoss(), forward=_seq2seq_forward,
                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))


# -- ViT --------------------------------------------------------------------------------------------
def vit(seed: int, *, frozen_head: bool = False) -> dict:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=128, num_labels=4)
    model = ViTForImageClassification(cfg)
    if frozen_head:  # fault: a freeze loop inverted: everything frozen, then the backbone unfrozen, the head not
        for p in model.parameters():
            p.requires_grad = False
        for p in model.vit.parameters():
            p.requires_grad = True
    # ViTImageProcessor's normalisation (mean 0.5, std 0.5 of pixels in [0, 1])
    x, y = stripes(256, 16, 4, seed + 4, jitter=0.1, tint=False)
    data = batches((x - 0.5) / 0.5, y, size=32)
    return dict(model=model, data=data, loss_fn=nn.CrossEntropyLoss(),
                forward=lambda m, b: (m(pixel_values=b[0]).logits, b[1]),
                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05))


# -- Wav2Vec2 ---------------------------------------------------------------------------------------
def wav2vec2(seed: int, *, softmax: bool = False) -> dict:
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=32,
                         num_labels=4, mask_time_prob=0.0, do_stable_layer_norm=False)
    model = Wav2Vec2ForSequenceClassification(cfg)
    x, y = tones(256, 400, 4, seed + 5)
    if softmax:  # fault: probabilities out of the forward, then CrossEntropyLoss applies log_softmax again
        forward = lambda m, b: (m(input_values=b[0]).logits.softmax(-1), b[1])  # noqa: E731
    else:
        forward = lambda m, b: (m(input_values=b[0]).logits, b[1])  # noqa: E731
    data = batches(x, y, size=16)
    return dict(model=model, data=data, loss_fn=nn.CrossEntropyLoss(), forward=forward,
                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))


CASES = [
    Case("bert", FAMILY, bert,
         "BertForSequenceClassification (hidden 64, 2 layers, 2 heads, vocab 100), 32 tokens, label: does token 7 "
         "occur (balanced); dict batches with attention_mask; AdamW 5e-4 (tiny random BERT; fine-tuning uses "
         "2e-5..5e-5)"),
    Case("distilbert", FAMILY, distilbert,
         "DistilBertForSequenceClassification (dim 64, 2 layers, 2 heads, vocab 100) on rows of 8-32 tokens padded "
         "to 32 with their attention mask, label: are most real tokens below 50; AdamW 5e-4, weight decay 0.01, the "
         "HF Trainer's linear warmup/decay schedule (10 of 150 steps) via Step(scheduler=...)",
         plain_steps=DISTILBERT_STEPS),
    Case("gpt2", FAMILY, gpt2,
         "GPT2LMHeadModel (n_embd 64, 2 layers, 2 heads, vocab 30, tied embeddings), next-token logits flattened to "
         "(B*T, V), 17-token rows of a Markov chain; AdamW 5e-4, clip_grad_norm 1.0 (GPT-2/nanoGPT recipes)"),
    Case("llama", FAMILY, llama,
         "LlamaForCausalLM (hidden 64, 2 layers, 2 heads, RMSNorm, rotary, SwiGLU, untied lm_head, vocab 32), "
         "flattened next-token logits, rows from one of 4 Markov chains; the LLaMA paper's AdamW betas (0.9, 0.95), "
         "weight decay 0.1, clip_grad_norm 1.0; lr 1e-3"),
    Case("t5", FAMILY, t5,
         "T5ForConditionalGeneration (d_model 64, 2+2 layers, 2 heads, vocab 64) reversing 10 tokens, logits vs "
         "labels flattened; AdamW 1e-3 (T5's fine-tuning LR; the HF seq2seq examples use AdamW)"),
    Case("vit", FAMILY, vit,
         "ViTForImageClassification (16px, 4x4 patches, hidden 64, 2 layers, 2 heads) on stripe images, 4 "
         "orientations, normalised mean 0.5 std 0.5 as ViTImageProcessor; AdamW 1e-3, DeiT's weight decay 0.05"),
    Case("wav2vec2", FAMILY, wav2vec2,
         "Wav2Vec2ForSequenceClassification (2 conv layers with GroupNorm, hidden 32, 2 layers, 2 heads, mean "
         "pooling) on 25 ms 16 kHz clips normalised per clip (do_normalize), class = a tone's pitch (4 classes) "
         "under noise; AdamW 1e-3"),
]

FAULTS = [
    Fault("bert-sgd-lr", "bert", "lr_range", lambda s: bert(s, lr=0.1),
          "AdamW at lr 0.1, the LR of an SGD recipe copied over (Transformers train at 1e-5..1e-3 with Adam)"),
    Fault("distilbert-inf-mask", "distilbert", "nonfinite", lambda s: distilbert(s, inf_mask=True),
          "an additive attention mask built as (1 - mask) * float('-inf') and passed as a 4D mask: 0 * -inf is NaN "
          "at every kept position (HF uses torch.finfo(dtype).min; -inf masks are a classic source of NaN)"),
    Fault("gpt2-init-std1", "gpt2", "initial_loss", lambda s: gpt2(s, init_std=1.0),
          "a custom init loop `for p in model.parameters(): if p.dim() >= 2: nn.init.normal_(p)`: std 1 (normal_'s "
          "default) instead of the config's initializer_range 0.02, the tied embeddings and head included"),
    Fault("llama-init-std1", "llama", "grad_norms", lambda s: llama(s, linear_std=1.0),
          "model.apply(init) with `nn.init.normal_(m.weight)` on every nn.Linear (std 1, the initializer_range "
          "0.02 forgotten): activations and gradients hundreds of times too large"),
    Fault("llama-seq-first-attention", "llama", "batch_independence", lambda s: llama(s, seq_first=True),
          "a hand-written attention registered with transformers.AttentionInterface, ported from sequence-first "
          "code (nn.MultiheadAttention/fairseq), returns its output as (T, B, H, D) where the model reads "
          "(B, T, H, D): examples mixed"),
    Fault("vit-frozen-head", "vit", "param_updates", lambda s: vit(s, frozen_head=True),
          "a freeze loop inverted: every parameter frozen, then `model.vit` unfrozen, so the new classifier head stays "
          "at its random init with requires_grad=False"),
    Fault("wav2vec2-softmax", "wav2vec2", "overfit_batch", lambda s: wav2vec2(s, softmax=True),
          "the forward returns logits.softmax(-1) into nn.CrossEntropyLoss (which applies log_softmax itself)"),
]
