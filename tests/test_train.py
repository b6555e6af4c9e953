"""Training end to end: AG News accuracy, determinism, the run directory, --epoch-size, and the
own-data path (CSV/TSV/JSONL, .gz, string and integer labels, several text columns, --valid-split)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rnntext
from conftest import make_tiny_config
from rnntext.config import DataConfig
from rnntext.data import load_splits, prepare
from rnntext.data.ag_news import CLASSES
from rnntext.errors import ConfigError, DataError
from rnntext.training.rundir import load_run
from rnntext.training.trainer import Trainer, train

TIMING_KEYS = {"seconds", "rows_per_second", "train_seconds", "data_seconds", "total_seconds"}


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def ag_runs(ag_news_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs with the same seed: GRU 32/32, 3 epochs on 2,000 AG News rows (1,900 train, 100 valid)."""
    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), data__min_freq=2,
                           train__epochs=3, train__lr=1e-2)
    root = tmp_path_factory.mktemp("ag_runs")
    for name in ("a", "b"):
        train(cfg, str(root / name), progress=False, log=_quiet)
    return root / "a", root / "b"


def test_ag_news_accuracy(ag_runs: tuple[Path, Path]) -> None:
    metrics = json.loads((ag_runs[0] / "metrics.json").read_text())
    assert metrics["test"]["n"] == 500
    assert metrics["test"]["accuracy"] >= 0.6, metrics["test"]["accuracy"]
    # it learnt: train loss falls below the chance level ln(4) = 1.386
    assert metrics["epochs"][-1]["train_loss"] < 1.2


