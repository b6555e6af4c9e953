"""Readers for CSV, TSV and JSONL files (optionally gzip-compressed); Parquet and Arrow/Feather files
through data/columnar.py. `iter_rows` reads any of them in chunks, `read_rows` whole.

Every problem is reported as a one-line `DataError` naming the file and line; with `skip_bad_rows`
a bad row is skipped and counted instead. Handled: a UTF-8 BOM, CRLF / CR line ends, invalid
UTF-8 (the row is bad), unbalanced quotes, too few / too many columns, huge fields, empty and
header-only files, empty labels, JSON that is not an object or nests without end, truncated gzip."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import QUOTINGS
from ..errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet", "arrow")
COLUMNAR = ("parquet", "arrow")  # read with pyarrow (data/columnar.py), in record batches
# rows per chunk of iter_rows: what a streaming reader holds at a time
CHUNK_ROWS = 65_536
SKIP_HINT = " (use --skip-bad-rows to skip such rows)"
# Data given from Python instead of files (data/memory.py): while a training reads it, its name ("<train:
# DataFrame(...)>", what config.json records) stands for a file, read by a function of (text_columns,
# label_column, skip_bad_rows, label_separator, chunk_rows) that yields chunks as iter_rows does.
_IN_MEMORY: ContextVar[Mapping[str, Callable[..., Iterator[Rows]]] | None] = ContextVar("rnntext_in_memory",
                                                                                 default=None)
# Bytes that are not UTF-8 decode (with surrogateescape) to lone surrogates: a row holding one is bad.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass
class Rows:
    """Texts and their labels (as strings) read from one file."""

    path: str
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # where each row starts, for error messages
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int], path: str | None = None, skipped: int = 0) -> Rows:
        """The rows at `idx`, in that order."""
        return Rows(self.path if path is None else path, [self.texts[i] for i in idx],
                    [self.labels[i] for i in idx], [self.lines[i] for i in idx] if self.lines else [], skipped)


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".jsonl", "jsonl"),
                        (".ndjson", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    for suffix, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".feather", "arrow"), (".arrow", "arrow"),
                        (".ipc", "arrow"), (".arrows", "arrow")):
        if str(path).lower().endswith(suffix):  # compressed inside: no .gz
            return fmt
    raise DataError("cannot tell the format from the file name; expected .csv, .tsv or .jsonl "
                    "(optionally .gz), .parquet, or .feather / .arrow", str(path))


# Limits on what one input file may cost (docs/guides/limits.md, "Files and run directories"). Files are
# streamed: memory holds the parsed rows, not the file's text.
MAX_INPUT_BYTES = 4 * 2**30  # the (decompressed) size of one input file
MAX_GZIP_RATIO = 100  # decompressed : compressed bytes, checked once MAX_GZIP_RATIO_AFTER bytes came out
MAX_GZIP_RATIO_AFTER = 64 * 2**20
MAX_LINE_CHARS = 64 * 2**20  # characters in one physical line (a 10 MB text field is data; /dev/zero is not)
_CHUNK = 1 << 16
# a 10 MB text field is legitimate data, not an error; a quote that never closes stops at the limit
csv.field_size_limit(MAX_LINE_CHARS)


class _Guarded(io.RawIOBase):
    """The bytes of an input file (gunzipped if it is gzip), stopping with a one-line DataError where the
    file grows past MAX_INPUT_BYTES or a gzip stream expands more than MAX_GZIP_RATIO : 1."""

    def __init__(self, raw: Any, path: str):
        super().__init__()
        self.raw, self.path, self.total = raw, path, 0
        self.gz: gzip.GzipFile | None = None
        if raw.peek(2)[:2] == b"\x1f\x8b":
            self.gz = gzip.GzipFile(fileobj=raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            n = (self.gz or self.raw).readinto(buffer)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"corrupt or truncated gzip file ({e})", self.path) from None
        except OSError as e:
            if self.gz is not None:
                raise DataError(f"corrupt or truncated gzip file ({e})", self.path) from None
            raise DataError(f"cannot read: {e.strerror or e}", self.path) from None
        self.total += n or 0
        if self.total > MAX_INPUT_BYTES:
            raise DataError(f"larger than {MAX_INPUT_BYTES:,} bytes{' when decompressed' if self.gz else ''}, the "
                            "limit for an input file; split it", self.path)
        if self.gz is not None and self.total > MAX_GZIP_RATIO_AFTER:
            packed = max(1, self.raw.tell())
            if self.total > MAX_GZIP_RATIO * packed:
                raise DataError(f"gzip file expands more than {MAX_GZIP_RATIO}:1 ({packed:,} bytes gave "
                                f"{self.total:,}); not a text file, or a decompression bomb", self.path)
        return n or 0

    def close(self) -> None:
        try:
            if self.gz is not None:
                self.gz.close()
            self.raw.close()
        finally:
            super().close()


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataError("no such file", str(path))
    if path.is_dir():
        raise DataError("is a directory, expected a file", str(path))


@contextmanager
def open_text(path: str | Path, *, lenient: bool = False) -> Iterator[_Lines]:
    """The physical lines of a file (see _Lines), streamed: gunzipped if needed, BOM removed, invalid
    UTF-8 reported by line. With `lenient`, undecodable bytes become lone surrogates instead (see
    _UNDECODABLE) so that the reader can skip just the rows that hold them."""
    path = Path(path)
    _check_path(path)
    try:
        raw = open(path, "rb", buffering=_CHUNK)  # noqa: SIM115 (closed by _Guarded)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", str(path)) from None
    try:
        guarded = _Guarded(raw, str(path))
    except OSError as e:
        raw.close()
        raise DataError(f"cannot read: {e.strerror or e}", str(path)) from None
    stream = io.TextIOWrapper(io.BufferedReader(guarded, _CHUNK), encoding="utf-8-sig",
                              errors="surrogateescape", newline="")
    try:
        yield _Lines(stream, str(path), strict=not lenient)
    finally:
        stream.close()


class _Lines:
    """An iterator over the physical lines of a text stream (line ends kept; LF, CRLF and CR end a line),
    counting them in `count`. A line longer than MAX_LINE_CHARS, and (unless lenient) a line with
    invalid UTF-8, is a one-line DataError naming the file and line."""

    def __init__(self, stream: io.TextIOWrapper, path: str, strict: bool):
        self.stream, self.path, self.strict, self.count = stream, path, strict, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.stream.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        self.count += 1
        if len(line) > MAX_LINE_CHARS:
            raise DataError(f"a line longer than {MAX_LINE_CHARS:,} characters, the limit; is this a text file?",
                            self.path, self.count)
        if self.strict:
            bad = _UNDECODABLE.search(line)
            if bad:
                raise DataError(f"invalid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x}); save the file as UTF-8",
                                self.path, self.count)
        return line


def iter_text_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file (as str.splitlines gives them), streamed under the limits above."""
    with open_text(path) as lines:
        for line in lines:
            yield from line.splitlines()


