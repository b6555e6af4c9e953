"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Layout (inside the run directory):

    RUN_DIR/checkpoint/state-000042.safetensors   every tensor: model, best model, optimizer, RNG
    RUN_DIR/checkpoint/checkpoint.json            the manifest: config, progress, history, the
                                                  non-tensor optimizer / schedule state, python RNG,
                                                  and the name and sha256 of the tensor file

A save writes a tensor file under a new name, then the manifest (both atomically: temporary file,
fsync, rename), and only then deletes older tensor files. The manifest is the commit point: a kill at
any moment leaves the previous manifest and the tensor file it names complete, and a tensor file
that no manifest names is never read. Loading reads JSON and safetensors only: no code runs.

Optimizer and LR-schedule state dicts are split by `encode_state`: tensors go to the safetensors
file, everything else to JSON (tuples and non-string dict keys are tagged so they round-trip).
Nothing here knows about distributed training: in a multi-process run only rank 0 calls `save`."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes, atomic_write_json

CHECKPOINT_DIR = "checkpoint"
MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1
KIND = "rnntext-checkpoint"
_TENSOR_FILE = re.compile(r"^state-\d{6,}\.safetensors$")


@dataclass
class Checkpoint:
    """The state of a training run between two optimiser steps."""

    config: RunConfig
    epoch: int  # epochs completed
    step: int  # batches of epoch `epoch` already trained on
    global_step: int
    seq: int  # increases with every save; names the tensor file
    running: dict[str, float] = field(default_factory=dict)  # the partial epoch: loss_sum, correct, seen, seconds
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # fingerprint of the prepared data
    model: dict[str, Tensor] = field(default_factory=dict)
    best: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)  # optimizer.state_dict()
    schedule: dict[str, Any] = field(default_factory=dict)  # scheduler.state_dict()
    rng: dict[str, Any] = field(default_factory=dict)  # see capture_rng()
    finished: bool = False
    processes: int = 1  # a distributed run's world size: `step` counts this many ranks' shards, so resume with it


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def manifest_path(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / MANIFEST


def has_checkpoint(run_dir: str | Path) -> bool:
    return manifest_path(run_dir).is_file()


# --- state dicts <-> JSON + tensors ---------------------------------------------------------------

def encode_state(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """A JSON-able copy of `obj` with every tensor moved into `tensors` (under a key from `prefix`)."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous()
        return {"$tensor": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"$dict": [[encode_state(k, f"{prefix}.k{i}", tensors), encode_state(v, f"{prefix}.{i}", tensors)]
                          for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"$tuple": [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix} in a checkpoint")


def decode_state(obj: Any, tensors: dict[str, Tensor], where: str) -> Any:
    """The inverse of `encode_state`. Builds only dicts, lists, tuples, numbers, strings and tensors."""
    if isinstance(obj, list):
        return [decode_state(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)).startswith("$"):
        tag, value = next(iter(obj.items()))
        if tag == "$tensor":
            if value not in tensors:
                raise CheckpointError(f"tensor {value!r} is missing from the tensor file", where)
            return tensors[value]
        if tag == "$tuple" and isinstance(value, list):
            return tuple(decode_state(v, tensors, where) for v in value)
        if tag == "$dict" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            return {decode_state(k, tensors, where): decode_state(v, tensors, where) for k, v in value}
        raise CheckpointError(f"unknown entry {tag!r}", where)
    return {k: decode_state(v, tensors, where) for k, v in obj.items()}


# --- random number generators ---------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """Every RNG training draws from: torch CPU (dropout), CUDA devices, python `random`, numpy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:  # numpy is a dependency, but the checkpoint does not need it
        pass
    return state


def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def restore_rng(state: dict[str, Any], where: str = MANIFEST) -> None:
    try:
        torch.set_rng_state(state["torch"])
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "numpy" in state:
            import numpy as np

            n = state["numpy"]
            np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                                 n["gauss"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"invalid random number generator state ({e})", where) from None


# --- save and load --------------------------------------------------------------------------------

def ensure_writable(run_dir: str | Path) -> None:
    """Fail before the data are read, not after the first epoch, when the run directory is unwritable."""
    d = Path(run_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot write to the run directory: {e.strerror or e}", str(d)) from None


def prepare_new_run(run_dir: str | Path) -> None:
    """Before a new run writes into `run_dir`: refuse to overwrite an unfinished run (resume it
    instead), forget a finished run's checkpoint (so a kill before the new run's first checkpoint is
    not taken for "finished"), and check that the directory is writable."""
    if has_checkpoint(run_dir):
        if not read_manifest(run_dir).get("finished"):
            raise ConfigError(f"{run_dir} holds an unfinished run; continue it with `rnntext train --resume "
                              f"{run_dir}`, or delete {checkpoint_dir(run_dir)} to start over")
        try:
            manifest_path(run_dir).unlink()
        except OSError as e:
            raise CheckpointError(f"cannot remove the finished run's checkpoint: {e.strerror or e}",
                                  str(manifest_path(run_dir))) from None
    ensure_writable(run_dir)


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint) -> Path:
    """Write `ckpt` into RUN_DIR/checkpoint/ (see the module docstring for why it is crash-safe)."""
    d = checkpoint_dir(run_dir)
    tensors: dict[str, Tensor] = {}
    for k, v in ckpt.model.items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous()
    for k, v in (ckpt.best or {}).items():
        tensors[f"best.{k}"] = v.detach().to("cpu").contiguous()
    manifest: dict[str, Any] = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "finished": ckpt.finished,
        "seq": ckpt.seq,
        "progress": {"epoch": ckpt.epoch, "step": ckpt.step, "global_step": ckpt.global_step,
                     "processes": ckpt.processes},
        "running": ckpt.running,
        "history": ckpt.history,
        "best": {"score": ckpt.best_score, "epoch": ckpt.best_epoch, "has_state": ckpt.best is not None},
        "data": ckpt.data,
        "optimizer": encode_state(ckpt.optimizer, "optimizer", tensors),
        "schedule": encode_state(ckpt.schedule, "schedule", tensors),
        "rng": encode_state(ckpt.rng, "rng", tensors),
        "config": ckpt.config.to_dict(),
    }
    name = f"state-{ckpt.seq:06d}.safetensors"
    blob = st_save(tensors)
    try:
        atomic_write_bytes(d / name, blob)
        manifest["tensors"] = {"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        atomic_write_json(d / MANIFEST, manifest)  # the commit point
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint: {e.strerror or e}", str(d)) from None
    _remove_stale(d, keep=name)
    return d / MANIFEST


def _remove_stale(d: Path, keep: str) -> None:
    """Tensor files no manifest names, and temporary files left by a save that was killed."""
    for p in d.iterdir():
        if (_TENSOR_FILE.match(p.name) and p.name != keep) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            try:
                p.unlink()
            except OSError:
                pass


def mark_finished(run_dir: str | Path, ckpt: Checkpoint) -> None:
    """After the run directory is complete: keep a small manifest that says so, drop the tensors."""
    d = checkpoint_dir(run_dir)
    manifest = {"kind": KIND, "format_version": FORMAT_VERSION, "finished": True, "seq": ckpt.seq + 1,
                "progress": {"epoch": ckpt.epoch, "step": 0, "global_step": ckpt.global_step},
                "history": ckpt.history, "config": ckpt.config.to_dict()}
    try:
        atomic_write_json(d / MANIFEST, manifest)
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint: {e.strerror or e}", str(d)) from None
    _remove_stale(d, keep="")


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest, checked for kind and format version."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError("run directory does not exist", str(run_dir))
    path = manifest_path(run_dir)
    if not path.is_file():
        raise CheckpointError("missing file: no checkpoint to resume from (the run was started without --out, "
                              "or was killed before its first checkpoint)", str(path))
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupted or truncated JSON ({e})", str(path)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror}", str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise CheckpointError("not an rnntext checkpoint manifest", str(path))
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version} is newer than this rnntext understands "
                              f"({FORMAT_VERSION}); upgrade rnntext", str(path))
    return manifest


