"""The on-disk token store (--token-store, rnntext.data.store): the in-memory path's data and weights bit for
bit, read in chunks, reused, one-line errors naming file and line, and distributed ranks on disjoint shards."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import make_tiny_config
from rnntext.cli import main
from rnntext.config import DataConfig
from rnntext.data import store
from rnntext.data.dataset import prepare
from rnntext.errors import ConfigError, DataError
from rnntext.training.trainer import Trainer

SRC = Path(__file__).resolve().parent.parent / "src"
WORDS = ("the a stock market rises falls team wins loses game oil price. Fed, rates (up) down! why? science "
         "space \"quoted\" it's").split()


def write_csv(path: Path, n: int, seed: int = 0, labels: tuple[str, ...] = ("pos", "neg", "mid")) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i in range(n):
            # some texts empty (one <unk>), some words rare (below min_freq), the labels imbalanced
            words = [rng.choice(WORDS) for _ in range(rng.randint(0, 25))] + [f"w{rng.randint(0, 300)}"] * (i % 7 > 0)
            w.writerow([i, " ".join(words), labels[0] if rng.random() < 0.6 else rng.choice(labels)])
    return path


def mapped_file(t: torch.Tensor) -> str | None:
    """The file that the memory holding `t` maps (/proc/self/maps), or None."""
    addr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= addr < hi:
            return rest[4].strip() if len(rest) == 5 else None
    return None


def assert_same_encoded(a, b) -> None:  # noqa: ANN001
    assert b.tokens.dtype == torch.int32  # the store's, memory-mapped
    assert torch.equal(a.tokens, b.tokens.long())
    assert torch.equal(a.offsets, b.offsets)
    assert torch.equal(a.labels, b.labels)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(store, "CHUNK_ROWS", 97)
    return 97


def test_store_equals_in_memory_data_and_weights(tmp_path: Path, small_chunks: int) -> None:
    train, test = write_csv(tmp_path / "train.csv", 900), write_csv(tmp_path / "test.csv", 200, seed=1)
    cfg = make_tiny_config(data__train=str(train), data__test=str(test), data__min_freq=2)
    memory = prepare(cfg.data, seed=5, progress=False)
    stored_cfg = cfg.with_overrides({"data.token_store": str(tmp_path / "store")})
    stored = prepare(stored_cfg.data, seed=5, progress=False)
    assert stored.vocab.itos == memory.vocab.itos and stored.label_names == memory.label_names
    for split in ("train", "valid", "test"):
        assert_same_encoded(getattr(memory, split), getattr(stored, split))
    assert len(memory.valid) == 45  # the stratified 5% split, drawn from the same labels and seed

    # the same batches, so the same weights after an epoch (and the same data fingerprint for resume)
    a = Trainer(cfg, prepared=memory, progress=False, log=lambda s: None)
    b = Trainer(stored_cfg, prepared=stored, progress=False, log=lambda s: None)
    order = a.epoch_order(0)
    assert [torch.equal(x, y) for x, y in zip(order, b.epoch_order(0))] == [True] * len(order)
    for x, y in zip(a._batches(order, 0), b._batches(order, 0)):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.lengths, y.lengths)
        assert x.tokens.dtype == y.tokens.dtype == torch.long
    # each trainer built and run in turn: dropout draws from the global generator, which construction seeds
    a = Trainer(cfg, prepared=memory, progress=False, log=lambda s: None)
    ra = a.run_epoch(0)
    b = Trainer(stored_cfg, prepared=stored, progress=False, log=lambda s: None)
    rb = b.run_epoch(0)
    assert ra["train_loss"] == rb["train_loss"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.make_checkpoint().data == b.make_checkpoint().data


def test_the_file_is_read_in_chunks_and_the_arrays_are_safetensors(tmp_path: Path, small_chunks: int) -> None:
    train = write_csv(tmp_path / "train.csv", 1000)
    root = tmp_path / "store"
    prepared = prepare(DataConfig(train=str(train), token_store=str(root)), progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["chunks_read"] == -(-1000 // small_chunks)  # 11 chunks of at most 97 rows
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["valid"]["rows"] == 1000
    tokens = load_file(str(root / "train.tokens.safetensors"))["array"]  # any safetensors reader opens them
    assert tokens.dtype == np.int32 and np.array_equal(tokens, prepared.train.tokens.numpy())
    assert mapped_file(prepared.train.tokens) == str(root / "train.tokens.safetensors")  # not a copy in memory
    assert not (root / ".build").exists()  # the scratch file is gone


def test_a_store_is_reused_until_its_file_or_settings_change(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", 300)
    logs: list[str] = []
    cfg = DataConfig(train=str(train), token_store=str(tmp_path / "store"))
    first = prepare(cfg, log=logs.append)
    again = prepare(cfg, log=logs.append)
    assert [line.split()[2] for line in logs] == ["built", "reusing"]
    assert torch.equal(first.train.tokens, again.train.tokens)
    prepare(DataConfig(train=str(train), token_store=str(tmp_path / "store"), min_freq=1), log=logs.append)
    write_csv(train, 310)
    prepare(cfg, log=logs.append)
    assert [line.split()[2] for line in logs] == ["built", "reusing", "built", "built"]


def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          small_chunks: int) -> None:
    train = write_csv(tmp_path / "train.csv", 300)
    with open(train, "a", encoding="utf-8") as f:
        f.write('301,"an extra column",pos,oops\n')
    out = tmp_path / "run"
    args = ["train", "--train", str(train), "--token-store", str(tmp_path / "store"), "--out", str(out), "-q",
            "--epochs", "1", "--embed-dim", "8", "--hidden-dim", "8", "--threads", "1"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert err == f"rnntext: error: {train}:302: expected 3 columns, found 4 (use --skip-bad-rows to skip such rows)"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".lock"]  # no scratch, no half a store
    # a test file's label that training never saw: its line
    test = write_csv(tmp_path / "test.csv", 150, labels=("pos", "neg", "other"))
    clean = write_csv(tmp_path / "clean.csv", 300)
    with pytest.raises(DataError, match=r"test\.csv:\d+: label 'other' never appears in the training data"):
        prepare(DataConfig(train=str(clean), test=str(test), token_store=str(tmp_path / "s2")), progress=False)
    # skipped and counted instead, as in memory
    cfg = DataConfig(train=str(train), test=str(test), skip_bad_rows=True)
    memory = prepare(cfg, progress=False)
    cfg.token_store = str(tmp_path / "s3")
    stored = prepare(cfg, progress=False)
    assert stored.skipped == memory.skipped and stored.skipped[str(train)] == 1 and stored.skipped[str(test)] > 0
    assert_same_encoded(memory.test, stored.test)


_RANK_SCRIPT = """
import json, sys
from test_store import mapped_file
from rnntext.config import RunConfig
from rnntext.data.dataset import prepare
from rnntext.training.trainer import Trainer
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
logs = []
prepared = prepare(cfg.data, seed=cfg.train.seed, progress=False, log=logs.append)
trainer = Trainer(cfg, prepared=prepared, progress=False, log=lambda s: None)
order = trainer.epoch_order(0)
rows = sorted(int(i) for batch in order for i in batch)
print(json.dumps({"rank": trainer.dist.rank, "steps": len(order), "world": trainer.dist.world_size, "rows": rows,
                  "log": logs, "mapped": mapped_file(prepared.train.tokens)}))
