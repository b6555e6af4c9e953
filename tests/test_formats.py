"""Data as users hold it (issue 17, item 3): Parquet and Arrow/Feather files, training from a pandas
DataFrame, a Hugging Face Dataset, a pyarrow Table or plain lists, and `predict --file T --output O`
keeping every input column, streamed in constant memory."""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
import pyarrow.feather as feather  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import rnntext  # noqa: E402
from child_peak import run_with_peak  # noqa: E402
from rnntext.config import RunConfig  # noqa: E402
from rnntext.data.readers import iter_rows, read_rows  # noqa: E402
from rnntext.errors import ConfigError, DataError  # noqa: E402
from rnntext.inference.predictor import Predictor  # noqa: E402

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"],
         "mid": ["table", "chair", "door", "wall"]}


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    labels = [rng.choice(list(WORDS)) for _ in range(n)]
    texts = [" ".join(rng.choice(WORDS[lab] + WORDS["mid"]) for _ in range(rng.randint(2, 9))) + f", row {i}"
             for i, lab in enumerate(labels)]
    return pd.DataFrame({"id": [1000 + i for i in range(n)], "text": texts, "label": labels})


def _cfg(**data: object) -> RunConfig:
    cfg = RunConfig()
    cfg.model.model, cfg.model.embed_dim, cfg.model.hidden_dim = "gru", 8, 8
    cfg.train.epochs, cfg.train.threads, cfg.train.batch_size = 1, 1, 32
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _weights(result: object) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}  # type: ignore[attr-defined]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _files(df: pd.DataFrame, d: Path) -> dict[str, Path]:
    """The same rows as CSV, JSONL, Parquet (several row groups) and Feather (several record batches)."""
    paths = {"csv": d / "t.csv", "jsonl": d / "t.jsonl", "parquet": d / "t.parquet", "feather": d / "t.feather"}
    df.to_csv(paths["csv"], index=False)
    df.to_json(paths["jsonl"], orient="records", lines=True, force_ascii=False)
    df.to_parquet(paths["parquet"], row_group_size=37, index=False)
    feather.write_feather(pa.Table.from_pandas(df, preserve_index=False), paths["feather"], chunksize=41)
    return paths


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("formats") / "run"
    rnntext.train(_cfg(), str(out), train=_frame(300), progress=False, log=lambda s: None)
    return out


# --- reading -----------------------------------------------------------------------------------------------


def test_every_format_reads_the_same_rows_whole_and_in_chunks(tmp_path: Path) -> None:
    paths = _files(_frame(200), tmp_path)
    whole = {fmt: read_rows(p, ["text"], "label") for fmt, p in paths.items()}
    for fmt, rows in whole.items():
        assert (rows.texts, rows.labels) == (whole["csv"].texts, whole["csv"].labels), fmt
        chunks = list(iter_rows(paths[fmt], ["text"], "label", chunk_rows=7))
        assert [len(c) for c in chunks] == [7] * 28 + [4], fmt
        assert sum((c.texts for c in chunks), []) == rows.texts
        assert sum((c.lines for c in chunks), []) == rows.lines
    assert whole["parquet"].lines[:3] == [1, 2, 3]  # rows, from 1
    assert whole["csv"].lines[:3] == [2, 3, 4]  # lines: the header is line 1


def test_parquet_feather_csv_jsonl_train_bit_identical_models(tmp_path: Path) -> None:
    paths = _files(_frame(240), tmp_path)
    weights = {fmt: _weights(rnntext.train(_cfg(train=str(p)), None, progress=False, log=lambda s: None))
               for fmt, p in paths.items()}
    for fmt in ("jsonl", "parquet", "feather"):
        _same(weights["csv"], weights[fmt])


