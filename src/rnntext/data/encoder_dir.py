"""The encoder directory of `rnntext pretrain`: what `rnntext train --encoder DIR` starts from.

    ENCODER_DIR/encoder.json          kind, format version, the settings it was pretrained with
                                      (data, model, train and pretrain sections), its vocabulary size
    ENCODER_DIR/vocab.json            the vocabulary (the classifier's, unextended)
    ENCODER_DIR/encoder.safetensors   the embedding and recurrent weights (the classifier's own names)
    ENCODER_DIR/metrics.json          per epoch: training loss, held-out perplexity, seconds
    ENCODER_DIR/checkpoint/           while pretraining: what --resume continues from

JSON and safetensors only (loading runs no code), each written atomically, encoder.json last: a
directory with an encoder.json has the vocabulary and weights it describes. Loading needs none of the
text files it was pretrained on. It lives in the data layer because preparing a run's data takes its
vocabulary from here; the trainer loads the weights through the model interface
(TextClassifier.load_encoder)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ..config import DataConfig, ModelConfig, PretrainConfig, RunConfig
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .vocab import Vocab

ENCODER_JSON, VOCAB, WEIGHTS, METRICS = "encoder.json", "vocab.json", "encoder.safetensors", "metrics.json"
KIND = "rnntext-encoder"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 16 * 2**20
MAX_VOCAB_ENTRY_BYTES = 1024  # vocab.json may hold vocab_size x this (as a run directory's)
# what must be the same in the encoder and the classifier that starts from it
MODEL_FIELDS = ("model", "embed_dim", "hidden_dim", "num_layers", "bidirectional")


@dataclass
class PretrainSettings:
    """All the settings of a pretraining: a run's data, model and train sections (tokenizer, vocabulary,
    cell and sizes, epochs, lr, ...) and the pretrain section."""

    run: RunConfig = field(default_factory=RunConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "pretrain": dataclasses.asdict(self.pretrain)}

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> PretrainSettings:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected an object" if source else "expected an object")
        run = RunConfig.from_dict({k: v for k, v in d.items() if k != "pretrain"}, source)
        pretrain = PretrainConfig()
        try:
            pretrain.update(d.get("pretrain", {}))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from None
        return cls(run, pretrain)


@dataclass
class Encoder:
    """A loaded encoder directory."""

    path: Path
    settings: PretrainSettings
    vocab: Vocab
    state: dict[str, Tensor]

    def check_fits(self, model: ModelConfig, data: DataConfig) -> None:
        """The classifier of `model` and `data` can start from this encoder: same cell, sizes, layers,
        direction and tokenizer; otherwise a one-line error naming encoder.json and what to give."""
        check_fits(self.settings, model, data, str(self.path / ENCODER_JSON))


def check_fits(settings: PretrainSettings, model: ModelConfig, data: DataConfig, where: str) -> None:
    own = settings.run.model
    differ = [f for f in MODEL_FIELDS if getattr(own, f) != getattr(model, f)]
    if differ:
        flag = {"model": "--model", "embed_dim": "--embed-dim", "hidden_dim": "--hidden-dim",
                "num_layers": "--num-layers", "bidirectional": "--bidirectional"}
        want = ", ".join(f"{flag[f]} {_show(getattr(own, f))}" for f in differ)
        have = ", ".join(f"{flag[f]} {_show(getattr(model, f))}" for f in differ)
        raise CheckpointError(f"the encoder was pretrained with {want}; this run has {have} (give the encoder's)",
                              where)
    if settings.run.data.tokenizer != data.tokenizer:
        raise CheckpointError(f"the encoder's words were split by the {settings.run.data.tokenizer} tokenizer; this "
                              f"run has --tokenizer {data.tokenizer}", where)
    if data.ngrams != 1:
        raise CheckpointError(f"--ngrams {data.ngrams}: an encoder's vocabulary holds words, not n-grams "
                              "(give --ngrams 1)", where)


def _show(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


# --- reading --------------------------------------------------------------------------------------

def _read_json(path: Path, limit: int) -> Any:
    if not path.is_file():
        raise CheckpointError("missing file; is this an encoder directory written by `rnntext pretrain`?"
                              if not path.exists() else "not a file", str(path))
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{size:,} bytes, more than this file can need ({limit:,})", str(path))
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupted or truncated JSON ({e})", str(path)) from None
    except (RecursionError, ValueError) as e:
        raise CheckpointError(f"corrupted JSON ({str(e)[:100]})", str(path)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", str(path)) from None


def read_settings(path: str | Path) -> tuple[PretrainSettings, int]:
    """The settings and vocabulary size in ENCODER_DIR/encoder.json, checked."""
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError("encoder directory does not exist" if not d.exists() else "not a directory", str(d))
    where = d / ENCODER_JSON
    raw = _read_json(where, MAX_JSON_BYTES)
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise CheckpointError("not an rnntext encoder (written by `rnntext pretrain`)", str(where))
    version = raw.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"invalid format_version {version!r}", str(where))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"encoder format version {version} is newer than this rnntext understands "
                              f"({FORMAT_VERSION}); upgrade rnntext", str(where))
    size = raw.get("vocab_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise CheckpointError(f"vocab_size must be an integer >= 2, got {size!r}", str(where))
    try:
        settings = PretrainSettings.from_dict(raw.get("config"))
        settings.run.validate()
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"invalid config ({e})", str(where)) from None
    return settings, size


def load_vocab(path: str | Path) -> Vocab:
    """The encoder's vocabulary (what a run fine-tuned from it encodes its texts with)."""
    d = Path(path)
    _, size = read_settings(d)
    raw = _read_json(d / VOCAB, size * MAX_VOCAB_ENTRY_BYTES + 65536)
    try:
        vocab = Vocab.from_json(json.dumps(raw))
    except ValueError as e:
        raise CheckpointError(str(e), str(d / VOCAB)) from None
    if len(vocab) != size:
        raise CheckpointError(f"{len(vocab)} tokens, encoder.json says {size}", str(d / VOCAB))
    return vocab


