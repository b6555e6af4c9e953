"""Inference fast path for a GRU classifier on a CPU: its own loop instead of nn.GRU.

- The first layer's input projections come from a table computed once from the weights,
  W_ih e + b_ih for every vocabulary word ([vocab, 3 * hidden]), gathered per step, instead of
  multiplying every token's embedding.
- tanh(x) = 2 sigmoid(2x) - 1: the new-gate parts of the tables are doubled (exact), because
  torch's tanh costs a CPU several times its sigmoid.
- Rows are taken longest first, so step t runs only the texts still being read (a prefix, as in a
  packed sequence) and a finished text keeps its last state.
- A one-layer model pools (mean, max, last) as the loop goes: no [B, T, H] output is written.
- Every per-step tensor lives in a buffer allocated once: fresh ones fault their pages in on first
  touch, which costs as much again as the arithmetic at this size.
The results equal nn.GRU's to float rounding (tests/test_fast.py); benchmarks/predict.py measures it.

Opt-in, `dtype=torch.bfloat16` (`--precision bf16`): the tables and the recurrence in bfloat16, pooling sums
and the classifier in float32. On a CPU with AVX512-BF16 the recurrent matrix products run ~3.7x faster
(the default AG News model: 23,000 against 14,500 texts/s on 2 cores, the same test accuracy;
probabilities within ~0.01 of float32's)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.recurrent import RecurrentClassifier

TABLE_BYTES = 256 * 2**20  # the largest input-projection table built
MIN_BATCH = 32  # smaller batches run nn.GRU: the loop's per-step Python outweighs the projection it saves
BATCH = 1024  # texts per prediction batch with a one-layer model (benchmarks/predict.py)

Tables = tuple[Tensor, Tensor, Tensor]  # per direction: input table, W_hh^T, b_hh (new gate doubled)


def supports(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether inference of `model` on `device` can run this loop."""
    if not isinstance(model, RecurrentClassifier) or model.cell != "gru" or device.type != "cpu":
        return False
    weight = model.embedding.weight
    table = weight.shape[0] * 3 * model.hidden_dim * model.directions * weight.element_size()
    return not model.packs_on(device) and table <= TABLE_BYTES


class GRUInference:
    """`model`'s forward for inference. The tables are computed from the weights on first use and
    kept while the weights' storage and version counters stay the same. Torch's fused AdamW updates
    weights without bumping those counters, so an object must not outlive a training step: the
    trainer builds one per evaluation, a Predictor (whose weights never change) keeps one."""

    def __init__(self, model: RecurrentClassifier, dtype: torch.dtype = torch.float32):
        self.model = model
        self.dtype = dtype
        self._cache: tuple[tuple, list[Tables]] | None = None

    def tables(self) -> list[Tables]:
        m = self.model
        mods = list(m.layers[0])
        weight = m.embedding.weight
        key = tuple((t.data_ptr(), t._version) for t in (weight, *(p for mod in mods for p in mod.parameters())))
        if self._cache is None or self._cache[0] != key:
            H = m.hidden_dim
            scale = torch.ones(3 * H, dtype=weight.dtype)
            scale[2 * H:] = 2.0
            tables = [tuple(t.to(self.dtype) for t in (
                torch.addmm(mod.bias_ih_l0, weight, mod.weight_ih_l0.t()) * scale,
                (mod.weight_hh_l0 * scale[:, None]).t().contiguous(), mod.bias_hh_l0 * scale)) for mod in mods]
            self._cache = (key, tables)
        return self._cache[1]

    def __call__(self, tokens: Tensor, lengths: Tensor, offsets: Tensor | None = None) -> Tensor:
        m = self.model
        if m.training or torch.is_grad_enabled() or tokens.shape[0] < MIN_BATCH:
            return m(tokens, lengths, offsets)
        readings = zip(self.tables(), m.reading(tokens, lengths))
        if len(m.layers) > 1:  # the first layer here, the others by the model
            first = [gru_loop(tab, tok, lengths, None) for tab, tok in readings]
            return m.classify(m.pool_directions(m.directions_out(tokens, lengths, first=first), lengths))
        pooled = [gru_loop(tab, tok, lengths, m.pooling) for tab, tok in readings]
        # [pooling 1: forward, backward | pooling 2: forward, backward], as pool_directions lays them out
        parts = [p.split(m.hidden_dim, dim=1) for p in pooled]
        return m.classify(torch.cat([part[i] for i in range(len(parts[0])) for part in parts], dim=1))


def gru_loop(tables: Tables, tokens: Tensor, lengths: Tensor, pooling: str | None) -> Tensor:
    """nn.GRU's recurrence over a padded batch [B, T] from `tables`. With `pooling` ("last", "mean",
    "max" or "meanmax"), the pooled features [B, H (x2 for meanmax)]; with None, the outputs
    [B, T, H] (zero past each text's length)."""
    table, w_hh, b_hh = tables
    B, T = tokens.shape
    H = w_hh.shape[0]
    order = torch.argsort(lengths, descending=True, stable=True)
    steps = tokens[order].t().contiguous()  # [T, B]
    active = (lengths[order][None, :] > torch.arange(T)[:, None]).sum(1).tolist()  # rows reading at t
    x, gh, n = table.new_empty(B, 3 * H), table.new_empty(B, 3 * H), table.new_empty(B, H)
    h = table.new_zeros(B, H)
    out = table.new_zeros(T, B, H) if pooling is None else None
    total = torch.zeros(B, H) if pooling in ("mean", "meanmax") else None  # float32 sums, whatever the tables
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
        result = out.transpose(0, 1).float()
    else:
        if total is not None:
            total /= lengths[order][:, None].to(total.dtype)
        result = torch.cat([h.float()] if pooling == "last" else [p.float() for p in (total, peak) if p is not None],
                           dim=1)
    restored = torch.empty_like(result)
    restored[order] = result
    return restored