def test_bad_parquet_inputs_are_one_line_errors_naming_file_and_row(tmp_path: Path) -> None:
    df = _frame(20)
    df.loc[6, "text"] = None
    df.to_parquet(tmp_path / "null.parquet")
    with pytest.raises(DataError) as e:
        read_rows(tmp_path / "null.parquet", ["text"], "label")
    assert str(e.value).startswith(f"{tmp_path / 'null.parquet'}:7: the text is null")
    assert e.value.line == 7
    rows = read_rows(tmp_path / "null.parquet", ["text"], "label", skip_bad_rows=True)
    assert (len(rows), rows.skipped) == (19, 1)

    df = _frame(20)
    df.loc[3, "label"] = None
    df.to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(DataError, match=r"nolabel.parquet:4: the label is null"):
        read_rows(tmp_path / "nolabel.parquet", ["text"], "label")

    _frame(5).to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(DataError, match=r"ok.parquet: no column named 'body'; the file has 'id', 'text', 'label'"):
        read_rows(tmp_path / "ok.parquet", ["body"], "label")

    pd.DataFrame({"text": [["a", "b"]], "label": ["x"]}).to_parquet(tmp_path / "listtext.parquet")
    with pytest.raises(DataError, match=r"listtext.parquet: column 'text' holds list<.*>; a text column must hold"):
        read_rows(tmp_path / "listtext.parquet", ["text"], "label")
    pd.DataFrame({"text": ["a"], "label": [True]}).to_parquet(tmp_path / "boollabel.parquet")
    with pytest.raises(DataError, match=r"column 'label' holds bool; a label column must hold strings or integers"):
        read_rows(tmp_path / "boollabel.parquet", ["text"], "label")

    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    with pytest.raises(DataError, match=r"junk.parquet: cannot read as a Parquet file"):
        read_rows(tmp_path / "junk.parquet", ["text"], "label")
    full = tmp_path / "ok.parquet"
    (tmp_path / "cut.parquet").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.parquet: cannot read"):
        read_rows(tmp_path / "cut.parquet", ["text"], "label")
    (tmp_path / "junk.feather").write_bytes(b"not arrow")
    with pytest.raises(DataError, match=r"junk.feather: cannot read as an Arrow IPC / Feather v2 file"):
        read_rows(tmp_path / "junk.feather", ["text"], "label")


def test_cli_train_on_a_bad_parquet_is_one_line(tmp_path: Path) -> None:
    df = _frame(30)
    df.loc[11, "text"] = None
    df.to_parquet(tmp_path / "train.parquet")
    proc = subprocess.run([sys.executable, "-m", "rnntext", "train", "--train", str(tmp_path / "train.parquet"),
                           "--epochs", "1", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"rnntext: error: {tmp_path / 'train.parquet'}:12: the text is null "
                                   "(use --skip-bad-rows to skip such rows)")


# --- training from Python objects ------------------------------------------------------------------------


def test_dataframe_lists_dict_arrow_and_hf_dataset_train_the_csv_model(tmp_path: Path) -> None:
    df = _frame(240, seed=1)
    df.to_csv(tmp_path / "t.csv", index=False)

    def fit(**given: object) -> dict[str, torch.Tensor]:
        return _weights(rnntext.train(_cfg(), None, progress=False, log=lambda s: None, **given))

    reference = _weights(rnntext.train(_cfg(train=str(tmp_path / "t.csv")), None, progress=False,
                                       log=lambda s: None))
    _same(reference, fit(train=df))
    _same(reference, fit(train=(df["text"].tolist(), df["label"].tolist())))
    _same(reference, fit(train={"text": df["text"].tolist(), "label": df["label"].tolist()}))
    _same(reference, fit(train=pa.Table.from_pandas(df, preserve_index=False)))
    datasets = pytest.importorskip("datasets")
    _same(reference, fit(train=datasets.Dataset.from_pandas(df, preserve_index=False)))
    # a ClassLabel column: its integers are read as their names
    features = datasets.Features({"id": datasets.Value("int64"), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=sorted(WORDS))})
    coded = datasets.Dataset.from_dict({"id": df["id"].tolist(), "text": df["text"].tolist(),
                                        "label": [sorted(WORDS).index(x) for x in df["label"]]}, features=features)
    _same(reference, fit(train=coded))


def test_the_run_directory_records_what_it_was_given(tmp_path: Path) -> None:
    df = _frame(120)
    result = rnntext.train(_cfg(), str(tmp_path / "run"), train=df, test=(df["text"][:30].tolist(),
                                                                             df["label"][:30].tolist()),
                           progress=False, log=lambda s: None)
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert data["train"] == "<train: DataFrame(120 rows, columns id, text, label)>"
    assert data["test"] == "<test: lists(30 texts and labels)>"
    assert result.metrics["test"]["n"] == 30
    # the run predicts like any other; evaluating it needs its test data again, said in one line
    assert rnntext.load(tmp_path / "run").predict(["good great"])[0].label in WORDS
    with pytest.raises(DataError, match=r"^<test: lists\(30 texts and labels\)>: data given from Python"):
        rnntext.evaluate_run(str(tmp_path / "run"))
    # evaluated on data held in Python: the report of the same rows as a file
    df.head(30).to_csv(tmp_path / "test.csv", index=False)
    from_file = rnntext.evaluate_run(str(tmp_path / "run"), test=str(tmp_path / "test.csv"), threads=1)
    from_frame = rnntext.evaluate_run(str(tmp_path / "run"), test=df.head(30), threads=1)
    assert from_frame["file"] == "<test: DataFrame(30 rows, columns id, text, label)>"
    assert {k: v for k, v in from_frame.items() if k != "file"} == {k: v for k, v in from_file.items() if k != "file"}


