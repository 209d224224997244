"""Recurrent models: PyTorch's word-language-model LSTM (tied weights, SGD at lr 20 clipped at 0.25, sequence-first
batches) on Markov-chain tokens, and a GRU encoder-decoder with Luong attention and teacher forcing on a
sequence-reversal task (Adam 1e-3, clipped at 1.0); with the bugs people make in them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import babysitter

from . import Case, Fault
from .data import generator


# -- lstm-lm: pytorch/examples word_language_model ---------------------------------------------------------------
def markov_tokens(length: int, vocab: int = 30, successors: int = 2, seed: int = 0) -> torch.Tensor:
    """A token stream from a Markov chain over ``vocab`` tokens where each token has ``successors`` likely next
    tokens (learnable: the entropy rate is about ln(successors), far below ln(vocab))."""
    g = generator(seed)
    nxt = torch.stack([torch.randperm(vocab, generator=g)[:successors] for _ in range(vocab)])
    probs = torch.full((vocab, vocab), 0.05 / vocab)
    probs.scatter_(1, nxt, 0.95 / successors)
    out = torch.empty(length, dtype=torch.long)
    out[0] = 0
    for i in range(1, length):
        out[i] = torch.multinomial(probs[out[i - 1]], 1, generator=g)
    return out


def lm_batches(vocab: int = 30, bsz: int = 16, bptt: int = 20, n_batches: int = 8, seed: int = 0) -> list:
    """The example's ``batchify`` + ``get_batch``: the stream cut into ``bsz`` columns, (bptt, bsz) input chunks
    and the next tokens flattened to (bptt * bsz,)."""
    stream = markov_tokens(bsz * (bptt * n_batches + 1), vocab, seed=seed)
    data = stream.view(bsz, -1).t().contiguous()  # (L, bsz): sequence-first, as batchify makes it
    return [(data[i:i + bptt], data[i + 1:i + 1 + bptt].reshape(-1)) for i in range(0, bptt * n_batches, bptt)]


class RNNModel(nn.Module):
    """word_language_model/model.py's RNNModel (LSTM): encoder, multi-layer LSTM (sequence-first), decoder tied to
    the encoder (Press & Wolf 2017, the example's --tied), log-softmax outputs of shape (T * B, ntoken)."""

    def __init__(self, ntoken: int = 30, ninp: int = 128, nhid: int = 128, nlayers: int = 2, dropout: float = 0.2,
                 tie_weights: bool = True):
        super().__init__()
        self.ntoken, self.nhid, self.nlayers = ntoken, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            assert nhid == ninp, "tied weights need nhid == ninp"
            self.decoder.weight = self.encoder.weight
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def lm_forward(model: RNNModel, batch):
    """The hidden state starts from zeros at each batch (the example carries it over, detached; every check sees
    batches in its own order, so a fresh one is the faithful choice here)."""
    inputs, targets = batch
    output, _ = model(inputs, model.init_hidden(inputs.shape[1]))
    return output, targets


def lstm_lm(seed: int = 0, clip: bool = True) -> dict:
    """The example's settings: plain SGD at lr 20, ``clip_grad_norm_(0.25)``, NLLLoss on log-softmax outputs."""
    torch.manual_seed(seed)
    fields = dict(model=RNNModel(), data=lm_batches(seed=seed), loss_fn=nn.NLLLoss(),
                  optimizer=lambda params: torch.optim.SGD(params, lr=20.0), forward=lm_forward)
    if clip:
        fields["step"] = babysitter.Step(clip_grad_norm=0.25)
    return fields


# -- gru-seq2seq: GRU encoder-decoder (Cho et al. 2014) with Luong dot attention, teacher forcing ------------------
SOS = 0


def reversal_batches(vocab: int = 12, length: int = 6, bsz: int = 32, n_batches: int = 16, seed: int = 0) -> list:
    """Sequences of tokens 1..vocab-1 and their reversals, sequence-first (T, B) as ``nn.GRU`` expects by default."""
    g = generator(seed)
    out = []
    for _ in range(n_batches):
        src = torch.randint(1, vocab, (length, bsz), generator=g)
        out.append((src, src.flip(0).contiguous()))
    return out


class Seq2Seq(nn.Module):
    """A GRU encoder and a GRU decoder started from the encoder's final state, with Luong et al. (2015) dot
    attention over the encoder outputs and the attentional state tanh(W_c [c; h]) before the output layer (the
    design of the PyTorch seq2seq tutorials). Sequence-first tensors; the decoder is teacher-forced, so it runs
    over the whole shifted target in one call."""

    def __init__(self, vocab: int = 12, emb: int = 32, hidden: int = 48, view_bug: bool = False):
        super().__init__()
        self.vocab, self.view_bug = vocab, view_bug
        self.src_emb = nn.Embedding(vocab, emb)
        self.tgt_emb = nn.Embedding(vocab, emb)
        self.encoder = nn.GRU(emb, hidden)
        self.decoder = nn.GRU(emb, hidden)
        self.attn_out = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc_out, h = self.encoder(self.src_emb(src))  # (S, B, H), (1, B, H)
        dec_out, _ = self.decoder(self.tgt_emb(tgt_in), h)  # (T, B, H)
        S, B, H = enc_out.shape
        if self.view_bug:
            keys = enc_out.view(B, S, H)  # the bug: a view is not a transpose; rows mix time steps of other examples
        else:
            keys = enc_out.transpose(0, 1)  # (B, S, H)
        query = dec_out.transpose(0, 1)  # (B, T, H)
        weights = torch.softmax(query @ keys.transpose(1, 2), dim=-1)  # (B, T, S)
        context = weights @ keys  # (B, T, H)
        att = torch.tanh(self.attn_out(torch.cat([context, query], dim=-1)))
        return self.out(att).transpose(0, 1)  # (T, B, V)


def seq2seq_forward(model: Seq2Seq, batch):
    """Teacher forcing: the decoder reads SOS and the target shifted right; logits flattened to (T * B, V)."""
    src, tgt = batch
    tgt_in = torch.cat([torch.full_like(tgt[:1], SOS), tgt[:-1]], dim=0)
    logits = model(src, tgt_in)
    return logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1)


