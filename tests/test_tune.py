"""`rnntext tune` (rnntext.tune): the search space and its TOML file, a study of a few small trials whose
best.json trains to the best trial's validation accuracy, pruning from the epoch callback, and a real
`rnntext tune` process killed with SIGKILL and resumed to its trial count."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnntext.cli import main
from rnntext.config import RunConfig, TuneConfig
from rnntext.errors import ConfigError
from rnntext.training.callbacks import Callback
from rnntext.tune.space import DEFAULT_SPACE, Space, default_space, load_space

optuna = pytest.importorskip("optuna")

SMALL_SPACE = """
[epochs]
value = 2
[embed_dim]
choices = [16, 32]
[hidden_dim]
value = 16
[batch_size]
choices = [32, 64]
"""


def _data_options(ag_news_small: Path) -> list[str]:
    return ["--dataset", "ag_news", "--data-dir", str(ag_news_small), "--epoch-size", "3", "--threads", "1",
            "--device", "cpu"]


def _space_file(tmp_path: Path, text: str = SMALL_SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


# --- the search space ------------------------------------------------------------------------------------------


def test_the_default_space_is_documented_and_valid() -> None:
    space = default_space()
    assert [p.name for p in space.params.values()] == list(DEFAULT_SPACE)
    assert space.params["train.lr"].log and space.params["model.model"].choices == ("gru", "lstm", "cnn")
    assert not any(p.section == "data" for p in space.params.values())  # the vocabulary stays as prepared
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "tuning-tracking.md").read_text()
    for key, description in space.table():
        assert f"| `{key.split('.')[1]}` | {description} |" in guide, key


def test_a_space_file_changes_adds_fixes_and_removes_entries(tmp_path: Path) -> None:
    space = load_space(_space_file(tmp_path, """
[lr]
low = 1e-4
high = 1e-2
log = true
[train.epochs]
value = 3
[dropout]
search = false
[num_layers]
low = 1
high = 3
[bidirectional]
choices = [true, false]
[model]
choices = ["gru", "bag"]
"""))
    p = space.params
    assert (p["train.lr"].low, p["train.lr"].high, p["train.lr"].log) == (1e-4, 1e-2, True)
    assert p["train.epochs"].fixed and p["train.epochs"].value == 3
    assert "model.dropout" not in p and "model.embed_dropout" in p  # the rest of the default space stays
    assert p["model.num_layers"].is_int and p["model.bidirectional"].choices == (True, False)
    assert p["model.model"].choices == ("gru", "bag")
    only = load_space(_space_file(tmp_path, "defaults = false\n[lr]\nlow = 0.001\nhigh = 0.01\n"))
    assert list(only.params) == ["train.lr"]
    assert Space.from_dict(only.to_dict()).params == only.params  # tune.json's round trip


@pytest.mark.parametrize("text, message", [
    ("[dropout]\nlow = 0.1\nhigh = 1.5", r"\[dropout\] high must be in \[0, 1\), got 1.5"),
    ("[lr]\nlow = 0\nhigh = 0.1", r"\[lr\] low must be > 0"),
    ("[weight_decay]\nlow = 0.0\nhigh = 0.1\nlog = true", r"a log scale needs low > 0"),
    ("[lr]\nlow = 0.1\nhigh = 0.01", r"low must be < high"),
    ("[lr]\nlowest = 0.1", r"unknown keys \['lowest'\]"),
    ("[nothing]\nvalue = 1", r"'nothing' is not a setting of a run"),
    ("[vocab_size]\nvalue = 10", r"'vocab_size' is not a setting of a run"),
    ("[model]\nchoices = [\"gru\", \"transformer\"]", r"must be one of .*got 'transformer'"),
    ("[batch_size]\nchoices = [32, 32.5]", r"choice must be an integer, got 32.5"),
    ("[pooling]\nlow = 1\nhigh = 2", r"low/high are for numeric settings"),
    ("[epochs]\nvalue = 2\nchoices = [1]", r"exactly one of"),
    ("[lr]\nlow = 0.1\nhigh = [1", r"invalid TOML"),
])
def test_a_bad_space_file_is_one_line_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_space(_space_file(tmp_path, text))
    assert str(tmp_path / "space.toml") in str(e.value) and "\n" not in str(e.value)


# --- a study ------------------------------------------------------------------------------------------------------


def test_tune_writes_best_json_that_trains_to_the_best_trials_accuracy(ag_news_small: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tune"
    code = main(["tune", *_data_options(ag_news_small), "--trials", "3", "--space", str(_space_file(tmp_path)),
                 "--lr", "0.004", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "test accuracy of the best configuration (evaluated once, after the search)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"complete": 3, "pruned": 0, "fail": 0}
    assert all("lr" not in t["params"] and "hidden_dim" not in t["params"] for t in summary["trials"])  # fixed
    best = summary["best"]
    assert best["valid_accuracy"] == max(t["value"] for t in summary["trials"])
    report = (out / "report.md").read_text()
    for part in ("## Search space", "## Trials", "## Optimisation history", "## Parameter importances",
                 "evaluated once, for the best configuration"):
        assert part in report
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "history.png").exists()  # matplotlib is in the test environment
    assert json.loads((out / "best-run" / "tune-trial.json").read_text())["trial"] == best["trial"]

    cfg = RunConfig.from_dict(json.loads((out / "best.json").read_text()))
    assert cfg.train.lr == 0.004 and cfg.train.epochs == 2 and cfg.model.hidden_dim == 16
    assert cfg.model.embed_dim == best["params"]["embed_dim"]
    run = tmp_path / "run"
    assert main(["train", "--config", str(out / "best.json"), "--out", str(run), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"][metrics["best_epoch"] - 1]["valid_accuracy"] == best["valid_accuracy"]
    assert metrics["test"]["accuracy"] == summary["test"]["accuracy"]  # the same model as best-run/

    # a study is there: a new one into it is refused; --resume takes no other settings
    assert main(["tune", *_data_options(ag_news_small), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["tune", "--resume", str(out), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    # resumed with a study already complete: no trial more, the report again
    assert main(["tune", "--resume", str(out)]) == 0
    assert len(optuna.load_study(study_name="rnntext", storage=f"sqlite:///{out / 'study.db'}").trials) == 3
    # a new target; best-run/ lost: trained again from the best trial's configuration, to the same model
    shutil.rmtree(out / "best-run")
    assert main(["tune", "--resume", str(out), "--trials", "4"]) == 0
    assert len(optuna.load_study(study_name="rnntext", storage=f"sqlite:///{out / 'study.db'}").trials) == 4
    again = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "best-run" / "tune-trial.json").read_text())["trial"] == again["best"]["trial"]
    if again["best"]["trial"] == best["trial"]:
        assert "training the best configuration (trial" in capsys.readouterr().err
        assert again["test"] == summary["test"]


class OddTrialsPruner(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report."""

    def prune(self, study, trial):
        return trial.number % 2 == 1


