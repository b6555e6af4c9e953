"""--overlap-update: the embedding's AdamW update runs on a second thread beside the next batch.
It must be the same optimiser to the bit: every test trains the same run with and without it
(2 threads, so that it really overlaps) and compares weights with torch.equal."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import make_tiny_config
from rnntext.config import RunConfig
from rnntext.data import prepare
from rnntext.fast import adamw as optim
from rnntext.fast import look_ahead
from rnntext.training.checkpoint import load_checkpoint
from rnntext.training.trainer import Trainer, resume, train


def _quiet(s: str) -> None:
    pass


def _config(data_dir: Path, overlap: bool, **overrides) -> RunConfig:
    return make_tiny_config(**{"data__dataset": "ag_news", "data__data_dir": str(data_dir), "train__threads": 2,
                               "train__overlap_update": overlap, **overrides})


def _weights(cfg: RunConfig, prepared, epochs_run: int = 1) -> tuple[dict[str, torch.Tensor], Trainer]:
    t = Trainer(cfg, prepared=prepared, progress=False, log=_quiet)
    for epoch in range(epochs_run):
        t.end_epoch(t.run_epoch(epoch))
        t.step = 0
    return {k: v.clone() for k, v in t.model.state_dict().items()}, t


@pytest.fixture(scope="module")
def prepared(ag_news_small: Path):
    return prepare(_config(ag_news_small, False).data, seed=0, progress=False)


@pytest.mark.parametrize("overrides, dense_rows", [
    # the defaults' recipe: bi-GRU, one-cycle schedule (the lr changes every step), weight decay,
    # clipping (the sparse gradient is coalesced, so the rows keep it), dropout
    (dict(model__model="gru", model__bidirectional=True, model__pooling="meanmax", train__weight_decay=0.1,
          train__clip=1.0, train__schedule="onecycle"), False),
    # the tutorial's: LSTM, one direction, last state, constant lr, no clipping, batch 16: one lookup a
    # step, so the rows take a dense gradient
    (dict(model__model="lstm", model__bidirectional=False, model__pooling="last", model__dropout=0.0,
          model__embed_dropout=0.0, train__schedule="constant", train__clip=None, train__batch_size=16), True),
    # two directions, each looking the embedding up (no embedding dropout to share): sparse
    (dict(model__model="lstm", model__embed_dropout=0.0, train__clip=None, train__batch_size=16), False),
    # EmbeddingBag with offsets (flat batches): sparse
    (dict(model__model="bag", data__ngrams=2, train__batch_size=64), False),
], ids=["gru-onecycle", "lstm-tutorial", "lstm-two-lookups", "bag"])
def test_overlap_gives_the_same_weights(ag_news_small: Path, prepared, overrides, dense_rows: bool) -> None:
    threads = torch.get_num_threads()
    prep = prepared if "data__ngrams" not in overrides else prepare(
        _config(ag_news_small, False, **overrides).data, seed=0, progress=False)
    plain, _ = _weights(_config(ag_news_small, False, train__epochs=2, **overrides), prep, 2)
    overlapped, t = _weights(_config(ag_news_small, True, train__epochs=2, **overrides), prep, 2)
    assert t.optimizer.overlap is t.model.embedding  # it really ran overlapped
    assert t.optimizer.rows_were_dense == dense_rows
    assert plain.keys() == overlapped.keys()
    assert all(torch.equal(plain[k], overlapped[k]) for k in plain)
    assert t.optimizer._worker is None  # the epoch's end ended the thread
    assert torch.get_num_threads() == threads or torch.get_num_threads() == 2  # the lent thread came back


def test_overlap_needs_two_threads_and_whole_rows(ag_news_small: Path, prepared) -> None:
    one = Trainer(_config(ag_news_small, True, train__threads=1), prepared=prepared, progress=False, log=_quiet)
    assert one.optimizer.overlap is None  # one thread: nothing to overlap with
    # 20 floats a row: the gathered rows would end in a partial vector, so the update is not overlapped
    odd = Trainer(_config(ag_news_small, True, model__embed_dim=20), prepared=prepared, progress=False, log=_quiet)
    batches = [odd._batch(idx) for idx in odd.epoch_order(0)[:3]]
    for batch in look_ahead(odd.optimizer, batches):
        odd.train_step(batch)
        assert odd.optimizer._ahead is None and odd.optimizer._worker is None


def test_checkpoint_and_resume_while_overlapping(ag_news_small: Path, prepared, tmp_path: Path) -> None:
    """Checkpoints taken mid-epoch wait for the background update; resuming from one gives the
    weights of the uninterrupted run."""
    cfg = _config(ag_news_small, True, train__checkpoint_every=7, train__epochs=2)
    straight = train(cfg, str(tmp_path / "straight"), prepared=prepared, progress=False, log=_quiet)

    class StopAt(Trainer):
        def after_step(self, step, running):
            super().after_step(step, running)
            if self.global_step == 21:  # a checkpoint step, mid-epoch, with an update in flight
                raise KeyboardInterrupt

    t = StopAt(cfg, str(tmp_path / "stopped"), prepared=prepared, progress=False, log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert load_checkpoint(tmp_path / "stopped").global_step == 21
    resumed = resume(str(tmp_path / "stopped"), progress=False, log=_quiet)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.metrics["test"]["accuracy"] == resumed.metrics["test"]["accuracy"]


def test_rows_ahead_are_the_tables_rows_after_the_step() -> None:
    """The optimiser's own contract, without a trainer: the rows it hands the next forward equal
    the table's rows once the background update is done, and the renumbered tokens index them."""
    torch.manual_seed(0)
    emb = nn.Embedding(1000, 16, padding_idx=0, sparse=True)
    opt = optim.AdamW(emb.parameters(), lr=1e-2, weight_decay=0.1, fused=True, overlap=emb)
    batches = [SimpleNamespace(tokens=torch.randint(0, 1000, (8, 12))) for _ in range(4)]
    for i, batch in enumerate(opt.look_ahead(batches)):
        emb(batch.tokens).pow(2).sum().backward()  # (the hooks give the lookup the rows updated ahead)
        opt.step()
        if i == 2:
            assert opt._ahead is not None and opt._ahead.tokens is batches[-1].tokens
            ids, local, values = opt._ahead.ids, opt._ahead.local, opt._ahead.values
            opt.wait()
            assert torch.equal(ids[local], batches[-1].tokens)
            assert ids[0] == 0  # <pad> keeps its id
            assert torch.equal(values, emb.weight.detach()[ids])
    assert opt._ahead is None and opt._worker is None and not emb._forward_pre_hooks  # the batches' end closed it


def test_an_error_on_the_background_thread_reaches_the_caller() -> None:
    worker = optim._Worker()
    worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        worker.wait()
    worker.submit(lambda: None)  # and the thread goes on
    worker.wait()
    worker.close()


def test_overlap_by_default_for_small_batches_and_large_tables() -> None:
    from rnntext.cli import build_parser, config_from_args
    from rnntext.fast import overlap_pays

    class M(nn.Module):
        def __init__(self, words: int) -> None:
            super().__init__()
            self.embedding = nn.Embedding(words, 64)

    cfg = RunConfig()
    cfg.train.batch_size = 16
    assert overlap_pays(cfg.train, M(41_000))  # the tutorial's: 2.6M weights
    assert not overlap_pays(cfg.train, M(5_000))  # a small table: its update is cheap, the step keeps both threads
    cfg.train.batch_size = 128
    assert not overlap_pays(cfg.train, M(41_000))  # the defaults' batches want both threads
    cfg.train.overlap_update = True
    assert overlap_pays(cfg.train, M(5_000))
    args = ["train", "--data-dir", "x", "--batch-size", "16", "--no-overlap-update"]
    assert config_from_args(build_parser().parse_args(args)).train.overlap_update is False
