"""rnntext: text classification with recurrent neural networks."""

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, RnnTextError
from .serving.predictor import Prediction, Predictor, load
from .training import evaluate_encoded, load_run, train

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataConfig", "DataError", "ModelConfig", "Prediction",
           "Predictor", "RnnTextError", "RunConfig", "TrainConfig", "__version__", "evaluate_encoded",
           "load", "load_run", "train"]
