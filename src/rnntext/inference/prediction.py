"""A prediction as the API returns it (torch-free: both the torch Predictor and the ONNX one use it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class Prediction:
    """`label`: the most probable class. A multi-label run's prediction also has `labels`: the set of
    labels whose probability reaches its threshold (possibly none), each with its probability, most
    probable first."""

    label: str | None  # None: abstained, the top probability was below min_confidence
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


def check_min_confidence(value: float | None) -> None:
    """min_confidence is None (always a label) or a probability in [0, 1]."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 <= value <= 1.0):
        raise ConfigError(f"min_confidence must be a probability in [0, 1], got {value!r}")


def confident(top: Sequence[float], min_confidence: float | None) -> list[bool]:
    """For each text's top class probability: whether it reaches `min_confidence` (a label is given at
    exactly P, none below it); None: every text gets its label."""
    if min_confidence is None:
        return [True] * len(top)
    return [p >= min_confidence for p in top]
