"""Training callbacks (rnntext.training.callbacks) and the trackers built on them (rnntext.report.tracking):
TensorBoard scalars read back by TensorBoard's own EventAccumulator equal metrics.json, and MLflow (a local
file: store, read back with MlflowClient) has the params, the per-epoch metrics and the run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_config
from rnntext.cli import main
from rnntext.errors import ConfigError
from rnntext.training.callbacks import Callback, StepMetrics


class Recorder(Callback):
    def __init__(self, every: int = 1, stop_at_epoch: int | None = None):
        self.every, self.stop_at_epoch = every, stop_at_epoch
        self.steps: list[StepMetrics] = []
        self.epochs: list[dict[str, Any]] = []
        self.ends: list[Any] = []

    def on_step(self, trainer, metrics):
        self.steps.append(metrics)

    def on_epoch(self, trainer, row):
        self.epochs.append(dict(row))
        if row["epoch"] == self.stop_at_epoch:
            raise RuntimeError("stop here")

    def on_end(self, trainer, result):
        self.ends.append(result)


def test_callbacks_see_steps_epochs_and_end(ag_news_small: Path) -> None:
    from rnntext import train

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=2,
                           train__epoch_size=5)
    every1, every2 = Recorder(1), Recorder(2)
    result = train(cfg, None, progress=False, log=lambda s: None, callbacks=[every1, every2])
    assert [m.step for m in every1.steps] == list(range(1, 11))
    assert [m.epoch for m in every1.steps] == [1] * 5 + [2] * 5
    assert [m.step for m in every2.steps] == [2, 4, 6, 8, 10]
    # the means over each callback's window add up to the epoch's: rows of 32, five steps an epoch
    for epoch, row in enumerate(result.metrics["epochs"], start=1):
        losses = [m.loss for m in every1.steps if m.epoch == epoch]
        assert np.mean(losses) == pytest.approx(row["train_loss"], rel=1e-6)
        assert every1.steps[epoch * 5 - 1].lr == pytest.approx(row["lr"])
    assert all(0 <= m.accuracy <= 1 and m.rows_per_second > 0 for m in every1.steps)
    assert every1.epochs == result.metrics["epochs"] == every2.epochs
    assert every1.ends == [result] and every2.ends == [result]


def test_a_raising_callback_stops_training_and_the_others_are_closed(ag_news_small: Path) -> None:
    from rnntext import train

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=3,
                           train__epoch_size=2)
    stopper, other = Recorder(stop_at_epoch=1), Recorder()
    with pytest.raises(RuntimeError, match="stop here"):
        train(cfg, None, progress=False, log=lambda s: None, callbacks=[stopper, other])
    assert len(other.epochs) == 0 and other.ends == [None] and stopper.ends == [None]


def test_tensorboard_and_mlflow_read_back_equal_to_metrics_json(ag_news_small: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, tb, uri = tmp_path / "run", tmp_path / "tb", f"file:{tmp_path / 'mlruns'}"
    code = main(["train", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--embed-dim", "16",
                 "--hidden-dim", "16", "--batch-size", "64", "--epochs", "2", "--epoch-size", "4", "--threads", "1",
                 "--device", "cpu", "--out", str(run), "-q", "--tensorboard", str(tb), "--log-every", "2",
                 "--mlflow", uri, "--mlflow-experiment", "tests"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = metrics["epochs"]

    acc = EventAccumulator(str(tb))
    acc.Reload()
    for name in ("train_loss", "train_accuracy", "valid_accuracy", "lr", "rows_per_second", "seconds"):
        events = acc.Scalars(f"epoch/{name}")
        assert [e.step for e in events] == [1, 2]
        # TensorBoard keeps float32: equal to metrics.json's values as float32
        assert [e.value for e in events] == [float(np.float32(row[name])) for row in epochs], name
    for name in ("loss", "accuracy", "lr", "rows_per_second"):
        assert [e.step for e in acc.Scalars(f"step/{name}")] == [2, 4, 6, 8]
    assert acc.Scalars("test/accuracy")[0].value == float(np.float32(metrics["test"]["accuracy"]))

    client = MlflowClient(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert mlrun.info.status == "FINISHED"
    config = json.loads((run / "config.json").read_text())
    assert mlrun.data.params["model.hidden_dim"] == "16" == str(config["model"]["hidden_dim"])
    assert mlrun.data.params["model.vocab_size"] == str(config["model"]["vocab_size"])
    for name in ("train_loss", "valid_accuracy", "lr"):
        history = sorted(client.get_metric_history(mlrun.info.run_id, name), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(row["epoch"], row[name]) for row in epochs]
    assert mlrun.data.metrics["test_accuracy"] == metrics["test"]["accuracy"]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "run")}
    assert {"run/config.json", "run/metrics.json", "run/model.safetensors", "run/vocab.json"} <= artifacts
    assert "run/checkpoint" not in artifacts


def test_a_missing_package_is_one_line_naming_the_extra(ag_news_small: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.report.tracking import MLflowTracker, TensorBoardTracker

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "mlflow", None)
    extra = r"pip install 'rnntext\[track\]'"
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboard package: " + extra):
        TensorBoardTracker(tmp_path / "tb")
    with pytest.raises(ConfigError, match=r"--mlflow needs the mlflow package: " + extra):
        MLflowTracker(f"file:{tmp_path}")
    code = main(["train", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "rnntext[track]" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()  # refused before training


def test_tracking_is_refused_with_ensemble(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--train", str(tmp_path / "x.csv"), "--ensemble", "2", "--mlflow", f"file:{tmp_path}"])
    assert code == 2 and "--ensemble" in capsys.readouterr().err


def test_under_ddp_only_rank_0_tracks(ag_news_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, tb = tmp_path / "run", tmp_path / "tb"
    code = main(["train", "--nproc", "2", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--embed-dim", "16",
                 "--hidden-dim", "16", "--batch-size", "32", "--epochs", "2", "--epoch-size", "3", "--threads", "1",
                 "--device", "cpu", "--out", str(run), "-q", "--tensorboard", str(tb), "--log-every", "1"])
    assert code == 0, capsys.readouterr().err
    assert len(list(tb.iterdir())) == 1  # one event file: rank 1 wrote nothing
    acc = EventAccumulator(str(tb))
    acc.Reload()
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e.value for e in acc.Scalars("epoch/valid_accuracy")] == [float(np.float32(r["valid_accuracy"]))
                                                                       for r in epochs]
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(1, 7))  # rank 0's steps, once each


def test_tracking_options_go_with_resume(ag_news_small: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnntext import train

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=2,
                           train__epoch_size=3, train__checkpoint_every=1)
    run, tb = tmp_path / "run", tmp_path / "tb"
    with pytest.raises(RuntimeError, match="stop here"):  # stopped at the end of epoch 1, before its checkpoint
        train(cfg, str(run), progress=False, log=lambda s: None, callbacks=[Recorder(stop_at_epoch=1)])
    assert main(["train", "--resume", str(run), "-q", "--tensorboard", str(tb), "--log-every", "1"]) == 0, \
        capsys.readouterr().err
    acc = EventAccumulator(str(tb))
    acc.Reload()
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [(e.step, e.value) for e in acc.Scalars("epoch/train_loss")] == [
        (r["epoch"], float(np.float32(r["train_loss"]))) for r in epochs]
    assert [e.step for e in acc.Scalars("step/loss")] == [4, 5, 6]  # the steps run after the resume


def test_an_unusable_mlflow_store_is_said_before_training(ag_news_small: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlflow")
    (tmp_path / "file").write_text("")
    code = main(["train", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--mlflow", f"file:{tmp_path / 'file' / 'store'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot use this tracking store" in err, err
    assert not (tmp_path / "run").exists()
