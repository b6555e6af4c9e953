"""An ensemble: N runs of one configuration with seeds seed, seed+1, ..., each an ordinary run
directory (OUT/member-K). Each member also draws its own validation split, so each trains on a
slightly different part of the data. OUT/ensemble.json lists the members and holds the ensemble's
test metrics; `rnntext evaluate | predict | serve OUT` load the members and average their class
probabilities (serving/predictor.py)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data.encode import Encoded
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json
from ..model import uses_flat_batches
from .checkpoint import ensure_writable
from .metrics import classification_report
from .trainer import TrainResult, predict_logits, train

ENSEMBLE = "ensemble.json"
FORMAT = 1


def member_dirs(path: str | Path) -> list[Path] | None:
    """The member run directories of the ensemble in `path`, or None if `path` is not an ensemble."""
    path = Path(path)
    file = path / ENSEMBLE
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        members = raw["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ValueError("'members' must be a non-empty list of directory names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"not a readable ensemble file ({e})", str(file)) from None
    if raw.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"ensemble format {raw['format']} is newer than this rnntext reads ({FORMAT})",
                              str(file))
    return [path / m for m in members]


def train_ensemble(cfg: RunConfig, members: int, out_dir: str | None = None, *, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `members` runs of `cfg` (seeds cfg.train.seed + k); returns the ensemble's metrics and,
    with `out_dir`, writes the members and ensemble.json there."""
    if members < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {members}")
    if out_dir is not None:
        ensure_writable(out_dir)
    t0 = time.perf_counter()
    results: list[TrainResult] = []
    for k in range(members):
        member = copy.deepcopy(cfg)
        member.train.seed = cfg.train.seed + k
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


def mean_probabilities(members: Iterable[tuple[nn.Module, Encoded, bool]], shape: tuple[int, int],
                       device: torch.device, batch_size: int | None = 256, max_tokens: int | None = None) -> Tensor:
    """[texts, classes] mean of the members' class probabilities; each member is (model, the texts
    encoded with its own vocabulary, whether it takes flat batches). `batch_size` None: each model's
    prediction_batch() (256 for models without one)."""
    total, n = torch.zeros(shape), 0
    for model, enc, flat in members:
        size = batch_size or getattr(model, "prediction_batch", lambda _: 256)(device)
        total += predict_logits(model, enc, flat, device, size, max_tokens).softmax(1)
        n += 1
    return total / n


def _ensemble_test(results: list[TrainResult]) -> dict[str, Any]:
    """Test metrics of the mean of the members' class probabilities. Every member read the same test
    file, in the same order, each with its own vocabulary."""
    first = results[0].prepared
    for r in results:
        if r.prepared.label_names != first.label_names or not torch.equal(r.prepared.test.labels, first.test.labels):
            raise ConfigError("ensemble members disagree on the labels of the test set")
    device = next(results[0].model.parameters()).device
    probs = mean_probabilities(((r.model, r.prepared.test, uses_flat_batches(r.config.model)) for r in results),
                               (len(first.test), len(first.label_names)), device)
    return classification_report(first.test.labels, probs.argmax(1), first.label_names)
