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

import errno
import hashlib
import json
import math
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
from .schedule import make_schedule

CHECKPOINT_DIR = "checkpoint"
MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1
KIND = "rnntext-checkpoint"
_TENSOR_FILE = re.compile(r"^state-\d{6,}\.safetensors$")
LOCK_FILE = ".rnntext.lock"  # the advisory lock of a run directory (run_lock)
MAX_MANIFEST_BYTES = 64 * 2**20  # checkpoint.json: config, progress, history, non-tensor optimizer state
MAX_PROCESSES = 65536
INT64_MAX = 2**63 - 1


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


# --- the run directory's lock ---------------------------------------------------------------------

_held: dict[str, list[int]] = {}  # real path -> [lock file descriptor, depth]: the locks this process holds
_held_guard = threading.Lock()


def check_out_dir(run_dir: str | Path | None, option: str = "--out") -> None:
    """An empty run directory name (an unset shell variable: `--out "$OUT"`) would write into the
    current directory: refuse it."""
    if run_dir is not None and not str(run_dir).strip():
        raise ConfigError(f"{option} is empty (an unset shell variable?); give the run directory to write")


def _distributed_peer() -> bool:
    """A process of a distributed run other than rank 0: rank 0 holds the lock for all of them."""
    return os.environ.get("RANK", "0") != "0"


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the advisory lock of `run_dir` (fcntl.flock on RUN_DIR/.rnntext.lock) for the duration: a
    second process that wants to write the same run directory (train, --resume, --ensemble) fails at once
    with a one-line CheckpointError instead of overwriting the first. Re-entrant within a process; the
    kernel drops the lock when the process ends, however it ends. Where fcntl is missing (Windows)
    nothing is locked."""
    check_out_dir(run_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if _distributed_peer():
        yield
        return
    d = Path(run_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(d)
    except OSError as e:
        raise CheckpointError(f"cannot write to the run directory: {e.strerror or e}", str(d)) from None
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd = _acquire(fcntl, d)
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the descriptor releases the lock


def _acquire(fcntl: Any, d: Path) -> int:
    """The descriptor of d's lock file, locked; a CheckpointError if another process holds it."""
    path = d / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise CheckpointError(f"cannot create the run directory's lock file: {e.strerror or e}", str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _lock_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError("another rnntext process is writing this run directory"
                                  + (f" (pid {holder})" if holder else "")
                                  + "; wait for it to finish, or choose another directory", str(d)) from None
        raise CheckpointError(f"cannot lock the run directory: {e.strerror or e}", str(d)) from None
    try:  # who holds it, for the message of the next one (information only)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _lock_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def check_unlocked(run_dir: str | Path) -> None:
    """Fail if another process holds the lock of `run_dir` (for callers of the Python API that do not
    hold it themselves); the lock is not kept."""
    if not Path(run_dir).is_dir() or _distributed_peer():
        return
    with run_lock(run_dir):
        pass


# --- starting a run -------------------------------------------------------------------------------

RUN_MARKERS = ("config.json", "ensemble.json")  # files that make a directory an rnntext run (besides checkpoint/)
_OWN = re.compile(r"^(\.rnntext\.lock|checkpoint|\..*\.tmp)$")  # what a run writes before its first file
_MEMBER = re.compile(r"^member-\d+$")


def is_rnntext_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds an rnntext run: a config.json with config.json's sections, an
    ensemble.json, or a checkpoint manifest."""
    d = Path(run_dir)
    if (d / "ensemble.json").is_file() or (d / CHECKPOINT_DIR / MANIFEST).is_file():
        return True
    config = d / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        raw = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and "model" in raw and set(raw) <= {"data", "model", "train", "format_version"}


def check_run_target(run_dir: str | Path, members: bool = False) -> None:
    """Refuse to write a run into a directory that holds something else: it must be missing, empty,
    an rnntext run, or hold only what a run writes first (its lock, checkpoint/, temporary files;
    with `members`, an ensemble's member-K directories)."""
    d = Path(run_dir)
    if not d.exists():
        return
    if not d.is_dir():
        raise CheckpointError("exists and is not a directory; choose another run directory", str(d))
    try:
        names = [p.name for p in d.iterdir()]
    except OSError as e:
        raise CheckpointError(f"cannot read the run directory: {e.strerror or e}", str(d)) from None
    foreign = [n for n in names if not _OWN.match(n) and not (members and _MEMBER.match(n))]
    if foreign and not is_rnntext_run(d):
        shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise CheckpointError(f"is not empty ({shown}) and is not an rnntext run directory; choose a new or empty "
                              "directory", str(d))


def prepare_new_run(run_dir: str | Path) -> None:
    """Before a new run writes into `run_dir`: refuse an empty name, a directory another process is
    writing (see run_lock), and a non-empty directory that is not an rnntext run; refuse to overwrite an
    unfinished run (resume it instead), forget a finished run's checkpoint (so a kill before the new
    run's first checkpoint is not taken for "finished"), and check that the directory is writable."""
    check_out_dir(run_dir)
    check_run_target(run_dir)
    check_unlocked(run_dir)
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
    return commit(d, ckpt.seq, manifest, tensors)


def commit(d: Path, seq: int, manifest: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    """Write checkpoint number `seq` into `d`: the tensors' file first, then `manifest` naming it (with its
    sha256), atomically: the manifest is the commit point. Then drop the files of older checkpoints."""
    name = f"state-{seq:06d}.safetensors"
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
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{size:,} bytes, more than a manifest can hold ({MAX_MANIFEST_BYTES:,})", str(path))
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupted or truncated JSON ({e})", str(path)) from None
    except RecursionError:
        raise CheckpointError("corrupted JSON (nested too deeply)", str(path)) from None
    except ValueError as e:  # an integer of 5,000 digits
        raise CheckpointError(f"corrupted JSON ({str(e)[:100]})", str(path)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror}", str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise CheckpointError("not an rnntext checkpoint manifest", str(path))
    if not isinstance(manifest.get("finished", False), bool):
        raise CheckpointError(f"finished must be true or false, got {_show(manifest['finished'])}", str(path))
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"invalid format_version {version!r}", str(path))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version} is newer than this rnntext understands "
                              f"({FORMAT_VERSION}); upgrade rnntext", str(path))
    return manifest


