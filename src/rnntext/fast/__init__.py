"""The CPU fast paths, behind one seam. Each has a capability check and a stock-torch fallback
that gives the same results (tests/test_fast.py runs both, with the fallback forced):

| fast path                                   | module   | fallback                                   |
|---------------------------------------------|----------|--------------------------------------------|
| sparse embedding gradient + direct fused    | adamw.py | torch.optim.AdamW(fused=True), dense grads |
|   AdamW step (+ --lazy-embedding)           |          |   (--lazy-embedding: an error)             |
| overlapped embedding update (2+ threads)    | adamw.py | the same update, one after the other       |
| GRU inference loop from input tables        | gru.py   | nn.GRU (the model's own forward)           |

The private torch calls (torch._fused_adamw_, torch._foreach_add_, a module's _parameters, a
tensor's _version) appear in this package only. The fast paths are used with the torch versions
they were tested on (TESTED_TORCH) when the calls exist; elsewhere, or with RNNTEXT_FAST=0 in the
environment, rnntext runs the fallbacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..model.base import TextClassifier
from ..model.members import MembersClassifier, combine
from ..model.wide import WideClassifier
from . import adamw, gru

TESTED_TORCH = ((2, 13), (2, 14))  # [from, to): the torch releases the fast paths were tested with

T = TypeVar("T")


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def enabled() -> bool:
    """Whether the fast paths may run: not switched off (RNNTEXT_FAST=0), a tested torch, and the
    private calls they make exist."""
    if os.environ.get("RNNTEXT_FAST", "1") == "0":
        return False
    low, high = TESTED_TORCH
    return low <= _torch_version() < high and all(hasattr(torch, f) for f in ("_fused_adamw_", "_foreach_add_"))


# --- training -----------------------------------------------------------------------------------

def overlap_pays(train: TrainConfig, model: TextClassifier) -> bool:
    """--overlap-update, or where it is left open, whether it pays. It moves the embedding's update (a
    pass over the whole table) to a second thread and leaves the rest of the step one thread: that
    wins where the two are comparable, with small batches and large tables, and loses with large
    batches, which want both threads (benchmarks/throughput.py)."""
    if train.overlap_update is not None:
        return train.overlap_update
    return train.batch_size <= 32 and model.embedding.weight.numel() >= 1_000_000


def make_optimizer(model: TextClassifier, train: TrainConfig, device: torch.device, distributed: bool,
                   log: Callable[[str], None]) -> torch.optim.Optimizer:
    """AdamW for `model`: on a CPU, in one process, the fast path (sparse embedding gradient, direct
    fused step, and where asked or where it pays the overlapped embedding update); elsewhere
    torch.optim.AdamW, fused on a CPU or GPU."""
    fused = device.type in ("cpu", "cuda") or None
    if not enabled() or not adamw.use_sparse_embedding(model, device, distributed):
        if train.lazy_embedding and not enabled() and device.type == "cpu" and not distributed:
            raise ConfigError("--lazy-embedding needs rnntext's CPU fast path, which is off here "
                              f"(torch {torch.__version__}, RNNTEXT_FAST={os.environ.get('RNNTEXT_FAST', '1')})")
        return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=fused)
    overlap = (not train.lazy_embedding and torch.get_num_threads() >= 2 and overlap_pays(train, model))
    if overlap:
        log("optimizer: the embedding's update runs on a second thread beside the next batch "
            "(--no-overlap-update: one after the other, the same results)")
    return adamw.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=fused,
                       lazy=train.lazy_embedding, overlap=model.embedding if overlap else None,
                       clipped=bool(train.clip))


def look_ahead(optimizer: torch.optim.Optimizer, batches: Iterable[T]) -> Iterator[T]:
    """The training batches, through the optimiser where it updates ahead of the next batch."""
    if isinstance(optimizer, adamw.AdamW) and optimizer.overlap is not None:
        return optimizer.look_ahead(batches)
    return iter(batches)


def finish_update(optimizer: torch.optim.Optimizer) -> None:
    """Wait for an embedding update still running beside the next batch (look_ahead), before the
    weights are read outside the optimiser."""
    if isinstance(optimizer, adamw.AdamW):
        optimizer.wait()


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """nn.utils.clip_grad_norm_ (torch's own where no gradient is sparse)."""
    return adamw.clip_grad_norm(parameters, max_norm)


# --- inference ----------------------------------------------------------------------------------

Forward = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def inference_forward(model: nn.Module, device: torch.device, precision: str = "fp32") -> Forward:
    """The fastest forward of `model` for inference on `device` (eval mode, no autograd): the GRU
    loop where it applies, else the model itself. What it precomputes from the weights is kept:
    make a new one after the weights change. `precision` "bf16": the GRU loop's recurrence in bfloat16
    (opt-in; elsewhere float32)."""
    if isinstance(model, MembersClassifier):  # each member's fastest forward, their logits averaged
        each = [inference_forward(m, device, precision) for m in model.each()]
        if all(f is m for f, m in zip(each, model.each())):
            return model
        return lambda tokens, lengths, offsets=None: combine([f(tokens, lengths, offsets) for f in each])
    if isinstance(model, WideClassifier):  # the deep part's fastest forward, joined with the wide part
        deep = inference_forward(model.deep, device, precision)
        if deep is model.deep:
            return model
        return lambda tokens, lengths, offsets=None: model.combine(deep(tokens, lengths, offsets), tokens, lengths,
                                                                   offsets)
    if enabled() and gru.supports(model, device):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return gru.GRUInference(model, dtype)  # type: ignore[arg-type]
    return model


def prediction_batch(model: TextClassifier, device: torch.device) -> int:
    """Texts per prediction batch: large for the one-layer GRU loop (it pays there,
    benchmarks/predict.py), the model's own choice otherwise."""
    if isinstance(model, MembersClassifier):
        return prediction_batch(model.each()[0], device)
    if isinstance(model, WideClassifier):
        return prediction_batch(model.deep, device)
    if enabled() and gru.supports(model, device) and len(model.layers) == 1:  # type: ignore[attr-defined]
        return gru.BATCH
    return model.prediction_batch(device)


__all__ = ["TESTED_TORCH", "clip_grad_norm", "enabled", "finish_update", "inference_forward", "look_ahead",
           "make_optimizer", "overlap_pays", "prediction_batch"]


