"""Training: the loop, metrics and the run directory."""

from .metrics import classification_report, format_report
from .rundir import Run, load_run, save_run
from .trainer import TrainResult, evaluate_encoded, predict_logits, resume, train

__all__ = ["Run", "TrainResult", "classification_report", "evaluate_encoded", "format_report",
           "load_run", "predict_logits", "resume", "save_run", "train"]