def manifest_config(manifest: dict[str, Any], path: str) -> RunConfig:
    try:
        cfg = RunConfig.from_saved(manifest["config"])
        cfg.validate()
    except KeyError:
        raise CheckpointError("no config in the manifest", path) from None
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"invalid config ({e})", path) from None
    return cfg


# --- checking a manifest: every field's type and range, and how they fit together --------------------

class _Bad(Exception):
    """A problem with one field of a manifest (becomes a CheckpointError naming the file)."""


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _Bad(f"{where} must be an object, got {_show(obj)}")
    if key not in obj:
        raise _Bad(f"{where}.{key} is missing")
    return obj[key]


def _int(obj: Any, key: str, where: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    v = _field(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{where}.{key} must be an integer, got {_show(v)}")
    if not lo <= v <= hi:
        raise _Bad(f"{where}.{key} must be in {lo}..{hi}, got {v}")
    return v


def _count(obj: Any, key: str, where: str) -> float:
    """A count: an integer, or an integral float (a distributed run sums counts as float64)."""
    v = _field(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v != int(v) \
            or v > INT64_MAX:
        raise _Bad(f"{where}.{key} must be a count (a whole number >= 0), got {_show(v)}")
    return v


def _number(obj: Any, key: str, where: str, *, finite: bool = True, lo: float | None = None) -> float:
    v = _field(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{where}.{key} must be a number, got {_show(v)}")
    if finite and not math.isfinite(v):
        raise _Bad(f"{where}.{key} must be a finite number, got {_show(v)}")
    if lo is not None and v < lo:
        raise _Bad(f"{where}.{key} must be >= {lo:g}, got {_show(v)}")
    return v


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "seconds", "rows_per_second", "lr")
RUNNING_KEYS = ("loss_sum", "correct", "seen", "seconds")


def _check_history(history: Any, epochs_done: int) -> None:
    if not isinstance(history, list):
        raise _Bad(f"history must be a list, got {_show(history)}")
    if len(history) != epochs_done:
        raise _Bad(f"history has {len(history)} epochs, progress.epoch says {epochs_done}")
    for i, row in enumerate(history):
        where = f"history[{i}]"
        if not isinstance(row, dict):
            raise _Bad(f"{where} must be an object, got {_show(row)}")
        for key in HISTORY_KEYS:
            _field(row, key, where)
        if _int(row, "epoch", where) != i + 1:
            raise _Bad(f"{where}.epoch must be {i + 1}, got {row['epoch']}")
        _number(row, "seconds", where, lo=0.0)
        for key in row:
            if key not in ("epoch", "seconds"):
                _number(row, key, where, finite=False)  # a diverged loss is NaN, and recorded as such


def check_manifest(manifest: dict[str, Any], cfg: RunConfig) -> None:
    """Every field of a manifest (read_manifest checked kind and format_version): types, ranges, and the
    arithmetic between them (epochs and steps within the config's, steps and schedule agreeing). Raises
    _Bad. The optimizer, schedule and RNG states are checked after decoding (_check_states)."""
    finished = _field(manifest, "finished", "manifest")
    if not isinstance(finished, bool):
        raise _Bad(f"finished must be true or false, got {_show(finished)}")
    _int(manifest, "seq", "manifest")
    progress = _field(manifest, "progress", "manifest")
    epochs = cfg.train.epochs
    epoch = _int(progress, "epoch", "progress", 0, epochs)
    step = _int(progress, "step", "progress")
    global_step = _int(progress, "global_step", "progress")
    if "processes" in progress or not finished:
        _int(progress, "processes", "progress", 1, MAX_PROCESSES)
    _check_history(_field(manifest, "history", "manifest"), epoch)
    if finished:
        return
    if epoch == epochs and step != 0:
        raise _Bad(f"progress.step must be 0 after the last epoch, got {step}")
    # every epoch has the same number of steps: those done are epoch * steps_per_epoch + step
    if epoch == 0:
        if global_step != step:
            raise _Bad(f"progress.global_step {global_step} does not match progress.step {step} in the first epoch")
    else:
        per_epoch, rest = divmod(global_step - step, epoch)
        if global_step < step or rest or step > per_epoch:
            raise _Bad(f"progress.step {step} and global_step {global_step} do not fit {epoch} epochs of equal length")
    data = _field(manifest, "data", "manifest")
    rows = _int(data, "rows", "data", 1)
    _int(data, "vocab_size", "data")
    labels = _field(data, "labels", "data")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _Bad("data.labels must be a list of strings")
    if not isinstance(_field(data, "sha256", "data"), str):
        raise _Bad("data.sha256 must be a string")
    limit = min(rows, cfg.train.epoch_size or rows)  # a batch holds at least one row
    if step > limit:
        raise _Bad(f"progress.step {step} is past the end of the epoch ({limit} batches at most)")
    running = _field(manifest, "running", "manifest")
    for key in RUNNING_KEYS:
        _field(running, key, "running")
    if set(running) != set(RUNNING_KEYS):
        raise _Bad(f"running must hold exactly {', '.join(RUNNING_KEYS)}")
    _number(running, "loss_sum", "running", finite=False)
    if _count(running, "correct", "running") > _count(running, "seen", "running"):
        raise _Bad("running.correct is larger than running.seen")
    _number(running, "seconds", "running", lo=0.0)
    best = _field(manifest, "best", "manifest")
    _number(best, "score", "best", finite=False)
    best_epoch = _int(best, "epoch", "best", 0, epoch)
    has_state = _field(best, "has_state", "best")
    if not isinstance(has_state, bool):
        raise _Bad(f"best.has_state must be true or false, got {_show(has_state)}")
    if epoch >= 1 and (not has_state or best_epoch < 1):
        raise _Bad("best must name an epoch with saved weights once an epoch is done")
    tensors = _field(manifest, "tensors", "manifest")
    if not isinstance(_field(tensors, "file", "tensors"), str) or not isinstance(_field(tensors, "sha256", "tensors"),
                                                                                 str):
        raise _Bad("tensors.file and tensors.sha256 must be strings")
    _int(tensors, "bytes", "tensors", 0)
    for key in ("optimizer", "schedule", "rng"):
        if not isinstance(_field(manifest, key, "manifest"), dict):
            raise _Bad(f"{key} must be an object, got {_show(manifest[key])}")


# schedule state that changes as training goes; everything else follows from the config
_SCHEDULE_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial")


def _reference_schedule(cfg: RunConfig, schedule: dict[str, Any]) -> dict[str, Any]:
    """The state of the schedule the trainer builds for `cfg`, fresh (the total step count taken from the
    checkpoint's own, checked against the config)."""

    total = schedule.get("total_steps", 1)
    if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= INT64_MAX:
        raise _Bad(f"schedule.total_steps must be a positive integer, got {_show(total)}")
    if "total_steps" in schedule and (cfg.train.schedule != "onecycle" or total < 4 or total % cfg.train.epochs):
        raise _Bad(f"schedule.total_steps {total} does not fit the config ({cfg.train.schedule} schedule, "
                   f"{cfg.train.epochs} epochs)")
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([param], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state = make_schedule(cfg, optimizer, total).state_dict()
    state[_GROUP] = optimizer.state_dict()["param_groups"][0]
    return state


_GROUP = "(param group)"  # where _reference_schedule puts the optimizer's group the config makes
_GROUP_FLAGS = ("foreach", "capturable", "differentiable", "fused")  # depend on the device: true, false or null


def _tensor(value: Any, where: str, dtype: torch.dtype | None = None, numel: int | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise _Bad(f"{where} must be a tensor, got {_show(value)}")
    if (dtype is not None and value.dtype != dtype) or (numel is not None and value.numel() != numel):
        raise _Bad(f"{where} is a {value.dtype} tensor of {value.numel()} values, expected "
                   f"{dtype or 'any type'} of {numel if numel is not None else 'any number of'} values")
    return value


def _check_rng(rng: dict[str, Any], where: str = "rng", top: bool = True) -> None:
    """The generator states capture_rng() records (and, distributed, every rank's under "ranks")."""
    _tensor(_field(rng, "torch", where), f"{where}.torch", torch.uint8)
    py = _field(rng, "python", where)
    _int(py, "version", f"{where}.python", 1, 1000)
    _tensor(_field(py, "state", f"{where}.python"), f"{where}.python.state", torch.int64, 625)
    if py.get("gauss") is not None:
        _number(py, "gauss", f"{where}.python")
    if "numpy" in rng:
        n = rng["numpy"]
        if _field(n, "name", f"{where}.numpy") != "MT19937":
            raise _Bad(f"{where}.numpy.name must be MT19937")
        _tensor(_field(n, "keys", f"{where}.numpy"), f"{where}.numpy.keys", torch.int64, 624)
        _int(n, "pos", f"{where}.numpy", 0, 624)
        _int(n, "has_gauss", f"{where}.numpy", 0, 1)
        _number(n, "gauss", f"{where}.numpy")
    if "cuda" in rng:
        cuda = rng["cuda"]
        if not isinstance(cuda, list):
            raise _Bad(f"{where}.cuda must be a list of tensors")
        for i, t in enumerate(cuda):
            _tensor(t, f"{where}.cuda[{i}]", torch.uint8)
    if top and "ranks" in rng:
        ranks = rng["ranks"]
        if not isinstance(ranks, list) or not ranks:
            raise _Bad(f"{where}.ranks must be a non-empty list")
        for i, r in enumerate(ranks):
            _check_rng(r, f"{where}.ranks[{i}]", top=False)
    extra = set(rng) - {"torch", "python", "numpy", "cuda", *(("ranks",) if top else ())}
    if extra:
        raise _Bad(f"{where} has unknown entries {sorted(extra)[:3]}")


ADAMW_STATE = {"step", "exp_avg", "exp_avg_sq"}  # per parameter, torch's AdamW and rnntext.fast's alike


def _check_optimizer_state(ckpt: Checkpoint, params: list[Tensor]) -> None:
    """AdamW's state: one group over the model's parameters (`params`, in model.parameters() order), and
    for each parameter a step count and two moment tensors of the parameter's shape."""
    groups, state = ckpt.optimizer["param_groups"], ckpt.optimizer["state"]
    ids = [p for g in groups for p in g["params"]]
    if ids != list(range(len(params))):
        raise _Bad(f"optimizer.param_groups name parameters {_show(ids)}, the model has {len(params)}")
    for key, entry in state.items():
        where = f"optimizer.state[{key!r}]"
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(params):
            raise _Bad(f"{where}: not a parameter of the model")
        if set(entry) != ADAMW_STATE:
            raise _Bad(f"{where} must hold {', '.join(sorted(ADAMW_STATE))}, holds {sorted(map(str, entry))[:5]}")
        step = entry["step"]
        if isinstance(step, Tensor):
            _tensor(step, f"{where}.step", numel=1)
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step < 0:
            raise _Bad(f"{where}.step must be a count, got {_show(step)}")
        for name in ("exp_avg", "exp_avg_sq"):
            t = _tensor(entry[name], f"{where}.{name}")
            if t.shape != params[key].shape or not t.is_floating_point():
                raise _Bad(f"{where}.{name} is {t.dtype} {tuple(t.shape)}, the parameter is {tuple(params[key].shape)}")


def _check_states(ckpt: Checkpoint, params: list[Tensor]) -> None:
    """The decoded schedule and optimizer state: the schedule's keys and settings those the config
    makes, its position that of the checkpoint, the optimizer's learning rates the schedule's."""
    schedule, optimizer = ckpt.schedule, ckpt.optimizer
    ref = _reference_schedule(ckpt.config, schedule)
    ref_group = ref.pop(_GROUP)
    if set(schedule) != set(ref):
        missing, extra = sorted(set(ref) - set(schedule)), sorted(set(schedule) - set(ref))
        raise _Bad(f"schedule does not fit the config's {ckpt.config.train.schedule} schedule (missing {missing[:4]}, "
                   f"unexpected {extra[:4]})")
    for key, value in ref.items():
        if key not in _SCHEDULE_PROGRESS and key != "base_lrs" and schedule[key] != value:
            raise _Bad(f"schedule.{key} is {_show(schedule[key])}, the config makes it {_show(value)}")
    if "total_steps" in schedule:
        per_epoch = schedule["total_steps"] // ckpt.config.train.epochs
        if ckpt.step > per_epoch or ckpt.global_step != ckpt.epoch * per_epoch + ckpt.step:
            raise _Bad(f"progress (epoch {ckpt.epoch}, step {ckpt.step}, global_step {ckpt.global_step}) does not "
                       f"fit the schedule's {per_epoch} steps per epoch")
    if schedule["last_epoch"] != ckpt.global_step or schedule["_step_count"] != ckpt.global_step + 1:
        raise _Bad(f"schedule.last_epoch {_show(schedule['last_epoch'])} and _step_count "
                   f"{_show(schedule['_step_count'])} do not match progress.global_step {ckpt.global_step}")
    groups = optimizer.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise _Bad("optimizer.param_groups must be a non-empty list of objects")
    for key in ("base_lrs", "_last_lr"):
        lrs = schedule[key]
        if not isinstance(lrs, list) or len(lrs) != len(groups) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in lrs):
            raise _Bad(f"schedule.{key} must be {len(groups)} finite learning rates, got {_show(lrs)}")
    if any(v != ref["base_lrs"][0] for v in schedule["base_lrs"]):
        raise _Bad(f"schedule.base_lrs is {_show(schedule['base_lrs'])}, the config makes it {_show(ref['base_lrs'])}")
    state = optimizer.get("state")
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise _Bad("optimizer.state must be an object of objects")
    for i, group in enumerate(groups):
        ids = group.get("params")
        if not isinstance(ids, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in ids):
            raise _Bad(f"optimizer.param_groups[{i}].params must be a list of integers")
        if set(group) != set(ref_group):
            missing, extra = sorted(set(ref_group) - set(group)), sorted(set(group) - set(ref_group))
            raise _Bad(f"optimizer.param_groups[{i}] does not fit AdamW with the config's schedule (missing "
                       f"{missing[:4]}, unexpected {extra[:4]})")
        for key, value in group.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise _Bad(f"optimizer.param_groups[{i}].{key} must be finite, got {_show(value)}")
            if key in _GROUP_FLAGS:
                if value is not None and not isinstance(value, bool):
                    raise _Bad(f"optimizer.param_groups[{i}].{key} must be true, false or null, got {_show(value)}")
            elif key not in ("params", "lr") and value != ref_group[key]:
                raise _Bad(f"optimizer.param_groups[{i}].{key} is {_show(value)}, the config makes it "
                           f"{_show(ref_group[key])}")
        if group.get("lr") != schedule["_last_lr"][i]:
            raise _Bad(f"optimizer.param_groups[{i}].lr {_show(group.get('lr'))} is not the schedule's "
                       f"{_show(schedule['_last_lr'][i])}")
    _check_optimizer_state(ckpt, params)
    _check_rng(ckpt.rng)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read and verify the checkpoint of `run_dir`. Every problem is a one-line CheckpointError."""
    manifest = read_manifest(run_dir)
    mpath = str(manifest_path(run_dir))
    cfg = manifest_config(manifest, mpath)
    try:
        check_manifest(manifest, cfg)
    except _Bad as e:
        raise CheckpointError(f"invalid manifest: {e}", mpath) from None
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
    size = tpath.stat().st_size
    if size != info["bytes"]:  # before reading it: a tensor file swapped for a huge one costs nothing
        raise CheckpointError(f"corrupted or truncated file ({size:,} bytes, checkpoint.json says "
                              f"{info['bytes']:,})", str(tpath))
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
    try:
        ckpt.optimizer = decode_state(enc_optimizer, tensors, mpath)
        ckpt.schedule = decode_state(enc_schedule, tensors, mpath)
        ckpt.rng = decode_state(enc_rng, tensors, mpath)
    except (TypeError, ValueError, AttributeError, RecursionError) as e:  # e.g. a list as a dict key
        raise CheckpointError(f"invalid manifest: undecodable state ({type(e).__name__}: {str(e)[:100]})",
                              mpath) from None
    if not isinstance(ckpt.optimizer, dict) or not isinstance(ckpt.schedule, dict) or not isinstance(ckpt.rng, dict):
        raise CheckpointError("invalid manifest: optimizer, schedule and rng must be objects", mpath)
    if ckpt.best is not None and not ckpt.best:
        raise CheckpointError("best.has_state is true and the tensor file holds no best weights", str(tpath))
    from ..model import build_model

    if cfg.data.train is None and cfg.data.dataset is None:  # resume prepares the data again from these
        raise CheckpointError("invalid config: no training data (data.train or data.dataset)", mpath)
    if cfg.model.vocab_size < 2 or cfg.model.num_classes < 1:
        raise CheckpointError(f"invalid config: model.vocab_size {cfg.model.vocab_size} and model.num_classes "
                              f"{cfg.model.num_classes} cannot be a trained model's", mpath)
    try:
        with torch.device("meta"):  # shapes only
            model = build_model(cfg.model)
    except (ConfigError, ValueError, TypeError, AssertionError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"invalid config (cannot build its model: {str(e)[:200]})", mpath) from None
    check_state(ckpt.model, model.state_dict(), str(tpath))
    if ckpt.best is not None:
        check_state(ckpt.best, model.state_dict(), str(tpath))
    try:
        _check_states(ckpt, list(model.parameters()))
    except _Bad as e:
        raise CheckpointError(f"invalid manifest: {e}", mpath) from None
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
        # a slice at a time, as int64: a token store's int32 ids hash as the same ids in memory, without a copy
        # of all of them
        for part in t.detach().reshape(-1).split(1 << 22):
            h.update(part.to("cpu", torch.int64 if not part.is_floating_point() else part.dtype).numpy().tobytes())
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
