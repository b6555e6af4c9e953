"""The benchmark scripts run end to end on a small slice of AG News and write what they promise;
the tutorial presets stay faithful to the tutorial when the defaults change."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rnntext.cli import build_parser, config_from_args
from rnntext.config import RunConfig
from rnntext.data.tokenizer import basic_english

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Import a benchmark module by name; its results go to tmp_path."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("RNNTEXT_BENCH_RESULTS", str(tmp_path))

    def load(name: str):
        return importlib.import_module(name)

    return load


def test_tutorial_presets_keep_the_tutorial_vocabulary() -> None:
    # the defaults drop words seen once; the tutorial kept every word
    assert RunConfig().data.min_freq == 2
    for preset in ("tutorial-rnn", "tutorial-lstm", "tutorial-lstm-packed"):
        cfg = config_from_args(build_parser().parse_args(["train", "--preset", preset, "--data-dir", "x"]))
        assert cfg.data.min_freq == 1 and cfg.data.ngrams == 1
        assert (cfg.model.embed_dim, cfg.model.hidden_dim, cfg.train.batch_size, cfg.train.lr) == (64, 32, 16, 1e-3)
        assert cfg.train.weight_decay == 0.0 and cfg.model.embed_dropout == 0.0


def test_tutorial_vocab_is_torchtext_style(bench) -> None:
    tp = bench("throughput")
    vocab = tp.TutorialVocab(["b a a", "c b a"])
    assert vocab.itos == ["<unk>", "a", "b", "c"]  # specials first, then by frequency, ties in first-seen order
    assert vocab(["a", "zzz"]) == [1, 0]  # unknown words (and the padding) are the <unk> id


def _benchmark_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@given(st.text(alphabet=st.sampled_from(list("aB <br />'\".,()!?;:\t\n\u00a0\x1c\u2028İ")), max_size=30)
       | st.text(max_size=30))
@example('<br" />x<BR />y')  # a quote inside "<br />": removed first, so the tag then goes
@example("a<br;/>b")  # ";" becomes a space after the tag rule has run: "<br", "/>" stay
def test_basic_english_splits_as_torchtexts_regular_expressions(text: str) -> None:
    # rnntext's literal replacements and the tutorial's torchtext regexes give the same tokens on any
    # text (quotes inside "<br />", unicode whitespace, characters whose lowercase is longer), so both
    # loops of the throughput benchmark build the same vocabulary
    assert basic_english(text) == _benchmark_module("throughput").torchtext_basic_english(text)


def test_throughput_writes_rows_per_second_for_both_loops(bench, ag_news_small: Path, tmp_path: Path) -> None:
    tp = bench("throughput")
    tp.main(["--data-dir", str(ag_news_small), "--rows", "160", "--repeats", "1", "--threads", "1"])
    out = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["system"] for r in out["results"]] == list(tp.SYSTEMS)
    for r in out["results"]:
        assert r["tutorial_rows_per_s"] > 0 and r["rnntext_rows_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["tutorial_seconds"][0] / r["rnntext_seconds"][0])
        for variant in ("sequential", "lazy"):
            assert r[f"rnntext_{variant}_rows_per_s"] > 0
            assert r[f"{variant}_ratio"] == pytest.approx(r["tutorial_seconds"][0] / r[f"rnntext_{variant}_seconds"][0])
    assert {"cpu", "cores", "threads", "torch"} <= set(out["machine"]) and out["machine"]["threads"] == 1


def test_accuracy_writes_json_and_markdown_table(bench, ag_news_small: Path, tmp_path: Path) -> None:
    acc = bench("accuracy")
    acc.main(["--data-dir", str(ag_news_small), "--only", "tutorial-lstm,fasttext", "--quick", "--threads", "1"])
    out = json.loads((tmp_path / "accuracy.json").read_text())
    assert [r["name"] for r in out["rnntext"]] == ["tutorial-lstm"]
    assert 0 <= out["rnntext"][0]["test_accuracy"] <= 1 and out["rnntext"][0]["train_seconds"] > 0
    pytest.importorskip("fasttext")
    assert out["fasttext"] and out["fasttext_best"]["test_accuracy"] > 0.25  # better than chance on 4 classes
    table = (tmp_path / "accuracy.md").read_text()
    assert "| tutorial LSTM (last state), 1 epoch |" in table and "fastText, best of" in table


def test_accuracy_rejects_unknown_rows(bench, ag_news_small: Path) -> None:
    acc = bench("accuracy")
    with pytest.raises(SystemExit):
        acc.main(["--data-dir", str(ag_news_small), "--only", "nope"])


def test_scaling_linearity_fit() -> None:
    fit = _benchmark_module("scaling").linearity([1, 2, 4], [2.0, 4.0, 8.0])
    assert fit["r2"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(2.0)
    assert fit["cost_per_unit_ratio_largest_vs_smallest"] == pytest.approx(1.0)
