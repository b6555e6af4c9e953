"""The optimiser's CPU fast path (fast/adamw.py): a sparse embedding gradient made dense gives torch's AdamW
update; the direct fused step is torch's, bit for bit; lazy embedding updates equal dense AdamW on
the rows a batch touches and leave the others alone; the sparse-aware gradient clipping equals torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnntext.fast.adamw import AdamW, clip_grad_norm, use_sparse_embedding
from rnntext.model.recurrent import RecurrentClassifier


def _train(sparse: bool, batches: list[torch.Tensor], clip: float | None = 0.5, lazy: bool = True,
           torch_adamw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    emb = nn.Embedding(8, 4, padding_idx=0, sparse=sparse)
    fc = nn.Linear(4, 3)
    params = [*emb.parameters(), *fc.parameters()]
    opt = (torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=True) if torch_adamw
           else AdamW(params, lr=1e-2, weight_decay=0.1, fused=True, lazy=lazy))
    for x in batches:
        loss = fc(emb(x)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            clip_grad_norm(params, clip)
        opt.step()
    return emb.weight.detach().clone(), fc.weight.detach().clone()


def test_sparse_gradient_made_dense_gives_torch_adamw() -> None:
    # rows 4..7 are touched in some steps only: their zero-gradient steps must still decay and move them
    batches = [torch.tensor([[1, 2, 0, 2]]), torch.tensor([[3, 4, 5, 3]]), torch.tensor([[6, 7, 1, 0]])] * 3
    ref = _train(False, batches, torch_adamw=True)
    for sparse in (False, True):
        got = _train(sparse, batches, lazy=False)
        assert torch.allclose(got[0], ref[0], atol=1e-6) and torch.allclose(got[1], ref[1], atol=1e-6)


def test_direct_fused_step_is_torchs_bit_for_bit() -> None:
    batches = [torch.tensor([[1, 2, 3, 0]]), torch.tensor([[4, 5, 6, 7]])] * 4
    ref, got = _train(False, batches, torch_adamw=True), _train(False, batches, lazy=False)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_lazy_equals_dense_adamw_when_every_row_is_touched() -> None:
    every_word = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0], [7, 6, 5, 4, 3, 2, 1, 1]])  # duplicates, padding
    dense, sparse = _train(False, [every_word] * 6), _train(True, [every_word] * 6)
    assert torch.allclose(dense[0], sparse[0], atol=1e-6) and torch.allclose(dense[1], sparse[1], atol=1e-6)


def test_lazy_leaves_untouched_rows_and_padding_alone() -> None:
    torch.manual_seed(0)
    before = nn.Embedding(8, 4, padding_idx=0).weight.detach().clone()
    after, _ = _train(True, [torch.tensor([[1, 2, 0]]), torch.tensor([[2, 3, 0]])])
    assert torch.equal(after[4:], before[4:]) and torch.equal(after[0], before[0])
    assert not torch.allclose(after[1:4], before[1:4])
    dense, _ = _train(False, [torch.tensor([[1, 2, 0]]), torch.tensor([[2, 3, 0]])])
    assert not torch.allclose(dense[4:], before[4:])  # dense AdamW decays every row


def test_clip_grad_norm_matches_torch_and_handles_sparse() -> None:
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(3, 3)) for _ in range(2)]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn(3, 3)
        q.grad = p.grad.clone()
    assert clip_grad_norm(a, 0.5) == pytest.approx(float(nn.utils.clip_grad_norm_(b, 0.5)))
    assert all(torch.allclose(p.grad, q.grad) for p, q in zip(a, b))
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 1, 2])).sum().backward()  # uncoalesced: row 1 twice
    dense_grad = emb.weight.grad.to_dense()
    assert float(clip_grad_norm([emb.weight], 100.0)) == pytest.approx(float(dense_grad.norm()))


def test_lazy_embedding_only_on_a_cpu_for_a_trained_embedding() -> None:
    model = RecurrentClassifier(10, 2, cell="gru", embed_dim=4, hidden_dim=4)
    assert not use_sparse_embedding(model, torch.device("cpu"), distributed=True) and not model.embedding.sparse
    model.embedding.weight.requires_grad_(False)
    assert not use_sparse_embedding(model, torch.device("cpu"), distributed=False)
    model.embedding.weight.requires_grad_(True)
    assert use_sparse_embedding(model, torch.device("cpu"), distributed=False) and model.embedding.sparse


def test_trainer_with_lazy_embedding_learns_like_dense(tiny_config, ag_news_small) -> None:
    from rnntext.training.trainer import Trainer

    results = {}
    for lazy in (False, True):
        cfg = tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__lazy_embedding=lazy,
                          train__epochs=3)
        trainer = Trainer(cfg, progress=False, log=lambda s: None)
        assert trainer.optimizer.lazy is lazy and trainer.model.embedding.sparse  # sparse gradients on a CPU
        results[lazy] = trainer.fit().metrics
    losses = [e["train_loss"] for e in results[True]["epochs"]]
    assert losses[-1] < losses[0] - 0.1
    assert results[True]["test"]["accuracy"] >= results[False]["test"]["accuracy"] - 0.05
