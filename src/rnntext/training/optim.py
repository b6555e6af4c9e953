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
On a GPU, and under DistributedDataParallel (which averages dense gradients), the gradient stays dense.

The dense update of a big embedding is a memory-bound pass over the whole table (at the tutorial's
configuration ~70 MB a step, a third of the step), yet the next batch reads only a few hundred of its
rows. With `overlap`, step() updates the whole table on a second thread while the next batch trains:
it first computes the next batch's rows on copies (the same fused kernel, elementwise, so the same
values), and the model reads those through `embedding_ahead()`. The result is bit-identical to the
sequential update (tests); the wall time of the pass moves off the critical path."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class _Ahead:
    """The next batch's embedding rows, updated ahead of the rest of the table."""

    tokens: Tensor  # the batch's token ids, as given to step(next_tokens=...)
    ids: Tensor  # its distinct ids, sorted (<pad> first)
    local: Tensor  # the tokens renumbered into ids: ids[local] == tokens
    values: Tensor  # [len(ids), embed] the rows' new weights


class _Worker:
    """One background thread that runs one call at a time (lighter than a ThreadPoolExecutor: a
    submit is a queue put, and there is never more than one call in flight)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rnntext-adamw", daemon=True)
        self._thread.start()
        self._idle.wait()  # its torch thread count is set before the caller changes its own

    def _run(self) -> None:
        torch.set_num_threads(1)  # torch counts threads per thread: this one is the lent one
        self._idle.set()
        while (call := self._calls.get()) is not None:
            try:
                call()
            except BaseException as e:  # re-raised by wait(), in the caller's thread
                self._error = e
            finally:
                self._idle.set()

    def submit(self, call: Callable[[], None]) -> None:
        self._idle.clear()
        self._calls.put(call)

    def wait(self) -> None:
        self._idle.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self.wait()
        self._calls.put(None)
        self._thread.join()


class AdamW(torch.optim.AdamW):
    """torch's AdamW; a sparse gradient is made dense in a kept buffer, or with `lazy=True` applied
    lazily to its rows only. With `overlap` (an nn.Embedding or nn.EmbeddingBag of the model), that
    embedding's dense update runs on a background thread during the next batch (module docstring);
    `clipped` says the caller clips the gradients (clip_grad_norm coalesces a sparse one), which
    embedding_ahead() must know to sum the rows' gradient in the same order."""

    def __init__(self, params: Iterable[Tensor], *, lazy: bool = False, overlap: nn.Module | None = None,
                 clipped: bool = False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.lazy = lazy
        # parameter -> (dense gradient buffer, rows written into it by the last step)
        self._dense_grads: dict[Tensor, tuple[Tensor, Tensor]] = {}
        self.overlap = overlap
        self._worker: _Worker | None = None
        self._ahead: _Ahead | None = None
        self._threads = 0  # the main thread's torch threads while it has them all (0: it has)
        self.clipped = clipped  # with overlap, the rows then keep a sparse gradient (embedding_ahead)
        self._lookups = 0  # how many times the last overlapped forward looked the embedding up
        self.rows_were_dense = False  # whether they did in the last overlapped step

    def wait(self) -> None:
        """Block until the background update of the embedding (overlap) is done: call before reading
        the weights or the optimiser state (step(), state_dict() and load_state_dict() do)."""
        if self._worker is not None:
            self._worker.wait()

    def state_dict(self) -> dict[str, Any]:
        self.wait()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait()
        self._ahead = None
        super().load_state_dict(state_dict)

    def close(self) -> None:
        """Finish the background update, end its thread and give the main thread back the torch
        thread it lent (the trainer calls this after each epoch, so evaluation has them all)."""
        self.wait()
        self._ahead = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._threads:
            torch.set_num_threads(self._threads)
            self._threads = 0

    @contextmanager
    def embedding_ahead(self, tokens: Tensor) -> Iterator[Tensor]:
        """Run the model's forward and backward inside. When the last step() was given these `tokens`
        as next_tokens, the embedding reads the rows updated ahead (the table itself may still be
        being updated in the background) and the block gets the tokens renumbered into those rows;
        on exit the embedding's gradient is put back in terms of the whole table. Otherwise a no-op."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.tokens is not tokens or self.overlap is None:
            self.wait()  # the model reads the table itself
            yield tokens
            return
        ids, local = ahead.ids, ahead.local
        emb = self.overlap
        table, sparse = emb.weight, emb.sparse
        rows = nn.Parameter(ahead.values)
        emb._parameters["weight"] = rows  # the module reads self.weight: no copy
        # The few rows can take a dense gradient, far cheaper for autograd than a sparse one. It sums
        # a word's entries in token order, as densifying the sparse one does, but only within one
        # lookup, and clipping coalesces the sparse one (another order). So a model that looks the
        # embedding up twice (a bidirectional one reads the reversed tokens; lookups are counted) or
        # a clipped one keeps the sparse gradient: the sums must round as without overlap.
        dense_rows = self.rows_were_dense = not self.clipped and self._lookups == 1 and isinstance(emb, nn.Embedding)
        emb.sparse = sparse and not dense_rows
        calls: list[None] = []
        counting = emb.register_forward_pre_hook(lambda *_: calls.append(None))
        try:
            yield local
        finally:
            emb._parameters["weight"], emb.sparse = table, sparse
            counting.remove()
            self._lookups = len(calls)
        g = rows.grad
        if g is None:
            return
        if dense_rows:  # ids are sorted and distinct: a coalesced gradient (<pad>'s row is zero)
            table.grad = torch.sparse_coo_tensor(ids.unsqueeze(0), g, table.shape, is_coalesced=True,
                                                 check_invariants=False)
        else:  # the sparse gradient autograd gives the table, entry for entry
            table.grad = torch.sparse_coo_tensor(ids[g._indices()[0]].unsqueeze(0), g._values(), table.shape,
                                                 check_invariants=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None,  # type: ignore[override]
             next_tokens: Tensor | None = None) -> float | None:
        """One update. `next_tokens`: the next batch's tokens; with `overlap`, the embedding's update
        then runs on the background thread, its rows for next_tokens first."""
        self.wait()
        self._ahead = None
        table = self._overlap_param(next_tokens) if closure is None else None
        if table is not None and self._can_call_fused(skip=table):  # (table: next_tokens was given)
            self._start_background(table, next_tokens)  # first: the next forward waits for its rows
            self._fused_step(skip=table)
            return None
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

    def _can_call_fused(self, skip: Tensor | None = None) -> bool:
        """Whether the step can go straight to torch's fused kernel: fused, plain AdamW, every
        parameter with a gradient already has its state (after the first step), one device and dtype.
        `skip` (the overlapped embedding) needs its state only."""
        if self.defaults.get("fused") is not True:
            return False
        devices = set()
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return False
            for p in group["params"]:
                if p.grad is not None:
                    if p not in self.state or (p.grad.is_sparse and p is not skip):
                        return False
                    devices.add((p.device, p.dtype))
        return len(devices) == 1

    def _fused_step(self, skip: Tensor | None = None) -> None:
        """What torch.optim.AdamW(fused=True).step() computes, by the same kernel, without the ~0.2 ms
        of Python around it (grouping, state checks): about 5% of a batch-16 training step on a CPU.
        `skip`: the embedding left to _start_background."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and p is not skip]
            if not params:
                continue
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            _adamw(group, params, [p.grad for p in params], [s["exp_avg"] for s in states],
                   [s["exp_avg_sq"] for s in states], steps)

    def _overlap_param(self, next_tokens: Tensor | None) -> Tensor | None:
        """The embedding weight whose update goes to the background thread this step, or None."""
        emb = self.overlap
        if emb is None or next_tokens is None or self.lazy:
            return None
        weight = emb.weight
        # torch's kernel computes a partial vector (a tensor's last < 16 floats) in scalar code, which
        # could round differently: whole 64-byte rows keep the table and its gathered rows alike
        if weight.grad is None or not weight.grad.is_sparse or (weight.shape[1] * weight.element_size()) % 64:
            return None
        if getattr(emb, "padding_idx", None) not in (None, 0):  # renumbered tokens keep <pad> at 0
            return None
        return weight

    def _start_background(self, p: Tensor, next_tokens: Tensor) -> None:
        """The embedding `p`'s step: next_tokens' rows now, on copies (-> self._ahead, for the next
        forward); the whole table on the background thread, those rows included (to the same values:
        the kernel is elementwise)."""
        if self._worker is None:
            self._worker = _Worker()
        if not self._threads:  # the main thread lends one of its torch threads
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(self._threads - 1, 1))
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        # this step's settings: the schedule changes the group's lr before the thread is done
        settings = {k: group[k] for k in ("lr", "betas", "weight_decay", "eps")}
        state = self.state[p]
        state["step"] += 1
        table, grad, m, v, step = p.detach(), p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]
        flat = next_tokens.reshape(-1)
        ids, local = torch.unique(torch.cat([flat.new_zeros(1), flat]), return_inverse=True)
        rows = [x.index_select(0, ids) for x in (table, m, v)]  # before the table changes
        self._worker.submit(lambda: _adamw(settings, [table], [self._densify(p, grad)], [m], [v], [step]))
        # the rows' dense gradient, summed in the order _densify sums it; other words' entries go to
        # a spare last row (no boolean indexing: it would wait for a count)
        g_ids, g_values = grad._indices()[0], grad._values()
        n = ids.numel()
        pos = torch.searchsorted(ids, g_ids).clamp_(max=n - 1)
        pos = torch.where(ids[pos] == g_ids, pos, n)
        g_rows = g_values.new_zeros(n + 1, table.shape[1]).index_add_(0, pos, g_values)[:n]
        _adamw(settings, [rows[0]], [g_rows], [rows[1]], [rows[2]], [step])
        self._ahead = _Ahead(next_tokens, ids, local[1:].view_as(next_tokens), rows[0])

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


@torch.no_grad()  # grad mode is per thread: the background thread needs it off too
def _adamw(group: dict, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
           exp_avg_sqs: list[Tensor], steps: list[Tensor]) -> None:
    """torch's fused AdamW kernel with `group`'s settings; `steps` already counts this step."""
    beta1, beta2 = group["betas"]
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                        beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                        maximize=False, grad_scale=None, found_inf=None)


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
