"""Safe loading: a checkpoint or run directory that is truncated, corrupted, incomplete, from a newer
version, or does not fit its config gives a one-line CheckpointError naming the file; loading runs
no code (a pickle in place of safetensors is refused, and its payload never runs)."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from rnntext.config import RunConfig
from rnntext.data.vocab import PAD, UNK, Vocab
from rnntext.errors import CheckpointError
from rnntext.model import build_model
from rnntext.training.checkpoint import (
    checkpoint_dir,
    decode_state,
    encode_state,
    load_checkpoint,
    manifest_path,
    save_checkpoint,
)
from rnntext.training.rundir import load_run, save_run, state_to_cpu
from rnntext.training.trainer import Trainer, resume


def _data(d: Path) -> Path:
    rng = random.Random(1)
    lines = ["text,label"] + [f"{' '.join(rng.choices('ab cd ef gh ij kl'.split(), k=5))} {lab},{lab}"
                              for lab in rng.choices(["x", "y"], k=120)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    return d / "train.csv"


def _config(train: Path) -> RunConfig:
    cfg = RunConfig()
    cfg.data.train = str(train)
    cfg.model.embed_dim = cfg.model.hidden_dim = 8
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads, cfg.train.device = 16, 1, 1, "cpu"
    # one plain model (small data would get several members): the tests name its state-dict keys
    cfg.model.members = 1
    return cfg


@pytest.fixture
def checkpointed(tmp_path: Path) -> Path:
    """A run directory with a mid-epoch checkpoint (4 steps into epoch 1)."""
    run = tmp_path / "run"
    t = Trainer(_config(_data(tmp_path / "data")), str(run), progress=False, log=lambda s: None)
    for step, idx in enumerate(t.epoch_order(0)[:4]):
        t.train_step(idx)
        t.after_step(step + 1, (0.0, 0, 0, 0.0))
    t.save_checkpoint()
    return run


def _tensor_file(run: Path) -> Path:
    return checkpoint_dir(run) / json.loads(manifest_path(run).read_text())["tensors"]["file"]


def _expect_error(fn, path: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_state_dict_encoding_round_trips_tuples_int_keys_and_tensors() -> None:
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
             "param_groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "fused": None, "params": [0]}],
             "$odd": "key"}
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, "optimizer", tensors)
    back = decode_state(json.loads(json.dumps(encoded)), tensors, "x")
    assert back["param_groups"] == state["param_groups"] and back["$odd"] == "key"
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError, match="cannot store a function"):
        encode_state({"f": lambda: 0}, "schedule", {})
    with pytest.raises(CheckpointError, match="unknown entry"):
        decode_state({"$code": "os.system('x')"}, {}, "checkpoint.json")


def test_checkpoint_round_trip(checkpointed: Path) -> None:
    ckpt = load_checkpoint(checkpointed)
    assert (ckpt.epoch, ckpt.step, ckpt.global_step, ckpt.finished) == (0, 4, 4, False)
    assert ckpt.optimizer["state"][0]["exp_avg"].shape == ckpt.model["embedding.weight"].shape
    assert isinstance(ckpt.optimizer["param_groups"][0]["betas"], tuple)
    assert ckpt.rng["torch"].dtype == torch.uint8


def test_truncated_tensor_file(checkpointed: Path) -> None:
    f = _tensor_file(checkpointed)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _expect_error(lambda: load_checkpoint(checkpointed), f, "truncated")


def test_corrupted_tensor_file(checkpointed: Path) -> None:
    f = _tensor_file(checkpointed)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _expect_error(lambda: load_checkpoint(checkpointed), f, "corrupted")


def test_invalid_safetensors_with_a_matching_checksum(checkpointed: Path) -> None:
    import hashlib

    f = _tensor_file(checkpointed)
    f.write_bytes(b"\xff" * 64)
    m = json.loads(manifest_path(checkpointed).read_text())
    m["tensors"]["sha256"] = hashlib.sha256(b"\xff" * 64).hexdigest()
    manifest_path(checkpointed).write_text(json.dumps(m))
    _expect_error(lambda: load_checkpoint(checkpointed), f, "safetensors")


def test_missing_tensor_file(checkpointed: Path) -> None:
    f = _tensor_file(checkpointed)
    f.unlink()
    _expect_error(lambda: load_checkpoint(checkpointed), f, "missing file")


def test_truncated_manifest(checkpointed: Path) -> None:
    m = manifest_path(checkpointed)
    m.write_bytes(m.read_bytes()[:100])
    _expect_error(lambda: load_checkpoint(checkpointed), m, "corrupted or truncated JSON")


def test_missing_manifest(checkpointed: Path) -> None:
    m = manifest_path(checkpointed)
    m.unlink()
    _expect_error(lambda: load_checkpoint(checkpointed), m, "missing file")


def test_manifest_from_a_newer_version(checkpointed: Path) -> None:
    m = manifest_path(checkpointed)
    data = json.loads(m.read_text())
    data["format_version"] = 99
    m.write_text(json.dumps(data))
    _expect_error(lambda: load_checkpoint(checkpointed), m, "newer", "upgrade rnntext")


def test_manifest_with_a_key_missing(checkpointed: Path) -> None:
    m = manifest_path(checkpointed)
    data = json.loads(m.read_text())
    del data["progress"]
    m.write_text(json.dumps(data))
    _expect_error(lambda: load_checkpoint(checkpointed), m, "progress")


def test_checkpoint_that_does_not_fit_its_config(checkpointed: Path) -> None:
    m = manifest_path(checkpointed)
    data = json.loads(m.read_text())
    data["config"]["model"]["hidden_dim"] = 12
    m.write_text(json.dumps(data))
    _expect_error(lambda: resume(str(checkpointed), progress=False, log=lambda s: None), checkpoint_dir(checkpointed),
                  "the config needs")


def test_resume_refuses_changed_training_data(checkpointed: Path, tmp_path: Path) -> None:
    train = tmp_path / "data" / "train.csv"
    train.write_text(train.read_text() + "ab cd x,x\n")
    _expect_error(lambda: resume(str(checkpointed), progress=False, log=lambda s: None), checkpoint_dir(checkpointed),
                  "training data differ")


def test_leftovers_of_a_killed_save_are_ignored_then_removed(checkpointed: Path) -> None:
    """A save killed after its tensor file but before the manifest, and one killed mid-write."""
    good = load_checkpoint(checkpointed)
    d = checkpoint_dir(checkpointed)
    orphan = d / f"state-{good.seq + 1:06d}.safetensors"
    orphan.write_bytes(b"half a file")
    tmp = d / f".state-{good.seq + 2:06d}.safetensors.abc123.tmp"
    tmp.write_bytes(b"partial")
    again = load_checkpoint(checkpointed)
    assert again.global_step == good.global_step
    assert all(torch.equal(again.model[k], good.model[k]) for k in good.model)
    good.seq += 3
    save_checkpoint(checkpointed, good)
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint.json", f"state-{good.seq:06d}.safetensors"]


# --- run directories (load_run) -------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    cfg = RunConfig()
    vocab = Vocab([PAD, UNK, "a", "b", "c"])
    cfg.model.embed_dim = cfg.model.hidden_dim = 8
    cfg.model.vocab_size, cfg.model.num_classes = len(vocab), 2
    torch.manual_seed(0)
    return save_run(tmp_path / "run", cfg, vocab, ["neg", "pos"], state_to_cpu(build_model(cfg.model)), {"x": 1})


def test_run_dir_loads(run_dir: Path) -> None:
    assert load_run(run_dir).label_names == ["neg", "pos"]


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "labels.json", "model.safetensors"])
def test_run_dir_truncated_file(run_dir: Path, name: str) -> None:
    f = run_dir / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _expect_error(lambda: load_run(run_dir), f)


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "labels.json", "model.safetensors"])
def test_run_dir_missing_file(run_dir: Path, name: str) -> None:
    (run_dir / name).unlink()
    _expect_error(lambda: load_run(run_dir), run_dir / name, "missing file")


def test_run_dir_corrupted_safetensors_header(run_dir: Path) -> None:
    f = run_dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\x00" * 10
    f.write_bytes(bytes(data))
    _expect_error(lambda: load_run(run_dir), f, "safetensors")


def test_run_dir_newer_config_version(run_dir: Path) -> None:
    f = run_dir / "config.json"
    data = json.loads(f.read_text())
    data["format_version"] = 2
    f.write_text(json.dumps(data))
    _expect_error(lambda: load_run(run_dir), f, "newer")


@pytest.mark.parametrize("bad", [[1, 2], {"model": 5}, {"model": {"hidden_dim": "big"}},
                                 {"model": {"no_such_option": 1}}])
def test_run_dir_invalid_config(run_dir: Path, bad) -> None:
    f = run_dir / "config.json"
    f.write_text(json.dumps(bad))
    _expect_error(lambda: load_run(run_dir), f)


def test_run_dir_config_that_does_not_fit_the_weights(run_dir: Path) -> None:
    f = run_dir / "config.json"
    data = json.loads(f.read_text())
    data["model"]["hidden_dim"] = 9
    f.write_text(json.dumps(data))
    _expect_error(lambda: load_run(run_dir), run_dir / "model.safetensors", "the config needs")


def test_run_dir_config_asking_for_a_huge_model_allocates_nothing(run_dir: Path) -> None:
    f = run_dir / "config.json"
    data = json.loads(f.read_text())
    data["model"]["embed_dim"] = data["model"]["hidden_dim"] = 10**7  # ~10^15 parameters: out of range
    f.write_text(json.dumps(data))
    _expect_error(lambda: load_run(run_dir), run_dir / "config.json", "embed_dim must be <=")
    data["model"]["embed_dim"] = data["model"]["hidden_dim"] = 65536  # the largest allowed: ~10^11 parameters
    f.write_text(json.dumps(data))
    _expect_error(lambda: load_run(run_dir), run_dir / "model.safetensors", "the config needs")


def test_run_dir_file_replaced_by_a_directory(run_dir: Path) -> None:
    (run_dir / "labels.json").unlink()
    (run_dir / "labels.json").mkdir()
    _expect_error(lambda: load_run(run_dir), run_dir / "labels.json")


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_runs(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (run_dir / "model.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
    _expect_error(lambda: load_run(run_dir), run_dir / "model.safetensors", "safetensors")
    assert not marker.exists()
    # the same in a checkpoint's tensor file
    torch.save({"x": _Payload(str(marker))}, run_dir / "weights.pt")
    (run_dir / "model.safetensors").write_bytes((run_dir / "weights.pt").read_bytes())
    _expect_error(lambda: load_run(run_dir), run_dir / "model.safetensors")
    assert not marker.exists()


def test_a_new_run_never_overwrites_an_unfinished_one(checkpointed: Path, tmp_path: Path) -> None:
    from rnntext.errors import ConfigError
    from rnntext.training.trainer import train

    with pytest.raises(ConfigError, match="holds an unfinished run; continue it with `rnntext train --resume"):
        train(_config(tmp_path / "data" / "train.csv"), str(checkpointed), progress=False, log=lambda s: None)
    assert load_checkpoint(checkpointed).global_step == 4  # untouched


def test_a_new_run_in_a_finished_run_directory_forgets_the_old_checkpoint(checkpointed: Path) -> None:
    from rnntext.training.checkpoint import mark_finished, prepare_new_run

    mark_finished(checkpointed, load_checkpoint(checkpointed))
    assert load_checkpoint(checkpointed).finished
    prepare_new_run(checkpointed)  # a kill before the new run's first checkpoint must not read as "finished"
    _expect_error(lambda: load_checkpoint(checkpointed), manifest_path(checkpointed), "no checkpoint to resume")
