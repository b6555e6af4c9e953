"""Multi-label data (--multi-label): each text has a set of labels, given as a list in JSONL or as one
column split on --label-separator in CSV/TSV (the readers join a JSONL list with the separator, so both
arrive here alike).

After reading, a row's label string holds its labels joined by JOIN (a control character no label holds),
in the order given, duplicates dropped. The validation split is iteratively stratified (Sechidis, Tsoumakas
and Vlahavas 2011, "On the stratification of multi-label data"): each label's rows are shared out between
train and validation in proportion, rarest label first, so a rare label is not left out of either part by
chance. The targets are multi-hot float rows [texts, labels] (the binary cross-entropy's)."""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .readers import SKIP_HINT, Rows, read_rows

JOIN = "\x1f"  # ASCII unit separator: between the labels of one row, after reading


def split_labels(cell: str, separator: str) -> list[str]:
    """The labels of one column: split on `separator`, stripped, empty pieces and repeats dropped."""
    out: list[str] = []
    for piece in cell.split(separator):
        piece = piece.strip()
        if piece and piece not in out:
            out.append(piece)
    return out


def label_sets(rows: Rows) -> list[list[str]]:
    """Each row's labels (rows read by read_multilabel)."""
    return [label.split(JOIN) for label in rows.labels]


def _keep(rows: Rows, keep: list[int], dropped: int, none_left: str) -> Rows:
    kept = rows.take(keep, skipped=rows.skipped + dropped)
    if not kept.texts:
        raise DataError(none_left, rows.path)
    return kept


def read_multilabel(path: str, cfg: DataConfig) -> Rows:
    """A file of sets of labels, read with the data options of `cfg` (columns, quoting, separator, label
    names). A row whose column holds no label (only separators), or (with --label-names) a label without a
    name, is a one-line DataError naming the file and line, or with --skip-bad-rows a skipped row."""
    sep = cfg.label_separator
    rows = read_rows(path, cfg.text_columns, cfg.label_column, skip_bad_rows=cfg.skip_bad_rows,
                     quoting=cfg.quoting, label_separator=sep)
    names = cfg.label_names
    keep: list[int] = []
    labels: list[str] = []
    for i, cell in enumerate(rows.labels):
        found = split_labels(cell, sep)
        problem = None
        if len(cell) > 1 and cell[0] == "[" and cell[-1] == "]":  # pandas' to_csv of a list column: "['a', 'b']"
            problem = (f"the labels {cell[:100]!r} are a list written as text; write them as one string split by "
                       f"the label separator (a{sep}b), or use JSONL")
        elif not found:
            problem = f"no label in {cell[:100]!r} (split on the label separator {sep!r})"
        elif names is not None:
            unnamed = [x for x in found if x not in names]
            if unnamed:
                problem = (f"label {unnamed[0][:100]!r} has no name in --label-names (named: "
                           f"{', '.join(list(names)[:20])})")
            else:
                found = list(dict.fromkeys(names[x] for x in found))
        if problem is not None:
            if not cfg.skip_bad_rows:
                raise DataError(problem + SKIP_HINT, rows.path, rows.lines[i] if rows.lines else None)
            continue
        keep.append(i)
        labels.append(JOIN.join(found))
    kept = _keep(rows, keep, len(rows) - len(keep), "no row has a label left")
    kept.labels = labels
    return kept


def known_only(rows: Rows | None, known: Container[str], skip_bad_rows: bool,
               label_names: Sequence[str]) -> Rows | None:
    """The rows whose labels all appear in the training data: any other is an error naming the file and
    line, or with skip_bad_rows a dropped row."""
    if rows is None:
        return None
    keep = []
    for i, labels in enumerate(label_sets(rows)):
        unknown = [x for x in labels if x not in known]
        if not unknown:
            keep.append(i)
        elif not skip_bad_rows:
            raise DataError(f"label {unknown[0][:100]!r} never appears in the training data (known: "
                            f"{', '.join(label_names[:20])}) (use --skip-bad-rows to skip such rows)",
                            rows.path, rows.lines[i] if rows.lines else None)
    if len(keep) == len(rows):
        return rows
    return _keep(rows, keep, len(rows) - len(keep), "no row has only labels that appear in the training data")


