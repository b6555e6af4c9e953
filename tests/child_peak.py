"""The peak resident memory of a child process itself.

wait4's ru_maxrss does not give it: a child's counts start from its parent's resident memory at the fork
(or vfork) and keep it through exec, so under a test process of 2 GB every child "peaks" at 2 GB and a
memory bound checked that way proves nothing. The child here runs its module under a prelude that writes
VmHWM, the high-water mark of its own memory map (made afresh at exec), as it exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PRELUDE = """\
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["RNNTEXT_TEST_PEAK_FILE"], "w") as f:
        f.write(kb)
atexit.register(_peak)
sys.argv[0] = "rnntext"
runpy.run_module("rnntext", run_name="__main__", alter_sys=True)
"""


def rnntext_command(args: list[str]) -> list[str]:
    """`python -m rnntext ARGS`, with the prelude that records the peak."""
    return [sys.executable, "-c", PRELUDE, *args]


def peak_env(peak_file: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: where it writes its peak (removed first, so a stale one is never read)."""
    peak_file.unlink(missing_ok=True)
    return {**(os.environ if env is None else env), "RNNTEXT_TEST_PEAK_FILE": str(peak_file)}


def peak_mb(peak_file: Path) -> float:
    """The peak the child wrote, in MB; NaN if it wrote none (it was killed before its exit handlers ran)."""
    return int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")


def run_with_peak(args: list[str], peak_file: Path, **popen: Any) -> tuple[subprocess.CompletedProcess, float]:
    """`rnntext ARGS` to completion: (the completed process, its own peak resident memory in MB)."""
    proc = subprocess.run(rnntext_command(args), env=peak_env(peak_file, popen.pop("env", None)), **popen)
    return proc, peak_mb(peak_file)
