"""Ensembles (training/ensemble.py): N seeds of one configuration, whose averaged class
probabilities are what train, evaluate, predict and the Predictor report for the ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rnntext
from conftest import make_tiny_config, write_table
from rnntext.errors import CheckpointError, ConfigError
from rnntext.inference.evaluate import evaluate_run
from rnntext.training.ensemble import train_ensemble
from test_cli import rnntext as run_cli

TEXTS = ["Stocks fell as oil prices rose and investors sold shares",
         "The team won the championship game in overtime", "New chip doubles the battery life of phones"]


@pytest.fixture(scope="module")
def ensemble_dir(ag_news_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=2, train__seed=5)
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    metrics = train_ensemble(cfg, 3, str(out), progress=False)
    return out, metrics


def test_members_are_seeded_runs_and_the_file_lists_them(ensemble_dir: tuple[Path, dict]) -> None:
    out, metrics = ensemble_dir
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["members"] == ["member-0", "member-1", "member-2"]
    assert [m["seed"] for m in metrics["members"]] == [5, 6, 7]
    for k in range(3):
        cfg = json.loads((out / f"member-{k}" / "config.json").read_text())
        assert cfg["train"]["seed"] == 5 + k
    assert saved["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert metrics["test"]["accuracy"] > 0.5  # 4 classes: chance is 0.25


def test_ensemble_probabilities_are_the_members_mean(ensemble_dir: tuple[Path, dict]) -> None:
    out, _ = ensemble_dir
    ens = rnntext.load(out, device="cpu")
    assert len(ens.runs) == 3
    members = [rnntext.load(out / f"member-{k}", device="cpu").probabilities(TEXTS) for k in range(3)]
    torch.testing.assert_close(ens.probabilities(TEXTS), torch.stack(members).mean(0))
    # the same members named one by one
    by_name = rnntext.load([out / f"member-{k}" for k in range(3)], device="cpu")
    torch.testing.assert_close(by_name.probabilities(TEXTS), ens.probabilities(TEXTS))
    assert [p.label for p in ens.predict(TEXTS)] == [ens.labels[i] for i in ens.probabilities(TEXTS).argmax(1)]


def test_evaluate_reproduces_the_training_metrics(ensemble_dir: tuple[Path, dict]) -> None:
    out, metrics = ensemble_dir
    report = evaluate_run(out, device="cpu")
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
    assert report["confusion"] == metrics["test"]["confusion"]
    assert len(report["ensemble"]) == 3


def test_cli_train_evaluate_predict(ag_news_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    done = run_cli("train", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--ensemble", "2",
                   "--epochs", "1", "--embed-dim", "16", "--hidden-dim", "16", "--epoch-size", "10", "--threads", "1",
                   "-q", "--json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert len(metrics["members"]) == 2 and "ensemble of 2: test accuracy" in done.stderr
    ev = run_cli("evaluate", str(out), "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
    two = run_cli("evaluate", str(out / "member-0"), str(out / "member-1"))
    assert two.returncode == 0 and "ensemble of 2 runs" in two.stdout
    pred = run_cli("predict", str(out / "member-0"), "--ensemble", str(out / "member-1"), "--json", TEXTS[0])
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["probabilities"] == pytest.approx(
        rnntext.load(out, device="cpu").predict(TEXTS[0])[0].probabilities, abs=1e-5)
    bad = run_cli("train", "--dataset", "ag_news", "--data-dir", str(ag_news_small), "--ensemble", "2",
                  "--nproc", "2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "drop --nproc" in bad.stderr


def test_errors(ensemble_dir: tuple[Path, dict], trained_run: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        train_ensemble(tiny_config(), 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ensemble.json").write_text('{"members": []}')
    with pytest.raises(CheckpointError, match="ensemble.json"):
        rnntext.load(broken)
    # members must share their labels: a run trained on other classes cannot join
    other = tmp_path / "other"

    data = write_table(tmp_path / "two.csv", ["text", "label"],
                       [[f"good text {i}", "pos"] if i % 2 else [f"bad text {i}", "neg"] for i in range(40)])
    rnntext.train(tiny_config(data__train=str(data)), str(other), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="labels"):
        rnntext.load([trained_run, other])
