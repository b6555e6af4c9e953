"""Serving: prediction from a run directory (and the HTTP server)."""

from .predictor import Prediction, Predictor, load

__all__ = ["Prediction", "Predictor", "load"]
