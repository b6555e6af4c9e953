"""The run directory: config.json, vocab.json, labels.json, model.safetensors, metrics.json, and
calibration.json where a temperature was fitted (training/calibration.py).

Everything is JSON or safetensors, so loading a run executes no code; every file is written
atomically, so a kill during a save leaves the previous version complete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..config import RunConfig
from ..data.tokenizer import Tokenizer
from ..data.vocab import Vocab
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..model import build_model
from ..model.base import TextClassifier
from .calibration import CALIBRATION, read_temperature

CONFIG, VOCAB, LABELS = "config.json", "vocab.json", "labels.json"
WEIGHTS, METRICS = "model.safetensors", "metrics.json"
# Sizes checked before a file is read (docs/guides/limits.md): a tampered or swapped file is refused by
# its size, not after it filled the memory.
MAX_CONFIG_BYTES = 16 * 2**20
MAX_VOCAB_ENTRY_BYTES = 1024  # vocab.json may hold vocab_size x this (an average token is ~10 bytes)
MAX_LABEL_BYTES = 4096  # labels.json may hold num_classes x this
SMALL_FILE_BYTES = 64 * 2**10  # the slack every bound allows (brackets, a short vocabulary)
MAX_SAFETENSORS_HEADER = 16 * 2**20  # model.safetensors: the tensors' bytes + at most this


@dataclass
class Run:
    """Everything needed to rebuild a trained model and its preprocessing."""

    path: Path
    config: RunConfig
    vocab: Vocab
    label_names: list[str]
    model: TextClassifier
    temperature: float = 1.0  # calibration.json's; 1: the raw probabilities (no file, older runs)

    @property
    def tokenizer(self) -> Tokenizer:
        d = self.config.data
        return Tokenizer(d.tokenizer, d.ngrams, d.max_len)


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, st_save({k: v.contiguous() for k, v in state.items()}))


def save_run(path: str | Path, config: RunConfig, vocab: Vocab, label_names: list[str],
             state: dict[str, torch.Tensor], metrics: dict[str, Any] | None = None,
             calibration: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the run directory: {e.strerror}", str(path)) from None
    # Weights first and config last: a directory with a config.json always has matching weights.
    save_weights(path / WEIGHTS, state)
    atomic_write_text(path / VOCAB, vocab.to_json())
    atomic_write_json(path / LABELS, label_names)
    if metrics is not None:
        atomic_write_json(path / METRICS, metrics)
    if calibration is not None:
        atomic_write_json(path / CALIBRATION, calibration)
    else:  # a finished run trained over: its temperature is not this model's
        (path / CALIBRATION).unlink(missing_ok=True)
    atomic_write_json(path / CONFIG, config.to_dict())
    return path


def _check_size(path: Path, limit: int, what: str) -> None:
    """Refuse `path` by its size, before reading it, when it is larger than `limit` bytes."""
    if not path.exists():
        raise CheckpointError("missing file; is this a run directory written by `rnntext train`?", str(path))
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", str(path)) from None
    if path.is_file() and size > limit:
        raise CheckpointError(f"{size:,} bytes, more than {what} can need ({limit:,}); the file was replaced or "
                              "the config altered", str(path))


def _read_json(path: Path, limit: int = MAX_CONFIG_BYTES, what: str = "this file") -> Any:
    _check_size(path, limit, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupted or truncated JSON ({e})", str(path)) from None
    except RecursionError:
        raise CheckpointError("corrupted JSON (nested too deeply)", str(path)) from None
    except ValueError as e:  # an integer of 5,000 digits
        raise CheckpointError(f"corrupted JSON ({str(e)[:100]})", str(path)) from None
    except OSError as e:  # a directory where the file should be, no permission, ...
        raise CheckpointError(f"cannot read: {e.strerror or e}", str(path)) from None


def check_run_files(path: str | Path) -> None:
    """Every file of the run directory `path` is there and is a file (an ensemble checks all its members
    this way before it loads any weights)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError("run directory does not exist", str(path))
    for name in (CONFIG, VOCAB, LABELS, WEIGHTS):
        f = path / name
        if not f.exists():
            raise CheckpointError("missing file; is this a run directory written by `rnntext train`?", str(f))
        if not f.is_file():
            raise CheckpointError("not a file", str(f))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError("missing file", str(path))
    try:
        return st_load(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", str(path)) from None
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupted or truncated safetensors file ({e})", str(path)) from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError("run directory does not exist", str(path))
    try:
        raw = _read_json(path / CONFIG, MAX_CONFIG_BYTES, "a config")
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a JSON object, found {type(raw).__name__}")
        config = RunConfig.from_saved(raw)
        config.validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(str(e), str(path / CONFIG)) from None
    m = config.model
    if m.vocab_size < 2 or m.num_classes < 1:
        raise CheckpointError(f"model.vocab_size {m.vocab_size} and model.num_classes {m.num_classes}: a trained run "
                              "has >= 2 tokens and >= 1 class", str(path / CONFIG))
    try:
        with torch.device("meta"):  # shapes only: a config that asks for a huge model allocates nothing yet
            expected = build_model(m).state_dict()
    except (ConfigError, ValueError, TypeError, AssertionError, RuntimeError) as e:
        raise CheckpointError(f"cannot build the model this config describes ({str(e)[:200]})",
                              str(path / CONFIG)) from None
    # sizes before contents: the weights the config needs bound model.safetensors, and vocab_size and
    # num_classes (which the weights' shapes confirm) bound vocab.json and labels.json
    need = sum(t.numel() * t.element_size() for t in expected.values())
    _check_size(path / WEIGHTS, need + MAX_SAFETENSORS_HEADER, "the weights of this config")
    size = (path / WEIGHTS).stat().st_size if (path / WEIGHTS).is_file() else need
    if size < need:
        raise CheckpointError(f"{size:,} bytes, too few for the weights the config needs ({need:,} bytes of "
                              "tensors): truncated, not a safetensors file of this model, or the config was altered",
                              str(path / WEIGHTS))
    raw_vocab = _read_json(path / VOCAB, m.vocab_size * MAX_VOCAB_ENTRY_BYTES + SMALL_FILE_BYTES,
                           f"a vocabulary of {m.vocab_size:,} tokens")
    try:
        vocab = Vocab.from_json(json.dumps(raw_vocab), config.data.unseen_words)
    except ValueError as e:
        raise CheckpointError(str(e), str(path / VOCAB)) from None
    del raw_vocab
    labels = _read_json(path / LABELS, m.num_classes * MAX_LABEL_BYTES + SMALL_FILE_BYTES,
                        f"{m.num_classes:,} label names")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError("expected a list of label names", str(path / LABELS))
    if len(set(labels)) != len(labels):
        raise CheckpointError("label names must be distinct", str(path / LABELS))
    if m.vocab_size != len(vocab):
        raise CheckpointError(f"config says vocab_size {m.vocab_size}, vocab.json has {len(vocab)} tokens",
                              str(path / VOCAB))
    if m.num_classes != len(labels):
        raise CheckpointError(f"config says {m.num_classes} classes, labels.json has {len(labels)}",
                              str(path / LABELS))
    state = load_weights(path / WEIGHTS)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})",
                              str(path / WEIGHTS))
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"tensor {k} has shape {tuple(v.shape)}, the config needs "
                                  f"{tuple(expected[k].shape)}", str(path / WEIGHTS))
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # a diverged training or a damaged file: it could only predict NaN
        raise CheckpointError(f"tensor {bad} holds NaN or infinite values; this model cannot predict: retrain it",
                              str(path / WEIGHTS))
    temperature = 1.0
    if (path / CALIBRATION).exists():
        temperature = read_temperature(_read_json(path / CALIBRATION, SMALL_FILE_BYTES, "a calibration"),
                                       str(path / CALIBRATION))
    model = build_model(m)
    model.load_state_dict(state)
    model.to(device).eval()
    return Run(path, config, vocab, labels, model, temperature)
