"""A prediction as the API returns it (torch-free: both the torch Predictor and the ONNX one use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities}
