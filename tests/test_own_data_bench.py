"""benchmarks/own_data.py: the fixed CR/MPQA split, fastText's validation split and the tables, without
training anything."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import own_data  # noqa: E402


def test_the_split_is_stratified_and_fixed_by_its_seed() -> None:
    labels = ["pos"] * 90 + ["neg"] * 30
    keep, held = own_data.stratified_split(labels, 0.1, own_data.SPLIT_SEED)
    assert sorted(keep + held) == list(range(120)) and not set(keep) & set(held)
    assert Counter(labels[i] for i in held) == {"pos": 9, "neg": 3}  # each class's share
    assert own_data.stratified_split(labels, 0.1, own_data.SPLIT_SEED) == (keep, held)
    assert own_data.stratified_split(labels, 0.1, own_data.SPLIT_SEED + 1)[1] != held


def _part(name: str, rnntext: float | None, fasttext: float | None) -> dict:
    r: dict = {"title": name.upper(), "train_rows": 100, "test_rows": 10, "valid_rows": None}
    if rnntext is not None:
        r["rnntext"] = {"test_accuracy": rnntext, "valid_accuracy": 0.8, "best_epoch": 3, "epochs_run": 5,
                        "wall_seconds": 12.0, "cpu_seconds": 20.0, "peak_rss_mb": 400.0}
    if fasttext is not None:
        r["fasttext"] = {"test_accuracy": fasttext, "valid_accuracy": 0.7,
                         "picked": {"lr": 0.1, "wordNgrams": 2, "epochs": 25},
                         "best_on_test": {"wordNgrams": 2, "epochs": 50, "test_accuracy": fasttext + 0.01},
                         "grid": [{"lr": 0.1, "wordNgrams": 2, "epochs": 25, "valid_accuracy": 0.7,
                                   "test_accuracy": fasttext}]}
    return r


def test_merge_joins_each_datasets_two_halves_and_the_table_says_who_won(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNTEXT_BENCH_RESULTS", str(tmp_path))
    base = {"benchmark": "own_data", "machine": {"cores": 2}, "rnntext_options": [], "valid_only": False}
    (tmp_path / "a.json").write_text(json.dumps({**base, "command": "a", "datasets": {
        "cr": _part("cr", None, 0.80), "trec": _part("trec", None, 0.90)}}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "command": "b", "datasets": {
        "cr": _part("cr", 0.82, None), "trec": _part("trec", 0.88, None)}}))
    own_data.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", "m"])
    merged = json.loads((tmp_path / "m.json").read_text())
    assert list(merged["datasets"]) == ["trec", "cr"]  # the script's order
    assert merged["summary"] == pytest.approx({"datasets": 2, "mean_rnntext": 0.85, "mean_fasttext": 0.85,
                                               "wins": 1})
    table = (tmp_path / "m.md").read_text()
    assert "| CR | 100 / 10 | **82.0%** |" in table and "+2.0" in table and "-2.0" in table
    assert "rnntext >= fastText on 1 of 2" in table
