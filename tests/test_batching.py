"""Encoding once, padded and flat batches, and the length-bucketed epoch order."""

from __future__ import annotations

import pytest
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


# --- the token budget (train.max_batch_tokens) ----------------------------------------------------


def _epoch_batches_before_the_budget(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int,
                                     bucket: bool = True, bucket_batches: int = 50) -> list[torch.Tensor]:
    """epoch_batches as it was before the token budget: the default AG News run depends on it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(lengths.numel(), generator=g)
    if not bucket:
        return list(perm.split(batch_size))
    batches: list[torch.Tensor] = []
    for part in perm.split(batch_size * bucket_batches):
        order = torch.argsort(lengths[part], stable=True)
        batches.extend(part[order].split(batch_size))
    shuffle = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in shuffle.tolist()]


def test_ag_news_batches_unchanged_by_the_default_budget(ag_news_dir) -> None:
    # the real AG News (20k) training rows, tokenised and split as the default run does: with the
    # default budget no batch of 128 changes (its longest text is 187 tokens: 128 x 187 < 64k)
    from rnntext.config import DataConfig, TrainConfig
    from rnntext.data import prepare

    prepared = prepare(DataConfig(dataset="ag_news", data_dir=str(ag_news_dir)), progress=False)
    lengths = prepared.train.lengths
    assert len(lengths) == 19_000 and int(lengths.max()) < DataConfig().max_len
    t = TrainConfig()
    for seed, epoch, bucket in [(0, 0, True), (0, 1, True), (0, 4, True), (7, 2, True), (0, 0, False), (3, 1, False)]:
        now = epoch_batches(lengths, t.batch_size, seed, epoch, bucket, max_tokens=t.max_batch_tokens)
        before = _epoch_batches_before_the_budget(lengths, t.batch_size, seed, epoch, bucket)
        assert len(now) == len(before) and all(torch.equal(a, b) for a, b in zip(now, before))


def _budget_lengths(seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    short = (torch.rand(3000, generator=g) ** 3 * 300).long() + 1
    long = torch.randint(300, 20_000, (200,), generator=g)
    return torch.cat([short, long, torch.tensor([65_536, 1])])[torch.randperm(3202, generator=g)]


@pytest.mark.parametrize("bucket", [True, False])
def test_budget_bounds_every_batch_and_keeps_epochs_equal(bucket: bool) -> None:
    lengths, budget = _budget_lengths(), 65_536
    counts = set()
    for epoch in range(4):
        batches = epoch_batches(lengths, 128, seed=5, epoch=epoch, bucket=bucket, max_tokens=budget)
        assert sorted(torch.cat(batches).tolist()) == list(range(len(lengths)))  # every row once
        assert all(1 <= b.numel() <= 128 and b.numel() * int(lengths[b].max()) <= budget for b in batches)
        counts.add(len(batches))
        # a pure function of (seed, epoch): what resume depends on
        again = epoch_batches(lengths, 128, seed=5, epoch=epoch, bucket=bucket, max_tokens=budget)
        assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert len(counts) == 1  # the same number of steps every epoch (the LR schedule, checkpoints)
    # short texts still fill whole batches; long ones come in powers of two, shuffled among the rest
    batches = epoch_batches(lengths, 128, seed=5, epoch=0, bucket=bucket, max_tokens=budget)
    sizes = {b.numel() for b in batches}
    assert 128 in sizes and 1 in sizes
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima.index(65_536) not in (0, len(batches) - 1) or bucket is False


@given(st.lists(st.integers(1, 2000), min_size=1, max_size=200), st.integers(1, 64), st.integers(1, 4000),
       st.integers(0, 3), st.booleans())
def test_budget_property(lengths: list[int], batch_size: int, max_tokens: int, epoch: int, bucket: bool) -> None:
    lens = torch.tensor(lengths).clamp(max=max_tokens)  # the trainer cuts texts to the budget first
    batches = epoch_batches(lens, batch_size, 0, epoch, bucket, bucket_batches=3, max_tokens=max_tokens)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(lengths)))
    assert all(b.numel() <= batch_size and b.numel() * int(lens[b].max()) <= max_tokens for b in batches)
    assert len(batches) == len(epoch_batches(lens, batch_size, 0, epoch + 1, bucket, 3, max_tokens))


def test_truncated_cuts_each_text_to_its_first_tokens() -> None:
    vocab = Vocab.build([["a", "b", "c", "d"]])
    texts = [["a", "b", "c", "d", "a"], ["b"], ["c", "d", "a"]]
    enc = encode_tokens(texts, vocab, [0, 1, 0])
    cut = enc.truncated(2)
    assert cut.lengths.tolist() == [2, 1, 2] and cut.labels.tolist() == [0, 1, 0]
    assert cut.tokens.tolist() == vocab.encode(["a", "b", "b", "c", "d"])
    assert enc.truncated(5) is enc
    # encoding with max_len cuts the same way
    assert torch.equal(encode_tokens(texts, vocab, [0, 1, 0], max_len=2).tokens, cut.tokens)


def test_predict_logits_cuts_a_text_longer_than_the_budget() -> None:
    from rnntext.config import ModelConfig
    from rnntext.model import build_model
    from rnntext.training.logits import predict_logits

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=10, num_classes=3, embed_dim=8, hidden_dim=8))
    long = encode_tokens([[str(i % 7) for i in range(500)], ["1", "2"]], Vocab.build([[str(i) for i in range(7)]]))
    cut = predict_logits(model, long, torch.device("cpu"), max_tokens=100)
    # (one text per call here, both together there: the same logits up to rounding)
    torch.testing.assert_close(cut, predict_logits(model, long.truncated(100), torch.device("cpu"), max_tokens=None))
    assert not torch.allclose(cut, predict_logits(model, long, torch.device("cpu"), max_tokens=None))
