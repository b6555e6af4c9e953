"""Where a model runs: the device (auto: CUDA when present) and the CPU threads.

Threads: `set_threads(N)` fixes N; `set_threads("auto")` lets the count follow the cores that other
processes leave free (rnntext.cores): chosen now, and looked at again by `adapt_threads()`, which the
training loop and the prediction loop call between batches (cheap: a clock read, and once a second a
read of /proc/stat)."""

from __future__ import annotations

import time

import torch

from .. import cores
from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    return device


class AutoThreads:
    """The thread count of a process that shares its cores: from the free cores, updated at most once per
    RECHECK_SECONDS, over the window since the last look (this process's own CPU time left out)."""

    def __init__(self, sampler: cores.Sampler | None = None, usable: int | None = None):
        """`sampler` and `usable` (the cores this process can use): this machine's unless given (tests)."""
        self.sampler = sampler or cores.Sampler()
        self.cores = usable or cores.machine_cores()
        self.last = self.sampler.sample()
        self.threads = cores.first_guess(self.cores, self.sampler.online,
                                         self.last.procs_running if self.last else None)
        self.changes = 0
        torch.set_num_threads(self.threads)

    def update(self, now: float | None = None) -> int:
        """Look again when RECHECK_SECONDS have passed; the thread count, changed if the free cores did."""
        now = time.monotonic() if now is None else now
        if self.last is None or now - self.last.wall < cores.RECHECK_SECONDS:
            return self.threads
        sample = self.sampler.sample()
        if sample is None:
            return self.threads
        others = cores.others_on_usable(cores.others_load(self.last, sample), self.sampler.count, self.cores)
        threads = cores.choose_threads(self.cores, others, self.threads)
        self.last = sample
        if threads != self.threads:
            self.threads, self.changes = threads, self.changes + 1
            torch.set_num_threads(threads)
        return threads


AUTO = "auto"
_auto: AutoThreads | None = None


def set_threads(threads: int | str) -> None:
    """N: exactly N intra-op threads; "auto": as many as the cores other processes leave free, followed
    as it runs (adapt_threads)."""
    global _auto
    if threads == AUTO:
        _auto = AutoThreads()
        return
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    _auto = None
    torch.set_num_threads(threads)


def adapt_threads() -> None:
    """Between batches: follow the free cores, when the thread count is automatic (set_threads("auto")).
    torch's thread count is per calling thread (OpenMP's), so the thread that runs the model calls this."""
    if _auto is not None:
        _auto.update()


def auto_threads() -> AutoThreads | None:
    """The automatic thread count's state, or None when the count is fixed (or left to torch)."""
    return _auto
