"""Encoding once, padded and flat batches, and the length-bucketed epoch order."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from rnntext.data.batching import epoch_batches, eval_batches, flat_batch, make_batch, padded_batch, padded_batches
from rnntext.data.encode import encode_texts, encode_tokens
from rnntext.data.tokenizer import Tokenizer
from rnntext.data.vocab import PAD_ID, UNK_ID, Vocab

TEXTS = ["the cat sat", "", "a dog", "the quick brown fox jumps over", "cat ? ! ."]


def _encoded():
    tok = Tokenizer()
    vocab = Vocab.build([tok(t) for t in TEXTS])
    return encode_texts(TEXTS, tok, vocab, [0, 1, 2, 3, 0]), vocab, tok


def test_encode_once_offsets_and_lengths() -> None:
    enc, vocab, tok = _encoded()
    assert enc.tokens.dtype == torch.long and enc.offsets.dtype == torch.long
    assert enc.offsets.tolist()[0] == 0 and enc.offsets.numel() == len(TEXTS) + 1
    assert enc.lengths.tolist() == [3, 1, 2, 6, 4]
    for i, text in enumerate(TEXTS):
        ids = enc.tokens[enc.offsets[i] : enc.offsets[i + 1]].tolist()
        assert ids == (vocab.encode(tok(text)) or [UNK_ID])
    # an empty text is one <unk>, never an empty row
    assert enc.tokens[enc.offsets[1] : enc.offsets[2]].tolist() == [UNK_ID]
    assert enc.labels.tolist() == [0, 1, 2, 3, 0]
    assert PAD_ID not in enc.tokens.tolist()


def test_unlabelled_rows_get_minus_one() -> None:
    vocab = Vocab.build([["a"]])
    enc = encode_tokens([["a"], ["b"]], vocab)
    assert enc.labels.tolist() == [-1, -1]
    assert enc.tokens.tolist() == [2, UNK_ID]


def test_subset_keeps_rows() -> None:
    enc, _, _ = _encoded()
    idx = torch.tensor([3, 0, 1])
    sub = enc.subset(idx)
    for j, i in enumerate(idx.tolist()):
        assert sub.tokens[sub.offsets[j] : sub.offsets[j + 1]].tolist() == \
            enc.tokens[enc.offsets[i] : enc.offsets[i + 1]].tolist()
    assert sub.labels.tolist() == [3, 0, 1]


def test_padded_batch_equals_manual_padding() -> None:
    enc, _, _ = _encoded()
    idx = torch.tensor([4, 1, 3])
    b = padded_batch(enc, idx)
    rows = [enc.tokens[enc.offsets[i] : enc.offsets[i + 1]].tolist() for i in idx.tolist()]
    width = max(map(len, rows))
    manual = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])
    assert torch.equal(b.tokens, manual)
    assert b.lengths.tolist() == [4, 1, 6]
    assert b.labels.tolist() == [0, 1, 3]
    assert b.offsets is None
    # the last row of the corpus, padded: no index past the end of the flat tokens
    last = padded_batch(enc, torch.tensor([4, 3]))
    assert last.tokens[0].tolist() == rows[0] + [PAD_ID, PAD_ID]


def test_padded_batches_equal_one_at_a_time() -> None:
    """The epoch's batches built together are padded_batch() of each: tokens, lengths, labels;
    batches of different sizes and widths, a one-row batch, a one-token text."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (300,), generator=g)
    lengths[7] = 1
    token_lists = [[f"w{int(i)}" for i in torch.randint(0, 50, (int(n),), generator=g)] for n in lengths]
    vocab = Vocab.build(token_lists, min_freq=1)
    data = encode_tokens(token_lists, vocab, [i % 4 for i in range(300)])
    batches = epoch_batches(data.lengths, 16, seed=3, epoch=0) + [torch.tensor([7]), torch.tensor([5, 7, 9])]
    together = padded_batches(data, batches)
    assert len(together) == len(batches)
    for idx, b in zip(batches, together):
        one = padded_batch(data, idx)
        assert torch.equal(b.tokens, one.tokens) and torch.equal(b.lengths, one.lengths)
        assert torch.equal(b.labels, one.labels)
    assert padded_batches(data, []) == []


