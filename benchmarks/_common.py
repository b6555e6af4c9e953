"""Shared helpers of the benchmark scripts: where the data is, what machine ran them, writing results."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def results_dir() -> Path:
    """benchmarks/results, or $RNNTEXT_BENCH_RESULTS (the tests write there)."""
    return Path(os.environ.get("RNNTEXT_BENCH_RESULTS") or RESULTS)
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ag_news_20k"


def data_dir(arg: str | None) -> str:
    """--data-dir, else $RNNTEXT_DATA_DIR, else ../shared/data/ag_news_20k beside the repository."""
    d = arg or os.environ.get("RNNTEXT_DATA_DIR") or str(DEFAULT_DATA)
    if not Path(d).is_dir():
        sys.exit(f"AG News data directory not found: {d} (pass --data-dir with train.csv[.gz] and test.csv[.gz])")
    return d


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int | None = None) -> dict[str, Any]:
    """What the figures were measured on; every results JSON carries it."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    return info


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def peak_rss_children_mb() -> float:
    """Largest resident set of any finished child process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def quiet_log(_: str) -> None:
    pass
