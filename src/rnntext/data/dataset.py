"""From a DataConfig to encoded train / valid / test tensors: read, split, label, tokenise,
build the vocabulary on train, encode once."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from torch import Tensor

from ..config import DataConfig
from ..errors import ConfigError, DataError
from . import ag_news
from .encode import Encoded, encode_texts, encode_tokens
from .readers import Rows, read_rows
from .split import stratified_indices
from .tokenizer import TOKENIZERS, Tokenizer
from .vocab import Vocab


@dataclass
class Splits:
    train: Rows
    valid: Rows | None
    test: Rows | None
    label_names: list[str]


@dataclass
class Prepared:
    tokenizer: Tokenizer
    vocab: Vocab
    label_names: list[str]
    train: Encoded
    valid: Encoded | None
    test: Encoded | None
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _label_order(labels: list[str]) -> list[str]:
    """Numbers numerically when every label is a finite number ("1", "2", "10"; "0.5"), anything else
    alphabetically (by code point). Either way a total order, so the class order never depends on the
    order of a set (PYTHONHASHSEED): "nan" and "inf" are words here, not numbers."""
    unique = set(labels)
    numbers = {}
    for s in unique:
        try:
            value = float(s)
        except ValueError:
            return sorted(unique)
        if not math.isfinite(value):
            return sorted(unique)
        numbers[s] = value
    return sorted(unique, key=lambda s: (numbers[s], s))


def _labels_known(rows: Rows, known: Container[str], problem: str, none_left: str, skip_bad_rows: bool) -> Rows:
    """The rows whose label is in `known`. Any other is an error naming the file and line ("label 'x'
    {problem}"), or, with skip_bad_rows, a row dropped and counted (`none_left` if that leaves none)."""
    unknown = [i for i, label in enumerate(rows.labels) if label not in known]
    if not unknown:
        return rows
    if not skip_bad_rows:
        i = unknown[0]
        raise DataError(f"label {rows.labels[i][:100]!r} {problem} (use --skip-bad-rows to skip such rows)",
                        rows.path, rows.lines[i] if rows.lines else None)
    drop = set(unknown)
    kept = rows.take([i for i in range(len(rows)) if i not in drop], skipped=rows.skipped + len(drop))
    if not kept.texts:
        raise DataError(none_left, rows.path)
    return kept


def name_labels(rows: Rows, names: dict[str, str] | None, skip_bad_rows: bool) -> Rows:
    """The rows with their labels replaced by their names (--label-names); a label without a name is an
    error naming the file and line, or, with skip_bad_rows, a skipped row."""
    if names is None:
        return rows
    named = _labels_known(rows, names,
                          f"has no name in --label-names (named: {', '.join(list(names)[:20])})",
                          "no row has a label named in --label-names", skip_bad_rows)
    named.labels = [names[label] for label in named.labels]
    return named


def read_labelled(path: str, cfg: DataConfig) -> Rows:
    """A file of the user's, read with the data options of `cfg` (columns, quoting, label names)."""
    if cfg.multi_label:  # sets of labels: rnntext.data.labels
        from .labels import read_multilabel

        return read_multilabel(path, cfg)
    rows = read_rows(path, cfg.text_columns, cfg.label_column, skip_bad_rows=cfg.skip_bad_rows, quoting=cfg.quoting)
    return name_labels(rows, cfg.label_names, cfg.skip_bad_rows)


def split_off(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """A reproducible random `fraction` of `rows` as validation, stratified by class (data/split.py); the
    rest stays for training."""
    train_idx, valid_idx = stratified_indices(rows.labels, fraction, seed)

    # bad rows of the file are reported once, with its training part
    return rows.take(train_idx, skipped=rows.skipped), rows.take(valid_idx, rows.path + " (validation split)")


def load_splits(cfg: DataConfig, seed: int = 0, progress: bool = True) -> Splits:
    def read(p: str | None) -> Rows | None:
        return None if p is None else read_labelled(p, cfg)

    if cfg.multi_label:  # sets of labels, an iteratively stratified validation split: rnntext.data.labels
        from .labels import load_multilabel

        return Splits(*load_multilabel(cfg, seed, _label_order))

    if cfg.dataset == "ag_news":
        train, test = ag_news.load(cfg.data_dir, cfg.skip_bad_rows, progress=progress)
        # a --valid / --test file of the user's (text and label columns, as `rnntext evaluate --test`)
        # replaces the split's own
        valid, test = read(cfg.valid), (read(cfg.test) if cfg.test else test)
        label_names = list(ag_news.CLASSES)
    elif cfg.dataset is None:
        if not cfg.train:
            raise ConfigError("give --dataset ag_news or --train FILE")
        train, valid, test = read(cfg.train), read(cfg.valid), read(cfg.test)
        label_names = _label_order(train.labels)
        if cfg.label_names is not None:  # in the order given, those that occur in train
            seen = set(label_names)
            label_names = [n for n in cfg.label_names.values() if n in seen]
    else:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; built in: ag_news (or use --train FILE)")

    if valid is None and cfg.valid_split > 0:
        train, valid = split_off(train, cfg.valid_split, seed)
    known = set(label_names)
    problem = f"never appears in the training data (known: {', '.join(label_names[:20])})"

    def known_only(rows: Rows | None) -> Rows | None:
        return None if rows is None else _labels_known(
            rows, known, problem, "no row has a label that appears in the training data", cfg.skip_bad_rows)

    valid, test = known_only(valid), known_only(test)
    return Splits(train, valid, test, label_names)


def prepare(cfg: DataConfig, seed: int = 0, progress: bool = True,
            log: Callable[[str], None] | None = None) -> Prepared:
    """`log`: where the token store says what it did (default: stderr, when `progress`)."""
    if cfg.token_store:  # streamed through memory-mapped files: the same result (data/store.py)
        from .store import prepare_store

        return Prepared(*prepare_store(cfg, seed, progress, log, _label_order))
    t0 = time.perf_counter()
    splits = load_splits(cfg, seed, progress)
    tokenizer = Tokenizer(cfg.tokenizer, cfg.ngrams, cfg.max_len)
    train_tokens = [tokenizer(t) for t in splits.train.texts]
    if cfg.encoder:  # the pretrained encoder's vocabulary, unextended (config.py: DataConfig.encoder says why)
        from .encoder_dir import load_vocab

        vocab = load_vocab(cfg.encoder)
    else:
        vocab = Vocab.build(train_tokens, cfg.min_freq, cfg.max_vocab)
    if cfg.vocab_from_embeddings and cfg.embeddings:  # before encoding, so every split uses the larger vocabulary
        from .vectors import extend_vocab

        vocab = extend_vocab(vocab, cfg.embeddings, cfg.vocab_from_embeddings_max, cfg.max_vocab,
                             TOKENIZERS[cfg.tokenizer])
    vocab = vocab.with_unseen(cfg.unseen_words)
    index = {name: i for i, name in enumerate(splits.label_names)}

    def targets(rows: Rows) -> list[int] | Tensor:
        if cfg.multi_label:  # [rows, labels] multi-hot
            from .labels import multi_hot

            return multi_hot(rows, splits.label_names)
        return [index[label] for label in rows.labels]

    def enc(rows: Rows | None) -> Encoded | None:
        if rows is None:
            return None
        return encode_texts(rows.texts, tokenizer, vocab, targets(rows))

    train = encode_tokens(train_tokens, vocab, targets(splits.train))
    skipped = {r.path: r.skipped for r in (splits.train, splits.valid, splits.test) if r is not None and r.skipped}
    return Prepared(tokenizer, vocab, splits.label_names, train, enc(splits.valid), enc(splits.test),
                    skipped, time.perf_counter() - t0)