def test_bad_data_from_python_names_the_row(tmp_path: Path) -> None:
    df = _frame(50)
    df.loc[4, "text"] = float("nan")
    with pytest.raises(DataError, match=r"^<train: DataFrame\(50 rows, columns id, text, label\)>:4: the text is null"):
        rnntext.train(_cfg(), None, train=df, progress=False, log=lambda s: None)
    with pytest.raises(DataError, match=r"no column named 'body'; the DataFrame has id, text, label"):
        cfg = _cfg()
        cfg.data.text_columns = ["body"]
        rnntext.train(cfg, None, train=_frame(50), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match=r"train=\(texts, labels\): 3 texts but 2 labels"):
        rnntext.train(_cfg(), None, train=(["a", "b", "c"], ["x", "y"]), progress=False)
    with pytest.raises(ConfigError, match=r"train= takes a pandas DataFrame"):
        rnntext.train(_cfg(), None, train=42, progress=False)
    # a token store is reused while its input files are unchanged; data from Python is no file: refused
    with pytest.raises(ConfigError, match=r"token_store streams files .* data given from Python is not a file"):
        rnntext.train(_cfg(token_store=str(tmp_path / "store")), None, train=_frame(50), progress=False)
    skipping = _cfg(skip_bad_rows=True)
    result = rnntext.train(skipping, None, train=df, progress=False, log=lambda s: None)
    assert result.prepared.skipped == {"<train: DataFrame(50 rows, columns id, text, label)>": 1}


def test_resume_from_python_with_the_data_given_again(tmp_path: Path, sigint_handler: None) -> None:
    """Ctrl-C at step 5 of a run trained from a DataFrame; resume() given the DataFrame again finishes it
    with the weights of a straight run; without it, a one-line error says what to do."""
    from interrupt import ctrl_c_after
    from rnntext.data.memory import given_data
    from rnntext.errors import CheckpointError, TrainingInterrupted

    df = _frame(200)
    cfg = _cfg()
    cfg.train.epochs = 2
    quiet = {"progress": False, "log": lambda s: None}
    straight = _weights(rnntext.train(cfg, str(tmp_path / "straight"), train=df, **quiet))

    CtrlCAtStep5 = ctrl_c_after(5)  # handled by the trainer: finish the step, checkpoint, stop

    named, scope = given_data(cfg, train=df)
    with scope, pytest.raises(TrainingInterrupted):
        CtrlCAtStep5(named, str(tmp_path / "stopped"), **quiet).fit()
    with pytest.raises(CheckpointError, match=r"data given from Python when the run was trained"):
        rnntext.resume(str(tmp_path / "stopped"), **quiet)
    _same(straight, _weights(rnntext.resume(str(tmp_path / "stopped"), train=df, **quiet)))


