"""Memory bounded by settings, not by the texts' lengths (docs/guides/limits.md, "Memory"): every input
path (train, evaluate, predict --file, compare, vectors) on generated texts of 50,000 tokens, each in a
child process under an address-space limit, its peak resident memory measured.

Before the token budget, a training batch of such texts was padded to 50,000 steps for every row and
a recurrent model kept every step's activations: gigabytes per batch, well past the limit here."""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import threading
from pathlib import Path

import pytest

from child_peak import peak_env, peak_mb, rnntext_command

LONG_TOKENS = 50_000
PEAK_RSS_MB = 1_500  # what each command may hold at most (a small model; torch itself is ~400 MB)
ADDRESS_SPACE = 6 << 30  # RLIMIT_AS: past this an allocation fails (MemoryError), never the machine
TINY = ["--embed-dim", "16", "--hidden-dim", "16", "--epochs", "1", "--threads", "1", "--batch-size", "32", "-q"]


def _text(rng: random.Random, words: list[str], n: int, cue: str) -> str:
    return " ".join([cue] + [rng.choice(words) for _ in range(n)])


@pytest.fixture(scope="module")
def long_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv / test.csv: 240 / 60 short texts and 3 / 2 of 50,000 tokens; texts.txt: one text per line,
    one of them 1,000,000 tokens."""
    d = tmp_path_factory.mktemp("long_texts")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]

    def rows(n_short: int, n_long: int) -> list[tuple[str, str]]:
        out = [(_text(rng, words, rng.randint(5, 40), f"cue{i % 2}"), str(i % 2)) for i in range(n_short)]
        for i in range(n_long):
            out.insert(rng.randrange(len(out)), (_text(rng, words, LONG_TOKENS, f"cue{i % 2}"), str(i % 2)))
        return out

    for name, n_short, n_long in (("train.csv", 240, 3), ("test.csv", 60, 2)):
        with open(d / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows(n_short, n_long))
    lines = [_text(rng, words, n, f"cue{n % 2}") for n in (20, 1_000_000, LONG_TOKENS)]
    (d / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_capped(args: list[str], cwd: Path, timeout: float = 900) -> tuple[int, str, str, float]:
    """`rnntext ARGS` in a child under the address-space limit: (exit status, stdout, stderr, peak RSS in MB
    of that child alone, its VmHWM)."""
    out_path, err_path, peak_path = cwd / "stdout.txt", cwd / "stderr.txt", cwd / "peak_kb.txt"
    env = peak_env(peak_path, {**os.environ, "PYTHONWARNINGS": "ignore"})
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen(rnntext_command(args), cwd=cwd, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, env=env, preexec_fn=_limit_address_space)
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            _, status, _usage = os.wait4(child.pid, 0)
        finally:
            killer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return child.returncode, out_path.read_text(), err_path.read_text(), peak_mb(peak_path)


def _check(result: tuple[int, str, str, float], what: str) -> str:
    rc, out, err, peak = result
    assert rc == 0, f"{what}: exit {rc}, peak {peak:.0f} MB\n{err[-2000:]}"
    assert peak <= PEAK_RSS_MB, f"{what}: peak RSS {peak:.0f} MB > {PEAK_RSS_MB} MB"
    return out


@pytest.fixture(scope="module")
def long_run(long_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rnntext train` on texts of 50,000 tokens under the limit: the run directory."""
    cwd = tmp_path_factory.mktemp("train_long")
    result = run_capped(["train", "--train", str(long_data / "train.csv"), "--test", str(long_data / "test.csv"),
                         "--out", str(cwd / "run"), *TINY], cwd)
    _check(result, "train")
    return cwd / "run"


def test_train_on_50k_token_texts_under_a_memory_limit(long_run: Path) -> None:
    metrics = json.loads((long_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.0  # trained, validated and tested to the end
    assert json.loads((long_run / "config.json").read_text())["train"]["max_batch_tokens"] == 65_536


def test_evaluate_on_50k_token_texts_under_a_memory_limit(long_run: Path, long_data: Path, tmp_path: Path) -> None:
    out = _check(run_capped(["evaluate", str(long_run), "--test", str(long_data / "test.csv"), "--json",
                             "--threads", "1"], tmp_path), "evaluate")
    assert 0.0 <= json.loads(out)["accuracy"] <= 1.0


def test_predict_a_million_token_text_under_a_memory_limit(long_run: Path, long_data: Path, tmp_path: Path) -> None:
    out = _check(run_capped(["predict", str(long_run), "--file", str(long_data / "texts.txt"), "--json",
                             "--threads", "1"], tmp_path), "predict --file")
    lines = out.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["label"] in ("0", "1") for line in lines)


def test_compare_on_50k_token_texts_under_a_memory_limit(long_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "runs.json"
    config.write_text(json.dumps([{"name": "gru", "model": {"model": "gru", "embed_dim": 16, "hidden_dim": 16},
                                   "train": {"batch_size": 32}}]))
    _check(run_capped(["compare", "--train", str(long_data / "train.csv"), "--test", str(long_data / "test.csv"),
                       "--config", str(config), "--out", str(tmp_path / "cmp"), "--epochs", "1", "--threads", "1",
                       "-q"], tmp_path), "compare")
    assert (tmp_path / "cmp" / "report.md").exists()


def test_vectors_on_50k_token_texts_under_a_memory_limit(long_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("gensim")
    _check(run_capped(["vectors", "--train", str(long_data / "train.csv"), "--out", str(tmp_path / "v.vec"),
                       "--dim", "16", "--epochs", "1", "--threads", "1"], tmp_path), "vectors")
    assert (tmp_path / "v.vec").stat().st_size > 0
