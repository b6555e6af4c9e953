"""--class-weight: one weight per class in the training loss, so that the rows of a rare class count for
more than their number.

`balanced` is scikit-learn's compute_class_weight('balanced'): n_rows / (n_classes * rows of the class),
from the training rows (after the validation split). Explicit NAME=WEIGHT pairs name classes of the
training data; a class left out weighs 1. The loss is then cross-entropy's weighted mean (the sum of
weight x loss over the batch, divided by the batch's summed weights), as torch's `weight=` computes it."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import parse_class_weight
from ..errors import ConfigError


def balanced_weights(labels: Tensor, num_classes: int) -> Tensor:
    """n / (k * count_c) for each class c of k (float64); a class without rows has no weight: an error."""
    counts = torch.bincount(labels.to(torch.long), minlength=num_classes).to(torch.float64)
    return len(labels) / (num_classes * counts)


def class_weights(spec: str | None, labels: Tensor, label_names: list[str],
                  flag: str = "--class-weight") -> Tensor | None:
    """The weights `spec` (train.class_weight) gives the classes `label_names` (float32, in class order),
    or None without one (the loss is then the plain mean, bit for bit as before)."""
    if spec is None:
        return None
    if labels.dim() != 1:  # multi-hot rows: each label's loss is its own binary one
        raise ConfigError(f"{flag} is for single-label data, not --multi-label")
    parsed = parse_class_weight(spec)
    if parsed == "balanced":
        counts = torch.bincount(labels.to(torch.long), minlength=len(label_names))
        empty = [label_names[i] for i in range(len(label_names)) if counts[i] == 0]
        if empty:
            raise ConfigError(f"{flag} balanced: class {empty[0]!r} has no training rows to weigh")
        return balanced_weights(labels, len(label_names)).to(torch.float32)
    assert isinstance(parsed, dict)
    unknown = [name for name in parsed if name not in label_names]
    if unknown:
        raise ConfigError(f"{flag}: {unknown[0]!r} is not a class of the training data "
                          f"(classes: {', '.join(label_names[:20])})")
    return torch.tensor([parsed.get(name, 1.0) for name in label_names], dtype=torch.float32)


def describe(weights: Tensor, label_names: list[str], limit: int = 10) -> str:
    """`class weights: neg 0.52, pos 10.50` (the first `limit` classes)."""
    shown = ", ".join(f"{name} {float(w):.4g}" for name, w in zip(label_names[:limit], weights[:limit]))
    return f"class weights: {shown}" + (f", ... ({len(label_names)} classes)" if len(label_names) > limit else "")
