"""How training cost grows: seconds of one training epoch (default configuration, Trainer.run_epoch)
against the number of rows (2.5k, 5k, 10k, 20k) and against text length (title only, title +
description, title + description repeated 4 times). Cost should grow linearly in both.

    python3 benchmarks/scaling.py            # ~5 min on 2 quiet cores
    python3 benchmarks/scaling.py --quick    # small sizes, a smoke run

Writes benchmarks/results/scaling.json, scaling.md and scaling.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    quiet_log,
    results_dir,
    short_command,
    write_json,
    write_markdown,
)
from rnntext.config import RunConfig  # noqa: E402
from rnntext.data import Prepared, Tokenizer, Vocab  # noqa: E402
from rnntext.data.ag_news import CLASSES, find_split  # noqa: E402
from rnntext.data.encode import encode_tokens  # noqa: E402
from rnntext.data.readers import read_rows  # noqa: E402
from rnntext.training.trainer import Trainer  # noqa: E402


def prepared_from(texts: list[str], labels: list[int], min_freq: int) -> Prepared:
    tokenizer = Tokenizer("basic_english")
    tokens = [tokenizer(t) for t in texts]
    vocab = Vocab.build(tokens, min_freq=min_freq)
    return Prepared(tokenizer, vocab, list(CLASSES), encode_tokens(tokens, vocab, labels), None, None)


def epoch_seconds(p: Prepared, threads: int) -> dict[str, Any]:
    cfg = RunConfig.from_dict({"train": {"threads": threads, "device": "cpu", "seed": 0}})
    trainer = Trainer(cfg, prepared=p, progress=False, log=quiet_log)
    row = trainer.run_epoch(0)
    tokens = int(p.train.lengths.sum())
    return {"rows": len(p.train), "tokens": tokens, "mean_tokens": tokens / len(p.train), "vocab": len(p.vocab),
            "seconds": row["seconds"], "rows_per_second": len(p.train) / row["seconds"],
            "tokens_per_second": tokens / row["seconds"]}


def linearity(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = a + b x, and the ratio of cost per unit at the largest vs. smallest x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "cost_per_unit_ratio_largest_vs_smallest": (ys[-1] / xs[-1]) / (ys[0] / xs[0])}


def plot(by_rows: list[dict], by_length: list[dict], path: Path, info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, key, label in ((axes[0], by_rows, "rows", "training rows"),
                                 (axes[1], by_length, "tokens", "training tokens (20k rows, 3 text lengths)")):
        xs, ys = [r[key] for r in rows], [r["seconds"] for r in rows]
        fit = linearity(xs, ys)
        ax.plot(xs, ys, "o", label="measured")
        ax.plot([0, max(xs)], [fit["intercept"], fit["intercept"] + fit["slope"] * max(xs)], "--",
                label=f"linear fit, R² {fit['r2']:.3f}")
        for r in rows:
            if "variant" in r:
                ax.annotate(r["variant"], (r[key], r["seconds"]), textcoords="offset points", xytext=(4, -12),
                            fontsize=8)
        ax.set_xlabel(label)
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:g}k")  # 20000 -> 20k: no overlapping labels
        ax.set_ylabel("seconds per epoch")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle(f"rnntext default model, one training epoch; {info['cpu']}, {info['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def markdown(results: dict[str, Any]) -> str:
    """The tables of scaling.md: seconds per epoch against rows, and against text length; the fits."""
    r = results
    by_rows = md_table(["training rows", "seconds per epoch", "rows/s"], [
        [f"{x['rows']:,}", f"{x['seconds']:.1f}", f"{x['rows_per_second']:,.0f}"] for x in r["by_rows"]], "rrr")
    by_length = md_table(["text", "tokens per text", "seconds per epoch", "tokens/s"], [
        [x["variant"], f"{x['mean_tokens']:.1f}", f"{x['seconds']:.1f}", f"{x['tokens_per_second']:,.0f}"]
        for x in r["by_length"]], "lrrr")
    fr, fl = r["fit_rows"], r["fit_length"]
    fits = (f"Linear fits: R² {fr['r2']:.3f} against rows, {fl['r2']:.3f} against tokens; a row at the largest size "
            f"costs {fr['cost_per_unit_ratio_largest_vs_smallest']:.2f} of one at the smallest, a token of the "
            f"longest texts {fl['cost_per_unit_ratio_largest_vs_smallest']:.2f} of a title's. The plot: "
            f"`benchmarks/results/scaling.png`.")
    what = (f"Seconds of one training epoch ({r['config']}) on AG News subsets of growing size, then on "
            f"{r['by_length'][0]['rows']:,} rows with three text lengths.")
    if r.get("quick"):
        what += " --quick: a smoke run."
    return (md_header(short_command(r.get("command")), r.get("machine"), what) + "\n" + by_rows + "\n"
            + by_length + "\n" + fits + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=None, help="(default: all cores)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="scaling")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    d = Path(data_dir(args.data_dir))
    train_path = find_split(d, "train")
    title = read_rows(train_path, ["1"], "0", fmt="csv", header=False)
    both = read_rows(train_path, ["1", "2"], "0", fmt="csv", header=False)
    labels = [int(x) - 1 for x in both.labels]
    min_freq = RunConfig().data.min_freq
    sizes = [250, 500, 1000] if args.quick else [2500, 5000, 10000, 20000]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(both), generator=g).tolist()

    by_rows = []
    for n in sizes:
        pick = order[:n]
        r = epoch_seconds(prepared_from([both.texts[i] for i in pick], [labels[i] for i in pick], min_freq), threads)
        by_rows.append(r)
        print(f"{n:6d} rows: {r['seconds']:6.1f}s  {r['rows_per_second']:6.0f} rows/s  "
              f"{r['tokens_per_second']:7.0f} tokens/s", flush=True)

    n_len = sizes[-1]
    pick = order[:n_len]
    variants = {"title": [title.texts[i] for i in pick], "title+description": [both.texts[i] for i in pick],
                "4x title+description": [" ".join([both.texts[i]] * 4) for i in pick]}
    by_length = []
    for name, texts in variants.items():
        r = epoch_seconds(prepared_from(texts, [labels[i] for i in pick], min_freq), threads)
        r["variant"] = name
        by_length.append(r)
        print(f"{name:22s}: {r['mean_tokens']:6.1f} tokens/text  {r['seconds']:6.1f}s  "
              f"{r['tokens_per_second']:7.0f} tokens/s", flush=True)

    fit_rows = linearity([r["rows"] for r in by_rows], [r["seconds"] for r in by_rows])
    fit_len = linearity([r["tokens"] for r in by_length], [r["seconds"] for r in by_length])
    print(f"rows: R² {fit_rows['r2']:.3f}, seconds per row at {sizes[-1]} vs {sizes[0]} rows: "
          f"x{fit_rows['cost_per_unit_ratio_largest_vs_smallest']:.2f}")
    print(f"length: R² {fit_len['r2']:.3f}, seconds per token, 4x vs title only: "
          f"x{fit_len['cost_per_unit_ratio_largest_vs_smallest']:.2f}")
    info = machine(threads)
    results_dir().mkdir(parents=True, exist_ok=True)
    plot(by_rows, by_length, results_dir() / f"{args.out}.png", info)
    payload = {"benchmark": "scaling", "command": "python3 " + " ".join(sys.argv), "machine": info,
               "quick": args.quick, "config": "rnntext defaults (config.py), one epoch, seed 0",
               "by_rows": by_rows, "by_length": by_length, "fit_rows": fit_rows, "fit_length": fit_len}
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "scaling.py", markdown(payload)))


if __name__ == "__main__":
    main()
