"""What each check costs on small real Transformers and a recurrent language model (issue 12: keep the whole default
checklist on tiny Transformers under a minute on 2 cores).

    python benchmarks/transformer_cost.py

Models from small random configs of Hugging Face `transformers` (nothing downloaded): BertForSequenceClassification
with AdamW, GPT2LMHeadModel with the usual flattened (B*T, V) logits and AdamW on a Markov chain's tokens; and the LSTM language model after
PyTorch's word-language-model example (sequence-first batches, SGD at lr 20 with babysitter.Step(clip_grad_norm=0.25))
from tests/step_zoo.py. Prints the status and seconds of each check and the total.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the corpus package, before this folder's corpus.py script
sys.path.insert(0, str(ROOT / "tests"))

import babysitter  # noqa: E402


def _tokens(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g)


def bert() -> dict:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=64, num_labels=2)
    ids = _tokens(512, 32, 100)
    labels = (ids == 7).any(1).long()
    batches = [{"input_ids": ids[i:i + 32], "attention_mask": torch.ones_like(ids[i:i + 32]), "labels": labels[i:i + 32]}
               for i in range(0, 512, 32)]
    return dict(model=BertForSequenceClassification(cfg), data=batches, loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.AdamW(p, lr=5e-4),
                forward=lambda m, b: (m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                      b["labels"]))


def gpt2() -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    from step_zoo import markov_tokens

    cfg = GPT2Config(vocab_size=30, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    ids = markov_tokens(512 * 33).reshape(512, 33)  # learnable: each token has two likely successors
    batches = [(ids[i:i + 32],) for i in range(0, 512, 32)]

    def forward(model, batch):
        x = batch[0]
        logits = model(input_ids=x).logits
        return logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)

    return dict(model=GPT2LMHeadModel(cfg), data=batches, loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.AdamW(p, lr=5e-4), forward=forward)


def lstm_lm() -> dict:
    import step_zoo

    return step_zoo.lm_target()


MODELS = {"bert": bert, "gpt2": gpt2, "lstm_lm": lstm_lm}


def main() -> None:
    torch.set_num_threads(1)
    for name, build in MODELS.items():
        fields = build()
        t0 = time.perf_counter()
        report = babysitter.check(**fields, device="cpu")
        total = time.perf_counter() - t0
        parts = ", ".join(f"{c.id} {c.status} {c.duration_s:.1f}s" for c in report.checks)
        print(f"{name:8s} total {total:5.1f}s  {parts}", flush=True)


if __name__ == "__main__":
    main()
