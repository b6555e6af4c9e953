"""Readers for CSV, TSV and JSONL files (optionally gzip-compressed).

Every problem is reported as a `DataError` naming the file and line; with `skip_bad_rows` a
bad row is skipped and counted instead."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

csv.field_size_limit(2**31 - 1)  # a 10 MB text field is legitimate data, not an error

FORMATS = ("csv", "tsv", "jsonl")


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


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".jsonl", "jsonl"),
                        (".ndjson", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    raise DataError("cannot tell the format from the file name; expected .csv, .tsv or .jsonl "
                    "(optionally .gz)", str(path))


def read_text_file(path: str | Path) -> str:
    """The whole file as text: gunzipped if needed, BOM removed, invalid UTF-8 reported by line."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", str(path))
    if path.is_dir():
        raise DataError("is a directory, expected a file", str(path))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", str(path)) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"corrupt or truncated gzip file ({e})", str(path)) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"invalid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8",
                        str(path), line) from None


def read_rows(
    path: str | Path,
    text_columns: list[str],
    label_column: str,
    *,
    fmt: str | None = None,
    header: bool = True,
    skip_bad_rows: bool = False,
) -> Rows:
    """Read texts and labels. With `header=False` (CSV/TSV), columns are 0-based indices."""
    fmt = fmt or detect_format(path)
    text = read_text_file(path)
    if fmt == "jsonl":
        return _read_jsonl(str(path), text, text_columns, label_column, skip_bad_rows)
    return _read_delimited(str(path), text, "," if fmt == "csv" else "\t", text_columns,
                           label_column, header, skip_bad_rows)


def _read_delimited(path: str, text: str, delimiter: str, text_columns: list[str], label_column: str,
                    header: bool, skip_bad_rows: bool) -> Rows:
    rows = Rows(path)
    if not text.strip():
        raise DataError("file is empty", path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        if header:
            names = next(reader)
            names = [n.strip() for n in names]
            missing = [c for c in [*text_columns, label_column] if c not in names]
            if missing:
                raise DataError(f"no column named {', '.join(map(repr, missing))}; the header has "
                                f"{', '.join(map(repr, names))} (use --text-column / --label-column)",
                                path, 1)
            text_idx = [names.index(c) for c in text_columns]
            label_idx = names.index(label_column)
            ncols = len(names)
        else:
            text_idx = [int(c) for c in text_columns]
            label_idx = int(label_column)
            ncols = None
        need = max([*text_idx, label_idx]) + 1
        start_line = reader.line_num
        for row in reader:
            line = start_line + 1
            start_line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if ncols is None:
                ncols = len(row)
            problem = None
            if len(row) < need:
                problem = f"expected {ncols} columns, found {len(row)}"
            elif len(row) != ncols:
                problem = f"expected {ncols} columns, found {len(row)}"
            elif not row[label_idx].strip():
                problem = "empty label"
            if problem:
                if skip_bad_rows:
                    rows.skipped += 1
                    continue
                raise DataError(problem + " (use --skip-bad-rows to skip such rows)", path, line)
            rows.texts.append(" ".join(row[i] for i in text_idx))
            rows.labels.append(row[label_idx].strip())
            rows.lines.append(line)
    except csv.Error as e:
        raise DataError(f"malformed {'CSV' if delimiter == ',' else 'TSV'} ({e}); check for an "
                        "unbalanced quote", path, reader.line_num) from None
    except StopIteration:
        raise DataError("file is empty", path) from None
    if not rows.texts:
        raise DataError("no data rows" + (" after the header" if header else ""), path)
    return rows


def _read_jsonl(path: str, text: str, text_columns: list[str], label_column: str,
                skip_bad_rows: bool) -> Rows:
    rows = Rows(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        problem = None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            obj, problem = None, f"invalid JSON ({e.msg})"
        if problem is None:
            if not isinstance(obj, dict):
                problem = "expected a JSON object per line"
            else:
                missing = [c for c in [*text_columns, label_column] if c not in obj]
                if missing:
                    problem = f"missing key {', '.join(map(repr, missing))}"
                elif obj[label_column] is None or str(obj[label_column]).strip() == "":
                    problem = "empty label"
                elif any(not isinstance(obj[c], (str, int, float)) for c in text_columns):
                    problem = "text must be a string"
        if problem:
            if skip_bad_rows:
                rows.skipped += 1
                continue
            raise DataError(problem + " (use --skip-bad-rows to skip such rows)", path, lineno)
        rows.texts.append(" ".join(str(obj[c]) for c in text_columns))
        rows.labels.append(str(obj[label_column]).strip())
        rows.lines.append(lineno)
    if not rows.texts:
        raise DataError("no data rows", path)
    return rows
