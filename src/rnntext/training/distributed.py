"""Data-parallel training on torch.distributed: the process group, which batches and rows each
rank gets, all-reduced metrics, and the `--nproc` launcher.

A process is a rank of a distributed run when torchrun (or any launcher) set WORLD_SIZE > 1, RANK
and LOCAL_RANK in its environment; otherwise everything here is a no-op and training runs in one
process exactly as before. Backend: NCCL when the device is a GPU (device cuda:LOCAL_RANK), gloo on
the CPU. Every rank trains on its own shard of the globally identical batch order; gradients are
averaged by DistributedDataParallel, so the effective batch is batch_size x world_size."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data.encode import Encoded
from ..errors import CheckpointError, ConfigError, RnnTextError

T = TypeVar("T")

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# How gloo / NCCL failures read when they surface as a plain RuntimeError.
_COMM_MARKERS = ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "Timed out", "ProcessGroup")


class DistributedError(RnnTextError):
    """A collective failed: another rank died, hung past the timeout, or the network broke."""


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"distributed run: environment variable {name} is not set (launch with torchrun)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"distributed run: environment variable {name}={value!r} is not an integer") from None


def launched() -> bool:
    """True inside a launcher's worker process of a run with more than one process."""
    return "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1


def threads_per_rank() -> int:
    """CPU threads for this process: the cores shared among the ranks on this machine, at least 1
    (a launcher that does not say how many ranks share this machine: assume all of them do)."""
    local_world = _env_int("LOCAL_WORLD_SIZE", _env_int("WORLD_SIZE")) if launched() else 1
    return max(1, (os.cpu_count() or 1) // max(local_world, 1))


@dataclass
class DistContext:
    """This process's place in the run; world_size 1 means plain single-process training."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: Sequence[T]) -> list[T]:
        """Rank r's batches r, r+N, r+2N, ..., cut to the same count on every rank: an extra batch
        on some ranks would leave them waiting forever in the gradient all-reduce."""
        if not self.active:
            return list(batches)
        per_rank = len(batches) // self.world_size
        if per_rank == 0:
            raise ConfigError(f"{len(batches)} batches per epoch cannot feed {self.world_size} processes; "
                              "use a smaller --batch-size or fewer processes")
        return list(batches[self.rank::self.world_size][:per_rank])

    def _tensor(self, values: Sequence[float] | Tensor, dtype: torch.dtype) -> Tensor:
        # NCCL reduces only GPU tensors; gloo takes CPU tensors.
        return torch.as_tensor(values, dtype=dtype).to(self.device if self.backend == "nccl" else "cpu")

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (float64, so counts stay exact)."""
        if not self.active:
            return list(values)
        t = self._tensor(values, torch.float64)
        self.all_reduce(t, "all-reduce of the metrics")
        return t.cpu().tolist()

    def all_reduce(self, t: Tensor, what: str) -> None:
        """Sum `t` over the ranks in place, and return only once gloo's worker thread has let go of it.

        That thread drops its reference a moment after the collective completes, and dropping the last
        C++ reference to a tensor Python also holds takes the GIL. If the interpreter is shutting down
        by then (a rank whose last step was this collective), the thread is killed inside that call and
        the process aborts with "terminate called without an active exception". destroy_process_group
        would join the thread, but once DistributedDataParallel has held the group it stays alive.
        While C++ holds the tensor, sys.getrefcount counts one more (the reference the tensor keeps on
        its Python object), so sleeping until the count is back frees the thread to finish."""
        held = sys.getrefcount(t)
        with collective(what, self):
            dist.all_reduce(t)
        deadline = time.monotonic() + 10.0
        while sys.getrefcount(t) > held and time.monotonic() < deadline:
            time.sleep(0.0005)  # releases the GIL the thread is waiting for

    def barrier(self, what: str = "barrier") -> None:
        if self.active:
            with collective(what, self):
                dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: DDP around `model` when distributed (the same parameters, so the plain
        `model` keeps state_dict keys without the 'module.' prefix), else `model` itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        with collective("broadcast of the initial weights", self):
            return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None)

    def predict_sharded(self, data: Encoded, predict: Callable[[Encoded], Tensor], width: int | None = None) -> Tensor:
        """`predict(rows) -> class ids` over all of `data`, each rank doing every N-th row, the ids
        gathered on every rank (so validation and test run once, not N times). `width`: predict gives
        [rows, width] integers (multi-label decisions) instead."""
        if not self.active:
            return predict(data)
        rows = torch.arange(self.rank, len(data), self.world_size)
        full = torch.zeros(len(data), *(() if width is None else (width,)), dtype=torch.long)
        if rows.numel():
            full[rows] = predict(data.subset(rows)).cpu().long() + 1  # 0 marks "another rank's row"
        t = self._tensor(full, torch.long)
        self.all_reduce(t, "all-reduce of the predictions")
        return t.cpu() - 1

    def comm_error(self, e: BaseException) -> DistributedError | None:
        """A one-line error for a failure of the process group seen outside our own collectives (DDP's
        gradient all-reduce raises a plain RuntimeError from gloo or NCCL); None for anything else."""
        text = str(e)
        if not self.active or not (isinstance(e, dist.DistError) or any(m in text for m in _COMM_MARKERS)):
            return None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return DistributedError(f"rank {self.rank}/{self.world_size}: the process group failed ({first}); another "
                                "process probably died or hung past --dist-timeout")

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (so all ranks stop at the same step)."""
        return bool(self.sum(float(flag))[0]) if self.active else flag

    def gather_rng(self, state: dict[str, Any]) -> dict[str, Any]:
        """Every rank's generator state, gathered on rank 0 for its checkpoint (a collective: all ranks
        call it). Each rank draws different dropout masks, so a resume must give each its own back."""
        if not self.active:
            return state
        states: list[Any] | None = [None] * self.world_size if self.is_main else None
        with collective("gather of the RNG states", self):
            dist.gather_object(state, states, dst=0)
        # gather_object's tensors are its own, so all_reduce cannot wait on them; a Ctrl-C'd rank exits
        # right after this gather, and a settled all-reduce queued behind it narrows the window in which
        # gloo's worker is still releasing them (see all_reduce)
        self.all_reduce(self._tensor([0.0], torch.float64), "all-reduce after the gather")
        return {**state, "ranks": states} if states is not None else state

    def rank_rng(self, rng: dict[str, Any], where: str) -> dict[str, Any]:
        """This rank's generator state out of a checkpoint's (see gather_rng)."""
        ranks = rng.get("ranks")
        if not self.active or ranks is None:
            return rng
        if not isinstance(ranks, list) or len(ranks) != self.world_size or not isinstance(ranks[self.rank], dict):
            raise CheckpointError(f"the checkpoint holds RNG states for {len(ranks) if isinstance(ranks, list) else 0}"
                                  f" processes, this run has {self.world_size}", where)
        return ranks[self.rank]

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def collective(what: str, ctx: DistContext) -> Iterator[None]:
    """Turn a failed collective into one line that says what to look at."""
    try:
        yield
    except dist.DistError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"rank {ctx.rank}/{ctx.world_size}: {what} failed ({first}); another process "
                               "probably died or hung past --dist-timeout") from e


def setup(device: torch.device, timeout_s: float = 300.0) -> DistContext:
    """Join the process group when a launcher started this process, else a single-process context.

    On a GPU each rank takes cuda:LOCAL_RANK (one GPU per process) and NCCL; on the CPU, gloo.
    `timeout_s` bounds how long a collective waits for a rank that died or hangs."""
    if not launched():
        return DistContext(device=device)
    world, rank, local_rank = (_env_int(v) for v in ENV_VARS)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"rank {rank} has LOCAL_RANK {local_rank}, but this machine has {count} GPUs; "
                              f"start at most {count} processes per node, or use --device cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                    device_id=device if backend == "nccl" else None)
        except dist.DistError as e:
            raise DistributedError(f"rank {rank}/{world}: cannot join the process group ({e}); check "
                                   "MASTER_ADDR/MASTER_PORT or --rdzv-endpoint") from e
    return DistContext(world, rank, local_rank, device, backend)


def seed_rank(seed: int, ctx: DistContext) -> None:
    """Distinct, reproducible dropout randomness per rank (the same masks on every rank would make
    N ranks drop the same units). Single-process runs keep the plain seed."""
    if ctx.active:
        torch.manual_seed(seed * 1_000_003 + 7919 * (ctx.rank + 1))


# --- the `rnntext train --nproc N` shortcut -------------------------------------------------------

def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch_command(argv: Sequence[str], nproc: int) -> list[str]:
    """torchrun on this machine running `rnntext <argv>` (less --nproc) in `nproc` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "rnntext", *_without_nproc(argv)]


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run the same command in `nproc` processes via torchrun; its exit status. torchrun's agent
    stops the other workers as soon as one fails, so a dead rank cannot leave the rest hanging."""
    if launched():
        raise ConfigError("--nproc starts its own processes; under torchrun leave it out")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the rnntext package
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(launch_command(argv, nproc), env=env)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # torchrun got the Ctrl-C too and passes it on: the workers checkpoint and stop
        proc.wait()
        print("rnntext: interrupted (a run with --out saved a checkpoint: see above how to resume it)",
              file=sys.stderr)
        return 130
    if rc != 0:
        print(f"rnntext: error: {nproc}-process training failed (torchrun exit status {rc}); the first failure "
              "is under 'Root Cause' above", file=sys.stderr)
    return rc
