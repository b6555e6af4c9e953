"""Training survives interruption: SIGKILL at random moments and Ctrl-C, then `--resume`, give the
same metrics and bit-identical weights as an uninterrupted run (CPU, one thread).

The kill test runs the real `rnntext train` command line (rnntext.cli.main) in child processes
forked from a multiprocessing fork server that has torch already imported: each child is a real
process, killed with SIGKILL, but starting one costs a fork instead of a 2-3 s interpreter start,
which is what lets 24 kills fit in a few seconds. The Ctrl-C test uses plain `python -m rnntext`
subprocesses. Run with -s to see the kill-and-resume summary."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import terminal_sigint
from interrupt import ctrl_c_after
from rnntext.training.checkpoint import checkpoint_dir, has_checkpoint, load_checkpoint, manifest_path
from rnntext.training.rundir import load_run

TIMING = {"seconds", "rows_per_second", "train_seconds", "data_seconds", "total_seconds"}
WORDS = {"sport": "goal match team coach league score", "tech": "chip software robot laptop code data",
         "money": "bank stock market price trade profit"}
FILLER = "the a of and to in on with for new says report after over".split()


def _write_data(d: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    labels = sorted(WORDS)

    def rows(n: int) -> str:
        out = ["text,label"]
        for _ in range(n):
            label = rng.choice(labels)
            words = rng.choices(WORDS[label].split(), k=rng.randint(1, 3)) + rng.choices(FILLER, k=rng.randint(3, 12))
            rng.shuffle(words)
            out.append(f"{' '.join(words)},{label}")
        return "\n".join(out) + "\n"

    d.mkdir(parents=True, exist_ok=True)
    (d / "train.csv").write_text(rows(300))
    (d / "test.csv").write_text(rows(100))
    return d / "train.csv", d / "test.csv"


def _train_argv(data: tuple[Path, Path], out: Path) -> list[str]:
    return ["train", "--train", str(data[0]), "--test", str(data[1]), "--model", "gru", "--embed-dim", "16",
            "--hidden-dim", "16", "--batch-size", "8", "--epochs", "3", "--threads", "1", "--device", "cpu",
            "--seed", "7", "--checkpoint-every", "2", "-q", "--out", str(out)]


def _cli_child(argv: list[str], log: str) -> None:
    """Body of a forked child: the real command line, its output in `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from rnntext.cli import main

    raise SystemExit(main(argv))


def _without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def assert_same_run(run: Path, ref: Path) -> tuple[dict[str, Any], int]:
    """metrics.json equal (timings aside) and model.safetensors equal tensor for tensor."""
    got, want = json.loads((run / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    assert _without_timing(got) == _without_timing(want)
    a, b = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return got, len(a)


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    # what a child would otherwise import on its own: torch._dynamo (imported by the optimiser's
    # constructor) and matplotlib (the run's plots) take seconds each
    ctx.set_forkserver_preload(["rnntext.cli", "rnntext.training.trainer", "torch._dynamo", "matplotlib",
                                "matplotlib.pyplot", "matplotlib.backends.backend_agg", __name__])
    return ctx


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, forkserver) -> dict[str, Any]:
    """One uninterrupted run; everything else is compared with it."""
    root = tmp_path_factory.mktemp("resume")
    data = _write_data(root / "data")
    out = root / "reference"
    p = forkserver.Process(target=_cli_child, args=(_train_argv(data, out), str(root / "reference.log")))
    t0 = time.perf_counter()
    p.start()
    p.join(120)
    assert p.exitcode == 0, (root / "reference.log").read_text()
    steps = json.loads(manifest_path(out).read_text())["progress"]["global_step"]
    return {"root": root, "data": data, "out": out, "steps": steps, "seconds": time.perf_counter() - t0}


def _wait_for_step(proc: multiprocessing.process.BaseProcess, run: Path, target: int, timeout: float = 60) -> None:
    """Return once the run's newest checkpoint has reached `target` steps (or the process ended)."""
    path, deadline = manifest_path(run), time.monotonic() + timeout
    while proc.is_alive():
        try:
            if json.loads(path.read_bytes())["progress"]["global_step"] >= target:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"no progress to step {target} in {timeout}s"
        time.sleep(0.002)


@pytest.mark.timeout(240)
def test_sigkill_at_24_random_moments_then_resume_gives_the_identical_run(reference, forkserver) -> None:
    """24 SIGKILLs at random moments (fixed seed) across the whole run, including checkpoint saves,
    end-of-epoch validation and the final test/save. The kill moments are spread over the run by
    drawing, for each, a random step of the uninterrupted run: the parent waits until the child's
    checkpoint has reached that step, then a further random 0-250 ms, and kills it. After each kill the
    run directory's checkpoint is loaded (and checksummed), then `rnntext train --resume` continues."""
    root, total = reference["root"], reference["steps"]
    run = root / "killed"
    rng = random.Random(20261127)
    targets = sorted(rng.randint(1, total) for _ in range(24))
    kills = resumes = restarts = mid_save = 0
    steps_at_kill: list[int] = []
    t0 = time.perf_counter()
    for i, target in enumerate([*targets, None]):
        resuming = has_checkpoint(run)
        argv = ["train", "--resume", str(run), "-q"] if resuming else _train_argv(reference["data"], run)
        resumes, restarts = resumes + resuming, restarts + (not resuming and i > 0)
        log = root / f"child-{i:02d}.log"
        p = forkserver.Process(target=_cli_child, args=(argv, str(log)))
        p.start()
        if target is None:  # after the last kill: let it finish
            p.join(120)
            assert p.exitcode == 0, log.read_text()
            break
        _wait_for_step(p, run, target)
        time.sleep(rng.uniform(0.0, 0.25))
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.join(30)
        assert p.exitcode in (-signal.SIGKILL, 0), log.read_text()
        if has_checkpoint(run):
            d = checkpoint_dir(run)
            mid_save += any(f.name.endswith(".tmp") for f in d.iterdir())  # a save was cut short
            ckpt = load_checkpoint(run)  # must load, complete and checksummed, after any kill
            assert not steps_at_kill or ckpt.global_step >= steps_at_kill[-1]
            steps_at_kill.append(ckpt.global_step)
        if (run / "config.json").exists():  # killed while finishing: what is there must load
            load_run(run)
        if p.exitcode == 0:  # finished before the kill came
            break
    seconds = time.perf_counter() - t0
    metrics, n_tensors = assert_same_run(run, reference["out"])
    ref_metrics = json.loads((reference["out"] / "metrics.json").read_text())
    print(f"\nkill-and-resume: {kills} SIGKILLs at random moments ({mid_save} of them during a checkpoint save), "
          f"{resumes} resumes from the checkpoint, {restarts} fresh restarts (killed before the first checkpoint), "
          f"all resumed runs completed; checkpoint step after each kill: {steps_at_kill} of {total}")
    print(f"kill-and-resume: final test accuracy {metrics['test']['accuracy']:.4f} = uninterrupted "
          f"{ref_metrics['test']['accuracy']:.4f}; metrics.json equal (timings aside); {n_tensors} weight tensors "
          f"bit-identical; {seconds:.1f}s (uninterrupted run {reference['seconds']:.1f}s)")
    assert kills >= 20


def _wait_for_line(path: Path, marker: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.01)


@pytest.mark.timeout(180)
def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_resume_finishes_identically(
        reference, forkserver, capsys: pytest.CaptureFixture[str]) -> None:
    root = reference["root"]
    run = root / "ctrl-c"
    err = root / "ctrl-c.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "rnntext", *_train_argv(reference["data"], run)],
                                stdout=subprocess.PIPE, stderr=f, text=True,
                                preexec_fn=terminal_sigint)  # Ctrl-C as from a terminal: see conftest.py
    _wait_for_line(err, "model:", proc)
    _wait_for_step(_PopenAlive(proc), run, 5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    stderr = err.read_text()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"Resume with: rnntext train --resume {run}" in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"rnntext: training interrupted; checkpoint saved at epoch 1, step \d+\. "
                        r"Resume with: rnntext train --resume \S+", last), stderr
    ckpt = load_checkpoint(run)
    assert ckpt.global_step >= 5 and not ckpt.finished

    log = root / "ctrl-c-resume.log"
    p = forkserver.Process(target=_cli_child, args=(["train", "--resume", str(run), "-q"], str(log)))
    p.start()
    p.join(120)
    assert p.exitcode == 0, log.read_text()
    assert f"resumed from {checkpoint_dir(run)}" in log.read_text()
    assert_same_run(run, reference["out"])
    # resuming a finished run is not an error, and changes nothing
    from rnntext.cli import main

    assert main(["train", "--resume", str(run), "-q"]) == 0
    assert "has finished training; nothing to resume" in capsys.readouterr().err


class _PopenAlive:
    """`is_alive()` for a Popen, so _wait_for_step serves both kinds of process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def is_alive(self) -> bool:
        return self.proc.poll() is None


@pytest.mark.parametrize("model", [
    {"model": "gru", "packed": True},
    {"model": "lstm", "num_layers": 2, "pooling": "last"},
    {"model": "rnn", "bidirectional": False, "pooling": "mean"},
    {"model": "bag"},
])
def test_every_model_resumes_bit_identically_after_ctrl_c_mid_epoch(
        tmp_path: Path, model: dict[str, Any], sigint_handler: None) -> None:
    """In-process: a real SIGINT at step 7 (mid-epoch 1 of 2), then resume(), equals one straight run.
    `sigint_handler`: SIGINT is handled even where pytest inherited it ignored (see conftest.py)."""
    from rnntext.config import RunConfig
    from rnntext.errors import TrainingInterrupted
    from rnntext.training.trainer import resume, train

    train_csv, test_csv = _write_data(tmp_path / "data", seed=3)
    cfg = RunConfig()
    cfg.data.train, cfg.data.test = str(train_csv), str(test_csv)
    for k, v in {"embed_dim": 8, "hidden_dim": 8, **model}.items():
        setattr(cfg.model, k, v)
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads, cfg.train.device, cfg.train.seed = 16, 2, 1, "cpu", 5
    quiet = {"progress": False, "log": lambda s: None}

    CtrlCAtStep7 = ctrl_c_after(7)  # handled by the trainer: finish the step, checkpoint, stop
    train(cfg, str(tmp_path / "straight"), **quiet)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 7"):
        CtrlCAtStep7(cfg, str(tmp_path / "stopped"), **quiet).fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back
    assert load_checkpoint(tmp_path / "stopped").global_step == 7
    resume(str(tmp_path / "stopped"), **quiet)
    assert_same_run(tmp_path / "stopped", tmp_path / "straight")
