"""Pretrained word vectors: GloVe text, word2vec text and binary, fastText .vec.

A vector file is streamed once and only the vocabulary's words are kept, so a multi-GB file
needs memory for the vocabulary's vectors only. Formats are told apart by content, not name:

- GloVe: `word x1 ... xD` per line, no header;
- word2vec text / fastText .vec: a header line `COUNT DIM`, then GloVe-style lines;
- word2vec binary (GoogleNews .bin): the same header, then `word<space>` + DIM little-endian
  float32 per record (a newline after each record is optional).

Any of them may be gzip-compressed or inside a .zip archive (`glove.6B.zip` with one vector
file, or `glove.6B.zip/glove.6B.100d.txt` to pick a member).

Speed: a line's word is split off first and looked up; numbers are parsed only for kept words.
Every line is still checked for the right number of fields (a byte count, no parsing), so mixed
dimensions and truncated files are reported with the file and line."""

from __future__ import annotations

import gzip
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError
from .vocab import PAD_ID, Vocab

GLOVE, WORD2VEC, WORD2VEC_BINARY = "glove", "word2vec", "word2vec-binary"
FORMAT_NAMES = {GLOVE: "GloVe text", WORD2VEC: "word2vec/fastText text", WORD2VEC_BINARY: "word2vec binary"}
_BLOCK = 1 << 20  # bytes read at a time


@dataclass
class VectorFileInfo:
    path: str  # as shown in messages (archive/member for a .zip)
    format: str  # GLOVE | WORD2VEC | WORD2VEC_BINARY
    dim: int
    count: int | None  # vectors the header announces (None for GloVe)


@dataclass
class Lookup:
    """The vectors found for `words` (one row each; rows of words not found are zero)."""

    info: VectorFileInfo
    words: list[str]
    matrix: np.ndarray  # float32 [len(words), dim]
    found: np.ndarray  # bool [len(words)]
    exact: int  # words found as they are
    lowercase: int  # words found only through the lowercase fallback
    scanned: int  # vectors read from the file
    seconds: float

    @property
    def dim(self) -> int:
        return self.info.dim


# --- opening: plain, gzip, zip -------------------------------------------------------------


def _split_archive(path: Path) -> tuple[Path, str | None]:
    """`a.zip/member.txt` -> (a.zip, "member.txt") when `a.zip` is a file and the path is not."""
    if path.exists():
        return path, None
    for parent in path.parents:
        if parent.is_file() and zipfile.is_zipfile(parent):
            return parent, path.relative_to(parent).as_posix()
    raise DataError("no such file", str(path))


@contextmanager
def open_vector_file(path: str | Path) -> Iterator[tuple[BinaryIO, str]]:
    """A binary stream of the (decompressed) vector file and its name for messages."""
    real, member = _split_archive(Path(path))
    if real.is_dir():
        raise DataError("is a directory, expected a vector file", str(real))
    try:
        with _open_stream(real, member) as opened:
            yield opened
    except (EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt or truncated compressed file ({e})", str(real)) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", str(real)) from None


