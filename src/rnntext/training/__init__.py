"""Training: the loop (trainer), device choice, logits and metrics, run directories, checkpoints and
resume, distributed data parallel, ensembles."""

from .callbacks import Callback, StepMetrics
from .trainer import TrainResult, resume, train

__all__ = ["Callback", "StepMetrics", "TrainResult", "resume", "train"]
