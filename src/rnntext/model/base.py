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

    def tables(self) -> list[nn.Module]:
        """The model's lookup tables (nn.Embedding / nn.EmbeddingBag): on a CPU the optimiser may give
        them sparse gradients. The word table, and any other (the wide part's, model/wide.py)."""
        return [self.embedding]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The parameters whose gradient norm --clip bounds, group by group: the whole model; each member
        of a members model (members.py) on its own."""
        return [list(self.parameters())]

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

    def encoder_state(self) -> dict[str, Tensor]:
        """The weights a language model pretrains (`rnntext pretrain`): the embedding and the encoder, under
        the model's own names. Only models with a recurrent encoder have one."""
        raise ValueError(f"a {self.name or type(self).__name__} model has no recurrent encoder to pretrain "
                         "(--model rnn, lstm or gru)")

    def load_encoder(self, state: dict[str, Tensor]) -> None:
        """Start the embedding and encoder from `state` (encoder_state() of a pretrained model of the same
        cell, sizes and vocabulary); the output layer keeps its fresh weights."""
        own = self.encoder_state()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"the encoder's weights do not fit this model (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"the encoder's {k} is {tuple(v.shape)}, this model's {tuple(own[k].shape)}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].dtype))

