"""Shared helpers of the benchmark scripts: where the data is, what machine ran them, writing results
(benchmarks/results/NAME.json, and NAME.md: the tables the documentation shows)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
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


# ---------------------------------------------------------------------------------------- markdown
# Each benchmark script has a `markdown(results) -> str` that turns the payload of its JSON into the
# tables of NAME.md; it runs when the benchmark writes its JSON, and benchmarks/render_markdown.py runs
# it again on the committed JSON files (and copies the tables into docs/benchmarks.md).


def md_cell(value: Any) -> str:
    """A value as a table cell: '|' escaped, line breaks joined, None as an empty cell."""
    if value is None:
        return ""
    return " ".join(str(value).split("\n")).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; `align` has one letter per column, l(eft) or r(ight) (default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError("every row and the alignment need one entry per column")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_summary(info: dict[str, Any] | None) -> str:
    """One line: 'AMD EPYC, 2 cores, 2 threads, torch 2.13.0+cpu, Python 3.11.7; 2026-11-27 21:58 UTC'."""
    if not info:
        return "machine not recorded"
    parts = [str(info.get("cpu") or "unknown CPU")]
    if info.get("gpu"):
        parts.append(str(info["gpu"]))
    if info.get("cores"):
        parts.append(f"{info['cores']} cores")
    if info.get("threads"):
        parts.append(f"{info['threads']} thread{'' if info['threads'] == 1 else 's'}")
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    if info.get("python"):
        parts.append(f"Python {info['python']}")
    text = ", ".join(parts)
    if info.get("date_utc"):
        text += f"; {str(info['date_utc'])[:16]} UTC"
    load = info.get("load_average_at_start")
    if load:
        text += f"; load average {load[0]:.1f} at the start"
    return text


def md_header(command: str | None, info: dict[str, Any] | None, what: str = "") -> str:
    """The lines above a benchmark's tables: what ran, with which command, on what machine."""
    lines = []
    if what:
        lines.append(what)
        lines.append("")
    if command:
        lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {machine_summary(info)}")
    return "\n".join(lines) + "\n"


def short_command(command: str | None) -> str | None:
    """The command as recorded, without the machine's paths: the interpreter as python3, an absolute
    .../shared/data/X as ../shared/data/X and .../runs/X as runs/X (the same text on every machine)."""
    if not command:
        return command
    words = command.split()
    if Path(words[0]).name.startswith("python"):
        words[0] = "python3"
    for i, w in enumerate(words):
        if w.startswith("/") and "/shared/data/" in w:
            words[i] = "../shared/data/" + w.split("/shared/data/", 1)[1]
        elif w.startswith("/") and "/runs/" in w:
            words[i] = "runs/" + w.split("/runs/", 1)[1]
    return " ".join(words)


def markdown_document(name: str, script: str, body: str) -> str:
    """A generated NAME.md: a comment saying where it comes from, then the body."""
    return (f"<!-- generated by benchmarks/{script} from {name}.json; do not edit: rerun the benchmark, or "
            f"python3 benchmarks/render_markdown.py -->\n\n{body.rstrip()}\n")


def write_markdown(name: str, text: str, out_dir: Path | None = None) -> Path:
    """Write NAME.md beside NAME.json (atomically), as write_json does."""
    out_dir = out_dir or results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
