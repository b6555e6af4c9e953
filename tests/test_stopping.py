"""Training length, early stopping and the choice of the best epoch (training/stopping.py): early stopping
keeps the best epoch's weights, the epochs follow --min-steps when --epochs is not given, and every new
option rejects a bad value with one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_config
from rnntext import train
from rnntext.cli import main
from rnntext.config import AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS, TrainConfig
from rnntext.training.stopping import EPOCH_BUDGET, planned_epochs, should_stop


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-class file whose labels are 30% noise: a model fits its training rows and then its
    validation loss rises, so early stopping has something to stop."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    lines = ["text,label"]
    for _ in range(240):
        label = rng.randrange(2)
        text = " ".join(rng.choice(words[label * 20:(label + 1) * 20] if rng.random() < 0.6 else words)
                        for _ in range(6))
        lines.append(f"{text},{'ab'[label if rng.random() > 0.3 else 1 - label]}")
    d = tmp_path_factory.mktemp("noisy")
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    return d / "train.csv"


def _cfg(path: Path, **overrides):
    return make_tiny_config(data__train=str(path), data__valid_split=0.25, train__schedule="constant",
                            train__lr=0.02, train__batch_size=16, **overrides)


def test_early_stopping_keeps_the_best_epoch(noisy: Path, tmp_path: Path) -> None:
    stopped = train(_cfg(noisy, train__epochs=30, train__patience=2, train__select_by="loss"), str(tmp_path / "a"),
                    progress=False, log=lambda s: None)
    m = stopped.metrics
    losses = [e["valid_loss"] for e in m["epochs"]]
    best = m["best_epoch"]
    assert len(losses) == best + 2 < 30  # stopped two epochs after the best, well before the planned 30
    assert losses[best - 1] == min(losses) and all(x > losses[best - 1] for x in losses[best:])
    # the same run planned for `best` epochs (constant rate: the same first epochs) ends on the kept weights
    short = train(_cfg(noisy, train__epochs=best), None, progress=False, log=lambda s: None)
    kept, ref = stopped.model.state_dict(), short.model.state_dict()
    assert all(torch.equal(kept[k], ref[k]) for k in ref)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["best_epoch"] == best and saved["select_by"] == "loss" and saved["epochs_planned"] == 30


def test_select_by_picks_the_epoch_by_its_metric(noisy: Path) -> None:
    for select_by, key, best_of in (("accuracy", "valid_accuracy", max), ("macro_f1", "valid_macro_f1", max),
                                    ("loss", "valid_loss", min)):
        m = train(_cfg(noisy, train__epochs=6, train__select_by=select_by), None, progress=False,
                  log=lambda s: None).metrics
        values = [e[key] for e in m["epochs"]]
        assert values.index(best_of(values)) + 1 == m["best_epoch"], (select_by, values)


def test_epochs_follow_min_steps_when_not_given() -> None:
    t = TrainConfig()
    assert t.epochs is None
    assert planned_epochs(t, 149) == 5  # AG News (20k rows): 5 epochs of 149 steps, as before
    assert planned_epochs(t, 41) == 18  # TREC (5.2k rows): 18 x 41 >= 700 steps
    assert planned_epochs(t, 1) == AUTO_MAX_EPOCHS and planned_epochs(t, 10_000) == AUTO_MIN_EPOCHS
    # long texts: no more epochs than fit the token budget, and never fewer than AUTO_MIN_EPOCHS
    assert planned_epochs(t, 84, 1_790_000) == EPOCH_BUDGET // 1_790_000 == 7  # 20 Newsgroups: 7, not 9
    assert planned_epochs(t, 149, 860_000) == 5  # AG News: far below the budget
    assert planned_epochs(t, 41, 50_000) == 18  # TREC: the same
    assert planned_epochs(t, 84, 10 * EPOCH_BUDGET) == AUTO_MIN_EPOCHS
    t.epochs = 3
    assert planned_epochs(t, 1) == planned_epochs(t, 1, 10 * EPOCH_BUDGET) == 3  # --epochs wins
    history = [{"epoch": i, "valid_accuracy": 0.5} for i in (1, 2, 3)]
    assert should_stop(history, 1, 2) and not should_stop(history, 2, 2) and not should_stop(history, 1, None)
    assert not should_stop([{"epoch": 5}], 1, 2)  # no validation: never


def test_auto_epochs_are_recorded_in_the_config(noisy: Path, tmp_path: Path) -> None:
    cfg = _cfg(noisy, train__epochs=None, train__min_steps=30)  # 180 rows / 16 = 12 steps an epoch -> 5 epochs
    result = train(cfg, str(tmp_path / "r"), progress=False, log=lambda s: None)
    assert result.config.train.epochs == 5 == len(result.metrics["epochs"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["epochs"] == 5



def test_a_run_of_long_texts_plans_no_more_epochs_than_the_token_budget(noisy: Path, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """The trainer hands the planner its epoch's tokens: with a budget of 7 epochs of this data, --min-steps
    asking for 9 gets 7 (the budget stands in for 14M token-passes, which needs long texts)."""
    from rnntext.training import stopping
    from rnntext.training.trainer import Trainer

    lines: list[str] = []
    probe = Trainer(_cfg(noisy, train__epochs=None, train__min_steps=100), None, progress=False, log=lines.append)
    tokens, steps = int(probe.data.train.lengths.sum()), probe.steps_per_epoch
    assert probe.cfg.train.epochs == 9 == -(-100 // steps)  # by steps alone
    monkeypatch.setattr(stopping, "EPOCH_BUDGET", 7 * tokens + tokens // 2)
    lines.clear()
    capped = Trainer(_cfg(noisy, train__epochs=None, train__min_steps=100), None, progress=False, log=lines.append)
    assert capped.cfg.train.epochs == 7
    assert any(f"epochs: 7 of {steps} steps (--min-steps 100; 9 would read more than" in line for line in lines), lines

CASES = {
    "patience 0": (["--patience", "0"], "--patience must be >= 1, got 0"),
    "patience text": (["--patience", "two"], "invalid int value: 'two'"),
    "min steps 0": (["--min-steps", "0"], "--min-steps must be >= 1, got 0"),
    "epochs 0": (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    "select by f1": (["--select-by", "f1"], "invalid choice: 'f1'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_new_options_reject_bad_values_in_one_line(name: str, noisy: Path, capsys: pytest.CaptureFixture[str]):
    extra, expected = CASES[name]
    argv = ["train", "--train", str(noisy), "--embed-dim", "4", "--hidden-dim", "4", "--threads", "1", "-q", *extra]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and expected in err, err
    messages = [line for line in err.splitlines() if "error:" in line]
    assert len(messages) == 1 and messages[0].startswith("rnntext"), err


def test_a_config_file_with_a_bad_select_by_is_one_line(tmp_path: Path, noisy: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"train": {"select_by": "f1", "patience": 0}}))
    rc = main(["train", "--train", str(noisy), "--config", str(tmp_path / "c.json"), "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("error:") == 1 and "c.json: train." in err, err
