"""Corpora larger than memory: the token store (--token-store, rnntext.data.store) on 0.5M, 1M, 2M and 5M rows.

The corpora are AG News training rows (the 20k subset) drawn at random with their words shuffled (seeded), as
CSV files with a header (text,label), generated into --work (default /tmp/rnntext_big_data; never the
repository) once and reused. Each size runs in fresh processes, so each stage's peak RSS is its own:

- build: `prepare` through the store: read + tokenise the file (streamed), the stratified validation split +
  vocabulary counts, encode into the memory-mapped splits; seconds of each stage from the store's manifest;
- train: open the store (reused) and run a fixed number of training steps (--steps, default 200, batch 128,
  the default GRU): a full epoch at 5M rows would take hours on 2 cores. Seconds of the steps, and of the
  epoch's batch order (computed over all rows);
- memory (the smaller sizes only, --memory-sizes): the same data prepared in memory, as without --token-store,
  for comparison.

    python3 benchmarks/big_data.py                          # 0.5M, 1M, 2M, 5M rows
    python3 benchmarks/big_data.py --sizes 20000 50000      # a smoke run

Writes benchmarks/results/big_data.json, big_data.md and big_data.png (seconds and peak RSS against rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    results_dir,
    short_command,
    write_json,
    write_markdown,
)

SIZES = [500_000, 1_000_000, 2_000_000, 5_000_000]
TARGET_RSS_MB = 2048


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the corpora -------------------------------------------------------------------------------------


def corpus_path(work: Path, n: int) -> Path:
    return work / f"ag_news_shuffled_{n}.csv"


def generate(source_dir: str, work: Path, sizes: list[int], seed: int = 0) -> dict[str, float]:
    """CSV files of `sizes` rows: row i of every file is the same random AG News row with its words shuffled
    (so a smaller corpus is a prefix of a larger one). Files already there are kept."""
    from rnntext.data.ag_news import find_split, read_split

    todo = [n for n in sizes if not corpus_path(work, n).exists()]
    if not todo:
        return {}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = read_split(find_split(Path(source_dir), "train"))
    words = [t.split() for t in src.texts]
    rng = random.Random(seed)
    tmp = {n: corpus_path(work, n).with_suffix(".csv.part") for n in todo}
    files = {n: open(p, "w", newline="", encoding="utf-8") for n, p in tmp.items()}  # noqa: SIM115
    writers = {n: csv.writer(f) for n, f in files.items()}
    for w in writers.values():
        w.writerow(["text", "label"])
    for i in range(max(todo)):
        j = rng.randrange(len(words))
        row = words[j][:]
        rng.shuffle(row)
        out = [" ".join(row), src.labels[j]]
        for n, w in writers.items():
            if i < n:
                w.writerow(out)
    for n, f in files.items():
        f.close()
        os.replace(tmp[n], corpus_path(work, n))
    return {"generate_seconds": time.perf_counter() - t0}


# --- the workers (one process per stage and size) ----------------------------------------------------


def worker(stage: str, train: str, store: str | None, steps: int, threads: int) -> dict[str, Any]:
    import torch

    from rnntext.config import RunConfig
    from rnntext.data.dataset import prepare

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict({"data": {"train": train, "token_store": store},
                               "train": {"threads": threads, "device": "cpu", "epochs": 1, "epoch_size": steps}})
    out: dict[str, Any] = {}
    if stage in ("build", "memory"):
        t0, c0 = time.perf_counter(), time.process_time()
        p = prepare(cfg.data, seed=cfg.train.seed, progress=False)
        out["seconds"], out["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        out.update(rows=len(p.train) + (len(p.valid) if p.valid else 0), train_rows=len(p.train),
                   tokens=int(p.train.offsets[-1]), vocab=len(p.vocab))
        if stage == "build":
            manifest = json.loads((Path(store) / "manifest.json").read_text())  # type: ignore[arg-type]
            out["stages"], out["cpu_stages"] = manifest["stage_seconds"], manifest["stage_cpu_seconds"]
            out["store_mb"] = sum(f.stat().st_size for f in Path(store).glob("*.safetensors")) / 2**20  # type: ignore[arg-type]
    elif stage == "train":
        from rnntext.training.trainer import Trainer

        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=False, log=lambda s: None)
        out["setup_seconds"] = time.perf_counter() - t0  # open the store, model, first epoch's order
        t1 = time.perf_counter()
        order = trainer.epoch_order(0)
        out["epoch_order_seconds"] = time.perf_counter() - t1
        c0 = time.process_time()
        row = trainer.run_epoch(0)
        out["cpu_seconds"] = time.process_time() - c0
        out.update(steps=len(order), seconds=row["seconds"], rows_per_second=row["rows_per_second"],
                   train_loss=row["train_loss"], train_rows=len(trainer.data.train))
    out["peak_rss_mb"] = peak_rss_mb()
    # at the end: anonymous memory against the pages of mapped files (the token store's: clean page cache)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0].lower() + "_end_mb"] = int(line.split()[1]) / 1024
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]  # the machine is shared: how busy it was
    return out


def run_worker(stage: str, train: Path, store: Path | None, steps: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", stage, "--train", str(train), "--steps", str(steps),
           "--threads", str(threads)] + (["--store", str(store)] if store else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report ------------------------------------------------------------------------------------------


def linearity(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = a + b x (R²), and seconds per row at the largest size over the smallest's."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "per_row_ratio_largest_vs_smallest": (ys[-1] / xs[-1]) / (ys[0] / xs[0])}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    xs = [s["rows"] for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, label in (("read", "read + tokenise"), ("vocab", "split + vocabulary"), ("encode", "encode"),
                       ("build", "build, total")):
        ys = [s["build"]["cpu_seconds"] if key == "build" else s["build"]["cpu_stages"][key] for s in sizes]
        ax.plot(xs, ys, "o-", label=label + " (CPU s)")
    ax.plot(xs, [s["build"]["seconds"] for s in sizes], "x:", color="gray", label="build, total (wall s)")
    ax.set_xlabel("rows")
    ax.set_ylabel("seconds")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M")
    ax.legend(fontsize=8)
    ax.set_title("time against rows (CPU seconds of the process; wall clock on a shared machine)", fontsize=9)
    ax = axes[1]
    ax.plot(xs, [s["build"]["peak_rss_mb"] for s in sizes], "o-", label="build the store")
    ax.plot(xs, [s["train"]["peak_rss_mb"] for s in sizes], "o-", label=f"train {results['steps']} steps")
    mem = [s for s in sizes if "memory" in s]
    if mem:
        ax.plot([s["rows"] for s in mem], [s["memory"]["peak_rss_mb"] for s in mem], "x:", label="in memory (no store)")
    ax.axhline(TARGET_RSS_MB, color="gray", lw=0.8, ls="--", label="2 GB")
    ax.set_xlabel("rows")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M")
    ax.legend(fontsize=8)
    ax.set_title("peak resident memory", fontsize=9)
    fig.suptitle(f"rnntext --token-store; {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def markdown(results: dict[str, Any]) -> str:
    r = results
    rows = []
    for s in r["sizes"]:
        b, t, c = s["build"], s["train"], s["build"]["cpu_stages"]
        m = s.get("memory")
        rows.append([f"{s['rows']:,}", f"{b['tokens']:,}", f"{c['read']:.1f}", f"{c['vocab']:.1f}",
                     f"{c['encode']:.1f}",
                     f"{b['cpu_seconds']:.1f} ({b['seconds']:.0f})", f"{b['peak_rss_mb']:,.0f}",
                     f"{t['epoch_order_seconds']:.1f}", f"{t['cpu_seconds']:.1f} ({t['seconds']:.0f})",
                     f"{t['peak_rss_mb']:,.0f}", f"{m['cpu_seconds']:.1f} ({m['seconds']:.0f})" if m else "",
                     f"{m['peak_rss_mb']:,.0f}" if m else ""])
    table = md_table(["rows", "training tokens", "read + tokenise", "split + vocab", "encode", "build (wall)",
                      "build peak RSS MiB", "epoch order", f"{r['steps']} steps (wall)", "train peak RSS MiB",
                      "in memory (wall)", "in memory: peak RSS MiB"], rows, "r" * 12)
    fits = r["fits"]
    big = r["sizes"][-1]
    peak = max(big["build"]["peak_rss_mb"], big["train"]["peak_rss_mb"])
    small = r["sizes"][0]
    per_row = 2**20 / max(big["rows"] - small["rows"], 1)
    train_growth = (big["train"]["peak_rss_mb"] - small["train"]["peak_rss_mb"]) * per_row
    build_growth = (big["build"]["peak_rss_mb"] - small["build"]["peak_rss_mb"]) * per_row
    name = r.get("out", "big_data")
    fit = ""
    if len(r["sizes"]) > 1:
        fit = (f"Build CPU time against rows: R² {fits['build']['r2']:.3f}, seconds per row at {big['rows']:,} rows "
               f"{fits['build']['per_row_ratio_largest_vs_smallest']:.2f}x the smallest size's; read + tokenise R² "
               f"{fits['read']['r2']:.3f} ({fits['read']['per_row_ratio_largest_vs_smallest']:.2f}x), encode R² "
               f"{fits['encode']['r2']:.3f} ({fits['encode']['per_row_ratio_largest_vs_smallest']:.2f}x). ")
    growth = (f"; the training process grows by about {train_growth:,.0f} bytes per row, the build by "
              f"{build_growth:,.0f}" if len(r["sizes"]) > 1 else "")
    text = ("Seconds are CPU seconds of the process, wall-clock seconds in brackets (the machine was shared). "
            + fit + f"Peak RSS at {big['rows']:,} rows: {peak:,.0f} MiB (target {TARGET_RSS_MB:,} MiB: "
            f"{'met' if peak <= TARGET_RSS_MB else 'NOT met'}){growth}. A full epoch is not timed: at the measured "
            f"{big['train']['rows_per_second']:,.0f} rows/s (wall, on the busy machine) it would take about "
            f"{big['train']['train_rows'] / big['train']['rows_per_second'] / 3600:.1f} h at {big['rows']:,} rows. "
            f"The plot: `benchmarks/results/{name}.png`.")
    what = (f"AG News rows (20k subset) drawn at random with their words shuffled, {r['sizes'][0]['rows']:,} to "
            f"{big['rows']:,} rows; each stage in a fresh process (peak RSS: its ru_maxrss, memory-mapped pages "
            f"included). Training: the default GRU, batch 128, {r['steps']} steps, {r['threads']} thread"
            f"{'' if r['threads'] == 1 else 's'}. "
            f"The load average during the run: {r.get('load_average_end', '?')} at the end.")
    return md_header(short_command(r.get("command")), r.get("machine"), what) + "\n" + table + "\n" + text + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--work", default="/tmp/rnntext_big_data", help="where the corpora and stores go")
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[500_000, 1_000_000],
                    help="sizes also prepared in memory (without the store), for comparison")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep-stores", action="store_true")
    ap.add_argument("--out", default="big_data")
    ap.add_argument("--worker", choices=("build", "train", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    if args.worker:
        print(json.dumps(worker(args.worker, args.train, args.store, args.steps, threads)))
        return
    work = Path(args.work)
    info = machine(threads)
    gen = generate(data_dir(args.data_dir), work, args.sizes)
    sizes = []
    for n in sorted(args.sizes):
        path, store = corpus_path(work, n), work / f"store_{n}"
        shutil.rmtree(store, ignore_errors=True)
        entry: dict[str, Any] = {"rows": n, "file_mb": path.stat().st_size / 2**20}
        entry["build"] = run_worker("build", path, store, args.steps, threads)
        b = entry["build"]
        print(f"{n:>9,} rows: build {b['seconds']:.1f}s (CPU {b['cpu_seconds']:.1f}s) {b['cpu_stages']} peak RSS "
              f"{b['peak_rss_mb']:.0f} MiB", flush=True)
        entry["train"] = run_worker("train", path, store, args.steps, threads)
        t = entry["train"]
        print(f"{n:>9,} rows: {t['steps']} steps {t['seconds']:.1f}s, epoch order {t['epoch_order_seconds']:.1f}s, "
              f"peak RSS {t['peak_rss_mb']:.0f} MiB", flush=True)
        if n in args.memory_sizes:
            entry["memory"] = run_worker("memory", path, None, args.steps, threads)
            print(f"{n:>9,} rows in memory: {entry['memory']['seconds']:.1f}s, peak RSS "
                  f"{entry['memory']['peak_rss_mb']:.0f} MiB", flush=True)
        if not args.keep_stores:
            shutil.rmtree(store, ignore_errors=True)
        sizes.append(entry)
    xs = [s["rows"] for s in sizes]
    fits = {"build": linearity(xs, [s["build"]["cpu_seconds"] for s in sizes]),
            "build_wall": linearity(xs, [s["build"]["seconds"] for s in sizes])}
    for key in ("read", "vocab", "encode"):
        fits[key] = linearity(xs, [s["build"]["cpu_stages"][key] for s in sizes])
    payload = {"benchmark": "big_data", "out": args.out, "command": "python3 " + " ".join(sys.argv), "machine": info,
               "threads": threads, "steps": args.steps, "generate": gen, "sizes": sizes, "fits": fits,
               "load_average_end": [round(x, 1) for x in os.getloadavg()]}
    results_dir().mkdir(parents=True, exist_ok=True)
    plot(payload, results_dir() / f"{args.out}.png")
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "big_data.py", markdown(payload)))


if __name__ == "__main__":
    main()
