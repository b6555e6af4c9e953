"""The wide part (`--wide-ngrams N`): hashed word n-grams, as fastText uses them, joined to any model.

`WideClassifier` wraps the model `--model` names (the "deep" part) and adds a second, linear path:
the mean of one vector per word 1..N-gram of the text, then a linear layer to class scores. The two
are joined (`--wide-join`):

- `sum`: the logits add up. A linear output layer over the deep features concatenated with the wide
  ones computes exactly this (W [f; w] + b = W_f f + W_w w + b), so it *is* the concatenation
  before the output layer, without touching each model's layer;
- `mix`: the class probabilities are averaged (a mixture of the two, trained as one; the logits
  returned are the log of the mixture).

The wide output layer starts at zero, so a fresh wide model (`sum`) gives its deep part's logits,
and the deep part is built from the same random draws as without the wide part.

The n-gram ids are computed here, from the token ids the data layer already gives every model, not
by the data layer from the words: one code path for training, evaluation, prediction, the server and
export (none of them change), nothing more to store in a run, and a run's vocabulary fixes the ids.
Unigrams take rows [0, vocab) of the table (no collision); 2..N-grams are hashed into `buckets`
further rows. The price: words outside the vocabulary are all <unk> here too, so the wide part does
not see them (fastText, hashing the words themselves, does).

The hash is integer arithmetic that ONNX has too (multiply, add, modulo; no overflow: every
intermediate stays below 2**45), so an exported graph hashes as torch does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .base import TextClassifier

HASH_PRIME = 1_000_003  # a prime (coprime with every bucket count not a multiple of it): ids spread over the table
MAX_BUCKETS = 1 << 24  # keeps h * HASH_PRIME + id < 2**63 (config.py declares the same bound)
JOINS = ("sum", "mix")


def ngram_ids(tokens: Tensor, lengths: Tensor, n_max: int, vocab_size: int, buckets: int) -> Tensor:
    """Table rows of the 1..n_max-grams of each padded text: [B, n_max * T], <pad> (row 0, zero and
    never trained) where no n-gram starts. Unigram t is row tokens[t]; the n-gram starting at t is row
    vocab_size + hash(n, tokens[t..t+n-1]) mod buckets."""
    B, T = tokens.shape
    lengths = lengths.to(tokens.device)
    steps = torch.arange(T, device=tokens.device)[None, :]
    parts = [tokens.masked_fill(steps >= lengths[:, None], 0)]
    h = None
    for n in range(2, n_max + 1):
        # h: the hash of the (n-1)-gram starting at each t, extended by the token n-1 places further
        later = tokens[:, n - 1:]
        nxt = F.pad(later, (0, T - later.shape[1]))  # (a text shorter than n has no n-gram: masked below)
        if h is None:
            h = (tokens + 2 * HASH_PRIME) % buckets  # seeded per order: a bigram (a, b) is not the trigram's prefix
        h = (h * HASH_PRIME + nxt + n) % buckets
        ids = (h + vocab_size).masked_fill(steps > lengths[:, None] - n, 0)
        parts.append(ids)
    return torch.cat(parts, dim=1)


def ngram_count(lengths: Tensor, n_max: int) -> Tensor:
    """[B] how many 1..n_max-grams each text has (at least 1, so an empty sum divides by 1)."""
    total = sum((lengths - (n - 1)).clamp(min=0) for n in range(1, n_max + 1))
    return torch.as_tensor(total).clamp(min=1)


def padded_from_flat(tokens: Tensor, lengths: Tensor, offsets: Tensor) -> Tensor:
    """The flat layout (tokens [sum of lengths], offsets [B]) as a padded [B, T] batch."""
    lengths = lengths.to(tokens.device)
    T = max(int(lengths.max()), 1) if lengths.numel() else 1
    steps = torch.arange(T, device=tokens.device)[None, :]
    positions = (offsets[:, None] + steps).clamp(max=max(tokens.numel() - 1, 0))
    if tokens.numel() == 0:
        return torch.zeros(lengths.numel(), T, dtype=torch.long, device=tokens.device)
    return tokens[positions].masked_fill(steps >= lengths[:, None], 0)


class WidePart(nn.Module):
    """Hashed word n-grams -> mean vector -> dropout -> linear class scores."""

    def __init__(self, vocab_size: int, num_classes: int, ngrams: int, buckets: int, dim: int,
                 dropout: float = 0.0):
        super().__init__()
        if not 1 <= buckets <= MAX_BUCKETS:
            raise ValueError(f"wide buckets must be in [1, {MAX_BUCKETS}], got {buckets}")
        self.ngrams, self.buckets, self.vocab_size = ngrams, buckets, vocab_size
        rows = vocab_size + (buckets if ngrams > 1 else 0)
        self.table = nn.Embedding(rows, dim, padding_idx=0)
        nn.init.uniform_(self.table.weight, -1.0 / dim, 1.0 / dim)  # fastText's initialisation of its input table
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.fc.weight)  # starts silent: the joined model starts as its deep part
        nn.init.zeros_(self.fc.bias)

    def ids(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return ngram_ids(tokens, lengths, self.ngrams, self.vocab_size, self.buckets)

    def features(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """[B, dim]: the mean of the text's n-gram vectors (padded tokens [B, T])."""
        ids = self.ids(tokens, lengths)
        w = self.table
        # embedding_bag: the sum without a [B, n * T, dim] intermediate; <pad> rows are skipped
        total = F.embedding_bag(ids, w.weight, mode="sum", sparse=w.sparse, padding_idx=0)
        return total / ngram_count(lengths.to(tokens.device), self.ngrams)[:, None].to(total.dtype)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.fc(self.dropout(self.features(tokens, lengths)))

    def position_vectors(self, tokens: Tensor) -> Tensor:
        """[B, T, dim]: each n-gram's vector shared equally among its n words, so that the vectors of
        a text's positions sum to the sum of its n-gram vectors (explanations attribute to positions).
        An n-gram that reaches a <pad> token has none: all <pad> tokens (the baseline) give zeros."""
        B, T = tokens.shape
        ids = ngram_ids(tokens, torch.full((B,), T, device=tokens.device), self.ngrams, self.vocab_size,
                        self.buckets).view(B, self.ngrams, T)
        is_pad = tokens == 0
        reaches_pad = is_pad
        out = tokens.new_zeros(B, T, self.table.embedding_dim, dtype=self.table.weight.dtype)
        for n in range(1, self.ngrams + 1):
            if n > 1:
                later = is_pad[:, n - 1:]
                reaches_pad = reaches_pad | F.pad(later, (0, T - later.shape[1]), value=True)
            share = self.table(ids[:, n - 1].masked_fill(reaches_pad, 0)) / n
            for k in range(n):  # the n-gram starting at s gives its share to positions s .. s + n - 1
                out = out + F.pad(share, (0, 0, k, 0))[:, :T]
        return out

    def from_position_vectors(self, vectors: Tensor, lengths: Tensor) -> Tensor:
        """The wide scores from position_vectors()' output (or any point on the way to it)."""
        count = ngram_count(lengths.to(vectors.device), self.ngrams)[:, None].to(vectors.dtype)
        return self.fc(self.dropout(vectors.sum(1) / count))


