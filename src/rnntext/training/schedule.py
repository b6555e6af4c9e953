"""The learning-rate schedule of a run (the trainer builds it; checkpoint checks a saved one against it)."""

from __future__ import annotations

import torch

from ..config import RunConfig


def make_schedule(cfg: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    # OneCycleLR divides by (warm-up steps - 1): a run of < 4 steps (a tiny file) keeps a constant LR,
    # and a short one warms up for at least 2 steps.
    if cfg.train.schedule == "onecycle" and total_steps >= 4:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.train.lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps),
            anneal_strategy="cos", cycle_momentum=False, div_factor=10.0, final_div_factor=100.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
