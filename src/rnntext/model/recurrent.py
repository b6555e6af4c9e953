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

CELL_CLASSES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """x[b, :len_b] reversed for each b; positions past len_b stay where they are."""
    B, T = x.shape[:2]
    steps = torch.arange(T, device=x.device).expand(B, T)
    lens = lengths.to(x.device)[:, None]
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    return x.gather(1, index[:, :, None].expand_as(x))


class RecurrentClassifier(nn.Module):
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

    def encode(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Outputs of the last layer, [B, T, hidden * directions]; positions past a text's length
        are undefined (padded mode) or zero (packed mode) and are never read by pooling."""
        x = self.embed_dropout(self.embedding(tokens))
        for i, directions in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            outs = [self._run(directions[0], x, lengths)]
            if self.directions == 2:
                rev = self._run(directions[1], reverse_within_length(x, lengths), lengths)
                outs.append(reverse_within_length(rev, lengths))
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return x

    def pool(self, out: Tensor, lengths: Tensor) -> Tensor:
        B, T, _ = out.shape
        lengths = lengths.to(out.device)
        if self.pooling == "last":
            H = self.hidden_dim
            last = out[torch.arange(B, device=out.device), lengths - 1]
            if self.directions == 1:
                return last
            # forward: state after the last real token; backward: after reading back to token 0
            return torch.cat([last[:, :H], out[:, 0, H:]], dim=1)
        mask = (torch.arange(T, device=out.device)[None, :] < lengths[:, None]).unsqueeze(2)
        pooled = []
        if self.pooling in ("mean", "meanmax"):
            pooled.append((out * mask).sum(1) / lengths[:, None].to(out.dtype))
        if self.pooling in ("max", "meanmax"):
            pooled.append(out.masked_fill(~mask, float("-inf")).max(1).values)
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.fc(self.dropout(self.pool(self.encode(tokens, lengths), lengths)))


class BagClassifier(nn.Module):
    """Mean of word embeddings (nn.EmbeddingBag) and a linear layer: the fast baseline."""

    packed = False

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 64, dropout: float = 0.0,
                 padding_idx: int = 0):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -0.5, 0.5)
        with torch.no_grad():
            self.embedding.weight[padding_idx].zero_()

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.fc(self.dropout(self.embedding(tokens, offsets)))


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.model == "bag":
        return BagClassifier(cfg.vocab_size, cfg.num_classes, cfg.embed_dim, cfg.dropout, cfg.padding_idx)
    return RecurrentClassifier(
        cfg.vocab_size, cfg.num_classes, cell=cfg.model, embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
        dropout=cfg.dropout, embed_dropout=cfg.embed_dropout, pooling=cfg.pooling,
        packed=cfg.packed, padding_idx=cfg.padding_idx, pack_on_cpu=cfg.pack_on_cpu,
    )


def uses_flat_batches(cfg: ModelConfig) -> bool:
    return cfg.model == "bag"
