"""Imbalanced classes: the stratified validation split, class weights in the loss."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rnntext.config import DataConfig
from rnntext.data.dataset import load_splits
from rnntext.data.split import stratified_indices


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