def test_pruning_happens_on_the_epoch_reports(ag_news_small: Path, tmp_path: Path) -> None:
    from rnntext.tune import tune

    base = RunConfig.from_dict({"data": {"dataset": "ag_news", "data_dir": str(ag_news_small)},
                                "model": {"hidden_dim": 16, "embed_dim": 16},
                                "train": {"epoch_size": 2, "threads": 1, "device": "cpu", "epochs": 3}})
    space = Space.from_dict({"defaults": False, "lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    lines: list[str] = []
    summary = tune(base, tmp_path / "t", TuneConfig(trials=4), space=space, pruner=OddTrialsPruner(),
                   log=lines.append)
    study = optuna.load_study(study_name="rnntext", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert [len(t.intermediate_values) for t in study.trials] == [3, 1, 3, 1]  # epochs reported
    assert summary["counts"] == {"complete": 2, "pruned": 2, "fail": 0}
    assert any(line.startswith("trial 1: pruned after epoch 1") for line in lines)
    assert "test" in summary and "2 pruned" in (tmp_path / "t" / "report.md").read_text()


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.Error:  # tables not yet created
        return 0


def test_a_killed_tune_resumes_to_its_trial_count(ag_news_small: Path, tmp_path: Path) -> None:
    out, trials = tmp_path / "tune", 5
    cmd = [sys.executable, "-m", "rnntext", "tune", *_data_options(ag_news_small), "--trials", str(trials),
           "--space", str(_space_file(tmp_path)), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while _finished(out / "study.db") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the study ended before it could be killed: " + proc.stderr.read()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # mid-study: no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = _finished(out / "study.db")
    assert 2 <= before < trials
    assert not (out / "best.json").exists()  # written when the study ends

    lines: list[str] = []
    from rnntext.tune import resume

    summary = resume(out, log=lines.append)
    study = optuna.load_study(study_name="rnntext", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials == summary["counts"]["complete"] + summary["counts"]["pruned"]
    assert all(t.state.name != "RUNNING" for t in study.trials)  # the killed trial, if any, is failed
    assert f"tune: {before} of {trials} trials finished before; {trials - before} to run" in lines
    assert (out / "best.json").exists() and (out / "report.md").exists()
    assert json.loads((out / "best-run" / "tune-trial.json").read_text())["trial"] == summary["best"]["trial"]


def test_tune_needs_a_directory_and_validation_data(ag_news_small: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", *_data_options(ag_news_small), "--trials", "1"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["tune", *_data_options(ag_news_small), "--valid-split", "0", "--trials", "1",
                 "--out", str(tmp_path / "t")]) == 2
    assert "validation" in capsys.readouterr().err
    assert main(["tune", "--resume", str(tmp_path / "none")]) == 2
    assert "no study to resume" in capsys.readouterr().err


def test_data_are_prepared_once_and_again_only_for_other_data_settings(ag_news_small: Path) -> None:
    from rnntext.tune.study import _Data

    lines: list[str] = []
    data = _Data(lines.append)
    base = RunConfig.from_dict({"data": {"dataset": "ag_news", "data_dir": str(ag_news_small)}})
    first = data(base)
    assert first.test is None and first.valid is not None  # the trials never see the test rows
    assert data(base.with_overrides({"model.hidden_dim": 8, "train.lr": 0.01})).vocab is first.vocab
    assert len(lines) == 1
    other = data(base.with_overrides({"data.min_freq": 1}))
    assert len(lines) == 2 and len(other.vocab) > len(first.vocab)


def test_without_matplotlib_the_report_has_no_plots(ag_news_small: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import rnntext.tune.report as report
    from rnntext.tune import tune

    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    base = RunConfig.from_dict({"data": {"dataset": "ag_news", "data_dir": str(ag_news_small)},
                                "model": {"hidden_dim": 16, "embed_dim": 16},
                                "train": {"epoch_size": 2, "threads": 1, "device": "cpu", "epochs": 1}})
    lines: list[str] = []
    tune(base, tmp_path / "t", TuneConfig(trials=2), space=Space.from_dict({"defaults": False,
                                                                           "lr": {"choices": [0.001, 0.01]}}),
         log=lines.append)
    assert "tune: plots skipped: matplotlib is not installed (pip install 'rnntext[plots]')" in lines
    assert not list((tmp_path / "t").glob("*.png"))
    assert "(plots need matplotlib)" in (tmp_path / "t" / "report.md").read_text()


def test_without_optuna_tune_says_which_extra(ag_news_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    code = main(["tune", *_data_options(ag_news_small), "--trials", "1", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'rnntext[tune]'" in err, err
    assert not (tmp_path / "t").exists()


def test_out_must_be_new_or_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["tune", "--train", str(tmp_path / "x.csv"), "--out", str(tmp_path / "run")]) == 2
    assert "is not empty" in capsys.readouterr().err


class SpoilOddTrials(Callback):
    """Sets every odd-numbered trial's embedding to NaN after its first step: its loss turns NaN."""

    def __init__(self) -> None:
        self.trials = 0

    def on_step(self, trainer, metrics):
        if self.trials % 2 == 1:
            trainer.model.embedding.weight.data.fill_(float("nan"))

    def on_end(self, trainer, result):
        self.trials += 1


def test_a_diverged_trial_counts_as_pruned_and_each_trial_is_tracked(ag_news_small: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from rnntext.config import TrackConfig
    from rnntext.tune import tune

    base = RunConfig.from_dict({"data": {"dataset": "ag_news", "data_dir": str(ag_news_small)},
                                "model": {"hidden_dim": 16, "embed_dim": 16},
                                "train": {"epoch_size": 3, "threads": 1, "device": "cpu", "epochs": 1}})
    uri = f"file:{tmp_path / 'mlruns'}"
    track = TrackConfig(tensorboard=str(tmp_path / "tb"), mlflow=uri, mlflow_experiment="tune", log_every=1)
    lines: list[str] = []
    summary = tune(base, tmp_path / "t", TuneConfig(trials=3), space=Space.from_dict(
        {"defaults": False, "lr": {"low": 1e-3, "high": 1e-2}}), track=track, callbacks=[SpoilOddTrials()],
        log=lines.append)
    assert summary["counts"] == {"complete": 2, "pruned": 1, "fail": 0}
    assert any(line.startswith("trial 1: training diverged: the training loss is nan") and "counted as pruned" in line
               for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["trial-0000", "trial-0001", "trial-0002"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tune").experiment_id])
    states = {r.data.tags["mlflow.runName"]: r.info.status for r in runs}
    assert states == {"trial-0": "FINISHED", "trial-1": "KILLED", "trial-2": "FINISHED"}
    assert all(r.data.tags["rnntext.tune"] == str((tmp_path / "t").resolve()) for r in runs)
