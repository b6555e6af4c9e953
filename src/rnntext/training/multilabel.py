"""Multi-label training and metrics (--multi-label): the model is unchanged (it emits one logit per label);
only the loss and the decision differ.

- loss: binary cross-entropy on each label's logit (BCEWithLogits), the mean over rows and labels;
- decision: a label is predicted where its sigmoid probability reaches its threshold. One threshold per
  label is chosen on the validation data after training (the one that maximises that label's F1), saved in
  the run directory (thresholds.json) and used by evaluate, predict, the API and the server; a label that
  never occurs in the validation data keeps 0.5, and so does every label of a run without validation;
- metrics: micro- and macro-averaged precision / recall / F1, per-label precision / recall / F1 / support,
  subset accuracy (the whole set right) and Hamming loss (the fraction of wrong label decisions)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import MAX_BATCH_TOKENS
from ..data import Encoded
from ..errors import CheckpointError
from ..io import atomic_write_json
from ..model.base import TextClassifier
from . import distributed
from .logits import predict_logits

THRESHOLDS = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
MAX_THRESHOLDS_BYTES = 16 * 2**20


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The mean binary cross-entropy of `logits` [rows, labels] against multi-hot `targets`."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def hits(logits: Tensor, targets: Tensor) -> int:
    """The rows whose whole label set is right at threshold 0.5 (logit 0): the training progress's
    "accuracy"."""
    return int(((logits > 0) == (targets > 0.5)).all(1).sum())


def decide(probs: Tensor, thresholds: Sequence[float] | Tensor | None) -> Tensor:
    """[rows, labels] bool: each label's probability at or above its threshold (0.5 where None), compared
    in float64 as Python compares them (inference.prediction.label_set decides alike)."""
    t = torch.full((probs.shape[1],), DEFAULT_THRESHOLD, dtype=torch.float64) if thresholds is None else \
        torch.as_tensor(thresholds, dtype=torch.float64)
    return probs.double() >= t


def fit_thresholds(probs: Tensor, targets: Tensor) -> list[float]:
    """For each label, the threshold that maximises its F1 on (probs, targets) [rows, labels]: half-way
    between the lowest probability predicted positive and the next one below it, among all cuts of the
    probabilities sorted high to low (the first of equal F1s: the highest threshold). A label without a
    positive row keeps DEFAULT_THRESHOLD."""
    out = []
    for j in range(probs.shape[1]):
        p, y = probs[:, j].double(), targets[:, j] > 0.5
        positives = int(y.sum())
        if positives == 0 or len(p) == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        order = torch.argsort(p, descending=True, stable=True)
        s, hit = p[order], y[order].double()
        tp = torch.cumsum(hit, 0)
        k = torch.arange(1, len(s) + 1, dtype=torch.float64)
        f1 = 2 * tp / (k + positives)
        # a cut only between distinct probabilities (equal ones are predicted alike)
        cut = torch.ones(len(s), dtype=torch.bool)
        cut[:-1] = s[:-1] > s[1:]
        f1 = torch.where(cut, f1, torch.full_like(f1, -1.0))
        best = int(torch.argmax(f1))  # the first maximum: the fewest rows predicted positive
        below = float(s[best + 1]) if best + 1 < len(s) else 0.0
        out.append((float(s[best]) + below) / 2)
    return out


def multilabel_report(y_true: Tensor, y_pred: Tensor, label_names: Sequence[str],
                      thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """The metrics of predicted label sets `y_pred` against `y_true` ([rows, labels], bool or 0/1)."""
    t, p = y_true > 0.5, y_pred > 0.5 if y_pred.is_floating_point() else y_pred.bool()
    n, k = t.shape
    tp = (t & p).sum(0).double()
    predicted, actual = p.sum(0).double(), t.sum(0).double()

    def ratio(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))

    precision, recall = ratio(tp, predicted), ratio(tp, actual)
    f1 = ratio(2 * tp, predicted + actual)
    tp_all, pred_all, true_all = float(tp.sum()), float(predicted.sum()), float(actual.sum())
    report: dict[str, Any] = {
        "multi_label": True,
        "accuracy": float((t == p).all(1).double().mean()) if n else 0.0,  # subset accuracy
        "subset_accuracy": float((t == p).all(1).double().mean()) if n else 0.0,
        "hamming_loss": float((t != p).double().mean()) if n * k else 0.0,
        "micro_precision": tp_all / pred_all if pred_all else 0.0,
        "micro_recall": tp_all / true_all if true_all else 0.0,
        "micro_f1": 2 * tp_all / (pred_all + true_all) if pred_all + true_all else 0.0,
        "macro_f1": float(f1.mean()) if k else 0.0,
        "n": n,
        "labels_per_text": float(t.sum(1).double().mean()) if n else 0.0,
        "predicted_labels_per_text": float(p.sum(1).double().mean()) if n else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "labels": list(label_names),
    }
    if thresholds is not None:
        report["thresholds"] = dict(zip(label_names, (float(x) for x in thresholds)))
    return report


def format_multilabel_report(report: dict[str, Any]) -> str:
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"micro-F1 {report['micro_f1']:.4f}   macro-F1 {report['macro_f1']:.4f}   subset accuracy "
             f"{report['subset_accuracy']:.4f}   Hamming loss {report['hamming_loss']:.4f}   ({report['n']} texts, "
             f"{report['labels_per_text']:.2f} labels per text, {report['predicted_labels_per_text']:.2f} predicted)",
             f"micro precision {report['micro_precision']:.4f}   micro recall {report['micro_recall']:.4f}", "",
             f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8} {'threshold':>9}"]
    thresholds = report.get("thresholds", {})
    for name in names:
        c = report["per_class"][name]
        t = f"{thresholds[name]:9.4f}" if name in thresholds else f"{'':9}"
        lines.append(f"{name:<{width}} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d} {t}")
    if report.get("skipped"):
        lines += ["", f"skipped {report['skipped']} bad rows in {report.get('file', 'the data')}"]
    if report.get("ensemble"):
        lines += ["", f"ensemble of {len(report['ensemble'])} runs: {', '.join(report['ensemble'])} (mean of their "
                  "sigmoid probabilities, mean of their thresholds)"]
    return "\n".join(lines)


def probabilities(model: TextClassifier, data: Encoded, device: torch.device,
                  max_tokens: int | None = MAX_BATCH_TOKENS) -> Tensor:
    """[rows, labels] sigmoid probabilities of `model` on `data`."""
    return predict_logits(model, data, device, max_tokens=max_tokens).sigmoid()


def evaluate_multilabel(model: TextClassifier, data: Encoded, label_names: list[str], device: torch.device,
                        dist: distributed.DistContext | None = None, max_tokens: int | None = MAX_BATCH_TOKENS,
                        thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """multilabel_report of `model` on `data` (multi-hot labels) at `thresholds` (default 0.5 each); with a
    distributed `dist`, every rank predicts its share of the rows."""

    def predict(d: Encoded) -> Tensor:
        return decide(probabilities(model, d, device, max_tokens), thresholds)

    pred = dist.predict_sharded(data, predict, width=len(label_names)) if dist is not None else predict(data)
    return multilabel_report(data.labels, pred.bool(), label_names, thresholds)


def validation_metrics(model: TextClassifier, data: Encoded, label_names: list[str], device: torch.device,
                       dist: distributed.DistContext | None, max_tokens: int | None) -> dict[str, float]:
    """An epoch's validation figures at threshold 0.5 (the thresholds are chosen once, after training):
    subset accuracy, macro- and micro-F1, and the mean binary cross-entropy (the training loss's), each
    rank predicting its share of the rows when distributed (training/stopping.py: --select-by)."""
    loss_sum = 0.0

    def predict(rows: Encoded) -> Tensor:
        nonlocal loss_sum
        logits = predict_logits(model, rows, device, max_tokens=max_tokens)
        loss_sum += float(F.binary_cross_entropy_with_logits(logits, rows.labels.to(logits.dtype), reduction="sum"))
        return decide(logits.sigmoid(), None)

    if dist is not None and dist.active:
        pred = dist.predict_sharded(data, predict, width=len(label_names))
        (loss_sum,) = dist.sum(loss_sum)
    else:
        pred = predict(data)
    report = multilabel_report(data.labels, pred.bool(), label_names)
    cells = max(len(data) * len(label_names), 1)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "micro_f1": report["micro_f1"],
            "loss": loss_sum / cells}


def choose_thresholds(model: TextClassifier, valid: Encoded | None, num_labels: int, device: torch.device,
                      max_tokens: int | None = MAX_BATCH_TOKENS) -> list[float]:
    """Each label's threshold (fit_thresholds) on the validation data; 0.5 each without validation. Every
    process of a distributed run computes the same (the whole validation set, the same weights)."""
    if valid is None or len(valid) == 0:
        return [DEFAULT_THRESHOLD] * num_labels
    return fit_thresholds(probabilities(model, valid, device, max_tokens), valid.labels)


# --- thresholds.json ----------------------------------------------------------------------------------


def save_thresholds(run_dir: str | Path, label_names: Sequence[str], thresholds: Sequence[float],
                    chosen_on: int) -> None:
    """RUN_DIR/thresholds.json: each label's threshold, and how many validation rows chose them."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / THRESHOLDS, {"thresholds": dict(zip(label_names, (float(x) for x in thresholds))),
                                          "validation_rows": chosen_on})


