"""Kim (2014)'s convolutional sentence classifier: filters of widths 3, 4 and 5 over the word
embeddings, ReLU, max over time, dropout, a linear layer. A strong small-data baseline.

`hidden_dim` is the number of feature maps per width (Kim: 100, the `kim-cnn` preset) and `dropout`
is applied to the pooled features (Kim: 0.5). Padding never changes a result: a window may start
only where it ends within the text (a text shorter than a filter gets one window, completed by
<pad>, whose vector is zero), so the same text gives the same logits in any batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .base import TextClassifier


class CNNClassifier(TextClassifier):
    widths = (3, 4, 5)

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 128, maps: int = 100,
                 dropout: float = 0.5, embed_dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.num_classes, self.padding_idx = num_classes, padding_idx
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, w) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(maps * len(self.widths), num_classes)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CNNClassifier:
        return cls(cfg.vocab_size, cfg.num_classes, cfg.embed_dim, cfg.hidden_dim, cfg.dropout, cfg.embed_dropout,
                   cfg.padding_idx)

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        widest = max(self.widths)
        if tokens.shape[1] < widest:  # room for one window of every width
            tokens = F.pad(tokens, (0, widest - tokens.shape[1]), value=self.padding_idx)
        x = self.embed_dropout(self.embedding(tokens)).transpose(1, 2)  # [B, embed, T]
        lengths = lengths.to(tokens.device)
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            y = torch.relu(conv(x))  # [B, maps, T - w + 1]: window t reads tokens t .. t + w - 1
            last_start = (lengths - w).clamp(min=0)
            starts = torch.arange(y.shape[2], device=y.device)
            pooled.append(y.masked_fill(starts[None, None, :] > last_start[:, None, None], float("-inf")).amax(2))
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))
