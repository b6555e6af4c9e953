"""`rnntext train` with its default settings, end to end, as a user runs it: wall time (process start,
data loading and the final test included), test accuracy and peak memory (max RSS of the process).

    python3 benchmarks/default_run.py                     # all cores; keeps the run in runs/default
    python3 benchmarks/default_run.py --threads 2 --run-dir /tmp/default

Writes benchmarks/results/default_run.json and default_run.md. Targets (issue 3): >= 89.5% test accuracy, <= 3 minutes
wall, <= 1 GB peak RSS on AG News (20k train), 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HERE,
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    short_command,
    write_json,
    write_markdown,
)


def markdown(results: dict[str, Any]) -> str:
    """The tables of default_run.md: the targets against what was measured, then each epoch."""
    r = results
    met = r["targets"]
    wall, data, epochs = r["wall_seconds"], r.get("data_seconds"), r.get("epoch_seconds")
    split = f" (data {data:.1f} s, epochs with validation and test {epochs:.0f} s)" if data is not None else ""
    targets = md_table(["target", "measured", "met"], [
        ["test accuracy >= 89.5%", f"**{r['test_accuracy'] * 100:.2f}%** (macro-F1 {r['macro_f1'] * 100:.2f}%), "
         f"best epoch {r.get('best_epoch')} of {len(r.get('epochs') or [])}", _yes(met["accuracy_ge_0.895"])],
        ["wall time <= 3 minutes, data loading included", f"**{wall:.0f} s**{split}", _yes(met["wall_le_180s"])],
        ["peak memory <= 1 GB", f"**{r['peak_rss_mb']:.0f} MiB** max RSS", _yes(met["rss_le_1GB"])],
    ], "lll")
    epochs_table = md_table(["epoch", "train loss", "train accuracy", "valid accuracy", "seconds", "rows/s", "lr"], [
        [e["epoch"], f"{e['train_loss']:.4f}", f"{e['train_accuracy'] * 100:.2f}%",
         "" if e.get("valid_accuracy") is None else f"{e['valid_accuracy'] * 100:.2f}%", f"{e['seconds']:.1f}",
         f"{e['rows_per_second']:,.0f}", f"{e['lr']:.2e}"] for e in r.get("epochs") or []], "rrrrrrr")
    params = f"{r['parameters']:,} parameters; " if r.get("parameters") else ""
    return (md_header(short_command(r.get("command")), r.get("machine"),
                      "`rnntext train` with its defaults on AG News (20k train), end to end as a user runs it.")
            + "\n" + targets + "\n" + f"Per epoch ({params}lr: the learning rate at the epoch's end):\n\n"
            + epochs_table)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=None, help="passed as --threads (default: rnntext's own)")
    ap.add_argument("--run-dir", default=str(HERE.parent / "runs" / "default"), help="where the run is written")
    ap.add_argument("--out", default="default_run")
    ap.add_argument("extra", nargs="*", help="more `rnntext train` options, after --")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "rnntext", "train", "--data-dir", data_dir(args.data_dir), "-q", "--json",
           "--out", args.run_dir, *(["--threads", str(args.threads)] if args.threads else []), *args.extra]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    # ru_maxrss of the waited-for child (its own peak, Linux reports KiB); the only child of this process
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    sys.stderr.write(err[-3000:])
    if proc.returncode != 0:
        sys.exit(f"rnntext train failed with exit status {proc.returncode}")
    metrics = json.loads(out[out.index("{"):])
    acc = metrics["test"]["accuracy"]
    result = {
        "benchmark": "default_run", "command": " ".join(cmd), "machine": machine(args.threads or os.cpu_count()),
        "wall_seconds": wall, "peak_rss_mb": peak_mb, "test_accuracy": acc, "macro_f1": metrics["test"]["macro_f1"],
        "data_seconds": metrics.get("data_seconds"), "epoch_seconds": metrics.get("train_seconds"),
        "best_epoch": metrics.get("best_epoch"), "parameters": metrics.get("parameters"),
        "epochs": metrics.get("epochs"), "run_dir": args.run_dir,
        "targets": {"accuracy_ge_0.895": acc >= 0.895, "wall_le_180s": wall <= 180, "rss_le_1GB": peak_mb <= 1024},
    }
    print(f"test accuracy {acc:.4f}; wall {wall:.1f}s (data {result['data_seconds']:.1f}s); "
          f"peak RSS {peak_mb:.0f} MiB")
    write_json(args.out, result)
    write_markdown(args.out, markdown_document(args.out, "default_run.py", markdown(result)))


if __name__ == "__main__":
    main()
