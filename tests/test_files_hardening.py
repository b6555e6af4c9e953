"""Issue 16, files and run directories: run directories that cannot be clobbered (locking, `--out ""`,
foreign directories), tampered files that give one-line errors naming the file (checkpoint manifests,
config.json, ensemble.json, vocab.json sizes), input files that are streamed under documented limits
(memory, gzip bombs, /dev/zero), class orders that do not depend on PYTHONHASHSEED, non-finite JSONL
labels, and run files that honour the umask. Property tests draw tamperings from tests/strategies.py."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as adv
from rnntext.config import RunConfig
from rnntext.data import readers
from rnntext.data.readers import read_rows
from rnntext.data.vocab import PAD, UNK, Vocab
from rnntext.errors import CheckpointError, ConfigError, DataError, RnnTextError
from rnntext.model import build_model
from rnntext.training import rundir
from rnntext.training.checkpoint import (
    LOCK_FILE,
    load_checkpoint,
    manifest_path,
    prepare_new_run,
    run_lock,
)
from rnntext.training.rundir import load_run, save_run, state_to_cpu
from rnntext.training.trainer import Trainer, resume

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnntext", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=timeout)


def _one_line_naming(msg: str, path: Path | str) -> None:
    assert "\n" not in msg.strip(), msg
    assert str(path) in msg, msg
    assert "Traceback" not in msg, msg


def _data(d: Path, n: int = 120) -> Path:
    rng = random.Random(1)
    lines = ["text,label"] + [f"{' '.join(rng.choices('ab cd ef gh ij kl'.split(), k=5))} {lab},{lab}"
                              for lab in rng.choices(["x", "y"], k=n)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    return d / "train.csv"


def _config(train: Path, epochs: int = 1) -> RunConfig:
    cfg = RunConfig()
    cfg.data.train = str(train)
    cfg.model.embed_dim = cfg.model.hidden_dim = 8
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads, cfg.train.device = 16, epochs, 1, "cpu"
    return cfg


def _train_args(data: Path, out: Path | str, epochs: int = 1) -> list[str]:
    return ["train", "--train", str(data), "--embed-dim", "8", "--hidden-dim", "8", "--batch-size", "16",
            "--epochs", str(epochs), "--threads", "1", "--device", "cpu", "-q", "--out", str(out)]


# =====================================================================================================
# defect 3: run directories clobbered
# =====================================================================================================

def test_empty_out_is_refused_and_the_current_directory_untouched(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "config.json").write_text('{"mine": true}')
    r = _cli(*_train_args(data, ""), cwd=cwd)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--out is empty" in r.stderr, r.stderr
    assert sorted(p.name for p in cwd.iterdir()) == ["config.json"]
    assert (cwd / "config.json").read_text() == '{"mine": true}'
    r = _cli("train", "--resume", "", cwd=cwd)
    assert r.returncode == 2 and "--resume is empty" in r.stderr, r.stderr
    with pytest.raises(ConfigError, match="empty"):  # the Python API too
        prepare_new_run("")


def _lock_held(path: Path) -> bool:
    import fcntl

    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def test_two_trainings_into_one_out_the_second_fails_at_once(tmp_path: Path) -> None:
    data = _data(tmp_path / "data", n=400)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "rnntext", *_train_args(data, out, epochs=150)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not _lock_held(out / LOCK_FILE):  # the first run holds the lock from its start
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.8)
        t0 = time.monotonic()
        second = _cli(*_train_args(data, out, epochs=1))
        took = time.monotonic() - t0
        assert second.returncode == 2, second.stderr
        assert "another rnntext process is writing this run directory" in second.stderr, second.stderr
        _one_line_naming(second.stderr, out)
        assert f"pid {first.pid}" in second.stderr
        assert first.poll() is None, "the first run ended before the second tried: make it longer"
        assert took < 60  # at once: no data read, no training
        # nor can a resume or an ensemble write into it meanwhile
        resumed = _cli("train", "--resume", str(out))
        assert resumed.returncode == 2 and ("another rnntext process" in resumed.stderr
                                            or "no checkpoint" in resumed.stderr), resumed.stderr
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert load_run(out).config.train.epochs == 150  # the first run, complete and not overwritten
    assert not _lock_held(out / LOCK_FILE)


@pytest.fixture
def held_lock(tmp_path: Path):
    """A directory whose lock another process holds (until the fixture ends)."""
    d = tmp_path / "locked"
    code = textwrap.dedent(f"""
        import sys, time
        from rnntext.training.checkpoint import run_lock
        with run_lock({str(d)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield d, holder.pid
    holder.communicate("", timeout=60)


def test_a_locked_directory_refuses_train_resume_and_ensemble(held_lock, tmp_path: Path) -> None:
    from rnntext.cli import main
    from rnntext.training.ensemble import train_ensemble

    d, pid = held_lock
    cfg = _config(_data(tmp_path / "data"))
    for attempt in (lambda: prepare_new_run(d), lambda: train_ensemble(cfg, 2, str(d), progress=False),
                    lambda: run_lock(d).__enter__()):
        with pytest.raises(CheckpointError) as info:
            attempt()
        _one_line_naming(str(info.value), d)
        assert f"pid {pid}" in str(info.value)
    assert not (d / "member-0").exists()
    # a checkpoint in the directory: `--resume` is refused while another process holds the lock
    (d / "checkpoint").mkdir()
    (d / "checkpoint" / "checkpoint.json").write_text(json.dumps({"kind": "rnntext-checkpoint", "format_version": 1}))
    assert main(["train", "--resume", str(d)]) == 2


def test_run_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    d = tmp_path / "run"
    with run_lock(d):
        with run_lock(d):
            assert _lock_held(d / LOCK_FILE)
        assert _lock_held(d / LOCK_FILE)
    assert not _lock_held(d / LOCK_FILE)
    prepare_new_run(d)  # the lock file alone does not make the directory foreign


def test_a_non_empty_directory_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("precious")
    (home / "config.json").write_text('{"editor": "vim"}')  # someone else's config.json
    r = _cli(*_train_args(data, home))
    assert r.returncode == 2 and "is not an rnntext run directory" in r.stderr, r.stderr
    _one_line_naming(r.stderr, home)
    assert sorted(p.name for p in home.iterdir()) == ["config.json", "notes.txt"]  # not even a lock file
    with pytest.raises(CheckpointError, match="not an rnntext run directory"):
        prepare_new_run(home)
    r = _cli(*_train_args(data, home), "--ensemble", "2")
    assert r.returncode == 2 and "is not an rnntext run directory" in r.stderr, r.stderr
    # a finished run may be trained over (today's rule), and so may a new or empty directory
    run = tmp_path / "run"
    assert _cli(*_train_args(data, run)).returncode == 0
    again = _cli(*_train_args(data, run))
    assert again.returncode == 0, again.stderr
    (tmp_path / "empty").mkdir()
    prepare_new_run(tmp_path / "empty")


# =====================================================================================================
# defect 5: tampered checkpoint manifests, config.json, ensemble.json
# =====================================================================================================

@pytest.fixture(scope="module")
def checkpointed_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a mid-epoch checkpoint (4 steps into epoch 2 of 3), built once."""
    base = tmp_path_factory.mktemp("ckpt")
    run = base / "run"
    t = Trainer(_config(_data(base / "data"), epochs=3), str(run), progress=False, log=lambda s: None)
    t.end_epoch(t.run_epoch(0))
    t.step, t.running = 0, (0.0, 0, 0, 0.0)
    for step, idx in enumerate(t.epoch_order(1)[:4]):
        loss, ok, n = t.train_step(idx)
        t.after_step(step + 1, (loss, ok, n, 0.1))
    t.save_checkpoint()
    return run


@pytest.fixture
def checkpointed(checkpointed_src: Path, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpointed_src, run)
    return run


def _set(obj: Any, path: tuple, value: Any) -> Any:
    obj = json.loads(json.dumps(obj))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return obj


def test_the_checkpoint_fixture_resumes(checkpointed: Path) -> None:
    ckpt = load_checkpoint(checkpointed)
    assert (ckpt.epoch, ckpt.step) == (1, 4)
    assert resume(str(checkpointed), progress=False, log=lambda s: None).metrics["epochs"][-1]["epoch"] == 3


@pytest.mark.parametrize("path,value", adv.MANIFEST_CASES, ids=[f"{'.'.join(map(str, p))}={str(v)[:20]}"
                                                                 for p, v in adv.MANIFEST_CASES])
def test_tampered_manifest_gives_one_line_naming_the_file(checkpointed: Path, path: tuple, value: Any) -> None:
    m = manifest_path(checkpointed)
    m.write_text(adv.dump(_set(json.loads(m.read_text()), path, value)))
    for attempt in (lambda: load_checkpoint(checkpointed),
                    lambda: resume(str(checkpointed), progress=False, log=lambda s: None)):
        with pytest.raises(CheckpointError) as info:
            attempt()
        _one_line_naming(str(info.value), checkpointed)


def test_tampered_manifest_through_the_command_line(checkpointed: Path, capsys: pytest.CaptureFixture) -> None:
    from rnntext.cli import main

    m = manifest_path(checkpointed)
    good = json.loads(m.read_text())
    for path, value in [(("running",), {}), (("progress", "epoch"), 99), (("schedule",), {}),
                        (("progress", "step"), 1e6)]:
        m.write_text(adv.dump(_set(good, path, value)))
        assert main(["train", "--resume", str(checkpointed), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnntext: error: ") and err.count("\n") == 1, err
        assert str(m) in err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_any_tampered_manifest_loads_or_gives_a_one_line_error(checkpointed_src: Path, tmp_path_factory,
                                                                data: st.DataObject) -> None:
    import shutil

    run = tmp_path_factory.mktemp("tampered") / "run"
    shutil.copytree(checkpointed_src, run)
    m = manifest_path(run)
    original = json.loads(m.read_text())
    m.write_text(adv.dump(adv.tamper(original, data.draw(adv.edits(original)))))
    try:
        load_checkpoint(run)
    except RnnTextError as e:
        _one_line_naming(str(e), run)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_tampered_manifest_resumes_or_gives_a_one_line_error(checkpointed_src: Path, tmp_path_factory,
                                                                  data: st.DataObject) -> None:
    import shutil

    run = tmp_path_factory.mktemp("tampered") / "run"
    shutil.copytree(checkpointed_src, run)
    m = manifest_path(run)
    original = json.loads(m.read_text())
    m.write_text(adv.dump(adv.tamper(original, data.draw(adv.edits(original)))))
    try:
        resume(str(run), progress=False, log=lambda s: None)
    except RnnTextError as e:
        _one_line_naming(str(e), run)


@pytest.fixture(scope="module")
def run_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = RunConfig()
    vocab = Vocab([PAD, UNK, "a", "b", "c"])
    cfg.model.embed_dim = cfg.model.hidden_dim = 8
    cfg.model.vocab_size, cfg.model.num_classes = len(vocab), 2
    torch.manual_seed(0)
    return save_run(tmp_path_factory.mktemp("rd") / "run", cfg, vocab, ["neg", "pos"],
                    state_to_cpu(build_model(cfg.model)), {"x": 1})


@pytest.fixture
def run_dir(run_src: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run_src, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("path,value", adv.CONFIG_CASES, ids=[f"{'.'.join(map(str, p))}={str(v)[:20]}"
                                                               for p, v in adv.CONFIG_CASES])
def test_tampered_config_json_gives_one_line_naming_the_file(run_dir: Path, path: tuple, value: Any) -> None:
    f = run_dir / "config.json"
    f.write_text(adv.dump(_set(json.loads(f.read_text()), path, value)))
    with pytest.raises(CheckpointError) as info:
        load_run(run_dir)
    _one_line_naming(str(info.value), run_dir)  # config.json, or the file that does not fit it (the weights)


def test_padding_idx_beyond_the_vocabulary_is_a_rule_of_the_schema() -> None:
    cfg = RunConfig()
    cfg.model.vocab_size, cfg.model.padding_idx = 5, 5
    with pytest.raises(ConfigError, match=r"model.padding_idx must be < model.vocab_size \(5\), got 5"):
        cfg.validate()


def test_empty_or_duplicate_labels_json(run_dir: Path) -> None:
    for labels in ([], ["a", "a"]):
        (run_dir / "labels.json").write_text(json.dumps(labels))
        with pytest.raises(CheckpointError) as info:
            load_run(run_dir)
        _one_line_naming(str(info.value), run_dir)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_tampered_config_json_loads_or_gives_a_one_line_error(run_src: Path, tmp_path_factory,
                                                                   data: st.DataObject) -> None:
    import shutil

    run = tmp_path_factory.mktemp("cfg") / "run"
    shutil.copytree(run_src, run)
    original = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(adv.dump(adv.tamper(original, data.draw(adv.edits(original)))))
    try:
        load_run(run)
    except RnnTextError as e:
        _one_line_naming(str(e), run)


def test_vocab_json_larger_than_the_config_allows_is_refused_unread(run_dir: Path, monkeypatch) -> None:
    f = run_dir / "vocab.json"
    f.write_text(json.dumps([PAD, UNK] + [f"t{i}" for i in range(200_000)]))  # the config says 5 tokens
    parsed: list[int] = []
    real = json.loads
    monkeypatch.setattr(rundir.json, "loads", lambda text, *a, **k: parsed.append(len(text)) or real(text, *a, **k))
    with pytest.raises(CheckpointError, match="more than a vocabulary of 5 tokens can need") as info:
        load_run(run_dir)
    _one_line_naming(str(info.value), f)
    assert all(n < 100_000 for n in parsed)  # config.json only: vocab.json was never parsed


def test_weights_file_larger_than_the_config_needs_is_refused_unread(run_dir: Path) -> None:
    f = run_dir / "model.safetensors"
    with open(f, "ab") as out:
        out.truncate(f.stat().st_size + rundir.MAX_SAFETENSORS_HEADER + 1)
    with pytest.raises(CheckpointError, match="more than the weights of this config can need") as info:
        load_run(run_dir)
    _one_line_naming(str(info.value), f)


# --- ensemble.json ----------------------------------------------------------------------------------

@pytest.fixture
def ensemble_dir(run_src: Path, tmp_path: Path) -> Path:
    import shutil

    d = tmp_path / "ens"
    for k in range(2):
        shutil.copytree(run_src, d / f"member-{k}")
    (d / "ensemble.json").write_text(json.dumps({"format": 1, "members": ["member-0", "member-1"], "metrics": {}}))
    return d


def test_the_ensemble_fixture_loads(ensemble_dir: Path) -> None:
    from rnntext.inference.predictor import Predictor

    assert len(Predictor.load([str(ensemble_dir)], "cpu").predict(["a b"])) == 1


@pytest.mark.parametrize("path,value", adv.ENSEMBLE_CASES, ids=[f"{'.'.join(map(str, p))}={str(v)[:20]}"
                                                                 for p, v in adv.ENSEMBLE_CASES])
def test_tampered_ensemble_json_gives_one_line_naming_the_file(ensemble_dir: Path, path: tuple, value: Any) -> None:
    from rnntext.inference.ensemble import member_dirs

    f = ensemble_dir / "ensemble.json"
    f.write_text(adv.dump(_set(json.loads(f.read_text()), path, value)))
    with pytest.raises(CheckpointError) as info:
        member_dirs(ensemble_dir)
    _one_line_naming(str(info.value), f)


def test_ensemble_json_that_is_not_an_object_or_too_large(ensemble_dir: Path) -> None:
    from rnntext.inference.ensemble import MAX_ENSEMBLE_BYTES, member_dirs

    f = ensemble_dir / "ensemble.json"
    for text in ("null", "[1]", '"x"', "{", " " * (MAX_ENSEMBLE_BYTES + 1)):
        f.write_text(text)
        with pytest.raises(CheckpointError) as info:
            member_dirs(ensemble_dir)
        _one_line_naming(str(info.value), f)


def test_every_member_is_checked_before_any_weights_are_read(ensemble_dir: Path, monkeypatch) -> None:
    from rnntext.inference.predictor import Predictor

    (ensemble_dir / "member-1" / "model.safetensors").unlink()
    loaded: list[Path] = []
    real = rundir.load_weights
    monkeypatch.setattr(rundir, "load_weights", lambda p: loaded.append(p) or real(p))
    with pytest.raises(CheckpointError) as info:
        Predictor.load([str(ensemble_dir)], "cpu")
    _one_line_naming(str(info.value), ensemble_dir / "member-1" / "model.safetensors")
    assert loaded == []


def test_ensemble_size_is_bounded() -> None:
    from rnntext.training.ensemble import MAX_MEMBERS, train_ensemble

    with pytest.raises(ConfigError, match=f"at most {MAX_MEMBERS}"):
        train_ensemble(RunConfig(), MAX_MEMBERS + 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_tampered_ensemble_json_loads_or_gives_a_one_line_error(run_src: Path, tmp_path_factory,
                                                                     data: st.DataObject) -> None:
    import shutil

    from rnntext.inference.ensemble import member_dirs

    d = tmp_path_factory.mktemp("ens")
    for k in range(2):
        shutil.copytree(run_src, d / f"member-{k}")
    original = {"format": 1, "members": ["member-0", "member-1"], "metrics": {"test": {"accuracy": 0.5}}}
    (d / "ensemble.json").write_text(adv.dump(adv.tamper(original, data.draw(adv.edits(original)))))
    try:
        dirs = member_dirs(d)
    except RnnTextError as e:
        _one_line_naming(str(e), d)
    else:
        assert dirs is not None and all(p.parent == d for p in dirs)


# =====================================================================================================
# defect 1: input files streamed, sizes bounded
# =====================================================================================================

MEASURE = textwrap.dedent("""
    import resource, sys
    from rnntext.data.readers import read_rows
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = read_rows(sys.argv[1], ["text"], "label")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(len(rows), (peak - base) * 1024)
""")


def _write_big_csv(path: Path, size: int) -> int:
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows, n = 0, 0
    opener = gzip.open(path, "wt", compresslevel=1, newline="") if path.suffix == ".gz" else open(path, "w", newline="")
    with opener as f:
        f.write("text,label\n")
        while n < size:
            line = " ".join(rng.choices(words, k=30)) + "," + rng.choice("abcd") + "\n"
            f.write(line)
            n, rows = n + len(line), rows + 1
    return rows


@pytest.mark.parametrize("name", ["big.csv", "big.csv.gz"])
def test_a_50_mb_csv_is_read_in_the_memory_of_its_rows(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    rows = _write_big_csv(path, 50_000_000)
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    n, grew = map(int, r.stdout.split())
    assert n == rows
    # the parsed rows take ~80 MB; reading the file whole (bytes + text + a StringIO copy) took 320 MB
    assert grew < 100_000_000, f"reading 50 MB grew the peak RSS by {grew / 1e6:.0f} MB"


def test_a_gzip_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.csv.gz"
    line = ("x" * (1 << 20) + ",a\n").encode()
    with gzip.open(path, "wb", compresslevel=9) as f:  # 200 MB of text in ~200 KB
        f.write(b"text,label\n")
        for _ in range(200):
            f.write(line)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(DataError, match=f"expands more than {readers.MAX_GZIP_RATIO}:1") as info:
        read_rows(path, ["text"], "label")
    _one_line_naming(str(info.value), path)


def test_decompressed_size_beyond_the_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "MAX_INPUT_BYTES", 1_000_000)
    plain = tmp_path / "big.csv"
    plain.write_text("text,label\n" + "some words,a\n" * 100_000)
    packed = tmp_path / "big.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path, words in ((plain, "larger than 1,000,000 bytes"), (packed, "when decompressed")):
        with pytest.raises(DataError, match=words) as info:
            read_rows(path, ["text"], "label")
        _one_line_naming(str(info.value), path)


def test_dev_zero_and_endless_lines_are_refused(tmp_path: Path, monkeypatch) -> None:
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="a line longer than") as info:
        read_rows(zero, ["text"], "label")
    _one_line_naming(str(info.value), zero)
    monkeypatch.setattr(readers, "MAX_LINE_CHARS", 1000)
    long = tmp_path / "long.jsonl"
    long.write_text('{"text": "ok", "label": "a"}\n' + '{"text": "' + "x" * 2000 + '", "label": "a"}\n')
    with pytest.raises(DataError, match="a line longer than 1,000 characters") as info:
        read_rows(long, ["text"], "label")
    assert info.value.line == 2


def test_predict_file_is_streamed(tmp_path: Path) -> None:
    from rnntext.data.readers import iter_text_lines

    f = tmp_path / "texts.txt.gz"
    text = "one\r\ntwo\u2028three\n\nfour\rfive"
    f.write_bytes(gzip.compress(text.encode()))
    assert list(iter_text_lines(f)) == text.splitlines()


# =====================================================================================================
# defect 7: class order and PYTHONHASHSEED, non-finite JSONL labels, the umask
# =====================================================================================================

ORDER = textwrap.dedent("""
    import sys
    from rnntext.config import DataConfig
    from rnntext.data.dataset import load_splits
    print(load_splits(DataConfig(train=sys.argv[1], valid_split=0)).label_names)
""")


def test_class_order_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    labels = ["nan", "1", "2", "10", "b", "a", "inf", "-inf", "NaN", "0.5"]
    f = tmp_path / "train.csv"
    f.write_text("text,label\n" + "".join(f"text {i},{lab}\n" for i, lab in enumerate(labels * 3)))
    orders = set()
    for seed in ("0", "1", "2", "3", "4", "5"):
        r = subprocess.run([sys.executable, "-c", ORDER, str(f)], capture_output=True, text=True,
                           env={**ENV, "PYTHONHASHSEED": seed}, timeout=120)
        assert r.returncode == 0, r.stderr
        orders.add(r.stdout)
    assert len(orders) == 1, orders
    assert orders.pop().strip() == str(sorted(set(labels)))  # not all numbers: alphabetical
    from rnntext.data.dataset import _label_order

    assert _label_order(["10", "2", "1", "0.5"]) == ["0.5", "1", "2", "10"]  # all numbers: numerically


@pytest.mark.parametrize("label", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_jsonl_labels_are_refused(tmp_path: Path, label: str) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": ' + label + "}\n")
    with pytest.raises(DataError, match="label must be a finite number") as info:
        read_rows(f, ["text"], "label")
    assert info.value.line == 2
    _one_line_naming(str(info.value), f)
    rows = read_rows(f, ["text"], "label", skip_bad_rows=True)
    assert (rows.labels, rows.skipped) == (["1"], 1)


UMASK = textwrap.dedent("""
    import os, sys
    os.umask(int(sys.argv[2], 8))
    from rnntext.io import atomic_write_json
    from rnntext.training.checkpoint import run_lock
    atomic_write_json(os.path.join(sys.argv[1], "x.json"), {"a": 1})
    with run_lock(os.path.join(sys.argv[1], "run")):
        pass
""")


@pytest.mark.parametrize("umask,mode", [("022", 0o644), ("077", 0o600), ("002", 0o664)])
def test_run_files_honour_the_umask(tmp_path: Path, umask: str, mode: int) -> None:
    r = subprocess.run([sys.executable, "-c", UMASK, str(tmp_path), umask], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "run" / LOCK_FILE).stat().st_mode & 0o777 == mode


def test_the_python_api_holds_the_lock_for_the_whole_run(tmp_path: Path, ag_news_small: Path) -> None:
    """train() from Python holds RUN_DIR's lock while it trains: another process cannot take it."""
    import subprocess
    import sys

    from conftest import make_tiny_config
    from rnntext.training.callbacks import Callback
    from rnntext.training.trainer import train

    out = tmp_path / "run"
    probe = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "    print('free')\nexcept OSError:\n    print('held')\n")
    seen: list[str] = []

    class Probe(Callback):
        def on_epoch(self, trainer, row) -> None:  # noqa: ANN001
            r = subprocess.run([sys.executable, "-c", probe, str(out / ".rnntext.lock")], capture_output=True,
                               text=True, timeout=60)
            seen.append(r.stdout.strip())

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=1)
    train(cfg, str(out), progress=False, log=lambda s: None, callbacks=[Probe()])
    assert seen == ["held"]
