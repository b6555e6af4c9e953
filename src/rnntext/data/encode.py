"""Encoding the corpus once into flat integer tensors: tokens, offsets, labels."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .tokenizer import Tokenizer
from .vocab import UNK_ID, Vocab


@dataclass
class Encoded:
    """N texts as one flat token tensor; text i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: Tensor  # int64 [total tokens] (int32 memory-mapped in a token store, data/store.py)
    offsets: Tensor  # int64 [N + 1]
    labels: Tensor  # int64 [N] (-1 where unknown, e.g. prediction inputs); multi-label: float [N, labels] multi-hot

    def __len__(self) -> int:
        return self.labels.shape[0]

    @cached_property  # read once per training batch: computed once (an Encoded is never modified)
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, index: Tensor) -> Encoded:
        index = index.to(torch.long)
        lengths = self.lengths[index]
        starts = self.offsets[:-1][index]
        positions = _ranges(starts, lengths)
        offsets = torch.zeros(index.numel() + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return Encoded(self.tokens[positions].long(), offsets, self.labels[index])  # int32 in a token store

    def truncated(self, max_len: int) -> Encoded:
        """Each text cut to its first `max_len` tokens (self when none is longer)."""
        lengths = self.lengths
        if lengths.numel() == 0 or int(lengths.max()) <= max_len:
            return self
        kept = lengths.clamp(max=max_len)
        offsets = torch.zeros_like(self.offsets)
        torch.cumsum(kept, 0, out=offsets[1:])
        return Encoded(self.tokens[_ranges(self.offsets[:-1], kept)].long(), offsets, self.labels)


def _ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """Concatenation of arange(s, s + l) for each (s, l), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    return starts[seg] + (torch.arange(total) - first[seg])


def encode_tokens(token_lists: list[list[str]], vocab: Vocab, labels: list[int] | Tensor | None = None,
                  max_len: int | None = None) -> Encoded:
    """Map token lists to ids once. An empty text becomes a single <unk> so every row has a token.
    `max_len`: each text cut to its first max_len tokens (the token budget, train.max_batch_tokens)."""
    ids: list[int] = []
    offsets = [0]
    encode = vocab.encode
    for tokens in token_lists:
        if max_len is not None and len(tokens) > max_len:
            tokens = tokens[:max_len]
        ids.extend(encode(tokens) or [UNK_ID])
        offsets.append(len(ids))
    n = len(token_lists)
    if isinstance(labels, Tensor):  # multi-label targets, as they are
        label_t = labels
    else:
        label_t = torch.tensor(labels, dtype=torch.long) if labels is not None else torch.full((n,), -1)
    return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long), label_t)


def encode_texts(texts: list[str], tokenizer: Tokenizer, vocab: Vocab,
                 labels: list[int] | Tensor | None = None) -> Encoded:
    return encode_tokens([tokenizer(t) for t in texts], vocab, labels)