trainer.dist.close()
"""


def test_distributed_ranks_share_one_store_and_train_on_disjoint_shards(tmp_path: Path) -> None:
    from test_distributed import _env, _free_port

    train = write_csv(tmp_path / "train.csv", 700)
    cfg = make_tiny_config(data__train=str(train), data__token_store=str(tmp_path / "store"))
    port = str(_free_port())
    envs = [_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                 LOCAL_WORLD_SIZE="2") for r in range(2)]
    for env in envs:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, json.dumps(cfg.to_dict())], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results)
    # one rank built the store while the other waited on its lock, then opened it
    assert sorted(r["log"][0].split()[2] for r in results) == ["built", "reusing"]
    assert [r["mapped"] for r in results] == [str(tmp_path / "store" / "train.tokens.safetensors")] * 2
    a, b = (set(r["rows"]) for r in results)
    n_train = json.loads((tmp_path / "store" / "manifest.json").read_text())["splits"]["train"]["rows"]
    assert not a & b  # each rank reads its own rows
    assert results[0]["steps"] == results[1]["steps"]  # as many batches each (never a rank left waiting)
    assert a | b <= set(range(n_train)) and len(a | b) >= n_train - 32  # all rows but an odd batch out


def test_parquet_streams_into_the_store_and_multi_label_is_refused(tmp_path: Path, small_chunks: int) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    csv_path = write_csv(tmp_path / "train.csv", 400)
    pd.read_csv(csv_path, keep_default_na=False).to_parquet(tmp_path / "train.parquet", row_group_size=50)
    memory = prepare(DataConfig(train=str(csv_path)), progress=False)
    stored = prepare(DataConfig(train=str(tmp_path / "train.parquet"), token_store=str(tmp_path / "store")),
                     progress=False)
    assert stored.vocab.itos == memory.vocab.itos
    assert_same_encoded(memory.train, stored.train)
    with pytest.raises(ConfigError, match="--token-store does not take --multi-label"):
        prepare(DataConfig(train=str(csv_path), multi_label=True, token_store=str(tmp_path / "s2")), progress=False)


def _read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def test_a_batch_reads_from_disk_only_around_its_rows(tmp_path: Path) -> None:
    """Rows anywhere in the token file: without MADV_RANDOM the kernel reads ahead around each (a batch of 128
    rows read most of a 32 MB file); with it, about a page per row."""
    path = tmp_path / "tokens.safetensors"
    store.write_array(path, np.arange(8 << 20, dtype=np.int32))
    rows = np.random.default_rng(0).integers(0, 8 << 20, 128)

    def cost(random_access: bool) -> int:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache: reads go to the disk
        os.close(fd)
        array = store.open_array(path, random_access=random_access)
        before = _read_bytes()
        assert np.array_equal(array[rows], rows)
        return _read_bytes() - before

    plain, scattered = cost(False), cost(True)
    if plain == 0:
        pytest.skip("no block reads to count here (a file system in memory, or no /proc/self/io)")
    assert scattered * 8 < plain and scattered < 128 * 64 * 1024
