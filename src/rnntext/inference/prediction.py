"""A prediction as the API returns it (torch-free: both the torch Predictor and the ONNX one use it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Prediction:
    """`label`: the most probable class. A multi-label run's prediction also has `labels`: the set of
    labels whose probability reaches its threshold (possibly none), each with its probability, most
    probable first."""

    label: str
    probabilities: dict[str, float]
    labels: dict[str, float] | None = None

    def to_dict(self) -> dict:
        out = {"label": self.label, "probabilities": self.probabilities}
        if self.labels is not None:
            out["labels"] = self.labels
        return out


def label_set(names: Sequence[str], probabilities: Sequence[float], thresholds: Sequence[float]) -> dict[str, float]:
    """A multi-label prediction: the labels whose probability reaches their threshold, each with its
    probability (rounded as the API shows them), most probable first."""
    chosen = [(n, p) for n, p, t in zip(names, probabilities, thresholds) if p >= t]
    chosen.sort(key=lambda item: -item[1])
    return {n: round(p, 6) for n, p in chosen}
