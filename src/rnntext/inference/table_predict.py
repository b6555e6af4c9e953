"""`rnntext predict RUN --file in.csv|tsv|jsonl|parquet|feather --output out.csv|tsv|jsonl|parquet|feather`:
every row of a table predicted, in order, with all its columns (ids included) and the prediction's.

Streamed in constant memory: a chunk of rows is read (data/tables.py), predicted and written before the
next is read, so memory holds one chunk, whatever the number of rows; Parquet is written with
ParquetWriter, one batch per chunk. The output is written to a temporary file renamed into place at the end.

The prediction's columns come from `Prediction.to_dict()`, field by field, whatever fields it has: a
value becomes the column `prediction.FIELD`; a field of PER_CLASS (a value for every class: the
probabilities) one column per class, `prediction.FIELD.CLASS`; any other dict or list one column (JSON
text in CSV, a map or list in Parquet), such as a multi-label run's set of labels. In JSONL the whole
dict is added to each object under `prediction`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..data.tables import Chunk, TableReader, TableWriter
from ..errors import DataError
from .prediction import Prediction

PREFIX = "prediction"
# the fields of Prediction.to_dict() that hold a value for every class: spread one column per class (declared,
# not guessed from the values, so that the columns never depend on the rows: a multi-label run's `labels`
# may hold every class in some rows and is one column)
PER_CLASS = ("probabilities",)


class Layout:
    """How the fields of Prediction.to_dict() become columns, fixed by the first chunk so that every chunk
    has the same columns: a field of PER_CLASS is spread one column per class; any other is one column."""

    def __init__(self, dicts: list[dict[str, Any]], classes: Sequence[str]):
        self.classes = list(classes)
        self.fields: list[str] = []
        for d in dicts:
            self.fields += [k for k in d if k not in self.fields]
        self.spread = {f for f in self.fields if f in PER_CLASS}

    def columns(self, dicts: list[dict[str, Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for f in self.fields:
            if f in self.spread:
                for c in self.classes:
                    out[f"{PREFIX}.{f}.{c}"] = [(d.get(f) or {}).get(c) for d in dicts]
            else:
                out[f"{PREFIX}.{f}"] = [d.get(f) for d in dicts]
        return out


def text_chunks(texts: Sequence[str], size: int = 8_192) -> Iterator[Chunk]:
    """Texts given as arguments, on stdin or as lines of a text file: a table of one column, `text`."""
    for start in range(0, len(texts), size):
        part = list(texts[start:start + size])
        yield Chunk(part, records=[{"text": t} for t in part], rows=list(range(start + 1, start + 1 + len(part))))


def predict_chunks(chunks: Iterable[Chunk], predict: Callable[[list[str]], list[Prediction]],
                   total: int | None = None, progress: bool = True) -> Iterator[tuple[Chunk, list[Prediction]]]:
    """Each chunk with its predictions, under a progress bar (rows, on stderr)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit=" rows", desc="predict", file=sys.stderr, leave=False, dynamic_ncols=True,
                   mininterval=0.5)
    try:
        for chunk in chunks:
            preds = predict(chunk.texts) if chunk.texts else []
            yield chunk, preds
            if bar is not None:
                bar.update(len(chunk.texts) + chunk.skipped)
    finally:
        if bar is not None:
            bar.close()


def write_predictions(chunks: Iterable[Chunk], predict: Callable[[list[str]], list[Prediction]],
                      classes: Sequence[str], output: str, *, source: str = "", input_schema: Any = None,
                      total: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Predict every chunk and write it with its predictions to `output`: {"rows", "skipped", "output"}."""
    writer = TableWriter(output, input_schema, source)
    layout: Layout | None = None
    rows = skipped = 0
    try:
        for chunk, preds in predict_chunks(chunks, predict, total, progress):
            skipped += chunk.skipped
            if not preds:
                continue
            dicts = [p.to_dict() for p in preds]
            if layout is None:
                layout = Layout(dicts, classes)
            writer.write(chunk, layout.columns(dicts), (PREFIX, dicts))
            rows += len(preds)
        if layout is None:
            raise DataError("no rows to predict" + (f" ({skipped} bad rows skipped)" if skipped else ""),
                            source or None)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"rows": rows, "skipped": skipped, "output": output}


def predict_file(path: str, output: str, predict: Callable[[list[str]], list[Prediction]], classes: Sequence[str],
                 text_columns: list[str], *, quoting: str = "csv", skip_bad_rows: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Every row of the table `path` with its predictions, written to `output` (see the module's doc)."""
    reader = TableReader(path, text_columns, quoting=quoting, skip_bad_rows=skip_bad_rows)
    return write_predictions(reader.chunks(), predict, classes, output, source=path, input_schema=reader.schema,
                             total=reader.num_rows, progress=progress)
