"""Data: reading files, AG News, tokenising, vocabulary, encoding once, batching."""

from .batching import Batch, epoch_batches, eval_batches, make_batch, padded_batches
from .dataset import Prepared, Splits, load_splits, prepare
from .encode import Encoded, encode_texts
from .tokenizer import Tokenizer
from .vocab import Vocab

__all__ = ["Batch", "Encoded", "Prepared", "Splits", "Tokenizer", "Vocab", "encode_texts",
           "epoch_batches", "eval_batches", "load_splits", "make_batch", "padded_batches",
           "prepare"]
