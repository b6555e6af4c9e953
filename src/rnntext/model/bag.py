"""The fast baseline: the mean of a text's word embeddings (nn.EmbeddingBag) and a linear layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .base import TextClassifier


class BagClassifier(TextClassifier):
    batch_layout = "flat"

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 64, dropout: float = 0.0,
                 padding_idx: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -0.5, 0.5)
        with torch.no_grad():
            self.embedding.weight[padding_idx].zero_()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> BagClassifier:
        return cls(cfg.vocab_size, cfg.num_classes, cfg.embed_dim, cfg.dropout, cfg.padding_idx)

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.fc(self.dropout(self.embedding(tokens, offsets)))
