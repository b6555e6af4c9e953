"""Accuracy, per-class precision / recall / F1, macro-F1 and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """Rows: true class; columns: predicted class."""
    flat = y_true.to(torch.long) * num_classes + y_pred.to(torch.long)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(y_true: Tensor, y_pred: Tensor, label_names: list[str]) -> dict[str, Any]:
    k = len(label_names)
    cm = confusion_matrix(y_true, y_pred, k).to(torch.float64)
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()) if k else 0.0,
        "n": n,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion": cm.to(torch.long).tolist(),
        "labels": list(label_names),
    }


def format_report(report: dict[str, Any]) -> str:
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   ({report['n']} texts)",
             "", f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(7, *(len(n) for n in names))
    lines.append(" " * width + " " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
    for name, row in zip(names, report["confusion"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>{cell}d}" for v in row))
    if report.get("skipped"):  # evaluate_run with --skip-bad-rows
        lines += ["", f"skipped {report['skipped']} bad rows in {report.get('file', 'the data')}"]
    if report.get("ensemble"):  # evaluate_run with several run directories
        lines += ["", f"ensemble of {len(report['ensemble'])} runs: {', '.join(report['ensemble'])}"]
    return "\n".join(lines)
