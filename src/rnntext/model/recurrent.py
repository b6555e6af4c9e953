"""One recurrent classifier, parametrised by the cell (rnn | lstm | gru), depth, direction,
pooling and packed/padded execution; plus the EmbeddingBag baseline.

Padding never changes a result: mean and max pooling are masked, `last` takes the last real
token, and the backward direction reads each text reversed within its own length (so it
starts at the last real token, not at the padding). Padded and packed execution therefore give
the same logits for the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig

CELL_CLASSES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_GRU_TABLE_BYTES = 256 * 2**20  # the largest input-projection table a GRU builds for inference
_GRU_TABLE_MIN_BATCH = 32  # the smallest batch that uses it (measured: 1-8 texts are faster with nn.GRU)


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
        self.tables_on = False  # see inference_tables()
        self._gru_table_cache: tuple[tuple, list[tuple[Tensor, Tensor, Tensor]]] | None = None
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

    @contextmanager
    def inference_tables(self) -> Iterator[None]:
        """Inside: inference may precompute tables from the weights (_gru_tables) and reuse them
        until the block ends. (A model loaded only to predict sets `tables_on` for good.)"""
        before = self.tables_on
        self.tables_on = True
        try:
            yield
        finally:
            self.tables_on = before
            if not before:
                self._gru_table_cache = None

    def _gru_tables(self, device: torch.device) -> list[tuple[Tensor, Tensor, Tensor]] | None:
        """For inference on a CPU with a GRU, per direction of the first layer: the input projection
        of every vocabulary word, W_ih e + b_ih ([vocab, 3 * hidden]), so that a batch gathers rows
        instead of multiplying [B * T, embed] by [embed, 3 * hidden] (a third of a prediction's time);
        and W_hh, b_hh. The new-gate parts are doubled for tanh(x) = 2 sigmoid(2x) - 1 (torch's tanh
        costs a CPU several times its sigmoid; doubling is exact). Only inside inference_tables():
        torch's fused AdamW changes weights without bumping their version counters, so a cache that
        outlived a training step could not tell (the versions in the key catch copy_ and the like).
        None where this does not apply or the tables are too big."""
        if not self.tables_on or self.training or torch.is_grad_enabled() or not self._gru_tables_fit(device):
            return None
        mods = list(self.layers[0])
        weight = self.embedding.weight
        key = tuple((t.data_ptr(), t._version) for t in (weight, *(p for m in mods for p in m.parameters())))
        if self._gru_table_cache is None or self._gru_table_cache[0] != key:
            H = self.hidden_dim
            scale = torch.ones(3 * H, dtype=weight.dtype)
            scale[2 * H:] = 2.0
            tables = [(torch.addmm(m.bias_ih_l0, weight, m.weight_ih_l0.t()) * scale,
                       (m.weight_hh_l0 * scale[:, None]).t().contiguous(), m.bias_hh_l0 * scale) for m in mods]
            self._gru_table_cache = (key, tables)
        return self._gru_table_cache[1]

    def _gru_tables_fit(self, device: torch.device) -> bool:
        """Whether inference on `device` can run the first layer from _gru_tables."""
        weight = self.embedding.weight
        return (self.cell == "gru" and device.type == "cpu" and not self.packs_on(device)
                and weight.shape[0] * 3 * self.hidden_dim * self.directions * weight.element_size() <= _GRU_TABLE_BYTES)

    def prediction_batch(self, device: torch.device) -> int:
        """Texts per batch that predict fastest on `device`. Measured on 2 CPU cores: a one-layer GRU's
        own loop (forward()) predicted AG News 1.3-1.5x faster in batches of 1024 than of 256; nn.LSTM
        and nn.RNN were 20-26% slower at 1024."""
        return 1024 if len(self.layers) == 1 and self._gru_tables_fit(device) else 256

    @staticmethod
    def _gru_from_table(tables: tuple[Tensor, Tensor, Tensor], tokens: Tensor, lengths: Tensor,
                        pooling: str | None) -> Tensor:
        """nn.GRU's recurrence over a padded batch from the tables of _gru_tables. With `pooling`
        ("last", "mean", "max" or "meanmax"), the pooled features [B, H (x2 for meanmax)], gathered
        as the loop goes; with None, the outputs [B, T, H] (zero past each text's length).

        Rows are taken longest first, so step t runs only the rows still reading (a prefix, as in a
        packed sequence) and a finished row keeps its last state. Every per-step tensor lives in a
        buffer allocated once: fresh ones cost page faults on first touch, as much again as the
        arithmetic at this size."""
        table, w_hh, b_hh = tables
        B, T = tokens.shape
        H = w_hh.shape[0]
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = tokens[order].t().contiguous()  # [T, B]
        active = (lengths[order][None, :] > torch.arange(T)[:, None]).sum(1).tolist()  # rows reading at t
        x, gh, n = table.new_empty(B, 3 * H), table.new_empty(B, 3 * H), table.new_empty(B, H)
        h = table.new_zeros(B, H)
        out = table.new_zeros(T, B, H) if pooling is None else None
        total = table.new_zeros(B, H) if pooling in ("mean", "meanmax") else None
        peak = table.new_full((B, H), float("-inf")) if pooling in ("max", "meanmax") else None
        for t, k in enumerate(active):
            hk, xk, ghk = h[:k], x[:k], gh[:k]
            torch.index_select(table, 0, steps[t, :k], out=xk)
            torch.addmm(b_hh, hk, w_hh, out=ghk)
            rz = ghk[:, : 2 * H].add_(xk[:, : 2 * H]).sigmoid_()
            # tanh(x_n + r * gh_n) = 2 sigmoid(2 x_n + r * 2 gh_n) - 1 (the tables hold 2 x_n, 2 gh_n)
            nk = torch.addcmul(xk[:, 2 * H:], rz[:, :H], ghk[:, 2 * H:], out=n[:k]).sigmoid_().mul_(2).sub_(1)
            torch.lerp(nk, hk, rz[:, H:], out=hk)  # n + z (h - n) = (1 - z) n + z h
            if out is not None:
                out[t, :k] = hk
            if total is not None:
                total[:k] += hk
            if peak is not None:
                torch.maximum(peak[:k], hk, out=peak[:k])
        if out is not None:
            result = out.transpose(0, 1)
        else:
            if total is not None:
                total /= lengths[order][:, None].to(total.dtype)
            result = torch.cat([h] if pooling == "last" else [p for p in (total, peak) if p is not None], dim=1)
        restored = torch.empty_like(result)
        restored[order] = result
        return restored

    def directions_out(self, tokens: Tensor, lengths: Tensor) -> list[Tensor]:
        """Outputs of the last layer, one [B, T, hidden] tensor per direction, each in its own
        reading order: step t of the backward direction is token len-1-t. Pooling reads them so,
        without reversing the backward outputs back (mean and max do not depend on the order)."""
        tables = self._first_layer_tables(tokens)
        if tables is not None:  # inference with a GRU: the first layer gathers its input projections
            outs = [self._gru_from_table(tab, tok, lengths, None)
                    for tab, tok in zip(tables, self._reading(tokens, lengths))]
        else:
            outs = self._layer(0, self.embed_dropout(self.embedding(tokens)), tokens, lengths)
        for i in range(1, len(self.layers)):
            outs = self._layer(i, self.dropout(self._text_order(outs, lengths)), tokens, lengths)
        return outs

    def _first_layer_tables(self, tokens: Tensor) -> list[tuple[Tensor, Tensor, Tensor]] | None:
        # below ~32 texts the table path's per-step Python costs more than the projection it saves
        return self._gru_tables(tokens.device) if tokens.shape[0] >= _GRU_TABLE_MIN_BATCH else None

    def _reading(self, tokens: Tensor, lengths: Tensor) -> list[Tensor]:
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

    def forward(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        tables = self._first_layer_tables(tokens) if len(self.layers) == 1 else None
        if tables is not None:  # inference with a one-layer GRU: pooled as the recurrence goes
            pooled = [self._gru_from_table(tab, tok, lengths, self.pooling)
                      for tab, tok in zip(tables, self._reading(tokens, lengths))]
            # [pooling 1: forward, backward | pooling 2: forward, backward], as pool_directions lays them out
            parts = [p.split(self.hidden_dim, dim=1) for p in pooled]
            features = torch.cat([part[i] for i in range(len(parts[0])) for part in parts], dim=1)
        else:
            features = self.pool_directions(self.directions_out(tokens, lengths), lengths)
        return self.fc(self.dropout(features))


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
