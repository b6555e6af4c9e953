"""Batches from encoded tensors: padded [B, T] (+ lengths) or flat tokens + offsets (EmbeddingBag),
and a length-bucketed batch order (shuffled buckets, shuffled batches) that keeps padding low."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor

from .encode import Encoded
from .vocab import PAD_ID


@dataclass
class Batch:
    tokens: Tensor  # padded [B, T], or flat [sum of lengths] when offsets is set
    lengths: Tensor  # [B], on the CPU (pack_padded_sequence wants it there)
    labels: Tensor  # [B]
    offsets: Tensor | None = None  # [B] start of each text in flat tokens

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.tokens.to(device, non_blocking=True),
            self.lengths,
            self.labels.to(device, non_blocking=True),
            None if self.offsets is None else self.offsets.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return self.labels.numel()


def padded_batch(data: Encoded, index: Tensor) -> Batch:
    """Right-padded with <pad> to the longest text in the batch; one gather, no Python loop."""
    lengths = data.lengths[index]
    starts = data.offsets[:-1][index]
    width = int(lengths.max())
    steps = torch.arange(width)
    mask = steps[None, :] < lengths[:, None]
    positions = (starts[:, None] + steps[None, :]).clamp_(max=max(data.tokens.numel() - 1, 0))
    tokens = torch.where(mask, data.tokens[positions].long(), PAD_ID)  # .long(): a token store's ids are int32
    return Batch(tokens, lengths, data.labels[index])


def padded_batches(data: Encoded, batches: list[Tensor]) -> list[Batch]:
    """padded_batch() of each index tensor in `batches`, built together in a few whole-array
    operations (per batch, the same ~10 small operations cost a batch-16 training step ~5%)."""
    if not batches:
        return []
    index = torch.cat(batches)
    sizes = [b.numel() for b in batches]
    lengths = data.lengths[index]
    starts = data.offsets[:-1][index]
    batch_of_row = torch.repeat_interleave(torch.arange(len(batches)), torch.tensor(sizes))
    widths = torch.zeros(len(batches), dtype=lengths.dtype).scatter_reduce_(0, batch_of_row, lengths, "amax")
    row_width = widths[batch_of_row]
    step = torch.arange(int(row_width.sum())) - torch.repeat_interleave(torch.cumsum(row_width, 0) - row_width,
                                                                         row_width)
    row = torch.repeat_interleave(torch.arange(index.numel()), row_width)
    positions = (starts[row] + step).clamp_(max=max(data.tokens.numel() - 1, 0))
    tokens = torch.where(step < lengths[row], data.tokens[positions].long(), PAD_ID)
    cells = (widths * torch.tensor(sizes)).tolist()
    labels = data.labels[index]
    return [Batch(t.view(n, -1), ln, lb) for t, ln, lb, n in
            zip(tokens.split(cells), lengths.split(sizes), labels.split(sizes), sizes)]


def flat_batch(data: Encoded, index: Tensor) -> Batch:
    """Concatenated tokens and start offsets, the input of nn.EmbeddingBag."""
    sub = data.subset(index)
    return Batch(sub.tokens, sub.lengths, sub.labels, sub.offsets[:-1])


def make_batch(data: Encoded, index: Tensor, flat: bool) -> Batch:
    return flat_batch(data, index) if flat else padded_batch(data, index)


def epoch_batches(lengths: Tensor, batch_size: int, seed: int, epoch: int, bucket: bool = True,
                  bucket_batches: int = 50, max_tokens: int | None = None) -> list[Tensor]:
    """The batches of one training epoch, a pure function of (seed, epoch) so that a resumed run
    sees the same order. With `bucket`, texts are sorted by length inside random chunks of
    `bucket_batches` batches, cut into batches, and the batches shuffled.

    With `max_tokens`, no batch holds more than max_tokens padded tokens (rows x its longest text).
    Texts short enough that `batch_size` of them always fit (length <= max_tokens // batch_size) are
    batched as above. Each longer one goes to the pool of its size class: batches of k rows, k the
    largest power of two with k x length <= max_tokens, so every text of the class is at most
    max_tokens // k long; each pool is batched the same way (shuffled, sorted in chunks, cut into
    k rows). The number of batches depends on the lengths only, never on the epoch: every epoch has
    the same number of steps (the LR schedule and checkpoints count on it). Where no text is long,
    the batches are exactly those without `max_tokens`. A text longer than max_tokens makes a batch
    of its own that exceeds the budget: the caller cuts texts to max_tokens first."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = lengths.numel()
    perm = torch.randperm(n, generator=g)
    pools = [(perm, batch_size)]
    if max_tokens is not None:
        size = long_batch_rows(lengths[perm], batch_size, max_tokens)  # rows per batch of each text's class
        short = size == batch_size
        if not bool(short.all()):
            pools = [(perm[short], batch_size)] if bool(short.any()) else []
            pools += [(perm[size == k], k) for k in sorted(set(size[~short].tolist()), reverse=True)]
    batches: list[Tensor] = []
    for rows, k in pools:
        if not bucket:
            batches.extend(rows.split(k))
            continue
        for part in rows.split(k * bucket_batches):
            order = torch.argsort(lengths[part], stable=True)
            batches.extend(part[order].split(k))
    if not bucket and len(pools) == 1 and pools[0][1] == batch_size:  # plain shuffled batches
        return batches
    shuffle = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in shuffle.tolist()]


def long_batch_rows(lengths: Tensor, batch_size: int, max_tokens: int) -> Tensor:
    """Rows per training batch for texts of these lengths (epoch_batches): batch_size where
    batch_size x length fits in max_tokens, else the largest power of two k with k x length <=
    max_tokens (at least 1)."""
    fit = (max_tokens // lengths.clamp(min=1)).clamp(min=1)
    size = torch.full_like(lengths, batch_size)
    long = fit < batch_size
    if bool(long.any()):
        size[long] = torch.exp2(torch.floor(torch.log2(fit[long].double()))).long()
    return size


def eval_batches(lengths: Tensor, batch_size: int, max_tokens: int | None = None) -> list[Tensor]:
    """Batches sorted by length for evaluation and prediction (least padding, fixed order). With
    `max_tokens`, a batch also stops before rows x its longest text would exceed it (at least one row)."""
    order = torch.argsort(lengths, stable=True)
    if max_tokens is None:
        return list(order.split(batch_size))
    ascending = lengths[order].tolist()
    batches, start = [], 0
    while start < len(ascending):
        # the padded size of rows start..end-1, (end - start) * ascending[end - 1], grows with end
        top = min(start + batch_size, len(ascending))
        end = bisect.bisect_right(range(start + 1, top + 1), max_tokens,
                                  key=lambda e: (e - start) * ascending[e - 1]) + start
        end = max(end, start + 1)
        batches.append(order[start:end])
        start = end
    return batches
