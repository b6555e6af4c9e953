"""Training, top to bottom: prepare data -> build model -> Adam + LR schedule -> epochs over
length-bucketed batches -> validate each epoch, keep the best weights -> test -> run directory."""

from __future__ import annotations

import copy
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig
from ..data import Encoded, Prepared, epoch_batches, eval_batches, make_batch, prepare
from ..model import build_model, uses_flat_batches
from .metrics import classification_report
from .rundir import save_run, state_to_cpu


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        from ..errors import ConfigError

        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    return device


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Encoded, flat: bool, device: torch.device,
                   batch_size: int = 512) -> Tensor:
    """Logits for every row of `data`, in its original order (batches sorted by length)."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data), model.fc.out_features)
    for idx in eval_batches(data.lengths, batch_size):
        b = make_batch(data, idx, flat).to(device)
        out[idx] = model(b.tokens, b.lengths, b.offsets).float().cpu()
    model.train(was_training)
    return out


def evaluate_encoded(model: nn.Module, data: Encoded, label_names: list[str], flat: bool,
                     device: torch.device) -> dict[str, Any]:
    pred = predict_logits(model, data, flat, device).argmax(1)
    return classification_report(data.labels, pred, label_names)


@dataclass
class TrainResult:
    config: RunConfig
    prepared: Prepared
    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None


def make_schedule(cfg: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if cfg.train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.train.lr, total_steps=max(total_steps, 1), pct_start=0.25,
            anneal_strategy="cos", cycle_momentum=False, div_factor=10.0, final_div_factor=100.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class Trainer:
    """One training run. Read top to bottom: __init__ builds data, model, optimiser and schedule;
    fit() runs the epochs; run_epoch() is one pass over the batches; finish() restores the best
    weights, tests and writes the run directory."""

    def __init__(self, cfg: RunConfig, out_dir: str | None = None, *, prepared: Prepared | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None):
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.cfg = cfg = copy.deepcopy(cfg)
        cfg.validate()
        self.out_dir = out_dir
        self.progress = progress
        self.t_start = time.perf_counter()
        set_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)

        # --- data: read, tokenise and encode once
        if prepared is None:
            prepared = prepare(cfg.data, seed=cfg.train.seed, progress=progress)
        self.data = p = prepared
        cfg.model.vocab_size, cfg.model.num_classes = len(p.vocab), len(p.label_names)
        self.log(f"data: {len(p.train)} train, {len(p.valid) if p.valid else 0} valid, "
                 f"{len(p.test) if p.test else 0} test rows; vocabulary {len(p.vocab)}; "
                 f"{len(p.label_names)} classes; {p.seconds:.1f}s")
        for path, n in p.skipped.items():
            self.log(f"skipped {n} bad rows in {path}")

        # --- model, optimiser, schedule
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.flat = uses_flat_batches(cfg.model)
        self.n_params = sum(q.numel() for q in self.model.parameters())
        self.log(f"model: {cfg.model.model}, {self.n_params:,} parameters, device {self.device}")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.steps_per_epoch = len(self.epoch_order(0))
        self.schedule = make_schedule(cfg, self.optimizer, self.steps_per_epoch * cfg.train.epochs)

        # --- progress of the run (what a checkpoint must capture besides the weights)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_epoch = -1.0, 0
        self.best_state: dict[str, Tensor] | None = None

    def epoch_order(self, epoch: int) -> list[Tensor]:
        """The batches (row indices) of `epoch`: a pure function of the seed and the epoch."""
        t = self.cfg.train
        batches = epoch_batches(self.data.train.lengths, t.batch_size, t.seed, epoch, t.bucket)
        return batches[: t.epoch_size] if t.epoch_size else batches

    def train_step(self, idx: Tensor) -> tuple[float, int, int]:
        """One optimiser step on the rows `idx`: (summed loss, correct, rows)."""
        b = make_batch(self.data.train, idx, self.flat).to(self.device)
        logits = self.model(b.tokens, b.lengths, b.offsets)
        loss = F.cross_entropy(logits, b.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip)
        self.optimizer.step()
        self.schedule.step()
        n = len(b)
        return loss.item() * n, int((logits.argmax(1) == b.labels).sum()), n

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        batches = self.epoch_order(epoch)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = _progress(len(batches), f"epoch {epoch + 1}/{self.cfg.train.epochs}", self.progress)
        for step, idx in enumerate(batches):
            loss, ok, n = self.train_step(idx)
            loss_sum, correct, seen = loss_sum + loss, correct + ok, seen + n
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == len(batches) - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "seconds": seconds, "rows_per_second": seen / seconds if seconds else 0.0,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Validate, log, and remember the best weights."""
        p = self.data
        if p.valid is not None:
            row["valid_accuracy"] = evaluate_encoded(self.model, p.valid, p.label_names, self.flat,
                                                     self.device)["accuracy"]
        self.history.append(row)
        self.epoch = row["epoch"]
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                 + (f", valid acc {row['valid_accuracy']:.4f}" if "valid_accuracy" in row else "")
                 + f", {row['seconds']:.1f}s ({row['rows_per_second']:.0f} rows/s)")
        score = row.get("valid_accuracy", float(row["epoch"]))  # without validation, the last epoch wins
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_state = score, row["epoch"], state_to_cpu(self.model)

    def fit(self) -> TrainResult:
        for epoch in range(self.epoch, self.cfg.train.epochs):
            self.end_epoch(self.run_epoch(epoch))
        return self.finish()

    def finish(self) -> TrainResult:
        """Best weights back in the model, test metrics, run directory."""
        assert self.best_state is not None
        p = self.data
        self.model.load_state_dict(self.best_state)
        metrics: dict[str, Any] = {
            "epochs": self.history, "best_epoch": self.best_epoch, "parameters": self.n_params,
            "train_seconds": sum(r["seconds"] for r in self.history), "data_seconds": p.seconds,
            "device": str(self.device), "threads": torch.get_num_threads()}
        if p.test is not None:
            metrics["test"] = evaluate_encoded(self.model, p.test, p.label_names, self.flat, self.device)
            self.log(f"test accuracy {metrics['test']['accuracy']:.4f} (best epoch {self.best_epoch}), "
                     f"macro-F1 {metrics['test']['macro_f1']:.4f}")
        metrics["total_seconds"] = time.perf_counter() - self.t_start
        if self.out_dir is not None:
            save_run(self.out_dir, self.cfg, p.vocab, p.label_names, self.best_state, metrics)
            self.log(f"saved run to {self.out_dir}")
        return TrainResult(self.cfg, p, self.model, metrics, self.out_dir)


def train(cfg: RunConfig, out_dir: str | None = None, *, prepared: Prepared | None = None,
          progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a model as `cfg` says; with `out_dir`, write the run directory there."""
    return Trainer(cfg, out_dir, prepared=prepared, progress=progress, log=log).fit()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)
