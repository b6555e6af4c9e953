"""The on-disk token store (--token-store DIR): corpora larger than memory.

The training file is read in chunks (readers.iter_rows), tokenised, and written to DIR as it goes; the
vocabulary is counted from the store, not from texts held in memory; the encoded splits are memory-mapped
files that training batches from (the same `Encoded`, batching and trainer as in memory: only the token
array's pages that a batch touches are read). What memory holds grows with the rows only by the per-row
arrays (offsets, lengths, labels: 8 bytes each per row) and with the distinct words; the tokens stay on disk.

The result is the in-memory path's, bit for bit: the same rows, the same (stratified) validation split, the
same vocabulary (counts of the training rows only; ties alphabetical), the same ids, so the same batches and
weights (tests/test_store.py). How, without the texts in memory:

1. the training file is streamed once: each word gets a provisional id in first-seen order (id 0 stands for
   an empty text), written to a scratch file with each row's length and label;
2. the validation split is drawn from the labels (data/split.py, as in memory), the training rows' word
   counts summed from the scratch file a chunk at a time, and the vocabulary built from those counts;
3. the scratch file is streamed again: provisional ids mapped to vocabulary ids, each row to its split.

Files (DIR): manifest.json (what was built from what: a store whose inputs and data settings have not
changed is reused, e.g. by a resumed run or by every rank of a distributed one), vocab.json, and per split
SPLIT.tokens / SPLIT.offsets / SPLIT.labels.safetensors (one array each; safetensors files whose data are
memory-mapped). Token ids are int32 on disk (half of int64's pages); batches widen them to int64.

Under DDP every rank opens the store; the first builds it under a lock (DIR/.lock) while the others wait for
it, then each rank trains on its own shard of the batches, reading only those rows' pages."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, atomic_write_text, file_mode
from . import ag_news
from .encode import Encoded
from .readers import SKIP_HINT, Rows, iter_rows
from .tokenizer import TOKENIZERS, Tokenizer
from .vocab import UNK_ID, Vocab

STORE_FORMAT = 1
CHUNK_ROWS = 16_384  # rows read, tokenised and written at a time: memory holds one chunk's texts and tokens
SPLITS = ("train", "valid", "test")
_HEADER_BYTES = 256  # a safetensors header (JSON, space-padded) for one array fits in this
_DTYPES = {np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}
_EMPTY = ""  # no tokenizer makes an empty token: the provisional word of an empty text (encoded <unk>)


# --- one array per safetensors file, written as it streams ---------------------------------------------


class ArrayWriter:
    """Appends to a 1-D array in a safetensors file at `path`, streamed: the header's room is reserved first
    and filled in by close() once the length is known (safetensors allows a space-padded header). The file
    appears at `path` only when complete (a temporary file renamed over it)."""

    def __init__(self, path: Path, dtype: type):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by close())
        os.fchmod(self.file.fileno(), file_mode())
        self.file.write(b"\0" * _HEADER_BYTES)

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.file.write(values.tobytes())
        self.count += values.size

    def close(self) -> None:
        header = json.dumps({"array": {"dtype": _DTYPES[self.dtype], "shape": [self.count],
                                       "data_offsets": [0, self.count * self.dtype.itemsize]}}).encode()
        room = _HEADER_BYTES - 8
        assert len(header) <= room
        self.file.seek(0)
        self.file.write(struct.pack("<Q", room) + header + b" " * (room - len(header)))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)


def write_array(path: Path, values: np.ndarray) -> None:
    writer = ArrayWriter(path, values.dtype.type)
    writer.append(values)
    writer.close()


def open_array(path: Path, random_access: bool = False) -> np.ndarray:
    """The array of a file written by ArrayWriter, memory-mapped copy-on-write (writable for torch, never
    written back); a file that is not one is a DataError."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(min(size, 1 << 20)))["array"]
        dtype = {v: k for k, v in _DTYPES.items()}[meta["dtype"]]
        (n,) = meta["shape"]
        if meta["data_offsets"] != [0, n * dtype.itemsize] or path.stat().st_size != 8 + size + n * dtype.itemsize:
            raise ValueError("sizes do not match")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise DataError(f"not a token store array, or a damaged one ({e}); delete the token store to rebuild it",
                        str(path)) from None
    if n == 0:
        return np.zeros(0, dtype)
    array = np.memmap(path, dtype=dtype, mode="c", offset=8 + size, shape=(n,))
    if random_access:
        # a batch reads a few hundred bytes from each of its rows, anywhere in the file: without this the kernel
        # reads ahead ~128 KB around each, so that a batch of 128 rows reads and maps ~16 MB from disk
        mapping = getattr(array, "_mmap", None)
        if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
            mapping.madvise(mmap.MADV_RANDOM)
    return array