def load_encoder(path: str | Path) -> Encoder:
    """The whole encoder directory, checked (settings, vocabulary, weights: names, finite values and the
    embedding's rows)."""
    d = Path(path)
    settings, size = read_settings(d)
    vocab = load_vocab(d)
    m = settings.run.model
    wpath = d / WEIGHTS
    if not wpath.is_file():
        raise CheckpointError("missing file" if not wpath.exists() else "not a file", str(wpath))
    # a bound before reading: the embedding plus a generous allowance for the recurrent layers
    limit = 4 * (size * m.embed_dim + 64 * m.num_layers * (m.embed_dim + m.hidden_dim + 2) * m.hidden_dim * 2) + 2**24
    if wpath.stat().st_size > limit:
        raise CheckpointError(f"{wpath.stat().st_size:,} bytes, more than the encoder.json's model can need",
                              str(wpath))
    try:
        state = st_load(wpath.read_bytes())
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", str(wpath)) from None
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupted or truncated safetensors file ({e})", str(wpath)) from None
    emb = state.get("embedding.weight")
    if emb is None or tuple(emb.shape) != (size, m.embed_dim):
        raise CheckpointError(f"embedding.weight must be ({size}, {m.embed_dim}), "
                              f"got {None if emb is None else tuple(emb.shape)}", str(wpath))
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"tensor {bad} holds NaN or infinite values", str(wpath))
    return Encoder(d, settings, vocab, state)


# --- writing --------------------------------------------------------------------------------------

def save_encoder(path: str | Path, settings: PretrainSettings, vocab: Vocab, state: dict[str, Tensor],
                 metrics: dict[str, Any]) -> Path:
    """Write the encoder directory (weights and vocabulary first, encoder.json last)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / WEIGHTS, st_save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}))
    atomic_write_text(d / VOCAB, vocab.to_json())
    atomic_write_json(d / METRICS, metrics)
    atomic_write_json(d / ENCODER_JSON, {"kind": KIND, "format_version": FORMAT_VERSION, "vocab_size": len(vocab),
                                         "config": settings.to_dict()})
    return d
