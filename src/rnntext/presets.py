"""Named configurations: the tutorial's three systems, reproducible by one flag."""

from __future__ import annotations

from typing import Any

# The tutorial's settings: embed 64, hidden 32, batch 16, Adam at a constant 1e-3, one epoch.
_TUTORIAL: dict[str, Any] = {
    "data": {"min_freq": 1, "ngrams": 1, "max_len": None},  # every word of the training set, as torchtext's vocab
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
}
