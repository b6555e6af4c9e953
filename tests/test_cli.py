"""The `rnntext` command through a subprocess: train, evaluate (text and JSON), predict (arguments,
--file, stdin, JSON) and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_table
from rnntext.data.ag_news import CLASSES


def rnntext(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RNNTEXT_CACHE_DIR": str(Path(cwd or ".") / "no-cache")}
    env.pop("RNNTEXT_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "rnntext", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_train_own_data(tmp_path: Path) -> None:
    rows = [(f"{w} {w} day", "sunny" if i % 2 else "rainy") for i, w in enumerate(["sun", "rain"] * 40)]
    write_table(tmp_path / "train.tsv", ["sentence", "weather"], rows)
    write_table(tmp_path / "test.tsv", ["sentence", "weather"], rows[:10])
    r = rnntext("train", "--train", "train.tsv", "--test", "test.tsv", "--text-column", "sentence",
                "--label-column", "weather", "--model", "lstm", "--embed-dim", "8", "--hidden-dim", "8",
                "--epochs", "2", "--threads", "1", "--out", "run", "-q", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert len(metrics["epochs"]) == 2 and set(metrics["test"]["per_class"]) == {"rainy", "sunny"}
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["rainy", "sunny"]
    assert "data: 76 train, 4 valid, 10 test rows" in r.stderr
    # evaluate finds the run's own test file and columns without being told again
    r = rnntext("evaluate", "run", "--json", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 10


def test_raw_tsv_with_quoting_none(tmp_path: Path) -> None:
    lines = ["text\tlabel"] + [f'"{w}" {w} day\t{"sunny" if w == "sun" else "rainy"}' for w in ["sun", "rain"] * 20]
    (tmp_path / "raw.tsv").write_text("\n".join(lines) + "\n")
    args = ["--embed-dim", "8", "--hidden-dim", "8", "--epochs", "1", "--threads", "1", "-q", "--json"]
    r = rnntext("train", "--train", "raw.tsv", "--out", "bad", *args, cwd=tmp_path)
    assert r.returncode != 0 and "raw.tsv:2: malformed TSV row" in r.stderr and "--quoting none" in r.stderr
    r = rnntext("train", "--train", "raw.tsv", "--test", "raw.tsv", "--quoting", "none", "--out", "run", *args,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["quoting"] == "none"
    r = rnntext("evaluate", "run", "--json", "--threads", "1", cwd=tmp_path)  # the run's quoting again
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 40
    r = rnntext("evaluate", "run", "--quoting", "csv", "--threads", "1", cwd=tmp_path)
    assert r.returncode != 0 and "malformed TSV row" in r.stderr


def test_label_names_come_back_from_predict_and_evaluate(tmp_path: Path) -> None:
    rows = [(f"{w} {w} day", 1 if w == "sun" else 0) for w in ["sun", "rain"] * 20]
    write_table(tmp_path / "train.csv", ["text", "label"], rows)
    r = rnntext("train", "--train", "train.csv", "--test", "train.csv", "--label-names", "0=rainy,1=sunny",
                "--embed-dim", "8", "--hidden-dim", "8", "--epochs", "3", "--lr", "0.05", "--threads", "1",
                "--out", "run", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["rainy", "sunny"]
    r = rnntext("predict", "run", "sun sun day", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["probabilities"]) == {"rainy", "sunny"}
    r = rnntext("evaluate", "run", "--json", "--threads", "1", cwd=tmp_path)  # the test file's 0/1, named
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["per_class"]) == {"rainy", "sunny"}
    r = rnntext("train", "--train", "train.csv", "--label-names", "0=rainy,1", "--out", "bad", cwd=tmp_path)
    assert r.returncode != 0 and "expected distinct LABEL=NAME pairs separated by commas, got '1'" in r.stderr


def test_evaluate_text_and_json(trained_run: Path, ag_news_small: Path) -> None:
    r = rnntext("evaluate", str(trained_run), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("accuracy ") and "macro-F1" in r.stdout and "(500 texts)" in r.stdout
    assert "confusion matrix" in r.stdout and all(c in r.stdout for c in CLASSES)

    r = rnntext("evaluate", str(trained_run), "--data-dir", str(ag_news_small), "--json", "--device", "cpu",
                "--threads", "1")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert report["accuracy"] == saved["accuracy"] and report["macro_f1"] == saved["macro_f1"]
    assert set(report["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "f1", "support"} <= set(report["per_class"]["World"])
    assert len(report["confusion"]) == 4 and sum(map(sum, report["confusion"])) == 500


def test_evaluate_own_test_file(trained_run: Path, tmp_path: Path) -> None:
    path = write_table(tmp_path / "mine.csv", ["headline", "topic"],
                       [("Stocks and oil prices fell", "Business"), ("Team wins the cup final", "Sports")])
    r = rnntext("evaluate", str(trained_run), "--test", str(path), "--text-column", "headline",
                "--label-column", "topic", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 2


def test_predict_arguments_file_stdin(trained_run: Path, tmp_path: Path) -> None:
    texts = ["Stocks fell as oil prices rose", "The team won the final in overtime"]
    r = rnntext("predict", str(trained_run), "--threads", "1", *texts)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        label, prob = line.split("\t")
        assert label in CLASSES and 0.25 <= float(prob) <= 1.0

    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n")
    r_file = rnntext("predict", str(trained_run), "--file", str(tmp_path / "texts.txt"), "--threads", "1")
    assert r_file.returncode == 0, r_file.stderr
    assert r_file.stdout == r.stdout

    # texts given and a file: both, the given ones first (stdin is not read)
    r_both = rnntext("predict", str(trained_run), "--file", str(tmp_path / "texts.txt"), "--threads", "1",
                     texts[1], stdin="Ignored text\n")
    assert r_both.returncode == 0, r_both.stderr
    assert r_both.stdout.splitlines() == [lines[1], *lines]

    r_stdin = rnntext("predict", str(trained_run), "--threads", "1", stdin="\n".join(texts) + "\n")
    assert r_stdin.returncode == 0, r_stdin.stderr
    assert r_stdin.stdout == r.stdout

    # texts may follow options
    r_json = rnntext("predict", str(trained_run), "--json", *texts)
    assert r_json.returncode == 0, r_json.stderr
    preds = [json.loads(line) for line in r_json.stdout.splitlines()]
    assert [p["label"] for p in preds] == [line.split("\t")[0] for line in lines]
    for p in preds:
        assert set(p["probabilities"]) == set(CLASSES)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--train", "missing.csv", "--epochs", "1"], "missing.csv: no such file"),
        (["train", "--train", "x.csv", "--valid-split", "2"], "--valid-split must be in [0, 1)"),
        (["predict", "no-such-run", "hello"], "run directory does not exist"),
        (["predict", "no-such-run", "--bogus", "hello"], "unrecognized arguments: --bogus"),
        (["predict", "no-such-run", "--threads", "0", "hi"], "--threads must be >= 1"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = rnntext(*args, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("rnntext: error: ") and message in lines[-1], r.stderr
    assert len(lines) == 1 or lines[0].startswith("usage: "), r.stderr  # argparse adds its usage line



def test_evaluate_works_from_another_directory(tmp_path: Path) -> None:
    """config.json records absolute data paths, so a run evaluates from any working directory."""
    work = tmp_path / "work"
    work.mkdir()
    rows = [(f"{w} {w} story {i}", lab) for i in range(60) for w, lab in (("goal", "sport"), ("stock", "money"))]
    write_table(work / "train.csv", ["text", "label"], rows)
    write_table(work / "test.csv", ["text", "label"], rows[:20])
    train = [sys.executable, "-m", "rnntext", "train", "--train", "train.csv", "--test", "test.csv", "--epochs", "1",
             "--embed-dim", "8", "--hidden-dim", "8", "--threads", "1", "-q", "--out", str(tmp_path / "run")]
    done = subprocess.run(train, cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ev = subprocess.run([sys.executable, "-m", "rnntext", "evaluate", str(tmp_path / "run"), "--json"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["n"] == 20