def test_run_directory_contents(ag_runs: tuple[Path, Path]) -> None:
    run_dir = ag_runs[0]
    assert {"config.json", "vocab.json", "labels.json", "model.safetensors", "metrics.json"} <= \
        {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "labels.json").read_text()) == CLASSES
    vocab = json.loads((run_dir / "vocab.json").read_text())
    assert vocab[:2] == ["<pad>", "<unk>"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["vocab_size"] == len(vocab) and config["model"]["num_classes"] == 4
    assert config["data"]["min_freq"] == 2 and config["train"]["epochs"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for e in metrics["epochs"]:
        assert {"train_loss", "train_accuracy", "valid_accuracy", "seconds"} <= set(e)
        assert 0 <= e["train_accuracy"] <= 1 and 0 <= e["valid_accuracy"] <= 1 and e["seconds"] > 0
    best = max(metrics["epochs"], key=lambda e: e["valid_accuracy"])
    assert metrics["best_epoch"] == best["epoch"]
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(metrics["test"])
    # the saved weights are the best epoch's: evaluating them gives the saved test metrics
    from rnntext.inference.evaluate import evaluate_run

    assert evaluate_run(run_dir, device="cpu", threads=1)["accuracy"] == metrics["test"]["accuracy"]


def test_same_seed_same_run(ag_runs: tuple[Path, Path]) -> None:
    a, b = (json.loads((d / "metrics.json").read_text()) for d in ag_runs)
    assert _without_timings(a) == _without_timings(b)
    wa, wb = (load_file(d / "model.safetensors") for d in ag_runs)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class _CountingTrainer(Trainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def train_step(self, batch):
        self.batches.append(len(batch))
        return super().train_step(batch)


def test_epoch_size_cuts_epochs(ag_news_small: Path) -> None:
    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=2,
                           train__epoch_size=3, train__batch_size=16, model__model="bag")
    t = _CountingTrainer(cfg, progress=False, log=_quiet)
    result = t.fit()
    assert t.batches == [16] * 6
    assert len(result.metrics["epochs"]) == 2
    # a different seed gives a different order; epochs differ from each other
    assert [b.tolist() for b in t.epoch_order(0)] != [b.tolist() for b in t.epoch_order(1)]


# ---- own data ---------------------------------------------------------------------------------

WORDS = {"pos": ["great", "wonderful", "superb", "loved"], "neg": ["awful", "boring", "terrible", "hated"],
         "mixed": ["okay", "average", "fine", "mediocre"]}
FILLER = ["the", "film", "was", "plot", "actors", "and", "a", "story", "it", "really", "quite", "music"]


def _synthetic(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(title, body, label) rows whose label shows in a keyword among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        body = [rng.choice(FILLER) for _ in range(rng.randint(3, 25))]
        body.insert(rng.randint(0, len(body)), rng.choice(WORDS[label]))
        rows.append((f"Review {i}", " ".join(body), label))
    return rows


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.csv.gz", "train.jsonl.gz"])
def test_own_data_formats(write_data: Callable[..., Path], name: str) -> None:
    rows = _synthetic(60)
    path = write_data(name, ["title", "text", "label"], rows)
    cfg = DataConfig(train=str(path), valid_split=0.0)
    splits = load_splits(cfg)
    assert splits.label_names == ["mixed", "neg", "pos"]
    assert splits.train.texts == [r[1] for r in rows]
    assert splits.train.labels == [r[2] for r in rows]
    assert splits.valid is None and splits.test is None


def test_ag_news_with_own_test_and_valid_files(ag_news_small: Path, write_data: Callable[..., Path]) -> None:
    test = write_data("mine.csv", ["headline", "topic"], [("Stocks fell", "Business"), ("Team wins", "Sports")])
    valid = write_data("valid.csv", ["headline", "topic"], [("Oil rose", "Business")])
    cfg = DataConfig(dataset="ag_news", data_dir=str(ag_news_small), test=str(test), valid=str(valid),
                     text_columns=["headline"], label_column="topic")
    splits = load_splits(cfg)
    assert splits.test.texts == ["Stocks fell", "Team wins"] and splits.test.labels == ["Business", "Sports"]
    assert splits.valid.texts == ["Oil rose"]
    assert len(splits.train) == 2000  # the whole training split: no validation part taken from it
    assert splits.label_names == list(CLASSES)
    bad = write_data("bad.csv", ["headline", "topic"], [("Stocks fell", "3")])
    with pytest.raises(DataError, match="never appears"):  # labels are the class names, not 1..4
        load_splits(DataConfig(dataset="ag_news", data_dir=str(ag_news_small), test=str(bad),
                               text_columns=["headline"], label_column="topic"))


def test_several_text_columns_are_joined(write_data: Callable[..., Path]) -> None:
    path = write_data("train.csv", ["title", "body", "label"], [("Big News", "Markets rose.", "b"), ("X", "y", "a")])
    splits = load_splits(DataConfig(train=str(path), text_columns=["title", "body"], valid_split=0.0))
    assert splits.train.texts == ["Big News Markets rose.", "X y"]
    p = prepare(DataConfig(train=str(path), text_columns=["title", "body"], valid_split=0.0, min_freq=1),
                progress=False)
    assert {"big", "news", "markets", "rose", "."} <= set(p.vocab.itos)


def test_integer_labels_in_numeric_order(write_data: Callable[..., Path]) -> None:
    path = write_data("train.csv", ["label", "text"], [(10, "a"), (2, "b"), (0, "c"), (2, "d")])
    splits = load_splits(DataConfig(train=str(path), valid_split=0.0))
    assert splits.label_names == ["0", "2", "10"]


def test_valid_split_is_reproducible(write_data: Callable[..., Path]) -> None:
    rows = _synthetic(200)
    path = write_data("train.csv", ["title", "text", "label"], rows)
    cfg = DataConfig(train=str(path), valid_split=0.1)
    a, b, c = load_splits(cfg, seed=0), load_splits(cfg, seed=0), load_splits(cfg, seed=1)
    assert len(a.valid) == 20 and len(a.train) == 180
    assert a.valid.texts == b.valid.texts and a.train.texts == b.train.texts
    assert a.valid.texts != c.valid.texts
    assert sorted(a.train.texts + a.valid.texts) == sorted(r[1] for r in rows)
    with pytest.raises(ConfigError, match="valid-split"):
        load_splits(DataConfig(train=str(path), valid_split=0.001))


def test_unknown_label_in_test_names_file_and_line(write_data: Callable[..., Path]) -> None:
    train_path = write_data("train.csv", ["text", "label"], [("a", "x"), ("b", "y")])
    test_path = write_data("test.csv", ["text", "label"], [("a", "x"), ("c", "z")])
    with pytest.raises(DataError, match=r"test\.csv:3: label 'z' never appears in the training data"):
        load_splits(DataConfig(train=str(train_path), test=str(test_path), valid_split=0.0))


def test_own_data_train_predict(write_data: Callable[..., Path], tmp_path: Path) -> None:
    """String labels go in, the same names come out of metrics, labels.json and predictions."""
    train_path = write_data("train.jsonl.gz", ["title", "text", "label"], _synthetic(600, seed=1))
    test_path = write_data("test.tsv", ["title", "text", "label"], _synthetic(90, seed=2))
    cfg = make_tiny_config(data__train=str(train_path), data__test=str(test_path), train__epochs=5,
                           train__lr=1e-2, model__model="lstm", model__bidirectional=False, model__pooling="max")
    result = train(cfg, str(tmp_path / "run"), progress=False, log=_quiet)
    assert set(result.metrics["test"]["per_class"]) == {"mixed", "neg", "pos"}
    assert result.metrics["test"]["accuracy"] >= 0.9
    assert len(result.prepared.valid) == 30  # 5% of 600 by default
    assert load_run(tmp_path / "run").label_names == ["mixed", "neg", "pos"]
    preds = rnntext.load(tmp_path / "run", device="cpu").predict(["the plot was superb and the music great",
                                                                   "boring and awful"])
    assert [p.label for p in preds] == ["pos", "neg"]


def test_skipped_rows_are_counted_with_a_valid_split(write_data: Callable[..., Path]) -> None:
    rows = [(r[1], r[2]) for r in _synthetic(40)] + [("a row without a label", "")]
    path = write_data("train.csv", ["text", "label"], rows)
    p = prepare(DataConfig(train=str(path), skip_bad_rows=True, valid_split=0.1), progress=False)
    assert p.skipped == {str(path): 1}
    assert len(p.train) + len(p.valid) == 40


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 7, 8, 50])
def test_lr_schedule_any_number_of_steps(total_steps: int) -> None:
    """A tiny file gives a handful of steps; the schedule must still work (OneCycleLR needs >= 4)."""
    from rnntext.config import RunConfig
    from rnntext.training.trainer import make_schedule

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    schedule = make_schedule(RunConfig(), optimizer, total_steps)
    lrs = []
    for _ in range(total_steps):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(0 < lr <= 0.01 + 1e-12 for lr in lrs)


# ---- a NaN loss stops the run; option values that cannot train ---------------------------------


def _own_rows(write_data: Callable[..., Path], n: int = 240) -> Path:
    return write_data("train.csv", ["text", "label"], [(r[1], r[2]) for r in _synthetic(n)])


def test_nan_loss_stops_the_run_without_a_finished_run_directory(write_data: Callable[..., Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever makes the loss NaN (here: the 3rd step of epoch 2), the run stops with one line and exit
    status 2; the checkpoint of epoch 1 stays, and nothing looks like a finished run."""
    from rnntext.cli import main
    from rnntext.training import checkpoint as ckpt_io

    step = Trainer.train_step

    def nan_at_epoch_2_step_3(self: Trainer, batch):  # noqa: ANN001, ANN202
        loss, ok, n = step(self, batch)
        return (float("nan") if self.epoch == 1 and self.step == 2 else loss), ok, n

    monkeypatch.setattr(Trainer, "train_step", nan_at_epoch_2_step_3)
    out = tmp_path / "run"
    rc = main(["train", "--train", str(_own_rows(write_data)), "--out", str(out), "--epochs", "2", "--batch-size",
               "32", "--embed-dim", "16", "--hidden-dim", "16", "--threads", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("rnntext: error: training diverged: the training loss is nan at epoch 2, step 3 of "), err
    assert "Traceback" not in err and "keeps its last checkpoint" in line
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    manifest = ckpt_io.read_manifest(out)
    assert manifest["finished"] is False and manifest["progress"]["epoch"] == 1 and manifest["progress"]["step"] == 0


def test_nan_weights_stop_at_the_first_step(write_data: Callable[..., Path]) -> None:
    """A real NaN: weights that are NaN make the first loss NaN (no monkeypatching of the loop)."""
    from rnntext.training.trainer import TrainingDiverged

    cfg = make_tiny_config(data__train=str(_own_rows(write_data)))
    trainer = Trainer(cfg, progress=False, log=_quiet)
    with torch.no_grad():
        trainer.model.embedding.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 1 of \d+; stopped, nothing was saved"):
        trainer.fit()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "1e30"], "--lr must be <= 10"),
    (["--clip", "nan"], "--clip must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--weight-decay", "1e30"], "--weight-decay must be <= 100"),
    (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--device", "mps"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--num-layers", "100000"], "--num-layers must be <= 64"),
    (["--ngrams", "1000000"], "--ngrams must be <= 8"),
    (["--max-batch-tokens", "0"], "--max-batch-tokens must be >= 1"),
    (["--max-len", "0"], "--max-len must be >= 1"),
])
def test_option_values_that_cannot_train_are_one_line_errors(argv: list[str], message: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import main

    assert main(["train", "--train", str(tmp_path / "never-read.csv"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rnntext: error: {message}"), err


@pytest.mark.parametrize("argv", [["serve", "RUN", "--port", "70000"], ["serve", "RUN", "--device", "meta"],
                                  ["predict", "RUN", "x", "--device", "mps"], ["evaluate", "RUN", "--device", "meta"]])
def test_other_commands_reject_such_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnntext: error: --"), err


def test_seed_must_be_an_integer(capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import main

    with pytest.raises(SystemExit) as e:  # argparse's own usage error (exit 2), no traceback
        main(["train", "--train", "x.csv", "--seed", "1e23"])
    assert e.value.code == 2 and "--seed: invalid int value: '1e23'" in capsys.readouterr().err


# ---- a NaN model never prints NaN -----------------------------------------------------------------


def _nan_run(trained_run: Path, tmp_path: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    run = tmp_path / "nan_run"
    shutil.copytree(trained_run, run)
    weights = load_file(run / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              run / "model.safetensors")
    return run


def test_predict_json_of_a_nan_model_is_an_error_not_nan(trained_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import main

    rc = main(["predict", str(_nan_run(trained_run, tmp_path)), "--json", "stocks rallied", "a new phone"])
    out, err = capsys.readouterr()
    assert rc == 2 and "NaN" not in out and "nan" not in out.lower()
    for line in out.splitlines():  # whatever is printed is strict JSON
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} printed"))
    assert err.count("\n") == 1 and err.startswith("rnntext: error: "), err


@pytest.mark.parametrize("command", ["evaluate", "serve"])
def test_evaluate_and_serve_refuse_a_nan_model_when_loading_it(command: str, trained_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import main

    assert main([command, str(_nan_run(trained_run, tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors: tensor" in err and "NaN or infinite" in err, err


def test_predictor_refuses_nan_probabilities(trained_run: Path) -> None:
    from rnntext import fast
    from rnntext.errors import CheckpointError

    predictor = rnntext.load(trained_run, device="cpu")
    assert predictor.predict(["stocks rallied"])[0].label in CLASSES
    with torch.no_grad():
        for q in predictor.run.model.parameters():
            q.fill_(float("nan"))
    predictor.forwards = [fast.inference_forward(r.model, predictor.device) for r in predictor.runs]
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        predictor.predict(["stocks rallied"])


def test_long_texts_under_a_small_budget_resume_bit_identically(write_data: Callable[..., Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Batches split by the token budget (and texts cut to it) keep the epoch order a pure function of
    the seed and the epoch: a run stopped mid-epoch and resumed is the uninterrupted run, bit for bit."""
    from rnntext.cli import main

    rng = random.Random(3)
    rows = [(r[1], r[2]) for r in _synthetic(200)]
    for i in range(0, 200, 8):  # some long texts (up to 4x the budget), the label's word at the start
        rows[i] = (rows[i][0] + " " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(40, 1000))), rows[i][1])
    path = write_data("train.csv", ["text", "label"], rows)
    # --max-len above the budget: the budget, not --max-len (192 by default), cuts the long texts here
    argv = ["train", "--train", str(path), "--epochs", "2", "--batch-size", "16", "--max-batch-tokens", "256",
            "--max-len", "4096", "--embed-dim", "16", "--hidden-dim", "16", "--threads", "1", "-q"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    assert "texts longer than 256 tokens cut to their first 256" in capsys.readouterr().err

    after_step = Trainer.after_step

    def interrupt_at_step_12(self: Trainer, step: int, running) -> None:  # noqa: ANN001
        if self.global_step == 11:  # this call makes it 12: mid-epoch 1
            self.interrupt.set = True
        after_step(self, step, running)

    monkeypatch.setattr(Trainer, "after_step", interrupt_at_step_12)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 130
    monkeypatch.setattr(Trainer, "after_step", after_step)
    assert main(["train", "--resume", str(tmp_path / "run"), "-q"]) == 0
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert (ref / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    metrics = [_without_timings(json.loads((d / "metrics.json").read_text())) for d in (ref, run)]
    assert metrics[0] == metrics[1]