# --- predict --file TABLE --output TABLE -------------------------------------------------------------------


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
    """`rnntext predict ARGS`, in this process (the command line's own code, without a child's torch import)."""
    from rnntext.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["predict", *args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


@pytest.mark.parametrize(("src", "out"), [("parquet", "parquet"), ("csv", "csv"), ("jsonl", "jsonl"),
                                          ("feather", "parquet"), ("csv", "parquet"), ("parquet", "csv"),
                                          ("jsonl", "feather")])
def test_predict_output_keeps_every_column_and_the_row_order(table_run: Path, tmp_path: Path, src: str,
                                                             out: str) -> None:
    df = _frame(90, seed=3).sample(frac=1.0, random_state=0)  # ids out of order: the output keeps the input's
    df["score"] = [i / 7 for i in range(len(df))]
    path = _files(df, tmp_path)[src]
    output = tmp_path / f"out.{out}"
    proc = _predict_cli(str(table_run), "--file", str(path), "--output", str(output), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"rnntext: 90 rows predicted, written to {output}"
    expected = Predictor.load(table_run).predict(df["text"].tolist())
    if out == "jsonl":
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["id"] for r in rows] == df["id"].tolist()
        assert [r["prediction"] for r in rows] == [p.to_dict() for p in expected]
        return
    got = {"parquet": pd.read_parquet, "feather": pd.read_feather, "csv": pd.read_csv}[out](output)
    assert list(got.columns) == ["id", "text", "label", "score", "prediction.label",
                                 *[f"prediction.probabilities.{c}" for c in sorted(WORDS)]]
    assert got["id"].astype(int).tolist() == df["id"].tolist()
    assert got["text"].tolist() == df["text"].tolist()
    assert got["prediction.label"].tolist() == [p.label for p in expected]
    # the file is predicted in chunks (here 41, 41 and 8 rows) and the list whole: a chunk under the GRU loop's
    # MIN_BATCH runs nn.GRU, which agrees with the loop to float rounding (tests/test_fast.py), so a
    # probability rounded to 6 decimals may land one unit of the 6th decimal away
    for c in sorted(WORDS):
        assert got[f"prediction.probabilities.{c}"].tolist() == pytest.approx(
            [p.probabilities[c] for p in expected], abs=1.01e-6, rel=0)
    if src == out == "parquet":  # types kept: the ids stay integers, the scores floats
        schema = pq.read_schema(output)
        assert (str(schema.field("id").type), str(schema.field("score").type)) == ("int64", "double")


def test_predict_table_bad_rows_and_stdout(table_run: Path, tmp_path: Path) -> None:
    df = _frame(10)
    df.loc[3, "text"] = None
    df.to_parquet(tmp_path / "in.parquet")
    output = tmp_path / "out.csv"
    proc = _predict_cli(str(table_run), "--file", str(tmp_path / "in.parquet"), "--output", str(output), "-q")
    assert (proc.returncode, proc.stderr.strip()) == (2, f"rnntext: error: {tmp_path / 'in.parquet'}:4: the text is "
                                                          "null (use --skip-bad-rows to skip such rows)")
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.csv")]
    proc = _predict_cli(str(table_run), "--file", str(tmp_path / "in.parquet"), "--output", str(output), "-q",
                        "--skip-bad-rows")
    assert proc.returncode == 0 and "(1 bad rows skipped)" in proc.stderr
    assert pd.read_csv(output)["id"].tolist() == [i for i in df["id"] if i != 1003]
    # no --output: printed as for texts, one line per row
    proc = _predict_cli(str(table_run), "--file", str(tmp_path / "in.parquet"), "--skip-bad-rows")
    labels = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert labels == [p.label for p in Predictor.load(table_run).predict(df["text"].drop(3).tolist())]
    proc = _predict_cli(str(table_run), "--file", str(tmp_path / "in.parquet"), "--text-column", "body")
    assert proc.returncode == 2 and "no column named 'body'" in proc.stderr and "Traceback" not in proc.stderr
    # an output predicted again would hold two columns of one name: said in one line, nothing written
    proc = _predict_cli(str(table_run), "--file", str(output), "--output", str(tmp_path / "again.csv"), "-q")
    assert (proc.returncode, proc.stderr.strip()) == (2, f"rnntext: error: {output}: already has columns named "
                                                          "'prediction.label', 'prediction.probabilities.mid', "
                                                          "'prediction.probabilities.neg', ..., as the prediction's "
                                                          "would be; rename them, or predict a file without them")
    assert not (tmp_path / "again.csv").exists() and not list(tmp_path.glob(".again.csv.*"))
    # CSV and JSONL tables: the line of a bad row
    (tmp_path / "bad.csv").write_text("id,text,label\n1,good,pos\n2,bad\n3,fine,pos\n")
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "text": "good"}\n{"id": 2, "body": "bad"}\n')
    for name, error in (("bad.csv", "bad.csv:3: expected 3 columns, found 2"),
                        ("bad.jsonl", "bad.jsonl:2: missing key 'text' (use --text-column)")):
        proc = _predict_cli(str(table_run), "--file", str(tmp_path / name), "--output", str(tmp_path / "o.csv"), "-q")
        assert (proc.returncode, proc.stderr.strip()) == (2, f"rnntext: error: {tmp_path}/{error} (use "
                                                              "--skip-bad-rows to skip such rows)")
        proc = _predict_cli(str(table_run), "--file", str(tmp_path / name), "--output", str(tmp_path / "o.csv"), "-q",
                            "--skip-bad-rows")
        assert proc.returncode == 0 and pd.read_csv(tmp_path / "o.csv")["id"].tolist() == [1] + ([3] if
                                                                                                  "csv" in name else [])
    # Parquet's dates and times (no JSON type): written as text in JSONL, kept as they are in Parquet
    dated = _frame(3).assign(when=pd.Timestamp("2024-01-02"), score=[0.5, float("nan"), float("inf")])
    dated.to_parquet(tmp_path / "dated.parquet", index=False)
    for name in ("dated.jsonl", "dated2.parquet"):
        assert _predict_cli(str(table_run), "--file", str(tmp_path / "dated.parquet"), "--output",
                            str(tmp_path / name), "-q").returncode == 0
    written = [json.loads(x) for x in (tmp_path / "dated.jsonl").read_text().splitlines()]
    assert [(r["when"], r["score"]) for r in written] == [("2024-01-02 00:00:00", 0.5), ("2024-01-02 00:00:00", None),
                                                          ("2024-01-02 00:00:00", None)]  # JSON has no NaN
    assert pd.read_parquet(tmp_path / "dated2.parquet")["when"].tolist() == dated["when"].tolist()
    # texts given as arguments, written as a table of one column
    proc = _predict_cli(str(table_run), "good great", "bad awful", "--output", str(tmp_path / "args.jsonl"), "-q")
    assert [json.loads(x)["text"] for x in (tmp_path / "args.jsonl").read_text().splitlines()] == ["good great",
                                                                                                     "bad awful"]


