"""Named configurations: the tutorial's three systems and Kim (2014)'s CNN, reproducible by one flag.

A preset is a partial config.json ({"data": {...}, "model": {...}, "train": {...}}); `preset_config`
applies it through `RunConfig.from_dict`, so its values are checked against the settings' declarations
(config.py) like any config file's, and a test checks them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import RunConfig
from .errors import ConfigError

# The tutorial's settings: embed 64, hidden 32, batch 16, Adam at a constant 1e-3, one epoch.
_TUTORIAL: dict[str, Any] = {
    # every word of the training set, and any other one <unk>, as torchtext's vocab
    "data": {"min_freq": 1, "unseen_words": "unk", "ngrams": 1, "max_len": None},
    "model": {"embed_dim": 64, "hidden_dim": 32, "num_layers": 1, "bidirectional": False,
              "dropout": 0.0, "embed_dropout": 0.0},
    "train": {"batch_size": 16, "lr": 1e-3, "schedule": "constant", "epochs": 1, "clip": None,
              "weight_decay": 0.0},
}

PRESETS: dict[str, dict[str, Any]] = {
    # RNNClassifier: simple RNN, mean of the outputs, padded batches
    "tutorial-rnn": {"model": {**_TUTORIAL["model"], "model": "rnn", "pooling": "mean", "packed": False},
                     "train": _TUTORIAL["train"], "data": _TUTORIAL["data"]},
    # LSTMClassifier: LSTM, last hidden state, padded batches
    "tutorial-lstm": {"model": {**_TUTORIAL["model"], "model": "lstm", "pooling": "last", "packed": False},
                      "train": _TUTORIAL["train"], "data": _TUTORIAL["data"]},
    # LSTMPackClassifier: LSTM, last hidden state, packed sequences
    "tutorial-lstm-packed": {"model": {**_TUTORIAL["model"], "model": "lstm", "pooling": "last", "packed": True},
                             "train": _TUTORIAL["train"], "data": _TUTORIAL["data"]},
    # Kim (2014)'s CNN: filter widths 3/4/5 with 100 maps each, max over time, dropout 0.5 (model/cnn.py)
    "kim-cnn": {"model": {"model": "cnn", "hidden_dim": 100, "dropout": 0.5, "embed_dropout": 0.0}},
}


def preset_config(name: str, base: RunConfig | None = None,
                  sections: Sequence[str] = ("data", "model", "train")) -> RunConfig:
    """`base` (default: the defaults) with the preset's `sections` on top; every value checked."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    values = {k: v for k, v in PRESETS[name].items() if k in sections}
    return RunConfig.from_dict(values, f"preset {name}", base=base)