def gru_seq2seq(seed: int = 0, view_bug: bool = False) -> dict:
    """Adam 1e-3 with gradients clipped at 1.0 (the seq2seq tutorials' and OpenNMT's settings), cross-entropy."""
    torch.manual_seed(seed)
    return dict(model=Seq2Seq(view_bug=view_bug), data=reversal_batches(seed=seed), loss_fn=nn.CrossEntropyLoss(),
                optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), forward=seq2seq_forward,
                step=babysitter.Step(clip_grad_norm=1.0))


CASES = [
    Case("lstm-lm", "recurrent", lstm_lm,
         "PyTorch word-language-model example: 2-layer LSTM 128, tied encoder/decoder, dropout 0.2, (T, B) batches, "
         "plain SGD at lr 20 with clip_grad_norm 0.25 (the example's), NLLLoss on Markov-chain tokens"),
    Case("gru-seq2seq", "recurrent", gru_seq2seq,
         "GRU encoder-decoder (Cho et al. 2014) with Luong dot attention and teacher forcing, sequence-first, "
         "reversing 6-token sequences; Adam 1e-3 with clip_grad_norm 1.0 (the seq2seq tutorials' settings)",
         plain_steps=300),
]

FAULTS = [
    Fault("lstm-lm-no-clip", "lstm-lm", "grad_norms", lambda seed: lstm_lm(seed, clip=False),
          "the word-language-model's SGD at lr 20 without its clip_grad_norm_(0.25): LSTM gradients explode"),
    Fault("gru-seq2seq-view-batch", "gru-seq2seq", "batch_independence",
          lambda seed: gru_seq2seq(seed, view_bug=True),
          "encoder outputs (S, B, H) turned batch-first with .view(B, S, H) instead of .transpose(0, 1): each "
          "example attends over time steps of other examples"),
]
