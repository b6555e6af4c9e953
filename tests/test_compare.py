"""`rnntext compare`: runs from a config file (TOML or JSON) on data prepared once, command-line
overrides, report.md / report.html / scatter.png, and config errors caught before any training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import rnntext.data
from rnntext.cli import main
from rnntext.config import RunConfig
from rnntext.errors import ConfigError
from rnntext.report.compare import DEFAULT_ENTRIES, entry_config, load_entries, parse_entries

TOML = """
[[runs]]
name = "tiny rnn"
preset = "tutorial-rnn"
model = { embed_dim = 16, hidden_dim = 8 }

[[runs]]
name = "tiny-gru"
model = { model = "gru", embed_dim = 16, hidden_dim = 8, bidirectional = false }
train = { batch_size = 16, epochs = 5 }
"""


def test_compare_cli_writes_the_report(ag_news_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    prepare_calls = []
    real_prepare = rnntext.data.prepare

    def counting_prepare(*args, **kwargs):
        prepare_calls.append(args)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(rnntext.data, "prepare", counting_prepare)
    config = tmp_path / "runs.toml"
    config.write_text(TOML)
    out = tmp_path / "cmp"
    rc = main(["compare", "--data-dir", str(ag_news_small), "--config", str(config), "--out", str(out),
               "--epochs", "2", "--epoch-size", "4", "--threads", "1", "--device", "cpu", "-q"])
    assert rc == 0
    assert len(prepare_calls) == 1, "the data must be prepared once for all runs"

    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["name"] for r in runs] == ["tiny-rnn", "tiny-gru"]  # names made safe for directories
    for r in runs:
        assert r["epochs"] == 2  # --epochs beats both the preset's 1 and the file's 5
        assert r["config"]["train"]["epoch_size"] == 4 and r["config"]["train"]["threads"] == 1
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["rows_per_second"] > 0 and r["train_seconds"] > 0
        assert (out / "runs" / r["name"] / "model.safetensors").exists()
        assert (out / "runs" / r["name"] / "curves.png").exists()
        # the same vocabulary in every run: one prepared dataset, which each run's config describes (not
        # the tutorial preset's min_freq 1)
        assert r["config"]["model"]["vocab_size"] == summary["data"]["vocabulary"]
        assert r["config"]["data"] == summary["data"]["config"]
        saved = json.loads((out / "runs" / r["name"] / "config.json").read_text())
        assert saved["data"]["min_freq"] == 2
    assert runs[0]["model"].startswith("RNN 8, embed 16, mean") and runs[0]["config"]["train"]["batch_size"] == 16
    assert runs[1]["model"].startswith("GRU 8, embed 16")

    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| tiny")]
    assert len(table) == 2
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[0] == "tiny-rnn" and cells[3] == "2" and cells[4] == f"{runs[0]['test_accuracy']:.4f}"
    assert "![accuracy against training time](scatter.png)" in md and "runs/tiny-gru/curves.png" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and html.count("<tr>") == 3
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 1 + 2 * 2  # scatter + curves, confusion
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny-gru |" in capsys.readouterr().out  # the table is printed too


def test_json_config_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([{"preset": "tutorial-lstm"}, {"model": {"model": "gru"}, "train": {"lr": 0.01}}]))
    entries = load_entries(path)
    assert [e.name for e in entries] == ["tutorial-lstm", "gru"]

    path.write_text('[{"preset": "tutorial-lstm"},\n {"model": }]')
    with pytest.raises(ConfigError, match=r"runs.json:2: invalid JSON"):
        load_entries(path)
    (tmp_path / "bad.toml").write_text("[[runs]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_entries(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_entries(tmp_path / "missing.json")


@pytest.mark.parametrize(("obj", "message"), [
    ([], "non-empty list of runs"),
    ({"run": []}, "unknown top-level keys"),
    ([{"data": {"ngrams": 2}}], "'data' section is not allowed"),
    ([{"preset": "tutorial-gpt"}], "unknown preset 'tutorial-gpt'"),
    ([{"model": {"cell": "lstm"}}], r"unknown model settings \['cell'\]"),
    ([{"train": {"epoch": 3}}], r"unknown train settings \['epoch'\]"),
    ([{"name": "a"}, {"name": "a"}], "used twice"),
    ([{"modle": {}}], "unknown keys"),
    (["lstm"], "expected an object"),
    # each value is checked against its setting's declaration, as config.json's are
    ([{"train": {"epochs": "3"}}], r"^cmp.json: run 1: train.epochs must be an integer, got '3'$"),
    ([{"name": "a"}, {"model": {"hidden_dim": 1e400}}], r"^cmp.json: run 2: model.hidden_dim must be an integer, "
                                                        "got inf$"),
    ([{"train": {"lr": float("nan")}}], "train.lr must be a finite number, got nan"),
    ([{"train": {"device": "mps"}}], "train.device must be auto, cpu, cuda or cuda:N, got 'mps'"),
    ([{"model": {"model": "transformer"}}], "run 1: unknown model 'transformer'; choose one of rnn, lstm, gru"),
    ([{"model": []}], "run 1: 'model' must be an object, got list"),
])
def test_bad_entries_are_named(obj: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_entries(obj, "cmp.json")


def test_bad_values_fail_before_training(ag_news_small: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "runs.json"
    config.write_text(json.dumps({"runs": [{"name": "ok"}, {"name": "broken", "model": {"hidden_dim": 0}}]}))
    rc = main(["compare", "--data-dir", str(ag_news_small), "--config", str(config), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert f"{config}: run 2: model.hidden_dim must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o" / "runs").exists()  # nothing was trained
    # a rule between settings: after the entries are read, before anything trains
    config.write_text(json.dumps([{"name": "ok"}, {"name": "frozen", "model": {"freeze_embeddings": True}}]))
    rc = main(["compare", "--data-dir", str(ag_news_small), "--config", str(config), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "run frozen: model.freeze_embeddings needs data.embeddings" in capsys.readouterr().err
    assert not (tmp_path / "o" / "runs").exists()
    # the command line's overrides are checked as options
    rc = main(["compare", "--data-dir", str(ag_news_small), "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert rc == 2 and "--epochs must be >= 1, got 0" in capsys.readouterr().err


def test_default_entries_are_the_tutorial_systems_plus_gru_and_bilstm() -> None:
    cfgs = {e.name: entry_config(RunConfig(), e, {"epochs": 3, "threads": None}) for e in DEFAULT_ENTRIES}
    assert list(cfgs) == ["tutorial-rnn", "tutorial-lstm", "tutorial-lstm-packed", "gru", "bilstm"]
    kinds = {n: (c.model.model, c.model.bidirectional, c.model.packed, c.model.pooling) for n, c in cfgs.items()}
    assert kinds == {"tutorial-rnn": ("rnn", False, False, "mean"), "tutorial-lstm": ("lstm", False, False, "last"),
                     "tutorial-lstm-packed": ("lstm", False, True, "last"), "gru": ("gru", False, False, "last"),
                     "bilstm": ("lstm", True, False, "last")}
    for c in cfgs.values():
        assert (c.model.embed_dim, c.model.hidden_dim, c.train.batch_size, c.train.lr) == (64, 32, 16, 1e-3)
        assert c.train.epochs == 3 and c.train.threads is None