def test_flat_batch_and_offsets() -> None:
    enc, _, _ = _encoded()
    idx = torch.tensor([3, 1, 0])
    b = make_batch(enc, idx, flat=True)
    rows = [enc.tokens[enc.offsets[i] : enc.offsets[i + 1]].tolist() for i in idx.tolist()]
    assert b.tokens.tolist() == rows[0] + rows[1] + rows[2]
    assert b.offsets.tolist() == [0, 6, 7]
    assert b.lengths.tolist() == [6, 1, 3]
    assert b.labels.tolist() == [3, 1, 0]
    assert torch.equal(flat_batch(enc, idx).tokens, b.tokens)


def _lengths(n: int = 5000, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # long-tailed, as real text lengths are
    return (torch.rand(n, generator=g) ** 3 * 300).long() + 1


def test_epoch_covers_every_row_once() -> None:
    lengths = _lengths(1003)
    for bucket in (True, False):
        batches = epoch_batches(lengths, 32, seed=0, epoch=0, bucket=bucket)
        rows = torch.cat(batches)
        assert sorted(rows.tolist()) == list(range(1003))
        assert all(1 <= b.numel() <= 32 for b in batches)


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    lengths = _lengths(2000)

    def order(seed: int, epoch: int) -> list[list[int]]:
        return [b.tolist() for b in epoch_batches(lengths, 32, seed, epoch)]

    assert order(3, 2) == order(3, 2)
    assert order(3, 2) != order(3, 1)
    assert order(3, 2) != order(4, 2)
    # batches are not always in the same order nor of the same rows from one epoch to the next
    first = {tuple(sorted(b)) for b in order(3, 0)}
    second = {tuple(sorted(b)) for b in order(3, 1)}
    assert len(first & second) < len(first) // 10


def _mean_padding(lengths: torch.Tensor, batches: list[torch.Tensor]) -> float:
    pads = [(lengths[b].max() - lengths[b]).sum().item() for b in batches]
    return sum(pads) / lengths.sum().item()


def test_bucketing_cuts_padding() -> None:
    lengths = _lengths(5000)
    bucketed = _mean_padding(lengths, epoch_batches(lengths, 32, 0, 0, bucket=True))
    plain = _mean_padding(lengths, epoch_batches(lengths, 32, 0, 0, bucket=False))
    assert bucketed < plain / 5, (bucketed, plain)
    # batches still come in a shuffled order: not sorted by length across the epoch
    batches = epoch_batches(lengths, 32, 0, 0)
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_eval_batches_sorted_and_complete() -> None:
    lengths = _lengths(777)
    batches = eval_batches(lengths, 100)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(777))
    assert lengths[rows].tolist() == sorted(lengths.tolist())


@given(st.lists(st.integers(1, 300), min_size=1, max_size=300), st.integers(1, 64), st.integers(1, 5000))
def test_eval_batches_token_cap(lengths: list[int], batch_size: int, max_tokens: int) -> None:
    # every row once, ascending; each batch as large as both caps allow (a text longer than the token
    # cap goes alone)
    lens = torch.tensor(lengths)
    batches = eval_batches(lens, batch_size, max_tokens)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert lens[rows].tolist() == sorted(lengths)
    for i, b in enumerate(batches):
        padded = b.numel() * int(lens[b].max())
        assert b.numel() <= batch_size and (padded <= max_tokens or b.numel() == 1)
        if i + 1 < len(batches):  # the next row did not fit
            nxt = batches[i + 1][0]
            assert b.numel() == batch_size or (b.numel() + 1) * int(lens[nxt]) > max_tokens
    assert [b.tolist() for b in eval_batches(lens, batch_size, 10**9)] == [
        b.tolist() for b in eval_batches(lens, batch_size)]
