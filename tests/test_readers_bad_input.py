"""Messy input files: each case loads correctly or raises a one-line DataError naming the file and
line; with skip_bad_rows the bad rows are skipped and counted. Property-based tests (hypothesis)
feed random bytes and random rows to the readers."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnntext.config import DataConfig
from rnntext.data import ag_news
from rnntext.data.dataset import load_splits
from rnntext.data.readers import Rows, read_rows
from rnntext.errors import ConfigError, DataError

COLS = (["text"], "label")


def _read(tmp_path: Path, name: str, data: bytes, skip: bool = False) -> Rows:
    path = tmp_path / name
    path.write_bytes(data)
    return read_rows(path, *COLS, skip_bad_rows=skip)


def _error(tmp_path: Path, name: str, data: bytes, line: int | None, *words: str) -> str:
    with pytest.raises(DataError) as info:
        _read(tmp_path, name, data)
    msg = str(info.value)
    where = f"{tmp_path / name}:{line}: " if line is not None else f"{tmp_path / name}: "
    assert msg.startswith(where), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert info.value.line == line
    return msg


# --- each case of the issue -----------------------------------------------------------------------

def test_invalid_utf8(tmp_path: Path) -> None:
    data = b"text,label\nfine,a\nbad \xff\xfe bytes,b\nok,b\n"
    _error(tmp_path, "x.csv", data, 3, "invalid UTF-8 (byte 0xff)")
    rows = _read(tmp_path, "x.csv", data, skip=True)
    assert (rows.texts, rows.skipped) == (["fine", "ok"], 1)
    jl = b'{"text": "fine", "label": "a"}\n{"text": "\xc3\x28", "label": "b"}\n'
    _error(tmp_path, "x.jsonl", jl, 2, "invalid UTF-8")
    assert _read(tmp_path, "x.jsonl", jl, skip=True).skipped == 1


def test_utf8_bom(tmp_path: Path) -> None:
    for name, data in [("x.csv", b"\xef\xbb\xbftext,label\nhello,a\n"),
                       ("x.jsonl", b'\xef\xbb\xbf{"text": "hello", "label": "a"}\n')]:
        rows = _read(tmp_path, name, data)
        assert (rows.texts, rows.labels) == (["hello"], ["a"])


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends(tmp_path: Path, newline: bytes) -> None:
    csv_data = newline.join([b"text,label", b"hello,a", b'"two' + newline + b'lines",b', b""])
    rows = _read(tmp_path, "x.csv", csv_data)
    assert rows.labels == ["a", "b"] and rows.texts[0] == "hello"
    assert rows.texts[1] == "two" + newline.decode() + "lines"
    rows = _read(tmp_path, "x.tsv", csv_data.replace(b",", b"\t"))
    assert rows.labels == ["a", "b"]
    jl = newline.join([b'{"text": "hello", "label": "a"}', b'{"text": "x", "label": "b"}', b""])
    assert _read(tmp_path, "x.jsonl", jl).labels == ["a", "b"]


def test_unbalanced_quotes(tmp_path: Path) -> None:
    data = b'text,label\n"closed"then more,a\nok,b\n'
    _error(tmp_path, "x.csv", data, 2, "malformed CSV row", "unbalanced quote")
    assert _read(tmp_path, "x.csv", data, skip=True).texts == ["ok"]
    # a quote that never closes swallows the rest of the file: reported where that row starts
    _error(tmp_path, "y.csv", b'text,label\nok,a\n"never closed,b\nmore,c\n', 3, "unexpected end of data")


def test_raw_tsv_quotes_are_text_with_quoting_none(tmp_path: Path) -> None:
    # GLUE-style TSV: no quoting, so a text may start with a quote or hold an odd number of them
    data = b'text\tlabel\n"the film" is great\tpos\nthe "worst\tneg\n""\tneg\n'
    _error(tmp_path, "raw.tsv", data, 2, "malformed TSV row", "--quoting none")
    path = tmp_path / "raw.tsv"
    rows = read_rows(path, *COLS, quoting="none")
    assert rows.texts == ['"the film" is great', 'the "worst', '""'] and rows.labels == ["pos", "neg", "neg"]
    assert rows.lines == [2, 3, 4]
    # the default still reads quoted fields (a tab inside one), and "none" keeps their quotes
    quoted = tmp_path / "quoted.tsv"
    quoted.write_bytes(b'text\tlabel\n"a\tb ""c"""\tx\n')
    assert read_rows(quoted, *COLS).texts == ['a\tb "c"']
    with pytest.raises(DataError, match="expected 2 columns, found 3"):
        read_rows(quoted, *COLS, quoting="none")
    with pytest.raises(DataError, match="unknown quoting 'raw'"):
        read_rows(quoted, *COLS, quoting="raw")


