"""Training data held in Python instead of files: `rnntext.train(cfg, RUN, train=df, valid=..., test=...)`
with a pandas DataFrame, a Hugging Face `datasets.Dataset`, a pyarrow Table, a dict of columns, or plain
lists `(texts, labels)`.

Nothing is written to disk: while a training runs, each object is given a name that stands for a file,
"<train: DataFrame(12,000 rows, columns id, text, label)>", and readers.iter_rows reads it in chunks,
with the same columns options (cfg.data.text_columns, label_column), checks and errors as a Parquet
file's, and multi-label, stratification and streaming work on it unchanged. That name is what the run's
config.json records as data.train / valid / test. A bad row is a one-line DataError naming the data and
the row's position (from 0, as `df.iloc[i]` and `texts[i]` count): "<train: DataFrame(...)>:4: the
text is null". None of pandas, datasets or pyarrow is imported unless such an object is given (each is
recognised by its attributes)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from ..config import DataConfig, RunConfig
from ..errors import ConfigError, DataError
from .readers import _IN_MEMORY, CHUNK_ROWS, Rows, chunk_batches

ROLES = ("train", "valid", "test")
# column -> values of one batch, from a start position and the batch's rows
Batches = Callable[[list[str], int], Iterator[tuple[int, dict[str, list[Any]]]]]


@dataclass
class Source:
    """One object given from Python: its name (what config.json records), columns and row count, and a
    function that reads some columns in batches of at most N rows: (first position, column -> values)."""

    name: str
    kind: str
    columns: list[str]
    num_rows: int | None
    batches: Batches


def _is_null(v: Any) -> bool:
    """None, NaN, pandas.NA / NaT: a missing cell."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType")


def _show_columns(columns: list[str]) -> str:
    return ", ".join(c[:40] for c in columns[:10]) + (", ..." if len(columns) > 10 else "")


def _describe(kind: str, num_rows: int | None, columns: list[str]) -> str:
    rows = f"{num_rows:,} rows" if num_rows is not None else "rows"
    return f"{kind}({rows}, columns {_show_columns(columns)})"


