"""Training an ensemble: N runs of one configuration with seeds seed, seed+1, ..., each an ordinary
run directory (OUT/member-K). Each member also draws its own validation split, so each trains on a
slightly different part of the data. OUT/ensemble.json lists the members and holds the ensemble's
test metrics; `rnntext evaluate | predict | serve OUT` load the members and average their class
probabilities (inference/ensemble.py)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..io import atomic_write_json
from .checkpoint import check_out_dir, check_run_target, ensure_writable, run_lock
from .logits import mean_probabilities
from .metrics import classification_report
from .multilabel import decide, multilabel_report
from .trainer import TrainResult, train

ENSEMBLE = "ensemble.json"
FORMAT = 1
MAX_MEMBERS = 64  # members of one ensemble (each is loaded whole to predict); docs/guides/limits.md


def train_ensemble(cfg: RunConfig, members: int, out_dir: str | None = None, *, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `members` runs of `cfg` (seeds cfg.train.seed + k); returns the ensemble's metrics and,
    with `out_dir`, writes the members and ensemble.json there."""
    if members < 2 or members > MAX_MEMBERS:
        raise ConfigError(f"an ensemble needs at least 2 members and at most {MAX_MEMBERS}, got {members}")
    if out_dir is None:
        return _train_ensemble(cfg, members, None, progress, log)
    check_out_dir(out_dir)
    check_run_target(out_dir, members=True)
    with run_lock(out_dir):  # the whole ensemble: a second `--ensemble N --out OUT` fails at once
        ensure_writable(out_dir)
        return _train_ensemble(cfg, members, out_dir, progress, log)


def _train_ensemble(cfg: RunConfig, members: int, out_dir: str | None, progress: bool,
                    log: Callable[[str], None] | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    results: list[TrainResult] = []
    for k in range(members):
        member = copy.deepcopy(cfg)
        member.train.seed = cfg.train.seed + k
        if member.model.members is None:  # the ensemble is the runs: one model each unless --members says
            member.model.members = 1
        if log is not None:
            log(f"ensemble member {k + 1}/{members} (seed {member.train.seed})")
        sub = None if out_dir is None else str(Path(out_dir) / f"member-{k}")
        results.append(train(member, sub, progress=progress, log=log))
    metrics: dict[str, Any] = {
        "members": [{"seed": r.config.train.seed, "test_accuracy": r.metrics.get("test", {}).get("accuracy"),
                     "train_seconds": r.metrics["train_seconds"], "parameters": r.metrics["parameters"]}
                    for r in results],
        "train_seconds": sum(r.metrics["train_seconds"] for r in results),
    }
    if all(r.prepared.test is not None for r in results):
        metrics["test"] = _ensemble_test(results)
    metrics["total_seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / ENSEMBLE, {"format": FORMAT, "members": [
            f"member-{k}" for k in range(members)], "metrics": metrics})
    if log is not None and "test" in metrics:
        log(f"ensemble of {members}: test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 "
            f"{metrics['test']['macro_f1']:.4f} (members: "
            + ", ".join(f"{m['test_accuracy']:.4f}" for m in metrics["members"]) + ")")
    return metrics


def _ensemble_test(results: list[TrainResult]) -> dict[str, Any]:
    """Test metrics of the mean of the members' class probabilities. Every member read the same test
    file, in the same order, each with its own vocabulary."""
    first = results[0].prepared
    for r in results:
        if r.prepared.label_names != first.label_names or not torch.equal(r.prepared.test.labels, first.test.labels):
            raise ConfigError("ensemble members disagree on the labels of the test set")
    device = next(results[0].model.parameters()).device
    multi_label = first.test.labels.dim() == 2  # the mean of the sigmoids, at the mean of the members' thresholds
    # each member's own temperature (training/calibration.py), as the Predictor applies them to the ensemble
    temperatures = [r.metrics.get("calibration", {}).get("temperature", 1.0) for r in results]
    probs = mean_probabilities(((r.model, r.prepared.test, None) for r in results),
                               (len(first.test), len(first.label_names)), device, multi_label=multi_label,
                               temperatures=None if multi_label else temperatures)
    if multi_label:
        each = [[r.metrics["thresholds"][name] for name in first.label_names] for r in results]
        thresholds = [sum(t) / len(t) for t in zip(*each)]
        return multilabel_report(first.test.labels, decide(probs, thresholds), first.label_names, thresholds)
    return classification_report(first.test.labels, probs.argmax(1), first.label_names)