def iterative_split(sets: Sequence[Sequence[int]], num_labels: int, fraction: float, seed: int) -> list[int]:
    """The rows (indices into `sets`, each a row's label ids) that go to validation, about `fraction` of
    them and of each label's rows: iterative stratification for two parts. The label with the fewest rows
    still to place goes first; each of its rows goes to the part that lacks most of that label (then most
    rows overall; then by the seeded generator). A pure function of its arguments."""
    rng = random.Random(seed)
    n = len(sets)
    want_rows = [n * (1 - fraction), n * fraction]  # 0: train, 1: validation
    want = [[0.0] * num_labels for _ in range(2)]
    rows_of: list[list[int]] = [[] for _ in range(num_labels)]
    for i, labels in enumerate(sets):
        for j in labels:
            rows_of[j].append(i)
    for j in range(num_labels):
        want[0][j], want[1][j] = len(rows_of[j]) * (1 - fraction), len(rows_of[j]) * fraction
    placed = [False] * n
    valid: list[int] = []

    def place(i: int, part: int) -> None:
        placed[i] = True
        want_rows[part] -= 1
        for j in sets[i]:
            want[part][j] -= 1
        if part == 1:
            valid.append(i)

    left = [len(r) for r in rows_of]
    while True:
        candidates = [j for j in range(num_labels) if left[j] > 0]
        if not candidates:
            break
        label = min(candidates, key=lambda j: (left[j], j))
        todo = [i for i in rows_of[label] if not placed[i]]
        rng.shuffle(todo)
        for i in todo:
            a, b = (want[0][label], want_rows[0]), (want[1][label], want_rows[1])
            part = 0 if a > b else 1 if b > a else rng.randrange(2)
            place(i, part)
            for j in sets[i]:
                left[j] -= 1
    for i in range(n):  # rows without labels (none reach here from a file): by the rows still wanted
        if not placed[i]:
            place(i, 0 if want_rows[0] > want_rows[1] else 1)
    return sorted(valid)


def split_off_multilabel(rows: Rows, label_names: Sequence[str], fraction: float, seed: int) -> tuple[Rows, Rows]:
    """About `fraction` of `rows` as validation, iteratively stratified (iterative_split); the rest for training."""
    index = {name: k for k, name in enumerate(label_names)}
    sets = [[index[x] for x in labels] for labels in label_sets(rows)]
    valid_idx = iterative_split(sets, len(label_names), fraction, seed)
    n = len(rows)
    if not valid_idx or len(valid_idx) >= n:
        raise ConfigError(f"--valid-split {fraction} of {n} rows leaves no training or validation rows")
    chosen = set(valid_idx)
    train_idx = [i for i in range(n) if i not in chosen]
    return rows.take(train_idx, skipped=rows.skipped), rows.take(valid_idx, rows.path + " (validation split)")


def load_multilabel(cfg: DataConfig, seed: int, order: Callable[[list[str]], list[str]]
                    ) -> tuple[Rows, Rows | None, Rows | None, list[str]]:
    """(train, valid, test, label names) of a multi-label DataConfig; `order` puts the labels in class order
    (dataset._label_order: numbers numerically, else alphabetically)."""
    if cfg.dataset is not None or not cfg.train:
        raise ConfigError("--multi-label reads your own files: give --train FILE")
    train = read_multilabel(cfg.train, cfg)
    valid = read_multilabel(cfg.valid, cfg) if cfg.valid else None
    test = read_multilabel(cfg.test, cfg) if cfg.test else None
    label_names = order([x for labels in label_sets(train) for x in labels])
    if cfg.label_names is not None:  # in the order given, those that occur in train
        seen = set(label_names)
        label_names = [n for n in dict.fromkeys(cfg.label_names.values()) if n in seen]
    if valid is None and cfg.valid_split > 0:
        train, valid = split_off_multilabel(train, label_names, cfg.valid_split, seed)
    known = set(label_names)
    valid = known_only(valid, known, cfg.skip_bad_rows, label_names)
    test = known_only(test, known, cfg.skip_bad_rows, label_names)
    return train, valid, test, label_names


def multi_hot(rows: Rows, label_names: Sequence[str]) -> Tensor:
    """[rows, labels] float32: 1 where the row has the label."""
    index = {name: k for k, name in enumerate(label_names)}
    row_ids, label_ids = [], []
    for i, labels in enumerate(label_sets(rows)):
        for x in labels:
            row_ids.append(i)
            label_ids.append(index[x])
    out = torch.zeros(len(rows), len(label_names))
    out[torch.tensor(row_ids, dtype=torch.long), torch.tensor(label_ids, dtype=torch.long)] = 1.0
    return out