def _dataframe(df: Any) -> tuple[str, list[str], int, Batches]:
    names = {str(c): c for c in df.columns}
    if len(names) != len(df.columns):
        raise ConfigError("the DataFrame has two columns of the same name")

    def batches(columns: list[str], n: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
        for start in range(0, len(df), n):
            yield start, {c: [None if _is_null(v) else v for v in df[names[c]].iloc[start:start + n].tolist()]
                          for c in columns}

    return "DataFrame", list(names), len(df), batches


def _hf_dataset(ds: Any) -> tuple[str, list[str], int | None, Batches]:
    features = getattr(ds, "features", None) or {}

    def batches(columns: list[str], n: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
        picked = ds.select_columns(columns) if hasattr(ds, "select_columns") else ds
        start = 0
        for batch in picked.iter(batch_size=n):
            out = {}
            for c in columns:
                values = list(batch[c])
                names = getattr(features.get(c), "names", None)  # a ClassLabel column: its integers named
                if names:
                    values = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in values]
                out[c] = values
            yield start, out
            start += len(out[columns[0]])

    num_rows = getattr(ds, "num_rows", None)
    return "datasets." + type(ds).__name__, list(ds.column_names), num_rows if isinstance(num_rows, int) else None, \
        batches


def _arrow_table(table: Any) -> tuple[str, list[str], int, Batches]:
    def batches(columns: list[str], n: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
        start = 0
        for batch in table.select(columns).to_batches(max_chunksize=n):
            yield start, {c: batch.column(c).to_pylist() for c in columns}
            start += batch.num_rows

    return "pyarrow." + type(table).__name__, list(table.schema.names), table.num_rows, batches


def _columns(data: Mapping[str, Sequence[Any]], kind: str) -> tuple[str, list[str], int, Batches]:
    data = {str(k): v for k, v in data.items()}
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise ConfigError(f"the {kind}'s columns have different lengths: "
                          + ", ".join(f"{k} {len(v):,}" for k, v in data.items()))

    total = next(iter(lengths), 0)

    def batches(columns: list[str], n: int) -> Iterator[tuple[int, dict[str, list[Any]]]]:
        for start in range(0, total, n):
            yield start, {c: [None if _is_null(v) else v for v in data[c][start:start + n]] for c in columns}

    return kind, [str(k) for k in data], total, batches


def source_of(obj: Any, role: str, data: DataConfig) -> Source:
    """The Source of `obj` given as the `role` ("train", "valid", "test") data."""
    if isinstance(obj, (str, bytes)) or obj is None:
        raise ConfigError(f"{role}= takes data (a DataFrame, a datasets.Dataset, a pyarrow Table, a dict of columns "
                          f"or (texts, labels)); for a file set cfg.data.{role}")
    module = type(obj).__module__.split(".")[0]
    if module == "pandas" and hasattr(obj, "columns") and hasattr(obj, "iloc"):
        kind, columns, n, batches = _dataframe(obj)
    elif module == "datasets" and hasattr(obj, "column_names") and hasattr(obj, "iter"):
        kind, columns, n, batches = _hf_dataset(obj)
    elif module == "pyarrow" and hasattr(obj, "to_batches") and hasattr(obj, "schema"):
        kind, columns, n, batches = _arrow_table(obj)
    elif isinstance(obj, Mapping):
        kind, columns, n, batches = _columns(obj, "dict")
    elif (isinstance(obj, (tuple, list)) and len(obj) == 2
          and all(isinstance(x, Sequence) and not isinstance(x, (str, bytes)) for x in obj)):
        if len(data.text_columns) != 1:
            raise ConfigError(f"{role}=(texts, labels) gives one text column; cfg.data.text_columns names "
                              f"{len(data.text_columns)}")
        texts, labels = obj
        if len(texts) != len(labels):
            raise ConfigError(f"{role}=(texts, labels): {len(texts):,} texts but {len(labels):,} labels")
        _, columns, n, batches = _columns({data.text_columns[0]: texts, data.label_column: labels}, "lists")
        return Source(f"<{role}: lists({n:,} texts and labels)>", "lists", columns, n, batches)
    else:
        raise ConfigError(f"{role}= takes a pandas DataFrame, a datasets.Dataset, a pyarrow Table, a dict of "
                          f"columns or (texts, labels), got {type(obj).__name__}")
    return Source(f"<{role}: {_describe(kind, n, columns)}>", kind, columns, n, batches)


def _reader(src: Source) -> Callable[..., Iterator[Rows]]:
    """readers.iter_rows's reader of `src`."""

    def read(text_columns: list[str], label_column: str, skip_bad_rows: bool, label_separator: str | None,
             chunk_rows: int) -> Iterator[Rows]:
        missing = [c for c in [*text_columns, label_column] if c not in src.columns]
        if missing:
            raise DataError(f"no column named {', '.join(map(repr, missing))}; the {src.kind} has "
                            f"{_show_columns(src.columns)} (set cfg.data.text_columns / label_column)", src.name)
        wanted = list(dict.fromkeys([*text_columns, label_column]))
        batches = src.batches(wanted, min(chunk_rows, CHUNK_ROWS))
        yield from chunk_batches(src.name, batches, text_columns, label_column, skip_bad_rows, label_separator,
                                 chunk_rows)

    return read


@contextmanager
def _registered(sources: dict[str, Source]) -> Iterator[None]:
    token = _IN_MEMORY.set({**(_IN_MEMORY.get() or {}), **{name: _reader(s) for name, s in sources.items()}})
    try:
        yield
    finally:
        _IN_MEMORY.reset(token)


def given_data(cfg: RunConfig, train: Any = None, valid: Any = None,
               test: Any = None) -> tuple[RunConfig, AbstractContextManager[None]]:
    """(a copy of `cfg` whose data.train / valid / test name the objects given, a context within which
    those names read them). With nothing given, `cfg` itself and a context that does nothing."""
    given = {role: obj for role, obj in zip(ROLES, (train, valid, test)) if obj is not None}
    if not given:
        return cfg, nullcontext()
    if getattr(cfg.data, "token_store", None):
        # the store (data/store.py) is reused while its input files are unchanged, which it tells by their size
        # and time: data given from Python has neither, so another DataFrame of the same shape would be taken
        # for the one stored
        raise ConfigError("cfg.data.token_store streams files through an on-disk store; data given from Python "
                          "is not a file: write it as one (df.to_parquet(...)) and set cfg.data.train, or leave "
                          "token_store unset")
    cfg = copy.deepcopy(cfg)
    sources = {}
    for role, obj in given.items():
        src = source_of(obj, role, cfg.data)
        setattr(cfg.data, role, src.name)
        sources[src.name] = src
    if "train" in given:
        cfg.data.dataset = None
    elif cfg.data.dataset is None and not cfg.data.train:
        raise ConfigError("give train= (data) or cfg.data.train (a file) or cfg.data.dataset")
    return cfg, _registered(sources)


def given_one(role: str, obj: Any, data: DataConfig) -> tuple[str, AbstractContextManager[None]]:
    """(the name of `obj` given as the `role` data, a context within which that name reads it): for one
    split given alone, such as the test data of `rnntext.evaluate_run(RUN, test=df)`."""
    src = source_of(obj, role, data)
    return src.name, _registered({src.name: src})


def given_again(cfg: RunConfig, train: Any = None, valid: Any = None,
                test: Any = None) -> AbstractContextManager[None]:
    """For resuming a run trained from data given in Python: a context within which the names its config
    recorded (data.train, ...) read the objects given again (the checkpoint's fingerprint then checks that
    they hold the same rows)."""
    given = {role: obj for role, obj in zip(ROLES, (train, valid, test)) if obj is not None}
    sources = {}
    for role, obj in given.items():
        name = getattr(cfg.data, role)
        if not (isinstance(name, str) and name.startswith("<")):
            raise ConfigError(f"this run's {role} data was {'a file, ' + repr(name) if name else 'not given'}; "
                              f"drop {role}=")
        src = source_of(obj, role, cfg.data)
        sources[name] = Source(name, src.kind, src.columns, src.num_rows, src.batches)
    return _registered(sources) if sources else nullcontext()
