"""The model interface: all that the trainer, the optimiser, the predictor and ensembles know of a
model. A model family is a `TextClassifier` subclass registered under a `--model` name in
registry.py; adding one touches nothing outside this package."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import ModelConfig

# How a model takes a batch (data/batching.py builds both):
#   "padded": tokens [B, T] (<pad> = 0 past each length), lengths [B]
#   "flat":   tokens [sum of lengths], lengths [B], offsets [B] (where each text starts), as nn.EmbeddingBag takes them
BATCH_LAYOUTS = ("padded", "flat")


class TextClassifier(nn.Module):
    """A classifier of token-id sequences into `num_classes` classes.

    Subclasses set `embedding` (the word table: pretrained vectors are copied into it, and on a CPU
    the optimiser may give it sparse gradients), build themselves `from_config`, and implement
    `forward(tokens, lengths, offsets) -> logits [B, num_classes]`."""

    name: ClassVar[str] = ""
    batch_layout: ClassVar[str] = "padded"
    embedding: nn.Embedding | nn.EmbeddingBag
    num_classes: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TextClassifier:
        raise NotImplementedError

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def packs_on(self, device: torch.device) -> bool:
        """Whether the model runs packed sequences on `device` (only recurrent models may)."""
        return False

    def prediction_batch(self, device: torch.device) -> int:
        """Texts per batch when predicting (the inference fast paths may choose larger ones)."""
        return 256

    def load_embeddings(self, weight: Tensor, freeze: bool) -> None:
        """Start the word table from pretrained vectors [vocab, embed]; keep them fixed if `freeze`."""
        emb = self.embedding.weight
        if tuple(weight.shape) != tuple(emb.shape):
            raise ValueError(f"vectors of shape {tuple(weight.shape)} for an embedding of {tuple(emb.shape)}")
        with torch.no_grad():
            emb.copy_(weight.to(emb.dtype))
        emb.requires_grad_(not freeze)
