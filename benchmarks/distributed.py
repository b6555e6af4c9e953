"""Data-parallel training throughput: rows/s of 1 process vs N processes (torchrun, gloo) on the CPU,
and, where CUDA is available, 1 GPU (and N GPUs with NCCL where there are several) vs the CPU.

Every run is a real `rnntext train` in fresh processes (torchrun for N > 1), the same GRU, the same
batch size per process (so N processes train with an effective batch N times larger), one epoch cut
to --steps optimiser steps. rows/s is the trainer's own figure: rows trained by all processes divided
by the epoch's wall time (data preparation, start-up and the final test are not in it). CPU threads
per process: the cores divided by the processes on the machine (rnntext's default under torchrun),
or --threads.

    PYTHONPATH=src python3 benchmarks/distributed.py --quick     # about a minute or two
    PYTHONPATH=src python3 benchmarks/distributed.py             # more steps, 2 repeats, N = 1, 2, 4

Needs torch, safetensors and tqdm; rnntext from src/ (installed or on PYTHONPATH). Writes
benchmarks/results/distributed.json and distributed.md (or --out NAME.json, NAME.md)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    results_dir,
    short_command,
    write_markdown,
)


def train_command(nproc: int, args: argparse.Namespace, device: str) -> list[str]:
    launcher = ([] if nproc == 1 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"])
    return [sys.executable, *launcher, "-m", "rnntext", "train", "--data-dir", args.data_dir, "--model", args.model,
            "--embed-dim", str(args.dim), "--hidden-dim", str(args.dim), "--batch-size", str(args.batch_size),
            "--epochs", "1", "--epoch-size", str(args.steps), "--device", device, "--seed", "0", "-q", "--json",
            *(["--threads", str(args.threads)] if args.threads else [])]


def run_once(nproc: int, args: argparse.Namespace, device: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("OMP_NUM_THREADS", None)  # rnntext sets the threads per process itself
    t0 = time.perf_counter()
    proc = subprocess.run(train_command(nproc, args, device), env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{nproc} x {device} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads(proc.stdout[proc.stdout.index("{"):])
    epoch = metrics["epochs"][0]
    return {"rows_per_second": epoch["rows_per_second"], "epoch_seconds": epoch["seconds"],
            "threads_per_process": metrics["threads"], "device": metrics["device"], "wall_seconds": wall}


def measure(name: str, nproc: int, args: argparse.Namespace, device: str) -> dict[str, Any]:
    runs = [run_once(nproc, args, device) for _ in range(args.repeats)]
    best = max(runs, key=lambda r: r["rows_per_second"])
    row = {"name": name, "processes": nproc, "device": device, "batch_per_process": args.batch_size,
           "effective_batch": args.batch_size * nproc, "steps": args.steps,
           "threads_per_process": best["threads_per_process"],
           "rows_per_second": round(best["rows_per_second"], 1),
           "rows_per_second_all": [round(r["rows_per_second"], 1) for r in runs],
           "epoch_seconds": round(best["epoch_seconds"], 2)}
    print(f"{name:<14} {nproc:>2} proc  {row['threads_per_process']:>2} thr/proc  batch {args.batch_size} x {nproc}"
          f" = {row['effective_batch']:<5} {row['rows_per_second']:>10,.0f} rows/s", flush=True)
    return row


def markdown(results: dict[str, Any]) -> str:
    """The table of distributed.md: rows/s per process count and device, the speed-up over one CPU process."""
    r = results
    c = r["config"]
    table = [[x["name"], x["processes"], x["device"], x["threads_per_process"], x["batch_per_process"],
              x["effective_batch"], f"{x['rows_per_second']:,.0f}", f"{x['speedup_vs_cpu_x1']:.2f}x"]
             for x in r["results"]]
    command = r.get("command") or ("python3 benchmarks/distributed.py --nproc "
                                   + ",".join(str(x["processes"]) for x in r["results"] if x["device"] == "cpu")
                                   + f" --steps {c['steps']} --repeats {c['repeats']}")
    what = (f"`rnntext train` ({c['model']}, embed and hidden {c['dim']}, batch {c['batch_per_process']} per process), "
            f"one epoch cut to {c['steps']} optimiser steps, in fresh processes (torchrun for N > 1), the best of "
            f"{c['repeats']}; rows/s is the trainer's own figure (rows trained by all processes / the epoch's wall "
            f"time).")
    if not r.get("command"):
        what += " (This JSON does not record its command; the one shown is rebuilt from its settings.)"
    text = (md_header(short_command(command), r.get("machine"), what) + "\n"
            + md_table(["run", "processes", "device", "threads per process", "batch per process", "effective batch",
                        "rows/s", "speed-up"], table, "lrlrrrrr"))
    if r.get("notes"):
        text += "\n" + "\n".join(f"Note: {n}." for n in r["notes"]) + "\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="AG News directory (default: ../shared/data/ag_news_20k)")
    ap.add_argument("--quick", action="store_true", help="few steps, one repeat, N = 1, 2")
    ap.add_argument("--nproc", help="comma-separated process counts on the CPU (default 1,2; 1,2,4 when not quick)")
    ap.add_argument("--steps", type=int, help="optimiser steps per run (30 quick, 150)")
    ap.add_argument("--repeats", type=int, help="runs per configuration, the fastest kept (1 quick, 2)")
    ap.add_argument("--model", default="gru")
    ap.add_argument("--dim", type=int, default=64, help="embedding and hidden size (64)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per process per step (64)")
    ap.add_argument("--threads", type=int, help="CPU threads per process (default: cores // processes)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU runs even where CUDA is available")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before giving up")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/distributed.json, or in "
                    "$RNNTEXT_BENCH_RESULTS)")
    args = ap.parse_args()
    args.data_dir = data_dir(args.data_dir)
    args.steps = args.steps or (30 if args.quick else 150)
    args.repeats = args.repeats or (1 if args.quick else 2)
    counts = [int(n) for n in (args.nproc or ("1,2" if args.quick else "1,2,4")).split(",")]
    cores = os.cpu_count() or 1

    info = machine()
    print(f"{cores} cores, torch {torch.__version__}, GPU: {info['gpu'] or 'none'}; {args.model} dim {args.dim}, "
          f"{args.steps} steps per run, best of {args.repeats}")
    rows = [measure(f"cpu x{n}", n, args, "cpu") for n in counts]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and not args.no_gpu else 0
    if gpus:
        rows.append(measure("gpu x1", 1, args, "cuda"))
        if gpus > 1:
            rows.append(measure(f"gpu x{gpus}", gpus, args, "cuda"))

    base = rows[0]["rows_per_second"]
    notes = []
    for r in rows:
        r["speedup_vs_cpu_x1"] = round(r["rows_per_second"] / base, 2) if base else None
    if any(n > 1 for n in counts) and cores < 2 * max(counts):
        notes.append(f"this machine has {cores} cores: N CPU processes split the same cores (each gets "
                     f"cores // N threads), so no speed-up over one process is expected here; data parallelism "
                     f"pays across GPUs and machines")
    load = (info.get("load_average_at_start") or [0.0])[0]
    if load > 0.5 * cores:
        notes.append(f"the machine was busy (load average {load:.1f} on {cores} cores): the figures are distorted, "
                     f"runs with several threads per process most (their threads wait for each other); compare "
                     f"with --threads 1 or rerun on an idle machine")
    for n in notes:
        print("note:", n)
    for r in rows:
        print(f"  {r['name']:<8} {r['speedup_vs_cpu_x1']:>5.2f}x of cpu x1")
    payload = {"benchmark": "distributed", "command": "python3 " + " ".join(sys.argv), "machine": info,
               "config": {"model": args.model, "dim": args.dim, "batch_per_process": args.batch_size,
                          "steps": args.steps, "repeats": args.repeats, "data_dir": args.data_dir},
               "results": rows, "notes": notes}
    out = Path(args.out) if args.out else results_dir() / "distributed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    write_markdown(out.stem, markdown_document(out.stem, "distributed.py", markdown(payload)), out.parent)


if __name__ == "__main__":
    main()
