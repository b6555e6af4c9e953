"""One recurrent classifier, parametrised by the cell (rnn | lstm | gru), depth, direction,
pooling and packed/padded execution; plus the EmbeddingBag baseline.

Padding never changes a result: mean and max pooling are masked, `last` takes the last real
token, and the backward direction reads each text reversed within its own length (so it
starts at the last real token, not at the padding). Padded and packed execution therefore give
the same logits for the same weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig
from .base import TextClassifier

CELL_CLASSES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """x[b, :len_b] reversed for each b; positions past len_b stay where they are. x is [B, T] or
    [B, T, ...]."""
    B, T = x.shape[:2]
    steps = torch.arange(T, device=x.device).expand(B, T)
    lens = lengths.to(x.device)[:, None]
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    if x.dim() > 2:
        index = index.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class RecurrentClassifier(TextClassifier):
    """Embedding -> recurrent layers (one module per layer and direction) -> pooling -> dropout -> linear."""

    def __init__(self, vocab_size: int, num_classes: int, cell: str = "lstm", embed_dim: int = 64,
                 hidden_dim: int = 32, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, embed_dropout: float = 0.0, pooling: str = "last",
                 packed: bool = False, padding_idx: int = 0, pack_on_cpu: bool = False):
        super().__init__()
        if cell not in CELL_CLASSES:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell, self.pooling, self.packed = cell, pooling, packed
        # Packed and masked-padded execution give the same outputs (see the module docstring), and on
        # a CPU the padded kernels are about twice as fast: a packed model packs only on other devices
        # unless told to pack on the CPU too.
        self.pack_on_cpu = pack_on_cpu
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.directions = 2 if bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.embed_dropout = nn.Dropout(embed_dropout)
        rnn = CELL_CLASSES[cell]
        # One single-layer module per layer and direction, so that the backward direction can be
        # fed each text reversed within its length (nn.LSTM's own bidirectional mode would start
        # the backward pass on padding when inputs are padded).
        self.layers = nn.ModuleList(
            nn.ModuleList(
                rnn(embed_dim if i == 0 else hidden_dim * self.directions, hidden_dim, batch_first=True)
                for _ in range(self.directions)
            )
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        features = hidden_dim * self.directions * (2 if pooling == "meanmax" else 1)
        self.fc = nn.Linear(features, num_classes)

    def encoder_state(self) -> dict[str, Tensor]:
        """The embedding and the recurrent layers (views of the weights: load_encoder copies into them)."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if k.startswith(("embedding.", "layers."))}

    def packs_on(self, device: torch.device) -> bool:
        """Whether this model really packs its sequences on `device`."""
        return self.packed and (device.type != "cpu" or self.pack_on_cpu)

    def _run(self, module: nn.RNNBase, x: Tensor, lengths: Tensor) -> Tensor:
        # A batch without padding packs to itself: skip the packing (about a third of length-bucketed
        # batches; on a CPU the packed kernels run at half the speed of the padded ones).
        if not self.packs_on(x.device) or bool((lengths == x.shape[1]).all()):
            return module(x)[0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out = module(packed)[0]
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def directions_out(self, tokens: Tensor, lengths: Tensor, first: list[Tensor] | None = None) -> list[Tensor]:
        """Outputs of the last layer, one [B, T, hidden] tensor per direction, each in its own
        reading order: step t of the backward direction is token len-1-t. Pooling reads them so,
        without reversing the backward outputs back (mean and max do not depend on the order).
        `first`: the first layer's outputs in that form, computed elsewhere (an inference fast path)."""
        if first is None:
            first = self._layer(0, self.embed_dropout(self.embedding(tokens)), tokens, lengths)
        outs = first
        for i in range(1, len(self.layers)):
            outs = self._layer(i, self.dropout(self._text_order(outs, lengths)), tokens, lengths)
        return outs

    def reading(self, tokens: Tensor, lengths: Tensor) -> list[Tensor]:
        """The tokens in each direction's reading order."""
        return [tokens, reverse_within_length(tokens, lengths)][: self.directions]

    def _layer(self, i: int, x: Tensor, tokens: Tensor, lengths: Tensor) -> list[Tensor]:
        """Layer i's directions on x (text order); the backward one in its reading order."""
        directions = self.layers[i]
        outs = [self._run(directions[0], x, lengths)]
        if self.directions == 2:
            if i == 0 and not (self.training and self.embed_dropout.p > 0):
                # no dropout mask to share with the forward direction: reversing the token ids is
                # cheaper than reversing their vectors
                rev_in = self.embedding(reverse_within_length(tokens, lengths))
            else:
                rev_in = reverse_within_length(x, lengths)
            outs.append(self._run(directions[1], rev_in, lengths))
        return outs

    @staticmethod
    def _text_order(outs: list[Tensor], lengths: Tensor) -> Tensor:
        """directions_out()-style outputs as one [B, T, hidden * directions] tensor in text order."""
        if len(outs) == 1:
            return outs[0]
        return torch.cat([outs[0], reverse_within_length(outs[1], lengths)], dim=2)

    def encode(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Outputs of the last layer, [B, T, hidden * directions], in text order; positions past a
        text's length are undefined (padded mode) or zero (packed mode) and are never read by pooling."""
        return self._text_order(self.directions_out(tokens, lengths), lengths)

    def pool(self, out: Tensor, lengths: Tensor) -> Tensor:
        """Pooling of encode()'s output."""
        dirs = list(out.split(self.hidden_dim, dim=2))
        if len(dirs) == 2:
            dirs[1] = reverse_within_length(dirs[1], lengths)
        return self.pool_directions(dirs, lengths)

    def pool_directions(self, outs: list[Tensor], lengths: Tensor) -> Tensor:
        """[B, features] from directions_out(): `last` is the state after each direction has read
        the whole text; mean and max are masked to the text's length. Features are laid out as
        [pooling 1: forward, backward | pooling 2: forward, backward]."""
        B, T, _ = outs[0].shape
        lengths = lengths.to(outs[0].device)
        if self.pooling == "last":
            rows = torch.arange(B, device=outs[0].device)
            return torch.cat([o[rows, lengths - 1] for o in outs], dim=1)
        mask = (torch.arange(T, device=outs[0].device)[None, :] < lengths[:, None]).unsqueeze(2)
        pooled = []
        if self.pooling in ("mean", "meanmax"):
            denom = lengths[:, None].to(outs[0].dtype)
            pooled += [(o * mask).sum(1) / denom for o in outs]
        if self.pooling in ("max", "meanmax"):
            pooled += [o.masked_fill(~mask, float("-inf")).max(1).values for o in outs]
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)

    def classify(self, features: Tensor) -> Tensor:
        """Logits from pooled features [B, features]."""
        return self.fc(self.dropout(features))

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.classify(self.pool_directions(self.directions_out(tokens, lengths), lengths))

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RecurrentClassifier:
        return cls(cfg.vocab_size, cfg.num_classes, cell=cfg.model, embed_dim=cfg.embed_dim,
                   hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                   dropout=cfg.dropout, embed_dropout=cfg.embed_dropout, pooling=cfg.pooling,
                   packed=cfg.packed, padding_idx=cfg.padding_idx, pack_on_cpu=cfg.pack_on_cpu)