def _peak_rss_mb(args: list[str], tmp_path: Path) -> float:
    """`rnntext ARGS` in a child: its own peak resident memory (tests/child_peak.py), in MB."""
    proc, peak = run_with_peak(args, tmp_path / "peak_kb.txt", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return peak


def test_predict_output_streams_in_constant_memory(table_run: Path, tmp_path: Path) -> None:
    """20,000 and 200,000 rows (34 MB of text) in and out. The Python objects alive at the peak (tracemalloc:
    rows, texts, predictions) are the same for both: holding the rows or the predictions would add tens to
    hundreds of MB. Each child's own resident peak is measured too (tests/child_peak.py): it grows a little
    with the rows (about 25-40 MB more for 10x the rows here, in native memory: torch's and the allocator's
    caches as batch shapes vary; Python's stays flat), far below what holding them would take."""
    import tracemalloc

    from rnntext.inference.table_predict import predict_file

    big = _frame(200_000, seed=5)
    big["text"] = big["text"] + " " + "padding words " * 6
    big.to_parquet(tmp_path / "big.parquet", row_group_size=10_000)
    big.head(20_000).to_parquet(tmp_path / "small.parquet", row_group_size=10_000)
    predictor = Predictor.load(table_run, "cpu")
    python_peak = {}
    for name in ("small", "big"):
        tracemalloc.start()
        try:
            predict_file(str(tmp_path / f"{name}.parquet"), str(tmp_path / f"{name}.py.csv"), predictor.predict,
                         predictor.labels, ["text"], progress=False)
            python_peak[name] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    assert python_peak["big"] - python_peak["small"] < 2, python_peak
    peaks = {}
    for name in ("small", "big"):
        peaks[name] = _peak_rss_mb(["predict", str(table_run), "--file", str(tmp_path / f"{name}.parquet"),
                                    "--output", str(tmp_path / f"{name}.out.parquet"), "-q", "--threads", "1"],
                                   tmp_path)
    out = pq.ParquetFile(tmp_path / "big.out.parquet")
    assert out.metadata.num_rows == 200_000
    ids = pq.read_table(tmp_path / "big.out.parquet", columns=["id"])["id"].to_pylist()
    assert ids == big["id"].tolist()
    print(f"predict --output, peak RSS: 20,000 rows {peaks['small']:.0f} MB, 200,000 rows {peaks['big']:.0f} MB; "
          f"Python objects at the peak: {python_peak['small']:.1f} and {python_peak['big']:.1f} MB")
    assert peaks["big"] - peaks["small"] < 64, peaks


def test_evaluate_reads_a_parquet_or_feather_test_file(table_run: Path, tmp_path: Path) -> None:
    paths = _files(_frame(80, seed=9), tmp_path)
    reports = {fmt: rnntext.evaluate_run(str(table_run), test=str(p), threads=1) for fmt, p in paths.items()}
    for fmt in ("parquet", "feather", "jsonl"):
        assert (reports[fmt]["accuracy"], reports[fmt]["n"]) == (reports["csv"]["accuracy"], 80), fmt


def test_multi_label_lists_in_parquet_and_a_dataframe(tmp_path: Path) -> None:
    """A Parquet list<string> label column and a DataFrame of lists train the model of the JSONL lists;
    predict --output keeps the run's set of labels as one column (a map), whatever the rows."""
    rng = random.Random(2)
    rows = [{"id": i, "text": f"w{'x'.join(labs)} filler {i}", "label": labs}
            for i, labs in enumerate(sorted(rng.sample(["a", "b", "c"], rng.randint(1, 2))) for _ in range(150))]
    df = pd.DataFrame(rows)
    df.to_parquet(tmp_path / "ml.parquet", index=False)
    (tmp_path / "ml.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    quiet = {"progress": False, "log": lambda s: None}
    reference = _weights(rnntext.train(_cfg(train=str(tmp_path / "ml.jsonl"), multi_label=True), None, **quiet))
    _same(reference, _weights(rnntext.train(_cfg(train=str(tmp_path / "ml.parquet"), multi_label=True), None,
                                            **quiet)))
    _same(reference, _weights(rnntext.train(_cfg(multi_label=True), str(tmp_path / "run"), train=df, **quiet)))
    output = tmp_path / "out.parquet"
    proc = _predict_cli(str(tmp_path / "run"), "--file", str(tmp_path / "ml.parquet"), "--output", str(output), "-q")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(output)
    assert str(table.schema.field("prediction.labels").type).startswith("map<string, double")
    expected = Predictor.load(tmp_path / "run").predict(df["text"].tolist())
    assert [dict(x) for x in table["prediction.labels"].to_pylist()] == [p.labels for p in expected]
    assert table["label"].to_pylist() == df["label"].tolist()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=12)), st.one_of(st.none(), st.sampled_from(
    ["a", "b", " ", ""]), st.integers(-3, 3))), min_size=1, max_size=40), st.integers(1, 9))