def join(deep: Tensor, wide: Tensor, how: str) -> Tensor:
    """The joined logits of the deep and wide parts' logits."""
    if how == "sum":
        return deep + wide
    # log(0.5 softmax(deep) + 0.5 softmax(wide)): a mixture's log-probabilities, which softmax and the
    # cross-entropy read as logits
    return torch.logaddexp(deep.float().log_softmax(1), wide.float().log_softmax(1)).to(deep.dtype) - math.log(2.0)


class WideClassifier(TextClassifier):
    """A model (`deep`) joined with a wide part of hashed word n-grams (module docstring). The
    embedding, batch layout and packing are the deep model's; `tables()` lists both lookup tables."""

    def __init__(self, deep: TextClassifier, wide: WidePart, join: str = "sum"):
        super().__init__()
        if join not in JOINS:
            raise ValueError(f"unknown wide join {join!r}")
        self.deep, self.wide, self.join = deep, wide, join
        self.num_classes = deep.num_classes
        self.batch_layout = deep.batch_layout  # type: ignore[misc]

    @property  # type: ignore[override]
    def embedding(self) -> nn.Embedding | nn.EmbeddingBag:  # type: ignore[override]
        return self.deep.embedding

    @classmethod
    def from_config(cls, cfg: ModelConfig, deep: TextClassifier | None = None) -> WideClassifier:
        if deep is None:
            from .registry import model_class

            deep = model_class(cfg.model).from_config(cfg)
        wide = WidePart(cfg.vocab_size, cfg.num_classes, cfg.wide_ngrams, cfg.wide_buckets, cfg.wide_dim)
        return cls(deep, wide, cfg.wide_join)

    def tables(self) -> list[nn.Module]:
        return [*self.deep.tables(), self.wide.table]

    def padded(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None) -> Tensor:
        """The batch as padded tokens [B, T], whichever layout the deep model takes."""
        if self.batch_layout == "flat":
            assert offsets is not None
            return padded_from_flat(tokens, lengths, offsets)
        return tokens

    def wide_logits(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.wide(self.padded(tokens, lengths, offsets), lengths)

    def combine(self, deep_logits: Tensor, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        """The joined logits, given the deep part's (an inference fast path computes those its own way)."""
        return join(deep_logits, self.wide_logits(tokens, lengths, offsets), self.join)

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.combine(self.deep(tokens, lengths, offsets), tokens, lengths, offsets)

    def packs_on(self, device: torch.device) -> bool:
        return self.deep.packs_on(device)

    def prediction_batch(self, device: torch.device) -> int:
        return self.deep.prediction_batch(device)

    def load_embeddings(self, weight: Tensor, freeze: bool) -> None:
        self.deep.load_embeddings(weight, freeze)

    def encoder_state(self) -> dict[str, Tensor]:
        """The deep part's (`train --encoder` starts it from a pretrained one; the wide part starts fresh)."""
        return self.deep.encoder_state()