# --- what a store was built from ----------------------------------------------------------------------


def _inputs(cfg: DataConfig) -> list[str]:
    """The files the data come from."""
    paths = [p for p in (cfg.train, cfg.valid, cfg.test) if p]
    if cfg.dataset == "ag_news":
        directory = _ag_news_dir(cfg)
        paths += [str(p) for p in (ag_news.find_split(directory, s) for s in ("train", "test")) if p is not None]
    if cfg.vocab_from_embeddings and cfg.embeddings:
        paths.append(cfg.embeddings)
    if cfg.encoder:
        paths.append(str(Path(cfg.encoder) / "vocab.json"))
    return paths


def _ag_news_dir(cfg: DataConfig) -> Path:
    directory = cfg.data_dir or os.environ.get("RNNTEXT_DATA_DIR")
    if not directory:
        return ag_news.ensure_downloaded()
    if not Path(directory).is_dir():
        raise DataError("AG News data directory does not exist", str(directory))
    return Path(directory)


def store_key(cfg: DataConfig, seed: int) -> str:
    """Identifies what a store holds: its format, the data settings, the seed (it draws the validation split)
    and each input file's path, size and modification time."""
    stats = []
    for p in _inputs(cfg):
        try:
            st = os.stat(p)
            stats.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([os.path.abspath(p), None, None])  # reading it will say what is wrong
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "token_store"}
    text = json.dumps({"format": STORE_FORMAT, "data": settings, "seed": seed, "files": stats}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- building -----------------------------------------------------------------------------------------


class _Words(dict):
    """word -> provisional id, in first-seen order (a new word gets the next id)."""

    def __missing__(self, word: str) -> int:
        self[word] = i = len(self)
        return i


def _progress(desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" rows", unit_scale=True, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)


class _Source:
    """One input file of a split, read in chunks of (texts, labels as class names, lines)."""

    def __init__(self, cfg: DataConfig, path: str, ag: bool = False):
        self.cfg, self.path, self.ag = cfg, path, ag
        self.skipped = 0
        self.chunks = 0  # chunks read (tests/test_store.py: the file is read in chunks)

    def __iter__(self) -> Iterator[Rows]:
        cfg = self.cfg
        if self.ag:  # canonical AG News: no header, class 1..4 in column 0, title and description
            chunks = iter_rows(self.path, ["1", "2"], "0", fmt="csv", header=False, skip_bad_rows=cfg.skip_bad_rows,
                               chunk_rows=CHUNK_ROWS)
        else:
            chunks = iter_rows(self.path, cfg.text_columns, cfg.label_column, skip_bad_rows=cfg.skip_bad_rows,
                               quoting=cfg.quoting, chunk_rows=CHUNK_ROWS)
        for chunk in chunks:
            self.chunks += 1
            self.skipped += chunk.skipped
            kept = self._named(chunk)
            if len(kept):
                yield kept

    def _named(self, chunk: Rows) -> Rows:
        """The chunk's rows with their labels as class names (AG News's 1..4, --label-names); a label without
        one is an error naming the file and line, or a skipped row."""
        names: dict[str, str] | None
        if self.ag:
            names, problem = {str(i + 1): c for i, c in enumerate(ag_news.CLASSES)}, None
        else:
            names = self.cfg.label_names
            if names is None:
                return chunk
            problem = f"has no name in --label-names (named: {', '.join(list(names)[:20])})"
        out = Rows(chunk.path)
        for text, label, line in zip(chunk.texts, chunk.labels, chunk.lines):
            if label not in names:
                if not self.cfg.skip_bad_rows:
                    if problem is None:
                        raise DataError(f"AG News class must be 1..4, found {label!r}", self.path, line)
                    raise DataError(f"label {label[:100]!r} {problem}{SKIP_HINT}", self.path, line)
                self.skipped += 1
                continue
            out.texts.append(text)
            out.labels.append(names[label])
            out.lines.append(line)
        return out


def _tokens(tokenizer: Tokenizer, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """The tokens of `texts`, flat, and each text's count (an empty text: the one word _EMPTY)."""
    lists = [tokenizer(t) or [_EMPTY] for t in texts]
    return list(itertools.chain.from_iterable(lists)), np.fromiter(map(len, lists), np.int64, len(lists))


class _SplitWriter:
    """Writes one split's tokens (as they come), then its offsets and labels."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.tokens = ArrayWriter(root / f"{name}.tokens.safetensors", np.int32)
        self.lengths: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> None:
        self.tokens.append(ids)
        self.lengths.append(lengths)
        self.labels.append(labels)

    def close(self) -> dict[str, int]:
        self.tokens.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        write_array(self.root / f"{self.name}.offsets.safetensors", offsets)
        write_array(self.root / f"{self.name}.labels.safetensors",
                    np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64))
        return {"rows": int(lengths.size), "tokens": int(offsets[-1])}


def _build(cfg: DataConfig, seed: int, root: Path, key: str, progress: bool, log: Callable[[str], None],
           label_order: Callable[[list[str]], list[str]]) -> dict[str, Any]:
    from .split import stratified_indices

    t0, c0 = time.perf_counter(), time.process_time()
    tokenizer = Tokenizer(cfg.tokenizer, cfg.ngrams, cfg.max_len)
    scratch = root / ".build"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (root / "manifest.json").unlink(missing_ok=True)  # a store half rebuilt is no store

    ag = cfg.dataset == "ag_news"
    if ag:
        directory = _ag_news_dir(cfg)
        found = {s: ag_news.find_split(directory, s) for s in ("train", "test")}
        for split, p in found.items():
            if p is None:
                raise DataError(f"no {split}.csv or {split}.csv.gz in the AG News data directory", str(directory))
        train_path, test_path = str(found["train"]), cfg.test or str(found["test"])
        test_ag = cfg.test is None
    elif cfg.dataset is None:
        if not cfg.train:
            raise ConfigError("give --dataset ag_news or --train FILE")
        train_path, test_path, test_ag = cfg.train, cfg.test, False
    else:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; built in: ag_news (or use --train FILE)")

    # 1. the training file, streamed: provisional ids (first-seen order), lengths, labels
    words = _Words({_EMPTY: 0})
    label_ids: dict[str, int] = {}
    lengths_parts, label_parts = [], []
    source = _Source(cfg, train_path, ag)
    bar = _progress("reading " + Path(train_path).name, progress)
    with open(scratch / "ids", "wb") as ids_file:
        for chunk in source:
            flat, lengths = _tokens(tokenizer, chunk.texts)
            ids_file.write(np.fromiter(map(words.__getitem__, flat), np.int32, len(flat)).tobytes())
            lengths_parts.append(lengths)
            label_parts.append(np.fromiter((label_ids.setdefault(x, len(label_ids)) for x in chunk.labels),
                                           np.int64, len(chunk)))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    t_read, c_read = time.perf_counter(), time.process_time()
    lengths = np.concatenate(lengths_parts)
    prov_labels = np.concatenate(label_parts)
    del lengths_parts, label_parts
    n = lengths.size

    # 2. labels, the validation split, the vocabulary from the training rows' counts
    if ag:
        label_names = list(ag_news.CLASSES)
    else:
        label_names = label_order(list(label_ids))
        if cfg.label_names is not None:  # in the order given, those that occur in train
            seen = set(label_names)
            label_names = [x for x in cfg.label_names.values() if x in seen]
    index = {name: i for i, name in enumerate(label_names)}
    labels = np.array([index[x] for x in label_ids], np.int64)[prov_labels]
    del prov_labels
    in_valid = np.zeros(n, bool)
    split_valid = cfg.valid is None and cfg.valid_split > 0
    if split_valid:
        row_labels = [label_names[i] for i in labels.tolist()]  # references to a few strings, as in memory
        _, valid_rows = stratified_indices(row_labels, cfg.valid_split, seed)
        del row_labels
        in_valid[np.asarray(valid_rows, np.int64)] = True
        del valid_rows

    counts = np.zeros(len(words), np.int64)
    for ids, rows in _scratch_chunks(scratch / "ids", lengths):
        counts += np.bincount(ids[np.repeat(~in_valid[rows], lengths[rows])], minlength=len(words))
    counts[0] = 0
    if cfg.encoder:  # the pretrained encoder's vocabulary, unextended (as dataset.prepare)
        from .encoder_dir import load_vocab

        vocab = load_vocab(cfg.encoder)
    else:
        vocab = Vocab.from_counts(dict(zip(words, counts.tolist())), cfg.min_freq, cfg.max_vocab)
    if cfg.vocab_from_embeddings and cfg.embeddings:
        from .vectors import extend_vocab

        vocab = extend_vocab(vocab, cfg.embeddings, cfg.vocab_from_embeddings_max, cfg.max_vocab,
                             TOKENIZERS[cfg.tokenizer])
    vocab = vocab.with_unseen(cfg.unseen_words)
    remap = np.fromiter(map(vocab.lookup, words), np.int32, len(words))
    remap[0] = UNK_ID
    del words, counts
    t_vocab, c_vocab = time.perf_counter(), time.process_time()

    # 3. the scratch ids as vocabulary ids, each row to its split
    splits: dict[str, dict[str, int]] = {}
    skipped: dict[str, int] = {train_path: source.skipped} if source.skipped else {}
    train_w = _SplitWriter(root, "train")
    valid_w = _SplitWriter(root, "valid") if split_valid else None
    for ids, rows in _scratch_chunks(scratch / "ids", lengths):
        ids = remap[ids]
        mask = in_valid[rows]
        token_mask = np.repeat(mask, lengths[rows])
        train_w.add(ids[~token_mask], lengths[rows][~mask], labels[rows][~mask])
        if valid_w is not None:
            valid_w.add(ids[token_mask], lengths[rows][mask], labels[rows][mask])
    splits["train"] = train_w.close()
    if valid_w is not None:
        splits["valid"] = valid_w.close()
    chunks = source.chunks
    del lengths, labels, in_valid
    t_encode, c_encode = time.perf_counter(), time.process_time()

    # valid and test files: encoded as they are read, with the vocabulary now known
    for name, path, is_ag in (("valid", cfg.valid, False), ("test", test_path, test_ag)):
        if path is None:
            continue
        other = _Source(cfg, path, is_ag)
        splits[name], dropped = _encode_file(other, root, name, tokenizer, vocab, index, progress)
        if other.skipped + dropped:
            skipped[path] = other.skipped + dropped

    shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_text(root / "vocab.json", vocab.to_json())
    t_end, c_end = time.perf_counter(), time.process_time()
    # seconds of each stage (wall clock, and CPU of this process: on a shared machine the one that measures the
    # work): reading and tokenising the training file, the split and the vocabulary, encoding it into its
    # splits, reading and encoding the valid and test files
    stages = {"read": t_read - t0, "vocab": t_vocab - t_read, "encode": t_encode - t_vocab,
              "other_files": t_end - t_encode}
    cpu = {"read": c_read - c0, "vocab": c_vocab - c_read, "encode": c_encode - c_vocab,
           "other_files": c_end - c_encode}
    manifest = {"format": STORE_FORMAT, "key": key, "label_names": label_names, "splits": splits,
                "skipped": skipped, "chunks_read": chunks, "build_seconds": round(t_end - t0, 3),
                "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
                "stage_cpu_seconds": {k: round(v, 3) for k, v in cpu.items()}}
    atomic_write_json(root / "manifest.json", manifest)  # last: the store is complete
    log(f"token store: built {root} ({splits['train']['rows']:,} training rows, {splits['train']['tokens']:,} "
        f"tokens, vocabulary {len(vocab):,}) in {manifest['build_seconds']:.1f}s")
    return manifest


def _scratch_chunks(path: Path, lengths: np.ndarray) -> Iterator[tuple[np.ndarray, slice]]:
    """The provisional ids of CHUNK_ROWS rows at a time, with the rows' slice: read, not mapped, so the
    file's pages do not count as this process's memory."""
    with open(path, "rb") as f:
        for start in range(0, lengths.size, CHUNK_ROWS):
            rows = slice(start, min(start + CHUNK_ROWS, lengths.size))
            count = int(lengths[rows].sum())
            ids = np.fromfile(f, np.int32, count)
            if ids.size != count:
                raise DataError("the token store's scratch file is shorter than written (disk full?)", str(path))
            yield ids, rows


def _encode_file(source: _Source, root: Path, name: str, tokenizer: Tokenizer, vocab: Vocab,
                 index: dict[str, int], progress: bool) -> tuple[dict[str, int], int]:
    """A valid or test file into the store; its rows whose label the training data lack are an error (or,
    with --skip-bad-rows, dropped: their count is returned)."""
    writer = _SplitWriter(root, name)
    dropped = 0
    known = ", ".join(list(index)[:20])
    lookup = vocab.lookup
    bar = _progress("reading " + Path(source.path).name, progress)
    for chunk in source:
        keep = [i for i, x in enumerate(chunk.labels) if x in index]
        if len(keep) < len(chunk):
            if not source.cfg.skip_bad_rows:
                i = next(i for i, x in enumerate(chunk.labels) if x not in index)
                raise DataError(f"label {chunk.labels[i][:100]!r} never appears in the training data (known: "
                                f"{known}) (use --skip-bad-rows to skip such rows)", source.path, chunk.lines[i])
            dropped += len(chunk) - len(keep)
            chunk = chunk.take(keep)
        flat, lengths = _tokens(tokenizer, chunk.texts)
        ids = np.fromiter(map(lookup, flat), np.int32, len(flat))
        writer.add(ids, lengths, np.fromiter((index[x] for x in chunk.labels), np.int64, len(chunk)))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    out = writer.close()
    if out["rows"] == 0:
        raise DataError("no row has a label that appears in the training data", source.path)
    return out, dropped


# --- opening ------------------------------------------------------------------------------------------


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One process at a time builds or checks the store in `root` (the ranks of a distributed run)."""
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def open_split(root: Path, name: str) -> Encoded:
    """A split of the store as an Encoded whose tensors are the memory-mapped files."""
    tokens = open_array(root / f"{name}.tokens.safetensors", random_access=True)
    offsets, labels = (open_array(root / f"{name}.{part}.safetensors") for part in ("offsets", "labels"))
    if offsets.size != labels.size + 1 or (offsets.size and int(offsets[-1]) != tokens.size):
        raise DataError("the token store's arrays do not fit together; delete it to rebuild it", str(root))
    return Encoded(torch.from_numpy(tokens), torch.from_numpy(offsets), torch.from_numpy(labels))


def prepare_store(cfg: DataConfig, seed: int, progress: bool, log: Callable[[str], None] | None,
                  label_order: Callable[[list[str]], list[str]]) -> tuple[Any, ...]:
    """dataset.prepare() through the token store in cfg.token_store, built there (streamed) or reused when it
    was built from the same files and settings: the fields of a dataset.Prepared, which calls this (with
    its class order, `label_order`)."""
    if cfg.multi_label:
        raise ConfigError("--token-store does not take --multi-label yet; leave one of them out")
    if log is None:  # as the progress bars: shown unless quiet (and on rank 0 of a distributed run only)
        log = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    t0 = time.perf_counter()
    assert cfg.token_store is not None
    root = Path(cfg.token_store)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the token store directory: {e.strerror or e}", str(root)) from None
    if not root.is_dir():
        raise DataError("the token store must be a directory", str(root))
    key = store_key(cfg, seed)
    with _locked(root):
        manifest = _read_manifest(root)
        if manifest is None or manifest.get("key") != key:
            try:
                manifest = _build(cfg, seed, root, key, progress, log, label_order)
            except BaseException:  # a bad row, Ctrl-C, a full disk: no scratch left behind (and no manifest)
                shutil.rmtree(root / ".build", ignore_errors=True)
                for tmp in root.glob(".*.safetensors.tmp"):
                    tmp.unlink(missing_ok=True)
                raise
        else:
            log(f"token store: reusing {root} ({manifest['splits']['train']['rows']:,} training rows)")
    try:
        vocab = Vocab.from_json((root / "vocab.json").read_text(encoding="utf-8"), cfg.unseen_words)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the token store's vocabulary ({e}); delete the store to rebuild it",
                        str(root / "vocab.json")) from None
    parts = {name: open_split(root, name) if name in manifest["splits"] else None for name in SPLITS}
    tokenizer = Tokenizer(cfg.tokenizer, cfg.ngrams, cfg.max_len)
    return (tokenizer, vocab, manifest["label_names"], parts["train"], parts["valid"], parts["test"],
            dict(manifest["skipped"]), time.perf_counter() - t0)
