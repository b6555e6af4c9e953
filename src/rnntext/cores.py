"""Sharing the CPU with other processes: how many threads to run, and how idle threads wait.

torch runs each operation's work on an OpenMP team (GNU libgomp in the CPU wheels). With as many threads
as cores and another busy process on one of them, every parallel region ends at a barrier that waits for
the thread the other process has preempted, while the waiting thread spins (libgomp, left alone: about
3 ms before it sleeps) on the core the late thread needs. So one thread per core is the fastest alone
and the slowest beside one busy process; one thread fewer than the cores would be the reverse. This
module chooses between them from what the machine is doing:

- `choose_threads`: the threads for the cores the other processes leave free, from two readings of
  /proc/stat (the CPU time of the cores this process may use, minus this process's own) and the cores
  this process may use (its affinity and its cgroup's CPU quota). Pure, so that tests can give it any
  machine; `Sampler` takes the readings; training/device.py applies the choice to torch, at the start and
  again as it runs (between batches, never inside an operation).
- `apply_wait_policy`: libgomp's spin before a waiting thread sleeps, shortened so that a thread waiting
  for a preempted one gives its core back soon. libgomp reads it from the environment once, when it is
  loaded (with torch), so the command line sets it before it imports torch; a process that sets its own
  OMP_WAIT_POLICY or GOMP_SPINCOUNT keeps them.

No torch here: the command line calls this before torch is imported."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Collection, MutableMapping
from dataclasses import dataclass
from pathlib import Path

# How often a running process looks again (seconds): long enough that a reading covers 100+ scheduler
# ticks per core, short enough that a process which starts beside it costs at most this much at the
# wrong thread count.
RECHECK_SECONDS = 1.0
# Hysteresis, in cores: the thread count changes only once the free cores have moved this far past the
# half-way point between two counts, so that a load near it does not flip the count every second.
HYSTERESIS = 0.15
# libgomp's spin (iterations, ~100 per microsecond) before a waiting thread sleeps, when the environment
# says nothing: its own default is 300,000 (~3 ms, longer than a scheduler's slice, so a thread waiting for
# a preempted one spins through the whole slice the late thread needs). Shorter spins waste less beside a
# busy process but sleep between the operations of a step when alone, and waking costs: this one was as
# fast as libgomp's alone and 15% faster beside a busy process at 2 threads (10,000: 6% slower alone,
# 25% faster beside; passive: 2x slower alone). docs/guides/sharing.md has the figures.
SPIN_COUNT = 30_000
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


# --- /proc readings (pure) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StatReading:
    """From /proc/stat: the non-idle ticks of the chosen cores (user, nice, system, irq, softirq and steal:
    time a hypervisor gave to another machine is not free either) and the runnable tasks right now."""

    busy_ticks: int
    procs_running: int | None


def parse_stat(text: str, cpus: Collection[int] | None = None) -> StatReading:
    """/proc/stat's text; `cpus`: the cores to count (None: the machine's total line)."""
    busy, running = 0, None
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu"):
            index = name[3:]
            if (cpus is None and index == "") or (cpus is not None and index.isdigit() and int(index) in cpus):
                fields = [int(v) for v in rest.split()]
                user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
                busy += user + nice + system + irq + softirq + steal  # guest time is inside user already
        elif name == "procs_running":
            running = int(rest)
    return StatReading(busy, running)


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2's cpu.max ("QUOTA PERIOD" or "max PERIOD"): the cores the quota allows, or None."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(affinity: int, quota: float | None) -> int:
    """The cores a process can keep busy: those it may run on, capped by its cgroup's quota (2.5 -> 3:
    a thread that gets part of a core still helps)."""
    return max(1, min(affinity, math.ceil(quota)) if quota else affinity)


@dataclass(frozen=True)
class Sample:
    """One look at the machine: when (monotonic seconds), the cores' busy time and this process's CPU time
    (seconds), and the runnable tasks then."""

    wall: float
    busy: float
    own: float
    procs_running: int | None = None


def others_load(before: Sample, after: Sample) -> float:
    """Cores the other processes kept busy between the two samples (this process's own time left out)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


def others_on_usable(others: float, cpus: int, usable: int) -> float:
    """The others' load that falls on this process's share: with a cgroup quota of `usable` cores out of
    the `cpus` it may run on, the others first fill the cpus - usable cores it could not use anyway (a
    container with 2 cores' quota on a busy 64-core host still has its 2)."""
    return max(0.0, others - max(0, cpus - usable))


def choose_threads(cores: int, others: float, current: int | None = None) -> int:
    """Threads for `cores` usable cores when the other processes keep `others` cores busy: the free cores,
    rounded, at least 1. From `current` threads, the count moves only past the hysteresis."""
    free = cores - others
    target = max(1, min(cores, math.floor(free + 0.5)))
    if current is None or target == current:
        return target
    # between current and target: stay unless the free cores are clearly nearer the target
    edge = (current + target) / 2
    if (target > current and free >= edge + HYSTERESIS) or (target < current and free <= edge - HYSTERESIS):
        return target
    return current


def first_guess(cores: int, online: int, procs_running: int | None) -> int:
    """Before a first window: the tasks runnable right now besides this one (when this process may use
    every core: otherwise they may run on cores it cannot use), else every core."""
    if procs_running is None or cores < online:
        return cores
    return choose_threads(cores, float(max(0, procs_running - 1)))


# --- the machine ------------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def affinity() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def machine_cores() -> int:
    """The cores this process can keep busy (affinity, cgroup v2 quota)."""
    cpus = affinity()
    n = len(cpus) if cpus else os.cpu_count() or 1
    cpu_max = _read("/sys/fs/cgroup/cpu.max")
    return usable_cores(n, parse_cpu_max(cpu_max) if cpu_max else None)


class Sampler:
    """Readings of this machine (Linux /proc/stat) over the cores this process may run on (`count` of
    them); `available` is False elsewhere."""

    def __init__(self) -> None:
        self.cpus = affinity()
        self.count = len(self.cpus) if self.cpus else os.cpu_count() or 1
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.online = os.cpu_count() or 1
        self.available = _read("/proc/stat") is not None

    def sample(self) -> Sample | None:
        text = _read("/proc/stat")
        if text is None:
            return None
        reading = parse_stat(text, self.cpus)
        return Sample(time.monotonic(), reading.busy_ticks / self.hz, time.process_time(), reading.procs_running)


# --- libgomp's wait policy ----------------------------------------------------------------------------

def apply_wait_policy(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set GOMP_SPINCOUNT=SPIN_COUNT in `environ` (default: this process's) unless it sets OMP_WAIT_POLICY or
    GOMP_SPINCOUNT itself, and only before torch is imported (libgomp reads it once, when torch loads it:
    later it would only reach child processes). True when it was set."""
    environ = os.environ if environ is None else environ
    if any(v in environ for v in WAIT_VARIABLES) or ("torch" in sys.modules and environ is os.environ):
        return False
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
