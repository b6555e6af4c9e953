"""The optimiser: fused AdamW, with the word embedding's gradient kept sparse on a CPU.

A batch touches a few hundred of the vocabulary's words, yet autograd's dense embedding gradient
is a fresh vocabulary x embed array, zero-filled and then scattered into at every step (at the
tutorial's configuration, 40k words and batch 16, that fill alone is ~8% of a step). On a CPU the
embedding therefore produces a sparse gradient, and the optimiser either
- scatters it into a dense buffer it keeps, zeroing only the previous step's rows, then runs the
  usual dense fused AdamW: the same update as with autograd's dense gradient; or
- with lazy updates (--lazy-embedding) updates only the rows of the batch's words: their moments,
  weight decay and step (LazyAdam, as in TensorFlow Addons; torch's SparseAdam without weight
  decay). Dense Adam also moves rows whose gradient is zero (their moments decay), so this is a
  different optimiser, not the same one made faster.
On a GPU, and under DistributedDataParallel (which averages dense gradients), the gradient stays dense."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


class AdamW(torch.optim.AdamW):
    """torch's AdamW; a sparse gradient is made dense in a kept buffer, or with `lazy=True` applied
    lazily to its rows only."""

    def __init__(self, params: Iterable[Tensor], *, lazy: bool = False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.lazy = lazy
        # parameter -> (dense gradient buffer, rows written into it by the last step)
        self._dense_grads: dict[Tensor, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        sparse: list[tuple[dict, Tensor, Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    sparse.append((group, p, p.grad))
                    # lazy: torch's AdamW skips parameters without a gradient
                    p.grad = None if self.lazy else self._densify(p, p.grad)
        try:
            loss = None
            if closure is None and self._can_call_fused():
                self._fused_step()
            else:
                loss = super().step(closure)
            if self.lazy:
                for group, p, grad in sparse:
                    self._lazy_step(group, p, grad)
        finally:
            for _, p, grad in sparse:
                p.grad = grad
        return loss

    def _can_call_fused(self) -> bool:
        """Whether the step can go straight to torch's fused kernel: fused, plain AdamW, every
        parameter with a gradient already has its state (after the first step), one device and dtype."""
        if self.defaults.get("fused") is not True:
            return False
        devices = set()
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return False
            for p in group["params"]:
                if p.grad is not None:
                    if p not in self.state or p.grad.is_sparse:
                        return False
                    devices.add((p.device, p.dtype))
        return len(devices) == 1

    def _fused_step(self) -> None:
        """What torch.optim.AdamW(fused=True).step() computes, by the same kernel, without the ~0.2 ms
        of Python around it (grouping, state checks): about 5% of a batch-16 training step on a CPU."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adamw_(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                grad_scale=None, found_inf=None)

    def _densify(self, p: Tensor, grad: Tensor) -> Tensor:
        """The sparse `grad` as a dense tensor, in a buffer reused from step to step: only the rows
        the previous step wrote are zeroed, instead of the whole vocabulary x embed array."""
        if p in self._dense_grads:
            buf, rows = self._dense_grads[p]
            buf.index_fill_(0, rows, 0.0)
        else:
            buf = torch.zeros_like(p)
        rows = grad._indices()[0]
        buf.index_add_(0, rows, grad._values())  # duplicate rows (a word used twice) add up
        self._dense_grads[p] = (buf, rows)
        return buf

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


def use_sparse_embedding(model: nn.Module, device: torch.device, distributed: bool) -> bool:
    """Switch the model's embedding to sparse gradients where they pay: a CPU, one process
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
