"""`--model NAME` -> model class. Importing this module does not import torch (the command line
lists the names in its help); a class is imported when a model is built."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import TextClassifier

# name -> "module:Class" within this package
MODELS: dict[str, str] = {
    "rnn": "recurrent:RecurrentClassifier",
    "lstm": "recurrent:RecurrentClassifier",
    "gru": "recurrent:RecurrentClassifier",
    "bag": "bag:BagClassifier",
    "cnn": "cnn:CNNClassifier",
}


def model_names() -> list[str]:
    return list(MODELS)


def model_class(name: str) -> type[TextClassifier]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def build_model(cfg: ModelConfig) -> TextClassifier:
    """The model `cfg` describes (its vocab_size and num_classes filled in); with wide_ngrams, joined
    with a wide part of hashed word n-grams (wide.py); with members > 1, that many of them trained side
    by side (members.py; unset counts as 1: the trainer sets it)."""
    models = [_build_one(cfg) for _ in range(cfg.members or 1)]
    if len(models) == 1:
        return models[0]
    members = importlib.import_module(f"{__package__}.members")
    return members.MembersClassifier(models)


def _build_one(cfg: ModelConfig) -> TextClassifier:
    model = model_class(cfg.model).from_config(cfg)
    if cfg.wide_ngrams:
        wide = importlib.import_module(f"{__package__}.wide")
        return wide.WideClassifier.from_config(cfg, deep=model)
    return model


def batch_layout(cfg: ModelConfig) -> str:
    """How the model of `cfg` takes its batches ("padded" or "flat"; base.BATCH_LAYOUTS)."""
    return model_class(cfg.model).batch_layout
