"""Calibrated confidence: temperature scaling (Guo et al., 2017) and the expected calibration error.

After training, one scalar T is fitted on the validation split: the class probabilities become
softmax(logits / T), with T chosen to minimise the negative log-likelihood of the validation labels.
Dividing every logit by the same T > 0 changes no prediction (the order of the classes is kept), only
how sure the model says it is. The run keeps T in RUN_DIR/calibration.json; evaluate, predict, the
Python API and the server apply it (`--no-calibration`: the raw probabilities). A run without that
file (older runs, runs without validation data) has T = 1: its probabilities are the raw ones, bit for bit.

The fit: NLL(1/T) is convex in 1/T (a log-sum-exp of linear functions minus a linear one), so L-BFGS on
log T (which keeps T positive) finds its one minimum; a fit that does not lower the NLL keeps T = 1."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CheckpointError
from .logits import predict_logits

CALIBRATION = "calibration.json"
ECE_BINS = 15
# T outside these is not a calibration but a broken fit (or logits of a model that learnt nothing)
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), in float64."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises nll(logits, labels, T) (L-BFGS on log T, float64, deterministic); 1.0 when
    the fit does not lower the NLL or leaves [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    z, y = logits.detach().double(), labels.long()
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not (math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE) or nll(z, y, t) >= nll(z, y):
        return 1.0
    return t


def reliability(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width bins of the confidence (the largest class probability) over (0, 1]: for each, the rows
    in it, their mean confidence and their accuracy (0.0 for an empty bin)."""
    conf, pred = probs.double().max(1)
    correct = (pred == labels.long()).double()
    # bin k holds (k/bins, (k+1)/bins]; a confidence of exactly 1 goes to the last bin
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    correct_sum = torch.bincount(idx, weights=correct, minlength=bins)
    safe = count.clamp(min=1)
    return [{"count": int(count[k]), "confidence": float(conf_sum[k] / safe[k]),
             "accuracy": float(correct_sum[k] / safe[k])} for k in range(bins)]


def ece(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over the bins of |accuracy - mean confidence| x the bin's share of rows."""
    n = len(labels)
    if n == 0:
        return 0.0
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, labels, bins))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T); T == 1 is the plain softmax, bit for bit (no division at all)."""
    return (logits if temperature == 1.0 else logits / temperature).softmax(-1)


def calibrate(logits: Tensor, labels: Tensor, split: str = "validation") -> dict[str, Any]:
    """Fit T on (`logits`, `labels`) and say what it changed: calibration.json's content."""
    t = fit_temperature(logits, labels)
    before, after = apply_temperature(logits.double(), 1.0), apply_temperature(logits.double(), t)
    return {"method": "temperature", "temperature": t, "fit_on": split, "rows": len(labels),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t),
            "ece_before": ece(before, labels), "ece_after": ece(after, labels), "ece_bins": ECE_BINS}


def read_temperature(raw: Any, path: str) -> float:
    """T from calibration.json's parsed content; anything but a finite T in range is a one-line error."""
    t = raw.get("temperature") if isinstance(raw, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
            or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
        raise CheckpointError(f"expected an object with a temperature in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                              f"got {str(raw)[:80]}", path)
    return float(t)


def fit_on_validation(model: Any, valid: Any, device: torch.device, max_tokens: int | None,
                      log: Any) -> dict[str, Any] | None:
    """calibrate() on the model's logits for the validation rows (`valid`: Encoded); None, said in `log`,
    where there is nothing to fit: no validation data, or multi-label data (sigmoid outputs, one
    threshold per label instead)."""
    if valid is None or len(valid) == 0:
        log("calibration: none (no validation data to fit a temperature on)")
        return None
    if valid.labels.dim() != 1:
        log("calibration: none for multi-label runs (their per-label thresholds are chosen on validation)")
        return None
    result = calibrate(predict_logits(model, valid, device, max_tokens=max_tokens), valid.labels)
    log(f"calibration: temperature {result['temperature']:.3f} (validation NLL {result['nll_before']:.4f} -> "
        f"{result['nll_after']:.4f}, ECE {result['ece_before']:.4f} -> {result['ece_after']:.4f})")
    return result


def calibration_report(raw: Tensor, calibrated: Tensor, labels: Tensor, temperatures: list[float],
                       applied: bool) -> dict[str, Any]:
    """What `evaluate` says of the calibration on its data: the temperature(s), ECE and NLL of the raw
    probabilities (before) and of the calibrated ones (after), and both reliability diagrams' bins.
    `applied`: whether the report's other metrics come from the calibrated probabilities."""
    y = labels.long()

    def probs_nll(p: Tensor) -> float:
        picked = p.double()[torch.arange(len(y)), y].clamp(min=1e-300)
        return float(-picked.log().mean()) if len(y) else 0.0

    return {"temperature": temperatures[0] if len(temperatures) == 1 else temperatures, "applied": applied,
            "bins": ECE_BINS, "ece_before": ece(raw, y), "ece_after": ece(calibrated, y),
            "nll_before": probs_nll(raw), "nll_after": probs_nll(calibrated),
            "reliability_before": reliability(raw, y), "reliability_after": reliability(calibrated, y)}


def selective_report(probs: Tensor, labels: Tensor, min_confidence: float) -> dict[str, Any]:
    """With --min-confidence P: how many texts get a label (top probability >= P) and how accurate those are."""
    top, pred = probs.max(1)
    answered = top >= min_confidence
    n, k = len(labels), int(answered.sum())
    correct = int((pred[answered] == labels.long()[answered]).sum())
    return {"min_confidence": min_confidence, "answered": k, "abstained": n - k,
            "coverage": k / n if n else 0.0, "accuracy_answered": correct / k if k else 0.0}
