"""Models: the interface (base.TextClassifier), the registry from `--model NAME` to class, and the
families: recurrent (rnn, lstm, gru), bag (EmbeddingBag baseline), cnn (Kim 2014)."""

from __future__ import annotations

from .registry import batch_layout, build_model, model_class, model_names

__all__ = ["batch_layout", "build_model", "model_class", "model_names"]
