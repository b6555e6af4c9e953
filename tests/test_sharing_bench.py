"""benchmarks/sharing.py runs end to end on a small slice: each policy in fresh worker processes, alone
and beside a busy process, and writes its JSON and table."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_sharing_benchmark_times_both_policies_alone_and_beside_a_busy_process(
        trained_run: Path, ag_news_small: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("RNNTEXT_BENCH_RESULTS", str(tmp_path))
    sharing = importlib.import_module("sharing")
    sharing.main(["--data-dir", str(ag_news_small), "--run-dir", str(trained_run), "--tasks", "predict",
                  "--texts", "200", "--repeats", "1"])
    out = json.loads((tmp_path / "sharing.json").read_text())
    assert {(r["policy"], r["situation"]) for r in out["runs"]} == {
        (p, s) for p in ("old", "new") for s in sharing.SITUATIONS}
    assert all(r["seconds"] > 0 and r["threads_end"] >= 1 for r in out["runs"])
    # the old policy runs every core whatever the machine does
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert all(r["threads_end"] == cores for r in out["runs"] if r["policy"] == "old")
    assert {e["policy"] for e in out["summary"]} == {"old", "new"}
    assert all("slowdown" in e for e in out["summary"])
    table = (tmp_path / "sharing.md").read_text()
    assert "| predict | new | auto | rnntext |" in table and "beside the busy process" in table