def manifest_config(manifest: dict[str, Any], path: str) -> RunConfig:
    try:
        cfg = RunConfig.from_dict(manifest["config"])
        cfg.validate()
    except KeyError:
        raise CheckpointError("no config in the manifest", path) from None
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"invalid config ({e})", path) from None
    return cfg


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read and verify the checkpoint of `run_dir`. Every problem is a one-line CheckpointError."""
    manifest = read_manifest(run_dir)
    mpath = str(manifest_path(run_dir))
    cfg = manifest_config(manifest, mpath)
    try:
        progress = manifest["progress"]
        ckpt = Checkpoint(config=cfg, epoch=int(progress["epoch"]), step=int(progress["step"]),
                          global_step=int(progress["global_step"]), seq=int(manifest["seq"]),
                          processes=int(progress.get("processes", 1)),
                          history=list(manifest["history"]), finished=bool(manifest["finished"]))
        if ckpt.finished:
            return ckpt
        info = manifest["tensors"]
        tfile, digest = str(info["file"]), str(info["sha256"])
        running, best = dict(manifest["running"]), dict(manifest["best"])
        ckpt.best_score, ckpt.best_epoch = float(best["score"]), int(best["epoch"])
        ckpt.data = dict(manifest["data"])
        enc_optimizer, enc_schedule, enc_rng = manifest["optimizer"], manifest["schedule"], manifest["rng"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"incomplete or invalid manifest ({type(e).__name__}: {e})", mpath) from None
    if not _TENSOR_FILE.match(tfile):
        raise CheckpointError(f"invalid tensor file name {tfile!r}", mpath)
    tpath = checkpoint_dir(run_dir) / tfile
    if not tpath.is_file():
        raise CheckpointError("missing file (named by checkpoint.json)", str(tpath))
    blob = tpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointError("corrupted or truncated file (sha256 does not match checkpoint.json)", str(tpath))
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupted safetensors file ({e})", str(tpath)) from None
    ckpt.running = running
    ckpt.model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ckpt.best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} if best.get("has_state") else None
    ckpt.optimizer = decode_state(enc_optimizer, tensors, mpath)
    ckpt.schedule = decode_state(enc_schedule, tensors, mpath)
    ckpt.rng = decode_state(enc_rng, tensors, mpath)
    return ckpt


def check_state(state: dict[str, Tensor], expected: dict[str, Tensor], where: str) -> None:
    """Names and shapes of `state` must be those of the model the config builds."""
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})",
                              where)
    for k, v in state.items():
        if v.shape != expected[k].shape or v.dtype != expected[k].dtype:
            raise CheckpointError(f"tensor {k} is {v.dtype} {tuple(v.shape)}, the config needs "
                                  f"{expected[k].dtype} {tuple(expected[k].shape)}", where)


def data_fingerprint(tokens: Tensor, offsets: Tensor, labels: Tensor, label_names: list[str],
                     vocab_size: int) -> dict[str, Any]:
    """Identifies the encoded training data, so a resume on changed data is refused."""
    h = hashlib.sha256()
    for t in (tokens, offsets, labels):
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return {"rows": int(labels.numel()), "vocab_size": vocab_size, "labels": list(label_names),
            "sha256": h.hexdigest()}


class InterruptFlag:
    """Set by the first Ctrl-C; training checks it between steps."""

    def __init__(self) -> None:
        self.set = False


@contextmanager
def catch_sigint(log: Callable[[str], None]) -> Iterator[InterruptFlag]:
    """The first SIGINT only sets the flag (so the step in flight completes and a checkpoint is
    written); a second one raises KeyboardInterrupt at once."""
    flag = InterruptFlag()
    # Outside the main thread signals cannot be caught; where SIGINT is ignored (a background job of
    # a script, nohup), it stays ignored.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.set:
            raise KeyboardInterrupt
        flag.set = True
        log("interrupted: saving a checkpoint after the current step (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