def test_too_few_and_too_many_columns(tmp_path: Path) -> None:
    _error(tmp_path, "x.csv", b"text,label\nok,a\nno label here\n", 3, "expected 2 columns, found 1")
    _error(tmp_path, "x.csv", b"text,label\nok,a\nan, unquoted comma,b\n", 3, "expected 2 columns, found 3")
    rows = _read(tmp_path, "x.csv", b"text,label\nok,a\nshort\nan, unquoted comma,b\nfine,b\n", skip=True)
    assert (rows.texts, rows.skipped, rows.lines) == (["ok", "fine"], 2, [2, 5])


def test_ten_megabyte_field(tmp_path: Path) -> None:
    big = "word " * 2_000_000
    rows = _read(tmp_path, "x.csv", f'text,label\n"{big}",a\nsmall,b\n'.encode())
    assert len(rows.texts[0]) == len(big) and rows.labels == ["a", "b"]
    rows = _read(tmp_path, "x.jsonl", (json.dumps({"text": big, "label": "a"}) + "\n").encode())
    assert len(rows.texts[0]) == len(big)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    _error(tmp_path, "x.csv", b"", None, "file is empty")
    _error(tmp_path, "x.csv", b"\n \n", None, "file is empty")
    _error(tmp_path, "x.jsonl", b"", None, "no data rows")
    _error(tmp_path, "x.csv", b"text,label\n", None, "no data rows after the header")
    _error(tmp_path, "x.csv", b"text,label\r\n\r\n", None, "no data rows after the header")


def test_empty_texts_load_and_empty_labels_do_not(tmp_path: Path) -> None:
    rows = _read(tmp_path, "x.csv", b'text,label\n,a\n"",b\nhello,a\n')
    assert rows.texts == ["", "", "hello"]
    _error(tmp_path, "x.csv", b"text,label\nhello,\n", 2, "empty label")
    _error(tmp_path, "x.jsonl", b'{"text": "a", "label": " "}\n', 1, "empty label")


def test_missing_column_names_the_header(tmp_path: Path) -> None:
    _error(tmp_path, "x.csv", b"sentence,label\nhi,a\n", 1, "no column named 'text'", "'sentence'")


def test_label_never_seen_in_training(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"text,label\na,pos\nb,neg\n")
    (tmp_path / "test.csv").write_bytes(b"text,label\nc,pos\nd,neutral\ne,neg\n")
    cfg = DataConfig(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), valid_split=0)
    with pytest.raises(DataError, match=r"test\.csv:3: label 'neutral' never appears in the training data"):
        load_splits(cfg)
    cfg.skip_bad_rows = True
    splits = load_splits(cfg)
    assert splits.test is not None and (splits.test.labels, splits.test.skipped) == (["pos", "neg"], 1)


def test_label_names(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"text,label\na,1\nb,0\nc,1\n")
    (tmp_path / "test.csv").write_bytes(b"text,label\nc,0\nd,2\ne,1\n")
    cfg = DataConfig(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), valid_split=0,
                     label_names={"1": "positive", "0": "negative"})
    with pytest.raises(DataError, match=r"test\.csv:3: label '2' has no name in --label-names \(named: 1, 0\)"):
        load_splits(cfg)
    cfg.skip_bad_rows = True
    splits = load_splits(cfg)
    assert splits.label_names == ["positive", "negative"]  # the order given
    assert splits.train.labels == ["positive", "negative", "positive"] and splits.train.lines == [2, 3, 4]
    assert splits.test is not None and (splits.test.labels, splits.test.skipped) == (["negative", "positive"], 1)
    for bad in ({"0": "x", "1": "x"}, {"0": " "}, {}):
        with pytest.raises(ConfigError, match="distinct, non-empty names"):
            DataConfig(train="t.csv", label_names=bad).validate()
    with pytest.raises(ConfigError, match="AG News labels are named already"):
        DataConfig(dataset="ag_news", label_names={"1": "a"}).validate()


