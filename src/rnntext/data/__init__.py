"""Data: reading files, AG News, tokenising, vocabulary, encoding once, batching.

The names below are imported on first use: `rnntext.data.tokenizer` and `rnntext.data.vocab` need no
torch, so the torch-free ONNX runtime (rnntext.inference.onnx_predictor) can read texts with them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module of this package that defines it
_LAZY = {
    "Batch": "batching", "epoch_batches": "batching", "eval_batches": "batching", "make_batch": "batching",
    "padded_batches": "batching", "Prepared": "dataset", "Splits": "dataset", "load_splits": "dataset",
    "prepare": "dataset", "Encoded": "encode", "encode_texts": "encode", "Tokenizer": "tokenizer",
    "Vocab": "vocab",
}

if TYPE_CHECKING:
    from .batching import Batch, epoch_batches, eval_batches, make_batch, padded_batches
    from .dataset import Prepared, Splits, load_splits, prepare
    from .encode import Encoded, encode_texts
    from .tokenizer import Tokenizer
    from .vocab import Vocab


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Batch", "Encoded", "Prepared", "Splits", "Tokenizer", "Vocab", "encode_texts",
           "epoch_batches", "eval_batches", "load_splits", "make_batch", "padded_batches",
           "prepare"]
