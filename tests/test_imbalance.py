"""Imbalanced classes: the stratified validation split, class weights in the loss."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_tiny_config
from rnntext.cli import main
from rnntext.config import DataConfig, parse_class_weight
from rnntext.data.dataset import load_splits
from rnntext.data.split import stratified_indices
from rnntext.errors import ConfigError
from rnntext.training.class_weight import class_weights
from rnntext.training.trainer import Trainer, train


def test_valid_split_keeps_class_proportions(write_data: Callable[..., Path]) -> None:
    # 20:1 imbalance and a class of 10: a random 10% could leave the rare class out of validation
    rows = [(f"text {i}", "big") for i in range(900)] + [(f"text {i}", "mid") for i in range(900, 990)]
    rows += [(f"text {i}", "rare") for i in range(990, 1000)]
    path = write_data("train.csv", ["text", "label"], rows)
    for seed in range(5):
        splits = load_splits(DataConfig(train=str(path), valid_split=0.1), seed=seed)
        assert Counter(splits.valid.labels) == {"big": 90, "mid": 9, "rare": 1}
        assert Counter(splits.train.labels) == {"big": 810, "mid": 81, "rare": 9}
        assert sorted(splits.train.texts + splits.valid.texts) == sorted(t for t, _ in rows)


def test_stratified_split_is_deterministic_by_seed() -> None:
    labels = ["a", "b", "c"] * 50 + ["d"] * 7
    a, b, c = (stratified_indices(labels, 0.2, seed) for seed in (3, 3, 4))
    assert a == b
    assert a[1] != c[1]
    train, valid = a
    assert sorted(train + valid) == list(range(len(labels))) and not set(train) & set(valid)


@given(st.lists(st.sampled_from("abcdefg"), min_size=2, max_size=300), st.floats(0.01, 0.9), st.integers(0, 99))
def test_stratified_split_shares(labels: list[str], fraction: float, seed: int) -> None:
    """Every class gives n_c * fraction rows, rounded down or up; the total is round(n * fraction)."""
    n_valid = int(round(len(labels) * fraction))
    if n_valid == 0 or n_valid >= len(labels):
        return  # refused with a ConfigError, as before (tests/test_train.py)
    train, valid = stratified_indices(labels, fraction, seed)
    assert len(valid) == n_valid and sorted(train + valid) == list(range(len(labels)))
    counts, in_valid = Counter(labels), Counter(labels[i] for i in valid)
    for label, n in counts.items():
        assert math.floor(n * fraction) <= in_valid[label] <= math.ceil(n * fraction)


def test_multi_label_rows_are_stratified_by_label_set() -> None:
    labels: list[list[str]] = [["x"]] * 80 + [["x", "y"]] * 20
    _, valid = stratified_indices(labels, 0.1, 0)
    assert Counter(tuple(labels[i]) for i in valid) == {("x",): 8, ("x", "y"): 2}


# --- --class-weight ------------------------------------------------------------------------------------------


def test_balanced_weights_are_scikit_learns() -> None:
    # compute_class_weight('balanced', classes=[0, 1, 2], y=y): n_samples / (n_classes * bincount(y))
    y = torch.tensor([0] * 20 + [1] * 4 + [2] * 1)
    w = class_weights("balanced", y, ["a", "b", "c"])
    assert w is not None
    assert w.tolist() == pytest.approx([25 / 60, 25 / 12, 25 / 3])
    assert float(w[y].sum()) == pytest.approx(len(y))  # every class then carries the same total weight
    assert class_weights(None, y, ["a", "b", "c"]) is None


def test_explicit_class_weights_and_their_errors() -> None:
    y = torch.tensor([0, 1, 2])
    w = class_weights("c=4, a=0.5", y, ["a", "b", "c"])
    assert w is not None and w.tolist() == [0.5, 1.0, 4.0]  # b left out: 1
    with pytest.raises(ConfigError, match=r"^--class-weight: 'x' is not a class of the training data"):
        class_weights("x=2", y, ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"class 'c' has no training rows"):
        class_weights("balanced", torch.tensor([0, 1]), ["a", "b", "c"])
    assert parse_class_weight("a=b=2") == {"a=b": 2.0}  # a label may hold "="
    for bad in ("pos", "pos=0", "pos=-1", "pos=nan", "pos=inf", "pos=x", "=2", "a=1,a=2", ""):
        with pytest.raises(ValueError, match="expected balanced or distinct NAME=WEIGHT pairs"):
            parse_class_weight(bad)


@pytest.mark.parametrize("value", ["pos=0", "balance", "pos=two"])
def test_bad_class_weight_is_a_one_line_cli_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--train", "nowhere.csv", "--class-weight", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("rnntext: error: --class-weight must be balanced or distinct NAME=WEIGHT pairs"), err


def _imbalanced(n_big: int, n_rare: int) -> list[tuple[str, str]]:
    rng = random.Random(0)
    good, bad, filler = ["great", "superb", "fine"], ["awful", "boring", "dull"], ["the", "a", "film", "plot", "was"]
    rows = [(" ".join(rng.choices(filler, k=4) + [rng.choice(good)]), "pos") for _ in range(n_big)]
    rows += [(" ".join(rng.choices(filler, k=4) + [rng.choice(bad)]), "neg") for _ in range(n_rare)]
    rng.shuffle(rows)
    return rows


def test_class_weights_reach_the_training_loss(write_data: Callable[..., Path], tmp_path: Path) -> None:
    """The loss of a training step is the weighted mean sum(w_y * nll) / sum(w_y), and the run keeps the
    setting (config.json) and the weights it gave (metrics.json)."""
    path = write_data("train.csv", ["text", "label"], _imbalanced(200, 10))
    # one plain model (--members 1): the step's loss is computed here from its [B, C] logits
    cfg = make_tiny_config(data__train=str(path), train__class_weight="balanced", model__dropout=0.0,
                           model__embed_dropout=0.0, model__members=1)
    trainer = Trainer(cfg, None, progress=False, log=lambda s: None)
    assert trainer.class_weight is not None
    # 5% of 210 rows, stratified: 10 pos (and no neg, 0.5 rounded down) to validation; 190 pos, 10 neg train
    assert trainer.class_weight.tolist() == pytest.approx([200 / (2 * 10), 200 / (2 * 190)])
    batch = trainer.epoch_order(0)[0]
    b = trainer._batch(batch)
    with torch.no_grad():
        nll = -trainer.model(b.tokens, b.lengths, b.offsets).log_softmax(1).gather(1, b.labels[:, None])[:, 0]
    w = trainer.class_weight[b.labels]
    expected = float((w * nll).sum() / w.sum())
    loss_sum, _, n = trainer.train_step(batch)
    assert loss_sum / n == pytest.approx(expected, rel=1e-5)

    result = train(cfg, str(tmp_path / "run"), progress=False, log=lambda s: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["class_weight"] == "balanced"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["class_weights"]
    assert saved == pytest.approx({"neg": 200 / 20, "pos": 200 / 380})
    assert result.metrics["class_weights"] == saved


# --- the benchmark ---------------------------------------------------------------------------------------------


def test_imbalance_benchmark_writes_its_tables(shared_data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not (shared_data_dir / "sst2" / "train.csv.gz").is_file():
        pytest.skip("SST-2 not in the shared data")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    monkeypatch.setenv("RNNTEXT_BENCH_RESULTS", str(tmp_path))
    import imbalance

    imbalance.main(["--sst2", str(shared_data_dir / "sst2"), "--majority", "400", "--seeds", "1", "--epochs", "1",
                    "--threads", "1"])
    out = json.loads((tmp_path / "imbalance.json").read_text())
    assert out["data"]["train"] == {"positive": 400, "negative": 20}  # 20:1
    assert out["data"]["test_imbalanced"] == {"positive": 909, "negative": 45}
    assert [r["config"] for r in out["runs"]] == list(imbalance.configurations())
    weighted = next(r for r in out["runs"] if r["config"] == "class-weight balanced")
    assert weighted["settings"] == {"class_weight": "balanced"}
    for r in out["runs"]:
        for test in ("test", "test_imbalanced"):
            assert 0.0 <= r[test]["macro_f1"] <= 1.0 and 0.0 <= r[test]["minority_recall"] <= 1.0
    md = (tmp_path / "imbalance.md").read_text()
    assert "| class-weight balanced | 1 |" in md and "minority recall" in md


def test_class_weight_with_multi_label_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--train", "sets.jsonl", "--multi-label", "--class-weight", "balanced"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class-weight" in err and "--multi-label" in err, err
