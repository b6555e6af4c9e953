"""Sharing the CPU (rnntext.cores, training/device.py): the thread count chosen from /proc readings of a
machine that others use, the count followed as a process runs, results that do not depend on it, and
libgomp's wait policy set before torch loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnntext import cores
from rnntext.cores import Sample, choose_threads, others_load, parse_stat

# /proc/stat of a 2-core machine: cpu0 user nice system idle iowait irq softirq steal guest guest_nice
STAT_0 = """cpu  3000 100 500 9000 50 0 20 10 0 0
cpu0 1000 50 200 5000 25 0 10 5 0 0
cpu1 2000 50 300 4000 25 0 10 5 0 0
intr 123 0 0
ctxt 456
procs_running 3
procs_blocked 0
"""
# one second later: cpu0 busy all of it (100 ticks: 90 user, 10 system), cpu1 half of it (45 user, 5 steal)
STAT_1 = """cpu  3135 100 510 9050 50 0 20 15 0 0
cpu0 1090 50 210 5000 25 0 10 5 0 0
cpu1 2045 50 300 4050 25 0 10 10 0 0
intr 130 0 0
procs_running 2
"""


def test_parse_stat_counts_busy_ticks_of_the_chosen_cores() -> None:
    assert parse_stat(STAT_0) == cores.StatReading(3000 + 100 + 500 + 20 + 10, 3)  # the total line
    assert parse_stat(STAT_0, {0}).busy_ticks == 1000 + 50 + 200 + 10 + 5
    assert parse_stat(STAT_0, {0, 1}).busy_ticks == 1265 + 2365
    assert parse_stat(STAT_1, {1}).busy_ticks - parse_stat(STAT_0, {1}).busy_ticks == 50  # steal counts as busy
    assert parse_stat("cpu0 1 2 3\n", {0}) == cores.StatReading(6, None)  # an old kernel's short line


def sample(wall: float, stat: str, own: float, cpus: set[int] | None = None, hz: int = 100) -> Sample:
    reading = parse_stat(stat, cpus)
    return Sample(wall, reading.busy_ticks / hz, own, reading.procs_running)


def test_others_load_leaves_this_process_out() -> None:
    before, after = sample(10.0, STAT_0, own=2.0, cpus={0, 1}), sample(11.0, STAT_1, own=2.5, cpus={0, 1})
    # 1.5 cores busy in that second, half a core of it this process's own: the others kept 1.0 busy
    assert others_load(before, after) == pytest.approx(1.0)
    assert choose_threads(2, others_load(before, after)) == 1
    # the same second with all of it this process's own: nothing else runs, every core for it
    assert others_load(before, sample(11.0, STAT_1, own=3.5, cpus={0, 1})) == 0.0
    assert choose_threads(2, 0.0) == 2
    assert others_load(before, before) == 0.0  # no time passed: no reading


@pytest.mark.parametrize(("cores_", "others", "threads"), [
    (2, 0.0, 2),    # alone
    (2, 0.05, 2),   # daemons
    (2, 1.0, 1),    # one busy process (`yes > /dev/null`)
    (2, 0.67, 1),   # the same, measured while this process ran 2 threads (it gets 2/3 of a core)
    (2, 0.3, 2),    # an occasional one
    (2, 3.0, 1),    # three busy: at least one thread
    (16, 4.2, 12),  # a bigger machine: the free cores, rounded
    (16, 0.0, 16),
    (1, 0.0, 1),
])
def test_choose_threads_takes_the_free_cores(cores_: int, others: float, threads: int) -> None:
    assert choose_threads(cores_, others) == threads


def test_choose_threads_does_not_flip_near_the_edge() -> None:
    # free 1.55 cores: 2 threads from scratch, but from 1 thread not yet (within the hysteresis of 1.5)
    assert choose_threads(2, 0.45) == 2
    assert choose_threads(2, 0.45, current=1) == 1
    assert choose_threads(2, 0.3, current=1) == 2  # free 1.7: clearly
    assert choose_threads(2, 0.55, current=2) == 2  # free 1.45: stays at 2 ...
    assert choose_threads(2, 0.7, current=2) == 1   # ... until clearly below


def test_usable_cores_and_cgroup_quota() -> None:
    assert cores.parse_cpu_max("max 100000\n") is None
    assert cores.parse_cpu_max("150000 100000\n") == 1.5
    assert cores.usable_cores(16, None) == 16
    assert cores.usable_cores(16, 1.5) == 2  # a part of a core still helps
    assert cores.usable_cores(2, 8.0) == 2
    assert cores.usable_cores(4, 0.2) == 1


def test_a_quota_on_a_busy_host_keeps_its_cores() -> None:
    # a container with 2 cores' quota on a 64-core host that others keep 30 cores busy: its 2 are free
    assert choose_threads(2, cores.others_on_usable(30.0, 64, 2)) == 2
    assert choose_threads(2, cores.others_on_usable(63.0, 64, 2)) == 1  # the host is full
    assert cores.others_on_usable(1.0, 2, 2) == 1.0  # no quota: all of it


def test_first_guess_counts_the_runnable_tasks() -> None:
    assert cores.first_guess(2, 2, procs_running=1) == 2  # only this process
    assert cores.first_guess(2, 2, procs_running=2) == 1  # one more
    assert cores.first_guess(2, 16, procs_running=9) == 2  # 2 of 16 cores: the count says nothing about them
    assert cores.first_guess(2, 2, procs_running=None) == 2


def test_this_machine_gives_a_reading() -> None:
    sampler = cores.Sampler()
    if not sampler.available:
        pytest.skip("no /proc/stat here")
    s = sampler.sample()
    assert s is not None and s.busy > 0 and s.own > 0
    assert 1 <= cores.machine_cores() <= (os.cpu_count() or 1)


class ScriptedMachine:
    """Readings of a machine that goes from idle to one busy process and back (what /proc/stat would say)."""

    online = count = 2

    def __init__(self, others: list[float]):
        self.others, self.wall, self.busy = others, 100.0, 0.0

    def sample(self) -> Sample:
        if self.wall > 100.0:
            self.busy += self.others.pop(0) * 1.0  # this process's own time is 0 here
        sample = Sample(self.wall, self.busy, 0.0, 1)
        self.wall += 1.0
        return sample


def test_auto_threads_follow_the_free_cores() -> None:
    from rnntext.training.device import AutoThreads

    before = torch.get_num_threads()
    try:
        machine = ScriptedMachine([0.0, 1.0, 1.0, 0.0])
        auto = AutoThreads(machine, usable=2)  # type: ignore[arg-type]
        assert auto.threads == 2 and torch.get_num_threads() == 2
        assert auto.update(now=100.5) == 2  # within RECHECK_SECONDS: not looked at
        assert [auto.update(now=t) for t in (101.0, 102.0, 103.0, 104.0)] == [2, 1, 1, 2]
        assert auto.changes == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _libgomp():  # torch's OpenMP runtime, to ask a thread for its own thread count (OpenMP's is per thread)
    import ctypes
    import glob

    found = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*"))
    return ctypes.CDLL(found[0]) if found else None


def test_the_thread_that_runs_the_model_gets_the_new_count(monkeypatch) -> None:
    """OpenMP's thread count belongs to the thread that sets it: torch.set_num_threads on the main thread
    does not reach a server's model thread that has already run an operation. adapt_threads runs on the
    thread that runs the model (between its batches), so that thread's next operation uses the new count."""
    from concurrent.futures import ThreadPoolExecutor

    from rnntext.training import device

    lib = _libgomp()
    if lib is None:
        pytest.skip("torch here does not run on GNU libgomp")
    x = torch.randn(256, 256)
    before = torch.get_num_threads()
    model_thread = ThreadPoolExecutor(1)
    try:
        monkeypatch.setattr(device, "_auto", device.AutoThreads(ScriptedMachine([1.0]), usable=2))

        def ask() -> int:
            (x @ x).sum()
            return lib.omp_get_max_threads()

        def adapt_then_ask() -> int:
            device.adapt_threads()  # a second later: one busy process came
            return ask()

        assert model_thread.submit(ask).result() == 2
        assert model_thread.submit(adapt_then_ask).result() == 1
    finally:
        model_thread.shutdown()
        torch.set_num_threads(before)