def read_text_file(path: str | Path, *, lenient: bool = False) -> str:
    """The whole file as text (under the limits above): gunzipped if needed, BOM removed, invalid UTF-8
    reported by line. With `lenient`, undecodable bytes become lone surrogates instead."""
    with open_text(path, lenient=lenient) as lines:
        return "".join(lines)


def read_rows(
    path: str | Path,
    text_columns: list[str],
    label_column: str,
    *,
    fmt: str | None = None,
    header: bool = True,
    skip_bad_rows: bool = False,
    quoting: str = "csv",
    label_separator: str | None = None,
) -> Rows:
    """Read texts and labels. With `header=False` (CSV/TSV), columns are 0-based indices; `quoting`:
    one of QUOTINGS (CSV/TSV). `label_separator` (multi-label): a JSONL label may also be a list, kept
    as its labels joined by the separator (which none may hold), the way a CSV/TSV column has them.
    Parquet and Arrow files: see data/columnar.py (their row numbers stand where lines do)."""
    return merge_rows(iter_rows(path, text_columns, label_column, fmt=fmt, header=header, skip_bad_rows=skip_bad_rows,
                                quoting=quoting, label_separator=label_separator, chunk_rows=sys.maxsize))


def iter_rows(
    path: str | Path,
    text_columns: list[str],
    label_column: str,
    *,
    fmt: str | None = None,
    header: bool = True,
    skip_bad_rows: bool = False,
    quoting: str = "csv",
    label_separator: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[Rows]:
    """read_rows in chunks: Rows of at most `chunk_rows` rows each, in file order, read as they are asked
    for, so memory holds one chunk (and a streaming reader's buffer), not the file. A chunk's `skipped`
    counts the bad rows skipped since the previous chunk (the last chunk may hold only a count). The errors
    are read_rows's; a file without a good row is one after its skipped rows were counted."""
    source = (_IN_MEMORY.get() or {}).get(str(path))
    if source is not None:  # data given from Python (data/memory.py)
        yield from source(text_columns, label_column, skip_bad_rows, label_separator, chunk_rows)
        return
    if str(path).startswith("<") and str(path).endswith(">"):
        raise DataError("data given from Python when the run was trained, not a file; give it again from Python "
                        "(rnntext.resume(RUN, train=...)) or name a file", str(path))
    fmt = fmt or detect_format(path)
    if fmt in COLUMNAR:
        yield from _iter_columnar(str(path), fmt, text_columns, label_column, skip_bad_rows, label_separator,
                                  chunk_rows)
        return
    if fmt != "jsonl" and quoting not in QUOTINGS:
        raise DataError(f"unknown quoting {quoting!r}; choose one of {', '.join(QUOTINGS)}", str(path))
    with open_text(path, lenient=skip_bad_rows) as lines:
        if fmt == "jsonl":
            yield from _iter_jsonl(str(path), lines, text_columns, label_column, skip_bad_rows, label_separator,
                                   chunk_rows)
        else:
            yield from _iter_delimited(str(path), lines, "," if fmt == "csv" else "\t", text_columns,
                                       label_column, header, skip_bad_rows, quoting, chunk_rows)


def label_problem(value: Any, label_separator: str | None) -> tuple[str | None, str]:
    """(what is wrong with a label cell of a Parquet / Arrow file or of data given from Python, or None; the
    label as a string): strings and numbers, as in JSONL; a list with a label separator (multi-label)."""
    if value is None:
        return "the label is null", ""
    if isinstance(value, list):
        problem, joined = _label_list(value, label_separator)
        return problem, joined if problem is None else ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"label must be a string or a number, found {type(value).__name__}", ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"label must be a finite number, found {value}", ""
    label = str(value).strip()
    return (None, label) if label else ("empty label", "")


def rows_of_cells(rows: Rows, cells: Mapping[str, Sequence[Any]], first_row: int, text_columns: list[str],
                  label_column: str, skip_bad_rows: bool, label_separator: str | None) -> None:
    """Append to `rows` the good rows of a batch of columns (`cells`: column -> values; row numbers from
    `first_row`); a bad row (null text, bad label) is a DataError naming the row, or skipped and counted."""
    texts = [cells[c] for c in text_columns]
    for i, value in enumerate(cells[label_column]):
        parts = [column[i] for column in texts]
        problem, label = None, ""
        if any(p is None or (isinstance(p, float) and math.isnan(p)) for p in parts):
            problem = "the text is null" if len(parts) == 1 else "a text column is null"
        elif not all(isinstance(p, (str, int, float)) and not isinstance(p, bool) for p in parts):
            problem = "text must be a string"
        else:
            problem, label = label_problem(value, label_separator)
        if problem is not None:
            if not skip_bad_rows:
                raise DataError(problem + SKIP_HINT, rows.path, first_row + i)
            rows.skipped += 1
            continue
        rows.texts.append(" ".join(p if isinstance(p, str) else str(p) for p in parts))
        rows.labels.append(label)
        rows.lines.append(first_row + i)


def chunk_batches(path: str, batches: Iterable[tuple[int, Mapping[str, Sequence[Any]]]], text_columns: list[str],
                  label_column: str, skip_bad_rows: bool, label_separator: str | None,
                  chunk_rows: int) -> Iterator[Rows]:
    """iter_rows's chunks from batches of columns ((first row number, column -> values), each of at most
    `chunk_rows` rows): Parquet and Arrow files, data given from Python."""
    rows, emitted = Rows(path), 0
    for first_row, cells in batches:
        rows_of_cells(rows, cells, first_row, text_columns, label_column, skip_bad_rows, label_separator)
        if len(rows) >= chunk_rows:
            emitted += len(rows)
            cut = Rows(path, rows.texts[chunk_rows:], rows.labels[chunk_rows:], rows.lines[chunk_rows:])
            del rows.texts[chunk_rows:], rows.labels[chunk_rows:], rows.lines[chunk_rows:]
            yield rows
            rows = cut
    if not rows.texts and not emitted:
        raise DataError("no data rows" + (f" ({rows.skipped} bad rows skipped)" if rows.skipped else ""), path)
    if rows.texts or rows.skipped:
        yield rows


def _iter_columnar(path: str, fmt: str, text_columns: list[str], label_column: str, skip_bad_rows: bool,
                   label_separator: str | None, chunk_rows: int) -> Iterator[Rows]:
    """iter_rows for a Parquet or Arrow file (data/columnar.py): the chunks' `lines` are row numbers, from 1."""
    from .columnar import ColumnarFile, cells, check_types

    _check_path(Path(path))
    with ColumnarFile(path, fmt) as f:
        f.require([*text_columns, label_column])
        check_types(f, text_columns, label_column, label_separator)
        wanted = list(dict.fromkeys([*text_columns, label_column]))

        def batches() -> Iterator[tuple[int, dict[str, list[Any]]]]:
            row = 1
            for batch in f.batches(wanted, min(chunk_rows, CHUNK_ROWS)):
                yield row, cells(f, batch, wanted, row)
                row += batch.num_rows

        yield from chunk_batches(path, batches(), text_columns, label_column, skip_bad_rows, label_separator,
                                 chunk_rows)


def merge_rows(chunks: Iterable[Rows]) -> Rows:
    """The chunks of iter_rows as one Rows."""
    merged: Rows | None = None
    for chunk in chunks:
        if merged is None:
            merged = chunk
            continue
        merged.texts += chunk.texts
        merged.labels += chunk.labels
        merged.lines += chunk.lines
        merged.skipped += chunk.skipped
    assert merged is not None  # iter_rows yields a chunk or raises
    return merged


def _iter_delimited(path: str, lines: _Lines, delimiter: str, text_columns: list[str], label_column: str,
                    header: bool, skip_bad_rows: bool, quoting: str = "csv",
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[Rows]:
    rows = Rows(path)
    emitted = 0
    kind = "CSV" if delimiter == "," else "TSV"
    # blank lines before the first one with text: a header-less file skips them; with a header, the first
    # line is the header (a blank one names no columns)
    first = ""
    blank = 0
    for first in lines:
        if first.strip():
            break
        blank += 1
    else:
        raise DataError("file is empty", path)
    if header and blank:
        first, blank = "\n", 0  # the blank first line is the header: the missing-column error follows
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter, strict=True,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)

    def bad(problem: str, line: int) -> None:
        if not skip_bad_rows:
            raise DataError(problem + SKIP_HINT, path, line)
        rows.skipped += 1

    if header:
        try:
            names = [n.strip() for n in next(reader)]
        except csv.Error as e:
            raise DataError(f"malformed {kind} header ({e})", path, 1) from None
        if _UNDECODABLE.search("".join(names)):
            raise DataError("invalid UTF-8 in the header; save the file as UTF-8", path, 1)
        missing = [c for c in [*text_columns, label_column] if c not in names]
        if missing:
            shown = ", ".join(repr(n[:40]) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataError(f"no column named {', '.join(map(repr, missing))}; the header has {shown} "
                            f"(use --text-column / --label-column)", path, 1)
        text_idx = [names.index(c) for c in text_columns]
        label_idx = names.index(label_column)
        ncols: int | None = len(names)
    else:
        text_idx = [int(c) for c in text_columns]
        label_idx = int(label_column)
        ncols = None
    need = max([*text_idx, label_idx]) + 1
    end = blank + reader.line_num  # the last physical line consumed so far
    while True:
        line = end + 1  # where the next row starts (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = blank + reader.line_num
            bad(f"malformed {kind} row ({e}); check for an unbalanced quote, or give --quoting none if "
                "quotes are ordinary characters in this file", line)
            continue
        end = blank + reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if ncols is None:
            ncols = max(len(row), need)
        if len(row) != ncols:
            bad(f"expected {ncols} columns, found {len(row)}", line)
        elif skip_bad_rows and any(_UNDECODABLE.search(field) for field in row):
            bad("invalid UTF-8", line)
        elif not row[label_idx].strip():
            bad("empty label", line)
        else:
            rows.texts.append(" ".join(row[i] for i in text_idx))
            rows.labels.append(row[label_idx].strip())
            rows.lines.append(line)
            if len(rows) >= chunk_rows:
                emitted += len(rows)
                yield rows
                rows = Rows(path)  # `bad` counts into the new chunk
    if not rows.texts and not emitted:
        raise DataError("no data rows" + (" after the header" if header else "")
                        + (f" ({rows.skipped} bad rows skipped)" if rows.skipped else ""), path)
    if rows.texts or rows.skipped:
        yield rows


def _iter_jsonl(path: str, lines: _Lines, text_columns: list[str], label_column: str,
                skip_bad_rows: bool, label_separator: str | None = None,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[Rows]:
    rows = Rows(path)
    emitted = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = None
        obj = None
        if skip_bad_rows and _UNDECODABLE.search(line):
            problem = "invalid UTF-8"
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"invalid JSON ({e.msg} at column {e.colno})"
            except RecursionError:
                problem = "invalid JSON (nested too deeply)"
            except ValueError as e:  # e.g. an integer of 5,000 digits
                problem = f"invalid JSON ({str(e)[:100]})"
        if problem is None:
            if not isinstance(obj, dict):
                problem = f"expected a JSON object per line, found {type(obj).__name__}"
            else:
                missing = [c for c in [*text_columns, label_column] if c not in obj]
                label = obj.get(label_column)
                if missing:
                    problem = f"missing key {', '.join(map(repr, missing))}"
                elif isinstance(label, list):
                    problem, obj[label_column] = _label_list(label, label_separator)
                    if problem is None and any(not isinstance(obj[c], (str, int, float)) for c in text_columns):
                        problem = "text must be a string"
                elif not isinstance(label, (str, int, float)) or isinstance(label, bool):
                    problem = f"label must be a string or a number, found {type(label).__name__}"
                elif isinstance(label, float) and not math.isfinite(label):
                    problem = f"label must be a finite number, found {label} (NaN, Infinity or out of range)"
                elif str(label).strip() == "":
                    problem = "empty label"
                elif any(not isinstance(obj[c], (str, int, float)) for c in text_columns):
                    problem = "text must be a string"
        if problem:
            if skip_bad_rows:
                rows.skipped += 1
                continue
            raise DataError(problem + SKIP_HINT, path, lineno)
        rows.texts.append(" ".join(str(obj[c]) for c in text_columns))
        rows.labels.append(str(obj[label_column]).strip())
        rows.lines.append(lineno)
        if len(rows) >= chunk_rows:
            emitted += len(rows)
            yield rows
            rows = Rows(path)
    if not rows.texts and not emitted:
        raise DataError("no data rows" + (f" ({rows.skipped} bad rows skipped)" if rows.skipped else ""), path)
    if rows.texts or rows.skipped:
        yield rows


def _label_list(items: list[Any], separator: str | None) -> tuple[str | None, Any]:
    """(problem, label): a JSONL list of labels (multi-label) as one label string, its labels joined by
    `separator`; or what is wrong with it."""
    if separator is None:
        return "label must be a string or a number, found a list (give --multi-label for sets of labels)", items
    if not items:
        return "empty label list", items
    for item in items:
        if not isinstance(item, (str, int, float)) or isinstance(item, bool) or (
                isinstance(item, float) and not math.isfinite(item)):
            return f"labels in a list must be strings or finite numbers, found {type(item).__name__}", items
        if not str(item).strip():
            return "empty label in the list", items
        if separator in str(item):
            return (f"label {str(item)[:100]!r} holds the label separator {separator!r}; choose another "
                    "--label-separator"), items
    return None, separator.join(str(item).strip() for item in items)
