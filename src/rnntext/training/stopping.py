"""How long a run trains and which epoch it keeps.

- Training length: without --epochs, a run trains as many epochs as make at least --min-steps optimiser
  steps (AUTO_MIN_EPOCHS..AUTO_MAX_EPOCHS). The defaults were tuned on AG News (20k rows, ~150 steps an
  epoch); a dataset of 5k rows has ~40 steps an epoch, and five of its epochs left its validation curve
  still climbing. Counting steps instead of epochs gives small datasets the training a large one gets.
- Which epoch: each epoch's validation accuracy, macro-F1 and loss are measured; --select-by names the one
  that picks the best epoch (whose weights the run keeps) and drives early stopping.
- Early stopping: with --patience N, a run stops once N epochs in a row have not beaten the best one.

Every decision here is a pure function of the configuration and the epochs' history, so a resumed run
decides as the uninterrupted one did."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..config import AUTO_MAX_EPOCHS, AUTO_MAX_MEMBERS, AUTO_MIN_EPOCHS, TrainConfig
from ..data import Encoded
from ..model.base import TextClassifier
from . import distributed
from .logits import predict_logits
from .metrics import classification_report

# Members: a run gets several while they cost no more than this many token-passes together (epochs x
# training tokens x members). Chosen for time, not accuracy: on 2 CPU cores, a 10k-row set of 20-word
# sentences (~2M token-passes a member) gets 3 and trains in under 2 minutes; AG News's 20k rows (~4.3M)
# and anything larger get one, so large data trains as before.
MEMBER_BUDGET = 6_000_000

# --min-steps is for data whose steps are cheap: a step of 128 long texts reads many words, and such data
# needs fewer of them. Without --epochs, a run stops adding epochs past this many token-passes (epochs x
# training tokens; never below AUTO_MIN_EPOCHS). Chosen for time: about 3.5 minutes of the default model
# on 2 CPU cores. It binds only for long texts (20 Newsgroups: 7 epochs instead of 9; on a held-out part
# of its train, 8 instead of 10 lost nothing); AG News, SST-2, TREC, CR and MPQA stay far below it.
EPOCH_BUDGET = 14_000_000

# --select-by NAME -> the key of a metrics.json "epochs" row
SELECT_KEYS = {"accuracy": "valid_accuracy", "macro_f1": "valid_macro_f1", "loss": "valid_loss"}


def planned_epochs(train: TrainConfig, steps_per_epoch: int, tokens_per_epoch: int | None = None) -> int:
    """--epochs when given; else enough epochs for --min-steps steps, but no more than fit EPOCH_BUDGET
    token-passes (when `tokens_per_epoch` is given), within AUTO_MIN_EPOCHS..AUTO_MAX_EPOCHS."""
    if train.epochs is not None:
        return train.epochs
    need = math.ceil(train.min_steps / max(steps_per_epoch, 1))
    if tokens_per_epoch:
        need = min(need, EPOCH_BUDGET // tokens_per_epoch)
    return min(max(need, AUTO_MIN_EPOCHS), AUTO_MAX_EPOCHS)


def planned_members(cost: int) -> int:
    """Members of a run without --members (model/members.py): as many as fit MEMBER_BUDGET token-passes,
    where one member costs `cost` (epochs x training tokens), 1 to AUTO_MAX_MEMBERS."""
    return max(1, min(AUTO_MAX_MEMBERS, MEMBER_BUDGET // max(cost, 1)))


def validation_metrics(model: TextClassifier, data: Encoded, label_names: list[str], device: torch.device,
                       dist: distributed.DistContext | None, max_tokens: int | None) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy of `model` on `data` (each rank predicting its share of the
    rows when distributed)."""
    loss_sum = 0.0

    def predict(rows: Encoded) -> torch.Tensor:
        nonlocal loss_sum
        logits = predict_logits(model, rows, device, max_tokens=max_tokens)
        loss_sum += float(F.cross_entropy(logits, rows.labels.long(), reduction="sum"))
        return logits.argmax(1)

    if dist is not None and dist.active:
        pred = dist.predict_sharded(data, predict)
        (loss_sum,) = dist.sum(loss_sum)
    else:
        pred = predict(data)
    report = classification_report(data.labels, pred, label_names)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "loss": loss_sum / max(len(data), 1)}


def score(row: Mapping[str, Any], select_by: str) -> float | None:
    """The epoch's score by `select_by`, higher is better (the loss negated); None without validation."""
    value = row.get(SELECT_KEYS[select_by])
    if value is None:
        return None
    return -float(value) if select_by == "loss" else float(value)


def is_better(score_now: float, best_score: float, best_epoch: int) -> bool:
    """A first epoch is always the best so far; later ones must beat it strictly (ties keep the earlier)."""
    return best_epoch == 0 or score_now > best_score


def should_stop(history: Sequence[Mapping[str, Any]], best_epoch: int, patience: int | None) -> bool:
    """True once `patience` epochs in a row have not beaten the best (never without validation)."""
    if patience is None or not history or history[-1].get("valid_accuracy") is None:
        return False
    return int(history[-1]["epoch"]) - best_epoch >= patience