@pytest.mark.parametrize("model", ["gru", "lstm", "bag"])
def test_training_is_the_same_whatever_the_threads(model: str, ag_news_small: Path, monkeypatch) -> None:
    """The thread count changes between steps as the machine's load does: for these models the weights
    come out bit for bit the same (a CNN's convolution sums in an order that depends on it: docs)."""
    import rnntext.training.trainer as trainer_module
    from conftest import make_tiny_config

    def train(flip: bool) -> dict[str, torch.Tensor]:
        steps = [0]

        def adapt() -> None:  # what adapt_threads does when the free cores change, at every step
            steps[0] += 1
            torch.set_num_threads(1 + steps[0] % 2)

        monkeypatch.setattr(trainer_module, "adapt_threads", adapt if flip else lambda: None)
        cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), model__model=model,
                               model__embed_dim=128, model__hidden_dim=128, train__epochs=1, train__epoch_size=3,
                               train__batch_size=128)
        t = trainer_module.Trainer(cfg, None, progress=False, log=lambda s: None)
        t.run_epoch(0)
        return {k: v.clone() for k, v in t.model.state_dict().items()}

    before = torch.get_num_threads()
    try:
        fixed, flipped = train(False), train(True)
    finally:
        torch.set_num_threads(before)
    assert fixed.keys() == flipped.keys()
    assert all(torch.equal(fixed[k], flipped[k]) for k in fixed)


def _omp_display(env_extra: dict[str, str], run: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in cores.WAIT_VARIABLES}
    env.update(env_extra, OMP_DISPLAY_ENV="VERBOSE")  # libgomp prints what it read, once, when it loads
    out = subprocess.run([sys.executable, "-m", "rnntext", "predict", str(run), "--threads", "1", "Stocks fall"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    if "GOMP_SPINCOUNT" not in out.stderr:
        pytest.skip("torch here does not run on GNU libgomp")
    return out.stderr


def test_wait_policy_is_set_before_torch_loads_libgomp(trained_run: Path) -> None:
    stderr = _omp_display({}, trained_run)
    assert f"GOMP_SPINCOUNT = '{cores.SPIN_COUNT}'" in stderr
    # a process that says its own policy keeps it
    stderr = _omp_display({"OMP_WAIT_POLICY": "ACTIVE"}, trained_run)
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in stderr and f"GOMP_SPINCOUNT = '{cores.SPIN_COUNT}'" not in stderr


def test_apply_wait_policy_leaves_a_given_policy_alone() -> None:
    env: dict[str, str] = {}
    assert cores.apply_wait_policy(env) and env == {"GOMP_SPINCOUNT": str(cores.SPIN_COUNT)}
    for given in ({"OMP_WAIT_POLICY": "passive"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(given)
        assert not cores.apply_wait_policy(env) and env == given
