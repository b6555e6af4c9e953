"""A model's logits for encoded texts, batch by batch, through the inference fast path; an
ensemble's mean class probabilities."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .. import fast
from ..config import MAX_BATCH_TOKENS
from ..data import Encoded, eval_batches, make_batch
from ..model.base import TextClassifier
from .device import adapt_threads


@torch.inference_mode()
def predict_logits(model: TextClassifier, data: Encoded, device: torch.device, batch_size: int = 512,
                   max_tokens: int | None = MAX_BATCH_TOKENS, forward: fast.Forward | None = None) -> Tensor:
    """Logits for every row of `data`, in its original order (batches sorted by length; see
    eval_batches). `max_tokens`: the memory bound, padded tokens (rows x longest text) per model
    call; a longer text is cut to its first max_tokens tokens (None: no bound). `forward`: a kept
    fast.inference_forward(model, device) (a Predictor's); by default one made for this call."""
    if max_tokens is not None:
        data = data.truncated(max_tokens)
    was_training = model.training
    model.eval()
    run = forward or fast.inference_forward(model, device)
    flat = model.batch_layout == "flat"
    out = torch.empty(len(data), model.num_classes)
    for idx in eval_batches(data.lengths, batch_size, max_tokens):
        b = make_batch(data, idx, flat).to(device)
        out[idx] = run(b.tokens, b.lengths, b.offsets).float().cpu()
        adapt_threads()  # on the thread that runs the model: its threads follow the cores others leave free
    model.train(was_training)
    return out


def mean_probabilities(members: Iterable[tuple[TextClassifier, Encoded, fast.Forward | None]],
                       shape: tuple[int, int], device: torch.device, batch_size: int | None = 256,
                       max_tokens: int | None = MAX_BATCH_TOKENS, multi_label: bool = False,
                       temperatures: Sequence[float] | None = None) -> Tensor:
    """[texts, classes] mean of the members' class probabilities; each member is (model, the texts
    encoded with its own vocabulary, its kept inference forward or None). `batch_size` None: each
    model's prediction batch (fast.prediction_batch). `multi_label`: each label's sigmoid, not the softmax.
    `temperatures`: one per member, softmax(logits / T) (training/calibration.py); None: all 1."""
    total, n = torch.zeros(shape), 0
    for k, (model, enc, forward) in enumerate(members):
        size = batch_size or fast.prediction_batch(model, device)
        logits = predict_logits(model, enc, device, size, max_tokens, forward)
        t = temperatures[k] if temperatures else 1.0
        if multi_label:
            total += logits.sigmoid()
        else:  # T == 1: the plain softmax, bit for bit
            total += (logits if t == 1.0 else logits / t).softmax(1)
        n += 1
    return total / n
