"""The command line answers a user's mistake with a message and a non-zero status, never a
traceback; --debug shows the traceback. A few cases run as real processes (what a user sees), the
rest through cli.main in this process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rnntext.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_errors")
    (d / "train.csv").write_text("text,label\n" + "".join(f"word{i % 7} thing,{'ab'[i % 2]}\n" for i in range(60)))
    (d / "a_file").write_text("not a directory")
    (d / "bad.toml").write_text("[train]\nlr = -1\n")
    return d


def _tiny(data: Path) -> list[str]:
    return ["train", "--train", str(data / "train.csv"), "--embed-dim", "4", "--hidden-dim", "4", "--epochs", "1",
            "--threads", "1", "-q"]


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code if isinstance(e.code, int) else 1
    return rc, capsys.readouterr().err


CASES = {
    # name: (argv after the tiny training command or on its own, expected piece of the message)
    "missing file": (["train", "--train", "{d}/nope.csv"], "nope.csv: no such file"),
    "missing test file": (["--test", "{d}/nope.csv"], "nope.csv: no such file"),
    "unknown model name": (["--model", "transformer"], "invalid choice: 'transformer'"),
    "not a number": (["--epochs", "two"], "invalid int value: 'two'"),
    "hidden dim 0": (["--hidden-dim", "0"], "--hidden-dim must be >= 1, got 0"),
    "negative lr": (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    "valid split 1.5": (["--valid-split", "1.5"], "--valid-split must be in [0, 1), got 1.5"),
    "dropout 1": (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    "batch size 0": (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "checkpoint-every 0": (["--out", "{d}/r0", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    "checkpoint-every without out": (["--checkpoint-every", "5"], "--checkpoint-every needs --out"),
    "unknown device": (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    "meta device": (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    "infinite lr": (["--lr", "inf"], "--lr must be a finite number, got inf"),
    "nan lr": (["--lr", "nan"], "--lr must be a finite number, got nan"),
    "nan clip": (["--clip", "nan"], "--clip must be a finite number, got nan"),
    "infinite weight decay": (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    "absurd layers": (["--num-layers", "100000"], "--num-layers must be <= 64, got 100000"),
    "absurd ngrams": (["--ngrams", "1000000"], "--ngrams must be <= 8, got 1000000"),
    "negative seed": (["--seed", "-1"], "--seed must be >= 0, got -1"),
    "seed past 64 bits": (["--seed", str(2**63)], f"--seed must be <= {2**63 - 1}, got {2**63}"),
    "bad value in a config file": (["--config", "{d}/bad.toml"], "bad.toml: train.lr must be > 0, got -1"),
    "missing config file": (["--config", "{d}/nope.toml"], "nope.toml: config file not found"),
    "missing column": (["--text-column", "body"], "no column named 'body'"),
    "out under a file": (["--out", "{d}/a_file/run"], "cannot write to the run directory: Not a directory"),
    "out is a file": (["--out", "{d}/a_file"], "a_file: "),  # the message itself: the run directory checks
    "resume without checkpoint": (["train", "--resume", "{d}"], "no checkpoint to resume from"),
    "resume missing dir": (["train", "--resume", "{d}/nope"], "run directory does not exist"),
    "resume with options": (["train", "--resume", "{d}", "--epochs", "3"], "drop --epochs"),
    "predict missing run": (["predict", "{d}/nope", "some text"], "run directory does not exist"),
    "evaluate not a run": (["evaluate", "{d}"], "config.json: missing file"),
    "huge model": (["--embed-dim", "4", "--hidden-dim", "65536"], "out of memory"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_error_is_one_message_without_traceback(name: str, data: Path, capsys: pytest.CaptureFixture[str]):
    extra, expected = CASES[name]
    extra = [a.replace("{d}", str(data)) for a in extra]
    argv = extra if extra[0] in ("train", "predict", "evaluate") else _tiny(data) + extra
    rc, err = _run_main(argv, capsys)
    assert rc != 0, err
    assert "Traceback" not in err
    assert expected in err, err
    messages = [line for line in err.splitlines() if "error:" in line]
    assert len(messages) == 1 and messages[0].startswith("rnntext"), err  # log lines and argparse's usage aside


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnntext", *args], capture_output=True, text=True, timeout=120)


def test_real_process_unwritable_output_directory(data: Path) -> None:
    p = _cli(*_tiny(data), "--out", str(data / "a_file" / "run"))
    assert p.returncode == 2
    assert p.stderr == f"rnntext: error: {data / 'a_file' / 'run'}: cannot write to the run directory: " \
                       "Not a directory\n"


def test_real_process_debug_shows_the_traceback(data: Path) -> None:
    for argv in (["--debug", *_tiny(data), "--hidden-dim", "0"], [*_tiny(data), "--hidden-dim", "0", "--debug"]):
        p = _cli(*argv)
        assert p.returncode != 0
        assert "Traceback (most recent call last)" in p.stderr
        assert "ConfigError: --hidden-dim must be >= 1, got 0" in p.stderr


def test_real_process_missing_file_and_unknown_model(data: Path) -> None:
    p = _cli("train", "--train", str(data / "nope.csv"))
    assert (p.returncode, p.stderr) == (2, f"rnntext: error: {data / 'nope.csv'}: no such file\n")
    p = _cli("train", "--train", str(data / "train.csv"), "--model", "transformer")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("rnntext train: error: argument --model: invalid choice")
