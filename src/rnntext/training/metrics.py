"""Accuracy, per-class precision / recall / F1, macro-F1 and the confusion matrix.

A dense confusion matrix grows with the square of the class count (10,000 classes: 10^8 cells, gigabytes
as JSON), so beyond DENSE_CONFUSION_MAX classes the report keeps the most frequent confusions instead
(`confusions`: [true, predicted, count], largest first); memory then grows with the texts, not the classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

DENSE_CONFUSION_MAX = 200  # classes up to which the report holds the whole matrix
TOP_CONFUSIONS = 100  # confusions kept beyond it


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """Rows: true class; columns: predicted class."""
    flat = y_true.to(torch.long) * num_classes + y_pred.to(torch.long)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(y_true: Tensor, y_pred: Tensor, label_names: list[str]) -> dict[str, Any]:
    k = len(label_names)
    y_true, y_pred = y_true.to(torch.long), y_pred.to(torch.long)
    tp = torch.bincount(y_true[y_true == y_pred], minlength=k).to(torch.float64)
    predicted = torch.bincount(y_pred, minlength=k).to(torch.float64)
    actual = torch.bincount(y_true, minlength=k).to(torch.float64)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    n = len(y_true)
    report: dict[str, Any] = {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()) if k else 0.0,
        "n": n,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "labels": list(label_names),
    }
    if k <= DENSE_CONFUSION_MAX:
        report["confusion"] = confusion_matrix(y_true, y_pred, k).tolist()
    else:
        wrong = y_true != y_pred
        pairs, counts = torch.unique(y_true[wrong] * k + y_pred[wrong], return_counts=True)
        top = counts.argsort(descending=True, stable=True)[:TOP_CONFUSIONS]
        report["confusions"] = [[label_names[int(p) // k], label_names[int(p) % k], int(c)]
                                for p, c in zip(pairs[top], counts[top])]
    return report


def format_report(report: dict[str, Any]) -> str:
    if report.get("multi_label"):  # sets of labels: micro/macro F1, subset accuracy, Hamming loss
        from .multilabel import format_multilabel_report

        return format_multilabel_report(report)
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   ({report['n']} texts)",
             "", f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d}")
    if "confusion" in report:
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        cell = max(7, *(len(n) for n in names))
        lines.append(" " * width + " " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
        for name, row in zip(names, report["confusion"]):
            lines.append(f"{name:<{width}} " + " ".join(f"{v:>{cell}d}" for v in row))
    elif report.get("confusions"):
        lines += ["", f"most frequent confusions ({len(names)} classes: too many for a matrix)",
                  f"{'true':<{width}} {'predicted':<{width}} {'count':>8}"]
        lines += [f"{t:<{width}} {p:<{width}} {c:8d}" for t, p, c in report["confusions"]]
    cal = report.get("calibration")
    if cal:  # evaluate_run: training/calibration.py
        t = cal["temperature"]
        shown = f"{t:.3f}" if isinstance(t, float) else ", ".join(f"{x:.3f}" for x in t)
        applied = "applied" if cal["applied"] else "not applied: --no-calibration"
        lines += ["", f"calibration: temperature {shown} ({applied}); ECE ({cal['bins']} bins) "
                      f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, NLL {cal['nll_before']:.4f} -> "
                      f"{cal['nll_after']:.4f} (raw -> calibrated)"]
    sel = report.get("selective")
    if sel:  # evaluate_run with --min-confidence
        lines.append(f"min confidence {sel['min_confidence']:g}: {sel['answered']} texts labelled "
                     f"({sel['coverage']:.1%}), {sel['abstained']} abstained; accuracy on the labelled "
                     f"{sel['accuracy_answered']:.4f}")
    if report.get("skipped"):  # evaluate_run with --skip-bad-rows
        lines += ["", f"skipped {report['skipped']} bad rows in {report.get('file', 'the data')}"]
    if report.get("ensemble"):  # evaluate_run with several run directories
        lines += ["", f"ensemble of {len(report['ensemble'])} runs: {', '.join(report['ensemble'])}"]
    return "\n".join(lines)