def test_non_numeric_ag_news_class(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b'"3","Wall St.","Stocks fell."\n"Sports","Title","Text"\n')
    with pytest.raises(DataError, match=r"train\.csv:2: AG News class must be 1\.\.4, found 'Sports'"):
        ag_news.read_split(path)
    rows = ag_news.read_split(path, skip_bad_rows=True)
    assert (rows.labels, rows.skipped) == (["Business"], 1)


def test_truncated_and_corrupted_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(b"text,label\n" + b"some text,a\n" * 1000)
    _error(tmp_path, "x.csv.gz", whole[: len(whole) // 2], None, "corrupt or truncated gzip")
    flipped = bytearray(whole)
    flipped[-6] ^= 0xFF  # CRC
    _error(tmp_path, "x.csv.gz", bytes(flipped), None, "corrupt or truncated gzip")
    assert len(_read(tmp_path, "x.csv.gz", whole)) == 1000


def test_jsonl_problems(tmp_path: Path) -> None:
    _error(tmp_path, "x.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', 2, "invalid JSON")
    _error(tmp_path, "x.jsonl", b'["a", "x"]\n', 1, "expected a JSON object per line, found list")
    _error(tmp_path, "x.jsonl", b'{"txt": "a", "label": "x"}\n', 1, "missing key 'text'")
    _error(tmp_path, "x.jsonl", b'{"text": "a", "label": {"x": 1}}\n', 1, "label must be a string or a number")
    _error(tmp_path, "x.jsonl", b"[" * 100_000 + b"\n", 1, "invalid JSON")  # RecursionError inside json
    _error(tmp_path, "x.jsonl", b'{"text": "a", "label": ' + b"9" * 5000 + b"}\n", 1, "invalid JSON")
    # U+2028 inside a string is not a line end (str.splitlines would cut the line there)
    rows = _read(tmp_path, "x.jsonl", json.dumps({"text": "a\u2028b\x85c", "label": 1}, ensure_ascii=False).encode())
    assert (rows.texts, rows.labels) == (["a\u2028b\x85c"], ["1"])


def test_line_numbers_after_a_multiline_field(tmp_path: Path) -> None:
    _error(tmp_path, "x.csv", b'text,label\n"one\ntwo\nthree",a\nok,b\nbad\n', 6, "expected 2 columns")


# --- properties -----------------------------------------------------------------------------------

FILES = st.sampled_from(["f.csv", "f.tsv", "f.jsonl", "f.csv.gz", "f.jsonl.gz"])
NOISE = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"text", b"label", b",", b"\t", b'"', b"\n", b"\r\n", b"\r", b"{", b"}", b":",
                              b'"text"', b'"label"', b"\xef\xbb\xbf", b"\xff", b"\x00", b"[", b"1", b" ", b"a"]),
             max_size=60).map(b"".join),
)


@settings(max_examples=250, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=FILES, data=NOISE, skip=st.booleans(), header=st.booleans())
def test_random_bytes_give_rows_or_a_one_line_data_error(tmp_path: Path, name: str, data: bytes, skip: bool,
                                                          header: bool) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    columns = (["text"], "label") if header or "jsonl" in name else (["1"], "0")
    try:
        rows = read_rows(path, *columns, header=header or "jsonl" in name, skip_bad_rows=skip)
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
    else:
        assert len(rows) > 0 and len(rows.texts) == len(rows.labels) == len(rows.lines)
        assert all(label.strip() == label and label for label in rows.labels)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
LABEL = TEXT.map(str.strip).filter(bool)


@settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=20), fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
       crlf=st.booleans(), bom=st.booleans())
def test_rows_written_properly_are_read_back_exactly(tmp_path: Path, rows: list[tuple[str, str]], fmt: str,
                                                    crlf: bool, bom: bool) -> None:
    buf = io.StringIO(newline="")
    if fmt == "jsonl":
        for text, label in rows:
            buf.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + ("\r\n" if crlf else "\n"))
    else:
        # Python's writer quotes only the characters of its own line terminator: with "\n" it leaves a
        # lone "\r" in a field bare, which no reader can tell from a line end, so quote everything then
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\r\n" if crlf else "\n",
                       quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
        w.writerow(["text", "label"])
        w.writerows(rows)
    path = tmp_path / f"rows.{fmt}"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    got = read_rows(path, *COLS)
    assert (got.texts, got.labels) == ([t for t, _ in rows], [label for _, label in rows])