def test_parquet_and_dataframe_rows_are_the_good_ones_or_the_first_bad_one_is_named(
        tmp_path: Path, cells: list[tuple[str | None, object]], chunk: int) -> None:
    """Random texts and labels (nulls, blank labels, integers): with skip_bad_rows the rows read are exactly
    the good ones, in order, however they are chunked; without, the error names the first bad row (from 1
    in a Parquet file, from 0 in a DataFrame)."""
    from rnntext.data.memory import given_data

    path = tmp_path / "p.parquet"
    labels = [lab if lab is None or isinstance(lab, str) else str(lab) for _, lab in cells]  # one column type
    pq.write_table(pa.table({"text": pa.array([t for t, _ in cells], pa.string()),
                             "label": pa.array(labels, pa.string())}), path)
    good = [i for i, (t, lab) in enumerate(zip([t for t, _ in cells], labels)) if t is not None and lab is not None
            and lab.strip()]
    df = pd.DataFrame({"text": [t for t, _ in cells], "label": labels})
    cfg, scope = given_data(_cfg(), train=df)
    with scope:
        for source, first in ((str(path), 1), (cfg.data.train, 0)):
            if not good:
                with pytest.raises(DataError, match=r"no data rows \(\d+ bad rows skipped\)"):
                    list(iter_rows(source, ["text"], "label", skip_bad_rows=True, chunk_rows=chunk))
            else:
                chunks = list(iter_rows(source, ["text"], "label", skip_bad_rows=True, chunk_rows=chunk))
                assert sum((c.texts for c in chunks), []) == [cells[i][0] for i in good]
                assert sum((c.labels for c in chunks), []) == [labels[i].strip() for i in good]
                assert sum(c.skipped for c in chunks) == len(cells) - len(good)
                assert all(len(c) <= chunk for c in chunks)
            bad = [i for i in range(len(cells)) if i not in good]
            if bad:
                with pytest.raises(DataError) as e:
                    read_rows(source, ["text"], "label")
                assert e.value.line == bad[0] + first and "\n" not in str(e.value)
            else:
                assert len(read_rows(source, ["text"], "label")) == len(cells)
