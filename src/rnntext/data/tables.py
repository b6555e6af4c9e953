"""Whole tables in and out, streamed: the input of `rnntext predict --file F --output O`, every column of
it kept, and the writers of its output (CSV/TSV/JSONL, optionally .gz; Parquet; Arrow/Feather).

A TableReader reads a file in chunks (a list of records, or for Parquet/Arrow a pyarrow RecordBatch) with
the texts of each row; a TableWriter writes chunks of records plus new columns to a temporary file in the
output's directory and renames it over the output when all is written, so a failure leaves no half file.
Memory holds one chunk. Errors are one-line DataErrors naming the file and line (row for Parquet/Arrow)."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import QUOTINGS
from ..errors import ConfigError, DataError
from ..io import file_mode
from .readers import _UNDECODABLE, COLUMNAR, SKIP_HINT, _check_path, detect_format, open_text

CHUNK_ROWS = 8_192  # rows predicted and written at a time
CHUNK_CHARS = 8_000_000  # ... or fewer, once their texts hold this many characters (CSV/TSV/JSONL)


@dataclass
class Chunk:
    """Rows of the input: `records` (column -> value, in the file's column order) or, from Parquet/Arrow,
    `batch` (a pyarrow RecordBatch); `texts` to predict, one per row; `skipped` bad rows left out."""

    texts: list[str]
    records: list[dict[str, Any]] | None = None
    batch: Any = None
    skipped: int = 0
    rows: list[int] = field(default_factory=list)  # line (row) numbers, for errors
    chars: int = 0  # characters in `texts` (a CSV/TSV/JSONL chunk ends at CHUNK_CHARS)

    def add(self, record: dict[str, Any], text: str, row: int) -> None:
        assert self.records is not None
        self.records.append(record)
        self.texts.append(text)
        self.rows.append(row)
        self.chars += len(text)

    def to_records(self) -> list[dict[str, Any]]:
        return self.records if self.records is not None else self.batch.to_pylist()


class TableReader:
    """The rows of a CSV/TSV/JSONL (optionally .gz), Parquet or Arrow file, every column kept, in chunks."""

    def __init__(self, path: str, text_columns: list[str], *, quoting: str = "csv", skip_bad_rows: bool = False,
                 chunk_rows: int = CHUNK_ROWS):
        self.path, self.text_columns, self.quoting = path, text_columns, quoting
        self.skip_bad_rows, self.chunk_rows = skip_bad_rows, chunk_rows
        self.fmt = detect_format(path)
        if self.fmt not in COLUMNAR and quoting not in QUOTINGS:
            raise ConfigError(f"unknown quoting {quoting!r}; choose one of {', '.join(QUOTINGS)}")
        _check_path(Path(path))
        self.num_rows: int | None = None
        self.schema: Any = None  # Parquet/Arrow: the input's pyarrow schema
        if self.fmt in COLUMNAR:
            from .columnar import ColumnarFile, check_types

            with ColumnarFile(path, self.fmt) as f:
                f.require(text_columns, " (use --text-column)")
                check_types(f, text_columns, None)
                self.num_rows, self.schema = f.num_rows, f.schema

    def chunks(self) -> Iterator[Chunk]:
        if self.fmt in COLUMNAR:
            yield from self._columnar()
        elif self.fmt == "jsonl":
            yield from self._jsonl()
        else:
            yield from self._delimited()

    def _bad(self, problem: str, line: int, chunk: Chunk) -> None:
        if not self.skip_bad_rows:
            raise DataError(problem + SKIP_HINT, self.path, line)
        chunk.skipped += 1

    def _full(self, chunk: Chunk) -> bool:
        return len(chunk.texts) >= self.chunk_rows or chunk.chars >= CHUNK_CHARS

    def _columnar(self) -> Iterator[Chunk]:
        from .columnar import ColumnarFile, cells

        with ColumnarFile(self.path, self.fmt) as f:
            row = 1
            for batch in f.batches(None, self.chunk_rows):
                values = cells(f, batch, list(dict.fromkeys(self.text_columns)), row)
                chunk = Chunk([])
                keep = []
                for i in range(batch.num_rows):
                    parts = [values[c][i] for c in self.text_columns]
                    if any(p is None or (isinstance(p, float) and math.isnan(p)) for p in parts):
                        self._bad("the text is null" if len(parts) == 1 else "a text column is null", row + i, chunk)
                        keep.append(False)
                        continue
                    keep.append(True)
                    chunk.texts.append(" ".join(p if isinstance(p, str) else str(p) for p in parts))
                    chunk.rows.append(row + i)
                chunk.batch = batch if all(keep) else batch.filter(_mask(keep))
                row += batch.num_rows
                yield chunk

    def _jsonl(self) -> Iterator[Chunk]:
        with open_text(self.path, lenient=self.skip_bad_rows) as lines:
            chunk = Chunk([], records=[])
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                if _UNDECODABLE.search(line):
                    self._bad("invalid UTF-8", lineno, chunk)
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    self._bad(f"invalid JSON ({e.msg} at column {e.colno})", lineno, chunk)
                    continue
                except (RecursionError, ValueError):
                    self._bad("invalid JSON (nested too deeply, or a number out of range)", lineno, chunk)
                    continue
                if not isinstance(obj, dict):
                    self._bad(f"expected a JSON object per line, found {type(obj).__name__}", lineno, chunk)
                    continue
                missing = [c for c in self.text_columns if c not in obj]
                parts = [obj.get(c) for c in self.text_columns]
                if missing:
                    self._bad(f"missing key {', '.join(map(repr, missing))} (use --text-column)", lineno, chunk)
                    continue
                if any(p is None for p in parts):
                    self._bad("the text is null", lineno, chunk)
                    continue
                if not all(isinstance(p, (str, int, float)) and not isinstance(p, bool) for p in parts):
                    self._bad("text must be a string", lineno, chunk)
                    continue
                text = " ".join(p if isinstance(p, str) else str(p) for p in parts)
                chunk.add(obj, text, lineno)
                if self._full(chunk):
                    yield chunk
                    chunk = Chunk([], records=[])
            if chunk.texts or chunk.skipped:
                yield chunk

    def _delimited(self) -> Iterator[Chunk]:
        kind = "CSV" if self.fmt == "csv" else "TSV"
        with open_text(self.path, lenient=self.skip_bad_rows) as lines:
            blank = 0
            first = ""
            for first in lines:
                if first.strip():
                    break
                blank += 1
            else:
                raise DataError("file is empty", self.path)
            reader = csv.reader(itertools.chain([first], lines), delimiter="," if self.fmt == "csv" else "\t",
                                strict=True, quoting=csv.QUOTE_NONE if self.quoting == "none" else csv.QUOTE_MINIMAL)
            try:
                names = [n.strip() for n in next(reader)]
            except csv.Error as e:
                raise DataError(f"malformed {kind} header ({e})", self.path, blank + 1) from None
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise DataError(f"the header names a column twice: {', '.join(map(repr, dup))}", self.path, blank + 1)
            missing = [c for c in self.text_columns if c not in names]
            if missing:
                shown = ", ".join(repr(n[:40]) for n in names[:20]) + (", ..." if len(names) > 20 else "")
                raise DataError(f"no column named {', '.join(map(repr, missing))}; the header has {shown} "
                                "(use --text-column)", self.path, blank + 1)
            self.columns = names
            idx = [names.index(c) for c in self.text_columns]
            chunk = Chunk([], records=[])
            end = blank + reader.line_num
            while True:
                line = end + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    end = blank + reader.line_num
                    self._bad(f"malformed {kind} row ({e}); check for an unbalanced quote, or give --quoting none "
                              "if quotes are ordinary characters in this file", line, chunk)
                    continue
                end = blank + reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):  # a blank line, as the readers skip it
                    continue
                if len(row) != len(names):
                    self._bad(f"expected {len(names)} columns, found {len(row)}", line, chunk)
                    continue
                if self.skip_bad_rows and any(_UNDECODABLE.search(v) for v in row):
                    self._bad("invalid UTF-8", line, chunk)
                    continue
                text = " ".join(row[i] for i in idx)
                chunk.add(dict(zip(names, row)), text, line)
                if self._full(chunk):
                    yield chunk
                    chunk = Chunk([], records=[])
            if chunk.texts or chunk.skipped:
                yield chunk


def _mask(keep: list[bool]) -> Any:
    from .columnar import pyarrow

    return pyarrow().array(keep, type=pyarrow().bool_())


# --- writing -----------------------------------------------------------------------------------------


def output_format(path: str) -> str:
    try:
        return detect_format(path)
    except DataError:
        raise ConfigError(f"--output {path}: cannot tell the format from the name; use .csv, .tsv, .jsonl "
                          "(optionally .gz), .parquet or .feather / .arrow") from None


def _cell(value: Any) -> str:
    """A value as a CSV cell: nothing for null, JSON for lists and objects, true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class TableWriter:
    """Writes the input's columns plus new ones (`extra`: column -> values, the same columns every chunk; in
    JSONL, `nested` is added to each object under its key instead) to `path`, atomically."""

    def __init__(self, path: str, input_schema: Any = None, source: str = ""):
        self.path, self.source = path, source  # source: the input file, for errors
        self.fmt = output_format(path)
        self.input_schema = input_schema
        self.columns: list[str] | None = None  # CSV/TSV: the header, from the first chunk
        self.schema: Any = None  # Parquet/Arrow: the output's, from the first chunk
        self._writer: Any = None
        target = Path(path)
        if target.is_dir():
            raise ConfigError(f"--output {path} is a directory")
        fd, self.tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".",
                                        prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, file_mode())
        self._raw = os.fdopen(fd, "wb")
        self._text: Any = None
        if self.fmt not in COLUMNAR:
            binary: Any = gzip.GzipFile(fileobj=self._raw, mode="wb") if path.lower().endswith(".gz") else self._raw
            self._gz = binary if binary is not self._raw else None
            self._text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
            if self.fmt != "jsonl":
                self._csv = csv.writer(self._text, delimiter="," if self.fmt == "csv" else "\t", lineterminator="\n")

    def write(self, chunk: Chunk, extra: dict[str, list[Any]], nested: tuple[str, list[Any]]) -> None:
        if self.fmt == "jsonl":
            key, values = nested
            for record, value in zip(chunk.to_records(), values):
                self._text.write(_json_line({**record, key: value}) + "\n")
        elif self.fmt in COLUMNAR:
            self._write_arrow(chunk, extra)
        else:
            records = chunk.to_records()
            if self.columns is None:
                first = list(records[0]) if records else (list(self.input_schema.names) if self.input_schema else [])
                clash = [c for c in extra if c in first]
                if clash:
                    raise _clash(self.source, clash)
                self.columns = first + list(extra)
                self._csv.writerow(self.columns)
            inputs = [c for c in self.columns if c not in extra]
            for i, record in enumerate(records):
                unknown = [k for k in record if k not in inputs]
                if unknown:
                    raise DataError(f"key {unknown[0]!r} is not among the first row's keys, which made the output's "
                                    "columns (write .jsonl to keep each object whole)", self.source, chunk.rows[i])
                self._csv.writerow([_cell(record.get(c)) for c in inputs] + [_cell(extra[c][i]) for c in extra])

    def _write_arrow(self, chunk: Chunk, extra: dict[str, list[Any]]) -> None:
        from .columnar import pyarrow

        pa = pyarrow()
        if self.schema is None:
            base = chunk.batch.schema if chunk.batch is not None else pa.Table.from_pylist(chunk.to_records()).schema
            clash = [c for c in extra if c in base.names]
            if clash:
                raise _clash(self.source, clash)
            fields = list(base)
            for name, values in extra.items():
                fields.append(pa.field(name, _arrow_type(pa, values)))
            self.schema = pa.schema(fields)
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(self._raw, self.schema)
            else:
                self._writer = pa.ipc.new_file(self._raw, self.schema)
        n_in = len(self.schema) - len(extra)
        try:
            if chunk.batch is not None:
                inputs = list(chunk.batch.columns)
            else:
                table = pa.Table.from_pylist(chunk.to_records(), schema=pa.schema(list(self.schema)[:n_in]))
                inputs = [table.column(i).combine_chunks() for i in range(n_in)]
            arrays = inputs + [pa.array([_arrow_value(v) for v in values], type=self.schema.field(name).type)
                               for name, values in extra.items()]
            batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError) as e:
            where = f"rows at lines {chunk.rows[0]}..{chunk.rows[-1]}" if chunk.rows else "a chunk"
            raise DataError(f"{where} do not fit the columns' types of the first rows ({str(e)[:200]}); write "
                            ".jsonl or .csv instead", self.source) from None
        self._writer.write_batch(batch)

    def close(self) -> None:
        """Finish the file and put it in place."""
        if self._writer is not None:
            self._writer.close()
        if self._text is not None:
            self._text.flush()
            self._text.detach()
            if self._gz is not None:
                self._gz.close()
        elif self._writer is None and self.fmt in COLUMNAR:
            raise DataError("no rows to write", self.path)
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def _json_line(obj: dict[str, Any]) -> str:
    """One JSON object: dates, decimals and bytes (of a Parquet input) as text, NaN and infinities (which JSON
    has not) as null."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _clash(source: str, columns: list[str]) -> ConfigError:
    return ConfigError(f"{source or 'the input'}: already has columns named {', '.join(map(repr, columns[:3]))}"
                       + (", ..." if len(columns) > 3 else "") + ", as the prediction's would be; rename them, or "
                       "predict a file without them")


def _arrow_value(v: Any) -> Any:
    return list(v.items()) if isinstance(v, dict) else v


def _arrow_type(pa: Any, values: list[Any]) -> Any:
    """A column's type from its first values: strings, floats, or label -> probability maps."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, dict):
        return pa.map_(pa.string(), pa.float64())
    if isinstance(sample, bool):
        return pa.bool_()
    if isinstance(sample, (int, float)):
        return pa.float64()
    if isinstance(sample, list):
        return pa.list_(pa.string())
    return pa.string()
