"""CPU fast path of the optimiser: AdamW with the word embedding's gradient kept sparse.

A batch touches a few hundred of the vocabulary's words, yet autograd's dense embedding gradient
is a fresh vocabulary x embed array, zero-filled and then scattered into at every step. On a CPU
the embedding therefore produces a sparse gradient, and the optimiser either
- scatters it into a dense buffer it keeps, zeroing only the previous step's rows, then runs the
  usual dense fused AdamW: the same update as with autograd's dense gradient; or
- with lazy updates (--lazy-embedding) updates only the rows of the batch's words: their moments,
  weight decay and step (LazyAdam, as in TensorFlow Addons; torch's SparseAdam without weight
  decay). Dense Adam also moves rows whose gradient is zero (their moments decay), so this is a
  different optimiser, not the same one made faster.
Once every parameter has its state, a step calls torch's fused AdamW kernel directly, without
`torch.optim.AdamW.step`'s Python around it.

The dense update of a big embedding is a memory-bound pass over the whole table, yet the next batch
reads only a few hundred of its rows. With `overlap`, step() updates the whole table on a second
thread while the next batch trains: it first computes the next batch's rows on copies (the same
fused kernel, elementwise, so the same values), and hooks on the embedding module make the next
forward read those rows. The result is bit-identical to the sequential update (tests); the wall
time of the pass moves off the critical path. The trainer only passes its batches through
`look_ahead()` so that step() knows the next batch.

Everything here is reached through rnntext.fast, which checks that the private torch calls exist and
falls back to torch.optim.AdamW otherwise."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
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
    rows: nn.Parameter | None = None  # what the forward reads in place of the table (its first lookup makes it)
    dense: bool = False  # whether the rows take a dense gradient (decided at the first lookup)


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
    decides how the rows read ahead take their gradient (_before_lookup)."""

    def __init__(self, params: Iterable[Tensor], *, lazy: bool = False, overlap: nn.Module | None = None,
                 clipped: bool = False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.lazy = lazy
        # parameter -> (dense gradient buffer, rows written into it by the last step)
        self._dense_grads: dict[Tensor, tuple[Tensor, Tensor]] = {}
        self.overlap = overlap
        self._worker: _Worker | None = None
        self._ahead: _Ahead | None = None
        self._next_tokens: Tensor | None = None  # the batch after the current one (look_ahead)
        self._threads = 0  # the main thread's torch threads while it has them all (0: it has)
        self.clipped = clipped
        self._lookups = 0  # how many times the last overlapped forward looked the embedding up
        self._lookups_now = 0
        self._swapped: tuple[Tensor, bool] | None = None  # the table and sparse flag while a lookup reads rows
        self._hooks: list[Any] = []  # on the overlapped embedding, while updates run in the background
        self.rows_were_dense = False  # whether the rows took a dense gradient in the last overlapped step

    def look_ahead(self, batches: Iterable[Any]) -> Iterator[Any]:
        """`batches` (objects with .tokens), unchanged; meanwhile step() learns the batch that follows
        the one being trained, so that it can update that batch's rows ahead. When the batches end
        (or the loop is left), the background update is finished and its thread given back."""
        it = iter(batches)
        try:
            following = next(it, None)
            while following is not None:
                batch, following = following, next(it, None)
                self._next_tokens = None if following is None else following.tokens
                yield batch
        finally:
            self._next_tokens = None
            self.close()

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
        thread it lent (so that evaluation has them all)."""
        self.wait()
        self._ahead = None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._threads:
            torch.set_num_threads(self._threads)
            self._threads = 0

    def _before_lookup(self, emb: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook of the overlapped embedding: with rows updated ahead for this batch, the
        lookup reads them (the table itself may still be being updated in the background), with its
        tokens renumbered into them. Otherwise it waits for the table."""
        ahead = self._ahead
        if ahead is None or not torch.is_grad_enabled():
            self.wait()
            return None
        tokens = args[0]
        if tokens is ahead.tokens:
            local = ahead.local
        else:  # another lookup of the same words (a bidirectional model reads them reversed)
            local = torch.searchsorted(ahead.ids, tokens).clamp_(max=len(ahead.ids) - 1)
            if not bool((ahead.ids[local] == tokens).all()):
                raise RuntimeError("the overlapped embedding update was given the wrong next batch")
        if ahead.rows is None:  # this step's first lookup
            ahead.rows = nn.Parameter(ahead.values)
            ahead.rows.register_post_accumulate_grad_hook(self._rows_grad)
            self._lookups_now = 0
            # The few rows can take a dense gradient, far cheaper for autograd than a sparse one. It
            # sums a word's entries in token order, as densifying the sparse one does, but only within
            # one lookup, and clipping coalesces the sparse one (another order). So a model that looks
            # the embedding up twice (counted in the previous step) or a clipped one keeps the sparse
            # gradient: the sums must round as without overlap.
            ahead.dense = self.rows_were_dense = (not self.clipped and self._lookups == 1
                                                  and isinstance(emb, nn.Embedding))
        self._swapped = (emb._parameters["weight"], emb.sparse)
        emb._parameters["weight"] = ahead.rows  # the module reads self.weight: no copy
        emb.sparse = emb.sparse and not ahead.dense
        self._lookups_now += 1
        return (local, *args[1:])

    def _after_lookup(self, emb: nn.Module, args: tuple, output: Tensor) -> None:
        """Forward hook: the table is the module's weight again (autograd keeps the rows it read)."""
        if self._swapped is not None:
            emb._parameters["weight"], emb.sparse = self._swapped
            self._swapped = None

    def _rows_grad(self, rows: Tensor) -> None:
        """After backward: the rows' gradient as the table's, the sparse gradient autograd would
        have given the table (ids are sorted and distinct: a dense one becomes a coalesced one)."""
        ahead, table = self._ahead, self.overlap.weight
        g = rows.grad
        if ahead is None or g is None:
            return
        if not g.is_sparse:  # (<pad>'s row is zero)
            table.grad = torch.sparse_coo_tensor(ahead.ids.unsqueeze(0), g, table.shape, is_coalesced=True,
                                                 check_invariants=False)
        else:
            table.grad = torch.sparse_coo_tensor(ahead.ids[g._indices()[0]].unsqueeze(0), g._values(), table.shape,
                                                 check_invariants=False)
        rows.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update. With `overlap` and a next batch (look_ahead), the embedding's update runs on
        the background thread, its rows for the next batch first."""
        self.wait()
        if self._ahead is not None and self._ahead.rows is not None:
            self._lookups = self._lookups_now  # lookups of the forward that read the rows ahead
        self._ahead = None
        next_tokens = self._next_tokens
        table = self._overlap_param(next_tokens) if closure is None else None
        if table is not None and self._can_call_fused(skip=table, sparse=True):  # (table: next_tokens was given)
            # the other tables (a wide part's, the other members' of a members model) the usual way:
            # densified, then in the fused step with the rest
            others = [(p, p.grad) for g in self.param_groups for p in g["params"]
                      if p is not table and p.grad is not None and p.grad.is_sparse]
            try:
                for p, grad in others:
                    p.grad = self._densify(p, grad)
                self._start_background(table, next_tokens)  # first: the next forward waits for its rows
                self._fused_step(skip=table)
            finally:
                for p, grad in others:
                    p.grad = grad
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

    def _can_call_fused(self, skip: Tensor | None = None, sparse: bool = False) -> bool:
        """Whether the step can go straight to torch's fused kernel: fused, plain AdamW, every
        parameter with a gradient already has its state (after the first step), one device and dtype.
        `skip` (the overlapped embedding) needs its state only; `sparse`: the caller densifies the other
        sparse gradients first."""
        if self.defaults.get("fused") is not True:
            return False
        devices = set()
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return False
            for p in group["params"]:
                if p.grad is not None:
                    if p not in self.state or (p.grad.is_sparse and p is not skip and not sparse):
                        return False
                    devices.add((p.device, p.dtype))
        return len(devices) == 1

    def _fused_step(self, skip: Tensor | None = None) -> None:
        """What torch.optim.AdamW(fused=True).step() computes, by the same kernel, without the Python
        around it (grouping, state checks), which is a visible share of a small-batch step on a CPU.
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
        if not self._hooks:
            self._hooks = [self.overlap.register_forward_pre_hook(self._before_lookup),
                           self.overlap.register_forward_hook(self._after_lookup)]
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
    """Switch the model's lookup tables (its embedding, and a wide part's table: model.tables()) to
    sparse gradients where they pay: a CPU, one process (DistributedDataParallel averages dense
    gradients), and a table that is trained. Whether any was switched."""
    tables = model.tables() if hasattr(model, "tables") else [getattr(model, "embedding", None)]
    if device.type != "cpu" or distributed:
        return False
    switched = False
    for emb in tables:
        if emb is not None and hasattr(emb, "sparse") and emb.weight.requires_grad:
            emb.sparse = switched = True
    return switched


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
