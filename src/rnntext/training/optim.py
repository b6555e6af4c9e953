"""The optimiser: fused AdamW, with lazy (row-wise) updates of the word embedding on a CPU.

Dense Adam reads and writes all four vocabulary x embed arrays (weights, gradient, two moments) at
every step, although a batch touches a few hundred words: at the tutorial's configuration (batch 16,
40k words) that is half of a step's time on a CPU. With lazy updates the embedding produces sparse
gradients and only the rows of the words in the batch get their moments, weight decay and step
(LazyAdam, as in TensorFlow Addons; torch's SparseAdam without weight decay). Every other parameter
gets the usual fused AdamW update. On a GPU the dense fused update is cheap and stays."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


class AdamW(torch.optim.AdamW):
    """torch's AdamW for dense gradients; parameters whose gradient is sparse are updated lazily."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        sparse: list[tuple[dict, Tensor, Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    sparse.append((group, p, p.grad))
                    p.grad = None  # torch's AdamW skips parameters without a gradient
        try:
            loss = super().step(closure)
            for group, p, grad in sparse:
                self._lazy_step(group, p, grad)
        finally:
            for _, p, grad in sparse:
                p.grad = grad
        return loss

    def _lazy_step(self, group: dict, p: Tensor, grad: Tensor) -> None:
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        m = state["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"][rows] = m
        state["exp_avg_sq"][rows] = v
        denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
        w = p[rows]
        if wd:
            w.mul_(1 - lr * wd)
        w.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        p[rows] = w


def use_lazy_embedding(model: nn.Module, device: torch.device, distributed: bool) -> bool:
    """Switch the model's embedding to sparse gradients where lazy updates pay: a CPU, one process
    (DistributedDataParallel averages dense gradients), and an embedding that is trained."""
    emb = getattr(model, "embedding", None)
    if device.type != "cpu" or distributed or emb is None or not hasattr(emb, "sparse"):
        return False
    if not emb.weight.requires_grad:
        return False
    emb.sparse = True
    return True


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """nn.utils.clip_grad_norm_ (2-norm) that also takes sparse gradients."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    if not any(p.grad.is_sparse for p in params):  # the usual case: torch's own (foreach) implementation
        return nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate rows summed, so the norm is the gradient's
    norms = [(p.grad.values() if p.grad.is_sparse else p.grad).norm() for p in params]
    total = torch.stack(norms).norm()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef)
    return total
