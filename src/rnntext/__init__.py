"""rnntext: text classification with recurrent neural networks.

`import rnntext` is light: the names below are imported (with torch) on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, RnnTextError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Prediction": "rnntext.inference.predictor",
    "Predictor": "rnntext.inference.predictor",
    "load": "rnntext.inference.predictor",
    "load_run": "rnntext.training.rundir",
    "evaluate_run": "rnntext.inference.evaluate",
    "train": "rnntext.training.trainer",
    "resume": "rnntext.training.trainer",
    "evaluate_encoded": "rnntext.training.trainer",
}

if TYPE_CHECKING:
    from .inference.evaluate import evaluate_run
    from .inference.predictor import Prediction, Predictor, load
    from .training.rundir import load_run
    from .training.trainer import evaluate_encoded, resume, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rnntext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["CheckpointError", "ConfigError", "DataConfig", "DataError", "ModelConfig", "Prediction",
           "Predictor", "RnnTextError", "RunConfig", "TrainConfig", "__version__", "evaluate_encoded",
           "evaluate_run", "load", "load_run", "resume", "train"]
