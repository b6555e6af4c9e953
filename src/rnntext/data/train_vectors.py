"""Train word vectors on unlabelled text (`rnntext vectors`), for `--embeddings`.

The texts are tokenised with the classifier's tokenizer (basic_english by default), so the
words match the vocabulary, written once to a temporary one-text-per-line file and handed to
gensim's Word2Vec (skip-gram or CBOW) or FastText, which train from a file with all threads.
The result is a word2vec text file (`COUNT DIM` header: the fastText .vec layout), words in
decreasing frequency, which `load_vectors` reads."""

from __future__ import annotations

import gzip
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import VectorOptions  # the options are declared with the other settings
from ..errors import ConfigError, DataError
from . import ag_news
from .readers import read_rows
from .tokenizer import TOKENIZERS

# --- reading the texts ---------------------------------------------------------------------


def _is_table(path: str) -> bool:
    name = path.lower().removesuffix(".gz")
    return name.endswith((".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json"))


def _plain_lines(path: str) -> Iterator[str]:
    """Non-blank lines of a plain text file (optionally gzip), streamed."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file" if not p.exists() else "is a directory, expected a file", path)
    with open(p, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.open(raw, "rb") if gz else raw
        for lineno, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"invalid UTF-8 (byte 0x{line[e.start]:02x}); save the file as UTF-8",
                                path, lineno) from None
            if text.strip():
                yield text


def read_texts(files: Iterable[str] = (), text_columns: list[str] | None = None, dataset: str | None = None,
               data_dir: str | None = None, skip_bad_rows: bool = False, quoting: str = "csv") -> Iterator[str]:
    """Texts from plain text files (one per line), CSV/TSV/JSONL files (`text_columns`), or the
    training split of a built-in dataset."""
    if dataset is not None:
        if dataset != "ag_news":
            raise ConfigError(f"unknown dataset {dataset!r}; built in: ag_news")
        yield from ag_news.load(data_dir, skip_bad_rows, progress=False)[0].texts
    columns = text_columns or ["text"]
    for path in files:
        if _is_table(path):
            # Unlabelled text: any column will do as the "label" the reader wants; the text column always exists.
            yield from read_rows(path, columns, columns[0], skip_bad_rows=skip_bad_rows, quoting=quoting).texts
        else:
            yield from _plain_lines(path)


# --- training ------------------------------------------------------------------------------------


def _write_corpus(texts: Iterable[str], split: Callable[[str], list[str]], f: Any) -> tuple[int, int]:
    n_texts = n_tokens = 0
    for text in texts:
        tokens = split(text)
        if tokens:
            f.write(" ".join(tokens) + "\n")
            n_texts += 1
            n_tokens += len(tokens)
    return n_texts, n_tokens


def write_vec(path: str | Path, words: list[str], matrix: np.ndarray) -> None:
    """A word2vec text / fastText .vec file, written atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(f"{len(words)} {matrix.shape[1]}\n")
            for word, row in zip(words, matrix.tolist()):
                f.write(word + " " + " ".join(f"{x:.6g}" for x in row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def train_vectors(texts: Iterable[str], out: str | Path, opts: VectorOptions | None = None,
                  log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train vectors on `texts`, write them to `out`; a summary for logs and benchmarks."""
    opts = opts or VectorOptions()
    opts.validate()
    try:
        from gensim.models import FastText, Word2Vec
    except ImportError:
        raise ConfigError("training vectors needs gensim: pip install 'rnntext[vectors]'") from None
    t0 = time.perf_counter()
    split = TOKENIZERS[opts.tokenizer]
    with tempfile.TemporaryDirectory(prefix="rnntext-vectors-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            n_texts, n_tokens = _write_corpus(texts, split, f)
        if n_tokens == 0:
            raise DataError("no text to train vectors on (all inputs are empty)")
        log(f"corpus: {n_texts:,} texts, {n_tokens:,} tokens ({time.perf_counter() - t0:.1f}s)")
        klass = FastText if opts.algorithm == "fasttext" else Word2Vec
        kwargs: dict[str, Any] = dict(
            corpus_file=str(corpus), vector_size=opts.dim, window=opts.window, min_count=opts.min_count,
            sg=0 if opts.algorithm == "cbow" else 1, negative=opts.negative, epochs=opts.epochs,
            workers=opts.threads or os.cpu_count() or 1, seed=opts.seed)
        t1 = time.perf_counter()
        try:
            model = klass(**kwargs)
        except RuntimeError as e:  # gensim: "you must first build vocabulary before training the model"
            raise DataError(f"no word occurs --min-count {opts.min_count} times in the {n_tokens:,} tokens "
                            f"({e}); lower --min-count or give more text") from None
        train_seconds = time.perf_counter() - t1
    wv = model.wv
    words = list(wv.index_to_key)  # most frequent first
    write_vec(out, words, np.asarray(wv.vectors, dtype=np.float32))
    summary = {"out": str(out), "words": len(words), "texts": n_texts, "tokens": n_tokens,
               "train_seconds": train_seconds, "seconds": time.perf_counter() - t0, **asdict(opts)}
    log(f"vectors: {len(words):,} words x {opts.dim} ({opts.algorithm}, {opts.epochs} epochs) in "
        f"{train_seconds:.1f}s -> {out}")
    return summary
