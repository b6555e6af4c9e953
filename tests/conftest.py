"""Shared fixtures for the rnntext test suite.

Data
- `shared_data_dir`: ../shared/data (beside the repository root); tests that use it are skipped if it is missing.
- `ag_news_dir`: ../shared/data/ag_news_20k (the 20k AG News train subset + canonical test, gzip CSV).
- `ag_news_small`: a directory with `train.csv` (first 2,000 rows of the 20k train) and `test.csv`
  (first 500 rows of the canonical test), canonical AG News layout; built once per session.
- `write_table(path, columns, rows)`: writes CSV / TSV / JSONL, gzip-compressed if the name ends in .gz.
- `write_data`: the same, rooted at the test's tmp_path: `write_data("train.csv", ["text", "label"], rows)`.

Models
- `tiny_config(**overrides)`: a RunConfig for a small, fast model (embed 32, hidden 32, threads 1).
- `trained_run`: a run directory trained once per session on `ag_news_small` (GRU, 1 epoch): reuse it
  for anything that needs a saved model (evaluate, predict, serving) instead of training again.

Ctrl-C (SIGINT)
- `terminal_sigint`: `preexec_fn=` for a child process the test will Ctrl-C.
- `sigint_handler`: fixture for a test that raises SIGINT in the test process itself.
  Both because the suite must pass however it is started: see the note above `terminal_sigint`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from rnntext.config import RunConfig

# CI (CI=true) draws the same examples every run, so that a red CI reproduces here (`CI=true pytest`) and
# a property test cannot turn CI red by chance; locally each run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# Ctrl-C tests and how pytest was started. A non-interactive shell starts a background job
# (`python -m pytest ... &` in a script, some CI runners) with SIGINT ignored, and every process it
# starts inherits SIG_IGN. Python then installs no KeyboardInterrupt handler, and rnntext keeps an
# ignored SIGINT ignored (training/checkpoint.py: catch_sigint), like any Unix program: whoever ignored
# it shielded the job from the terminal's Ctrl-C. The Ctrl-C tests model a user pressing Ctrl-C in a
# terminal, so they give the process that gets the SIGINT a terminal's disposition themselves, rather
# than inheriting whatever the test runner was started with.
def terminal_sigint() -> None:
    """`subprocess.Popen(..., preexec_fn=terminal_sigint)`: the child gets SIGINT's default action, as a
    program started from a terminal does (Python then raises KeyboardInterrupt, rnntext checkpoints)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_handler() -> Iterator[None]:
    """For a test that raises SIGINT in the test process: Python's own handler (KeyboardInterrupt) for its
    duration, whatever this process inherited; the previous disposition is put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_table(path: str | Path, columns: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> Path:
    """Write `rows` to `path` as CSV, TSV or JSONL (by suffix; `.gz` compresses).

    `columns` is the header (CSV/TSV) or the JSON keys (JSONL); `None` writes a CSV/TSV without header."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    buf = io.StringIO(newline="")
    if name.endswith(".jsonl"):
        assert columns is not None, "JSONL needs column names"
        for row in rows:
            buf.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(buf, delimiter="\t" if name.endswith(".tsv") else ",", lineterminator="\n")
        if columns is not None:
            writer.writerow(columns)
        writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def write_data(tmp_path: Path) -> Callable[..., Path]:
    """`write_data(name, columns, rows)` -> path of the file written under tmp_path (see write_table)."""

    def write(name: str, columns: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> Path:
        return write_table(tmp_path / name, columns, rows)

    return write


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ag_news_dir(shared_data_dir: Path) -> Path:
    d = shared_data_dir / "ag_news_20k"
    if not (d / "train.csv.gz").exists() or not (d / "test.csv.gz").exists():
        pytest.skip(f"AG News files not found in {d}")
    return d


def _head_lines(path: Path, n: int) -> bytes:
    """The first n lines of a gzip file (AG News rows are one line each)."""
    with gzip.open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


@pytest.fixture(scope="session")
def ag_news_small(ag_news_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with train.csv (2,000 rows) and test.csv (500 rows), canonical AG News layout."""
    d = tmp_path_factory.mktemp("ag_news_small")
    (d / "train.csv").write_bytes(_head_lines(ag_news_dir / "train.csv.gz", 2000))
    (d / "test.csv").write_bytes(_head_lines(ag_news_dir / "test.csv.gz", 500))
    return d


def make_tiny_config(**overrides: Any) -> RunConfig:
    """A small, fast configuration. Overrides are `section__field=value`, e.g. model__model="lstm"."""
    cfg = RunConfig()
    # Pinned here rather than taken from the defaults, so that tuning the defaults does not move the tests.
    cfg.data.min_freq = 1
    cfg.model.embed_dim = 32
    cfg.model.hidden_dim = 32
    cfg.model.dropout = 0.3
    cfg.model.embed_dropout = 0.1
    cfg.train.batch_size = 32
    cfg.train.lr = 3e-3
    cfg.train.weight_decay = 0.0
    cfg.train.epochs = 1
    cfg.train.threads = 1
    cfg.train.device = "cpu"
    # one model: small data would otherwise get several members (training/stopping.py), which cost time
    # the tests of other features do not need; tests of members set model__members (None: the planned count)
    cfg.model.members = 1
    # each value checked against its setting's declaration (config.py), as config.json's are
    return cfg.with_overrides({key.replace("__", "."): value for key, value in overrides.items()})


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    return make_tiny_config


@pytest.fixture(scope="session")
def trained_run(ag_news_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory (GRU, embed/hidden 32, 1 epoch on 2,000 AG News rows), trained once per session."""
    from rnntext import train

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=1)
    out = tmp_path_factory.mktemp("trained_run") / "run"
    train(cfg, str(out), progress=False, log=lambda s: None)
    return out