def load_thresholds(run_dir: str | Path, label_names: Sequence[str]) -> list[float]:
    """The thresholds of a multi-label run, in label order; every problem is a one-line CheckpointError
    naming thresholds.json."""
    path = Path(run_dir) / THRESHOLDS
    where = str(path)
    if not path.is_file():
        raise CheckpointError("missing file: a multi-label run keeps its labels' thresholds here", where)
    try:
        if path.stat().st_size > MAX_THRESHOLDS_BYTES:
            raise ValueError("larger than a thresholds file can be")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"not a readable thresholds file ({str(e)[:200]})", where) from None
    table = raw.get("thresholds") if isinstance(raw, dict) else None
    if not isinstance(table, dict):
        raise CheckpointError("expected an object with 'thresholds': {label: threshold}", where)
    if set(table) != set(label_names):
        missing, extra = sorted(set(label_names) - set(table)), sorted(set(table) - set(label_names))
        raise CheckpointError(f"the thresholds do not match labels.json (missing {missing[:3]}, unexpected "
                              f"{extra[:3]})", where)
    out = []
    for name in label_names:
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise CheckpointError(f"the threshold of {name[:60]!r} must be a number in [0, 1], got "
                                  f"{json.dumps(value)[:40]}", where)
        out.append(float(value))
    return out
