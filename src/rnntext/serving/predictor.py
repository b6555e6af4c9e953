"""Prediction from a run directory: `rnntext.load(RUN_DIR).predict(["..."])`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import encode_texts
from ..model import uses_flat_batches
from ..training.rundir import Run, load_run
from ..training.trainer import predict_logits, resolve_device, set_threads


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities}


class Predictor:
    def __init__(self, run: Run, device: torch.device):
        self.run = run
        self.device = device
        self.tokenizer = run.tokenizer
        self.labels = run.label_names
        self._flat = uses_flat_batches(run.config.model)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", threads: int | None = None) -> Predictor:
        if threads is not None:  # otherwise leave the process's setting alone (a library must not change it)
            set_threads(threads)
        dev = resolve_device(device)
        return cls(load_run(run_dir, dev), dev)

    def probabilities(self, texts: list[str], batch_size: int = 512) -> torch.Tensor:
        """[len(texts), classes] class probabilities."""
        if not texts:
            return torch.zeros(0, len(self.labels))
        enc = encode_texts(list(texts), self.tokenizer, self.run.vocab)
        return predict_logits(self.run.model, enc, self._flat, self.device, batch_size).softmax(1)

    def predict(self, texts: list[str] | str, batch_size: int = 512) -> list[Prediction]:
        if isinstance(texts, str):
            texts = [texts]
        probs = self.probabilities(texts, batch_size)
        best = probs.argmax(1).tolist()
        rows = probs.tolist()
        return [Prediction(self.labels[b], dict(zip(self.labels, (round(p, 6) for p in row))))
                for b, row in zip(best, rows)]


def load(run_dir: str | Path, device: str = "auto", threads: int | None = None) -> Predictor:
    """A trained model ready to predict, from the run directory `rnntext train --out` wrote."""
    return Predictor.load(run_dir, device, threads)