@contextmanager
def _open_stream(real: Path, member: str | None) -> Iterator[tuple[BinaryIO, str]]:
    with open(real, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(raw, "rb") as f:
                yield f, str(real)  # type: ignore[misc]
            return
        if magic == b"PK\x03\x04":
            with zipfile.ZipFile(raw) as z:
                name = _pick_member(z, member, str(real))
                with z.open(name) as m:
                    yield m, f"{real}/{name}"  # type: ignore[misc]
            return
        if member is not None:
            raise DataError("not a .zip archive", str(real))
        yield raw, str(real)


def _pick_member(z: zipfile.ZipFile, member: str | None, path: str) -> str:
    names = [n for n in z.namelist() if not n.endswith("/")]
    if member is not None:
        if member not in names:
            raise DataError(f"no member {member!r} in the archive; it holds {', '.join(names[:10])}", path)
        return member
    if len(names) == 1:
        return names[0]
    raise DataError(f"the archive holds {len(names)} files ({', '.join(names[:6])}"
                    f"{', ...' if len(names) > 6 else ''}); name one as {path}/MEMBER", path)


# --- format detection -----------------------------------------------------------------------


def _is_float(b: bytes) -> bool:
    try:
        float(b)
        return True
    except ValueError:
        return False


def _detect(head: bytes, path: str) -> tuple[VectorFileInfo, int]:
    """Format from the first bytes of the file; also the offset where the vectors start."""
    start = 3 if head.startswith(b"\xef\xbb\xbf") else 0  # UTF-8 BOM
    end = head.find(b"\n", start)
    if not head[start:].strip():
        raise DataError("empty file; expected word vectors (GloVe, word2vec or fastText .vec)", path)
    first = head[start:] if end < 0 else head[start:end]
    fields = first.split()
    not_vectors = ("not a word-vector file: line 1 should be a header 'COUNT DIM' (word2vec, fastText .vec) "
                   "or 'WORD x1 x2 ...' (GloVe)")
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
        count, dim = int(fields[0]), int(fields[1])
        if dim < 1:
            raise DataError(f"the header says {dim} dimensions", path, 1)
        if end < 0:
            if count == 0:
                raise DataError("the header announces no vectors", path, 1)
            raise DataError(f"truncated file: the header announces {count} vectors, the file ends after it", path, 1)
        body = end + 1
        # Text or binary? In a text file, line 2 ends in DIM numbers; float32 bytes almost never parse so.
        line2 = head[body:].split(b"\n", 1)[0].split()
        text = len(line2) >= dim + 1 and all(_is_float(x) for x in line2[-dim:])
        return VectorFileInfo(path, WORD2VEC if text else WORD2VEC_BINARY, dim, count), body
    if len(fields) >= 2 and all(_is_float(x) for x in fields[-min(len(fields) - 1, 5):]):
        if not all(_is_float(x) for x in fields[1:]):
            raise DataError(not_vectors, path, 1)
        return VectorFileInfo(path, GLOVE, len(fields) - 1, None), start
    raise DataError(not_vectors, path, 1)


def inspect_vectors(path: str | Path) -> VectorFileInfo:
    """Format and dimension from the start of the file, without reading it all."""
    with open_vector_file(path) as (f, name):
        return _detect(_read_head(f), name)[0]


def _read_head(f: BinaryIO) -> bytes:
    head = f.read(1 << 16)
    # The first line of a 300-d GloVe file can be long; make sure the head holds it and a bit of line 2.
    while head.count(b"\n") < 2:
        more = f.read(1 << 16)
        if not more:
            break
        head += more
    return head


# --- streaming records ----------------------------------------------------------------------


def _text_records(f: BinaryIO, head: bytes, start: int, info: VectorFileInfo) -> Iterator[tuple[int, bytes, bytes]]:
    """(line number, word, the line) of every vector line, each line checked for DIM numbers."""
    dim, path = info.dim, info.path
    lineno = 1 if info.format == WORD2VEC else 0
    seen = 0
    last_line = lineno
    buf = head[start:]
    while True:
        block = f.read(_BLOCK)
        eof = not block
        lines = (buf + block).split(b"\n")
        buf = b"" if eof else lines.pop()
        last = len(lines) - 1
        for i, line in enumerate(lines):
            lineno += 1
            sp = line.find(b" ")
            n = line.count(b" ", sp) if sp > 0 else -1
            if n != dim and not (n == dim + 1 and line[-1:] in (b" ", b"\r")):
                if not line.strip():
                    continue  # blank line
                word, line = _odd_line(line, dim, path, lineno, eof and i == last)
            else:
                word = line[:sp]
            seen += 1
            last_line = lineno
            yield lineno, word, line
        if eof:
            break
    if info.count is not None and seen != info.count:
        what = "ends after" if seen < info.count else "holds"
        raise DataError(f"the header (line 1) announces {info.count} vectors, the file {what} {seen}"
                        + ("; truncated download? (if you cut the file on purpose, fix the header)"
                           if seen < info.count else "; fix the header"), path, last_line)


def _odd_line(line: bytes, dim: int, path: str, lineno: int, final: bool) -> tuple[bytes, bytes]:
    """A line whose space count is off: extra whitespace, a word containing spaces (glove.840B has
    some), or an error."""
    fields = line.split()
    n = len(fields) - 1
    if n == dim:
        return fields[0], line
    if n > dim and not any(_is_float(x) for x in fields[1: n - dim + 1]):
        # "at name@domain.com 0.1 0.2 ...": the leading non-numbers are all part of the word
        return b" ".join(fields[: n - dim + 1]), line  # the numbers are parsed from the end
    if final and n < dim:
        raise DataError(f"truncated file: the last line has {max(n, 0)} of {dim} numbers", path, lineno)
    raise DataError(f"mixed dimensions: this line has {max(n, 0)} numbers, the file's vectors have {dim}",
                    path, lineno)


def _parse_text(line: bytes, dim: int, path: str, lineno: int) -> np.ndarray:
    parts = line.split()
    try:
        vec = np.array(parts[len(parts) - dim:], dtype=np.float32)
    except ValueError:
        bad = next(x for x in parts[len(parts) - dim:] if not _is_float(x))
        raise DataError(f"not a number: {bad[:40].decode('utf-8', 'replace')!r}", path, lineno) from None
    return vec


def _binary_records(f: BinaryIO, head: bytes, start: int, info: VectorFileInfo) -> Iterator[tuple[int, bytes, bytes]]:
    """(record number, word, DIM*4 bytes of float32) of every record."""
    size, path, count = 4 * info.dim, info.path, info.count or 0
    buf, pos = head[start:], 0
    eof = False
    offset = start  # bytes of the file before buf
    for rec in range(1, count + 1):
        while True:
            sp = buf.find(b" ", pos)
            if sp >= 0 and len(buf) - sp - 1 >= size:
                break
            if eof:
                where = f"record {rec} of the {count} the header announces (byte {offset + pos})"
                raise DataError(f"truncated file: it ends inside {where}", path)
            block = f.read(_BLOCK)
            eof = not block
            offset += pos
            buf, pos = buf[pos:] + block, 0
        word = buf[pos:sp].lstrip(b"\n")
        if not word or len(word) > 1000:
            raise DataError(f"record {rec} (byte {offset + pos}) does not start with a word; "
                            "a corrupt word2vec binary file?", path)
        yield rec, word, buf[sp + 1: sp + 1 + size]
        pos = sp + 1 + size
    rest = buf[pos:] + f.read(1024)
    if rest.strip():
        raise DataError(f"data after the {count} vectors the header announces (byte {offset + pos}); "
                        "a wrong header or a corrupt file", path)


def _parse_binary(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype="<f4").astype(np.float32)


@contextmanager
def _records(path: str | Path) -> Iterator[tuple[VectorFileInfo, Iterator[tuple[int, bytes, bytes]],
                                               Callable[[bytes, int], np.ndarray]]]:
    with open_vector_file(path) as (f, name):
        head = _read_head(f)
        info, start = _detect(head, name)
        if info.format == WORD2VEC_BINARY:
            yield info, _binary_records(f, head, start, info), lambda payload, _line: _parse_binary(payload)
        else:
            yield info, _text_records(f, head, start, info), \
                lambda line, lineno: _parse_text(line, info.dim, info.path, lineno)


def _lower(word: bytes) -> bytes:
    return word.lower() if word.isascii() else word.decode("utf-8", "replace").lower().encode("utf-8")


# --- the public functions ----------------------------------------------------------------------


def load_vectors(path: str | Path, words: Sequence[str], lowercase: bool = True) -> Lookup:
    """The vectors of `words` in the file at `path`. With `lowercase`, a word missing as it is
    takes the vector of the first file word equal to it when both are lowercased ("Paris" ->
    "paris", or "paris" -> "Paris" for a cased file)."""
    t0 = time.perf_counter()
    wanted: dict[bytes, int] = {}
    for i, w in enumerate(words):
        wanted.setdefault(w.encode("utf-8"), i)
    lower_wanted = {_lower(k) for k in wanted} if lowercase else set()
    exact: dict[int, np.ndarray] = {}
    by_lower: dict[bytes, np.ndarray] = {}
    scanned = 0
    with _records(path) as (info, records, parse):
        for lineno, word, payload in records:
            scanned += 1
            i = wanted.get(word)
            key = (word.lower() if word.isascii() else _lower(word)) if lowercase else b""
            hit = i is not None and i not in exact
            low = lowercase and key in lower_wanted and key not in by_lower
            if hit or low:
                vec = parse(payload, lineno)
                if hit:
                    exact[i] = vec  # type: ignore[index]
                if low:
                    by_lower[key] = vec
    matrix = np.zeros((len(words), info.dim), dtype=np.float32)
    found = np.zeros(len(words), dtype=bool)
    n_lower = 0
    for i, w in enumerate(words):
        vec = exact.get(i)
        if vec is None and lowercase:
            vec = by_lower.get(_lower(w.encode("utf-8")))
            n_lower += vec is not None
        if vec is not None:
            matrix[i], found[i] = vec, True
    return Lookup(info, list(words), matrix, found, len(exact), n_lower, scanned, time.perf_counter() - t0)


def embedding_matrix(lookup: Lookup, seed: int = 0, pad_id: int = PAD_ID) -> np.ndarray:
    """The lookup's vectors, words without one drawn from N(0, std of the found vectors), padding zero."""
    m = lookup.matrix.copy()
    found = lookup.found.copy()
    found[pad_id] = True  # padding stays zero
    missing = ~found
    std = float(lookup.matrix[lookup.found].std()) if lookup.found.any() else 0.0
    rng = np.random.default_rng(seed)
    m[missing] = rng.normal(0.0, std or 0.1, size=(int(missing.sum()), m.shape[1])).astype(np.float32)
    m[pad_id] = 0.0
    return m


def coverage(lookup: Lookup, token_ids: np.ndarray | None = None, special: int = 2) -> dict[str, float | int]:
    """Share of the vocabulary's words (without <pad>, <unk>) that have a vector and, given the
    training tokens as ids, share of training tokens whose word has one (<unk> counts as not)."""
    found = lookup.found[special:]
    out: dict[str, float | int] = {
        "vocab_words": int(found.size), "vocab_found": int(found.sum()),
        "vocab_coverage": float(found.mean()) if found.size else 0.0,
        "exact": lookup.exact, "lowercase": lookup.lowercase}
    if token_ids is not None:
        counts = np.bincount(np.asarray(token_ids, dtype=np.int64), minlength=len(lookup.found))
        total = int(counts.sum())
        hits = int(counts[: len(lookup.found)][lookup.found].sum())
        out.update(train_tokens=total, train_tokens_found=hits, token_coverage=hits / total if total else 0.0)
    return out


def describe(lookup: Lookup, cov: dict[str, float | int]) -> str:
    info = lookup.info
    text = (f"embeddings: {info.path} ({FORMAT_NAMES[info.format]}, {info.dim}d): {lookup.scanned:,} vectors "
            f"read in {lookup.seconds:.1f}s; vocabulary {cov['vocab_found']:,}/{cov['vocab_words']:,} words "
            f"found ({cov['vocab_coverage']:.1%}")
    if lookup.lowercase:
        text += f", {lookup.lowercase:,} by lowercase"
    text += ")"
    if "token_coverage" in cov:
        text += f", {cov['token_coverage']:.1%} of training tokens"
    return text


def extend_vocab(vocab: Vocab, path: str | Path, top: int, max_size: int | None = None,
                 split: Callable[[str], list[str]] | None = None) -> Vocab:
    """`vocab` plus the words among the first `top` of the vector file (the most frequent ones:
    these files are sorted by frequency) that it lacks, appended in file order; `max_size` caps
    the total. With `split` (the tokenizer), a file word enters as the single token the tokenizer
    makes of it ("Paris" -> "paris"); words it would split ("U.S.") are left out."""
    itos = list(vocab.itos)
    have = set(itos)
    limit = max_size if max_size is not None else len(itos) + top
    with _records(path) as (_info, records, _parse):
        for n, (_line, word, _payload) in enumerate(records):
            if n >= top or len(itos) >= limit:
                break
            token = word.decode("utf-8", "replace")
            if split is not None:
                parts = split(token)
                if len(parts) != 1:
                    continue
                token = parts[0]
            if token not in have:
                have.add(token)
                itos.append(token)
    return Vocab(itos)


# --- vectors for a vocabulary ------------------------------------------------------------------------


@dataclass
class Pretrained:
    weight: np.ndarray  # [vocab, dim] float32, ready for the embedding layer
    lookup: Lookup
    coverage: dict[str, float | int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """For metrics.json: which file, its format, and the coverage."""
        info = self.lookup.info
        return {"path": info.path, "format": info.format, "dim": info.dim, "vectors_read": self.lookup.scanned,
                "seconds": round(self.lookup.seconds, 3), **self.coverage}


def load_pretrained(path: str | Path, vocab: Vocab, train_tokens: np.ndarray | None = None, *,
                    lowercase: bool = True, seed: int = 0) -> Pretrained:
    """The embedding matrix for `vocab` from the vector file at `path`, and its coverage."""
    lookup = load_vectors(path, vocab.itos, lowercase)
    if not lookup.found[2:].any():
        raise DataError(f"none of the {len(vocab) - 2:,} vocabulary words has a vector in this file; "
                        "wrong language, or a tokenizer that does not match the file?", lookup.info.path)
    return Pretrained(embedding_matrix(lookup, seed), lookup, coverage(lookup, train_tokens))


def read_head_words(path: str | Path, n: int) -> list[str]:
    """The first `n` words of a vector file (for inspection and tests)."""
    out: list[str] = []
    with _records(path) as (_info, records, _parse):
        for _line, word, _payload in records:
            if len(out) >= n:
                break
            out.append(word.decode("utf-8", "replace"))
    return out


__all__ = ["GLOVE", "WORD2VEC", "WORD2VEC_BINARY", "Lookup", "Pretrained", "VectorFileInfo",
           "coverage", "describe", "embedding_matrix", "extend_vocab", "inspect_vectors",
           "load_pretrained", "load_vectors", "open_vector_file", "read_head_words"]
