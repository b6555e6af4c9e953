"""Parquet and Arrow IPC (Feather v2) files, read with pyarrow one record batch at a time: memory holds
a batch (and, for Parquet, the row group being decoded), not the file.

Errors are one-line DataErrors naming the file and, for a bad row, its row number: `data.parquet:7:
the text is null` is the 7th row (counted from 1, as lines are; there is no header row). A missing
column or a column of the wrong type names the file and the column. Needs pyarrow (the `data` extra).
This module reads; readers.iter_rows makes texts and labels of what it reads."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..errors import ConfigError, DataError


def pyarrow() -> ModuleType:
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError("Parquet and Arrow files need pyarrow: pip install 'rnntext[data]'") from None
    return pa


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class ColumnarFile:
    """An open Parquet or Arrow IPC file: its schema, its row count where the file says it, and its record
    batches (some columns, at most `batch_rows` rows each). Use as a context manager."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt = path, fmt
        pa = pyarrow()
        self._close: Any = None
        self.num_rows: int | None = None
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetFile(path)
                self._close = self._parquet
                self.schema = self._parquet.schema_arrow
                self.num_rows = self._parquet.metadata.num_rows
            else:
                # OSFile, not a memory map: the batches are read as they are asked for, and what was read is
                # freed with them (a map's touched pages stay in the process's memory)
                self._file = pa.OSFile(path, "rb")
                self._close = self._file
                try:
                    self._ipc: Any = pa.ipc.open_file(self._file)
                    self._random_access = True
                    counter = getattr(self._ipc, "count_rows", None)
                    self.num_rows = counter() if counter is not None else None
                except pa.ArrowInvalid:  # the streaming IPC format (.arrows) has no footer
                    self._file.seek(0)
                    self._ipc = pa.ipc.open_stream(self._file)
                    self._random_access = False
                self.schema = self._ipc.schema
        except (pa.ArrowException, OSError) as e:
            self.close()
            kind = "a Parquet" if fmt == "parquet" else "an Arrow IPC / Feather v2"
            raise DataError(f"cannot read as {kind} file ({_one_line(e)})", path) from None

    def __enter__(self) -> ColumnarFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._close is not None:
            self._close.close()
            self._close = None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def require(self, names: list[str], hint: str = " (use --text-column / --label-column)") -> None:
        missing = [c for c in names if c not in self.schema.names]
        if missing:
            shown = ", ".join(repr(n[:40]) for n in self.schema.names[:20]) + (
                ", ..." if len(self.schema.names) > 20 else "")
            raise DataError(f"no column named {', '.join(map(repr, missing))}; the file has {shown}{hint}", self.path)

    def batches(self, columns: list[str] | None = None, batch_rows: int = 65_536) -> Iterator[Any]:
        """pyarrow RecordBatches of at most `batch_rows` rows, in file order."""
        pa = pyarrow()
        try:
            if self.fmt == "parquet":
                yield from self._parquet.iter_batches(batch_size=batch_rows, columns=columns)
                return
            stream = ((self._ipc.get_batch(i) for i in range(self._ipc.num_record_batches))
                      if self._random_access else iter(self._ipc))
            for batch in stream:
                if columns is not None:
                    batch = batch.select(columns)
                for start in range(0, batch.num_rows, batch_rows):  # slices share the batch's memory
                    yield batch.slice(start, batch_rows)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read: corrupt or truncated file ({_one_line(e)})", self.path) from None


def _is_text_type(pa: ModuleType, t: Any) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t)
            or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t))


def _is_label_list(pa: ModuleType, t: Any) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text_type(pa, t.value_type)


def check_types(f: ColumnarFile, text_columns: list[str], label_column: str | None,
                label_separator: str | None = None) -> None:
    """A one-line DataError naming the file and column where a column cannot hold texts or labels."""
    pa = pyarrow()
    for name in text_columns:
        t = f.schema.field(name).type
        if not _is_text_type(pa, t):
            raise DataError(f"column {name!r} holds {t}; a text column must hold strings (or numbers)", f.path)
    if label_column is not None:
        t = f.schema.field(label_column).type
        if pa.types.is_boolean(t) or not (_is_text_type(pa, t) or _is_label_list(pa, t)):
            raise DataError(f"column {label_column!r} holds {t}; a label column must hold strings or integers"
                            + (" (or lists of them, with --multi-label)" if label_separator is None else
                               " or lists of them"), f.path)


def cells(f: ColumnarFile, batch: Any, names: list[str], first_row: int) -> dict[str, list[Any]]:
    """The values of `names` in `batch` as Python lists (`first_row`: the batch's first row number, for errors)."""
    try:
        return {name: batch.column(name).to_pylist() for name in names}
    except UnicodeDecodeError as e:  # a string column that is not UTF-8
        raise DataError(f"invalid UTF-8 in rows {first_row}..{first_row + batch.num_rows - 1} ({e.reason})",
                        f.path) from None
