"""Hyper-parameter candidates for the default configuration, compared by validation accuracy.

Each candidate is a set of overrides of RunConfig (data / model / train) trained on AG News
(20k train) with one or more seeds; the seed also draws the 5% validation split, so averaging
over seeds averages over validation sets. Test accuracy is recorded too, but candidates are
ranked by validation accuracy. Workers run in parallel (--jobs), each with --threads threads.

    python3 benchmarks/tune.py --grid sweep1 --seeds 0,1 --jobs 2 --threads 1
    python3 benchmarks/tune.py --grid sweep1 --only base,mf2

Writes the runs to --out (NAME.jsonl, one line per run as it finishes), then NAME.json and NAME.md
(the candidates ranked) beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    quiet_log,
    short_command,
    write_json,
    write_markdown,
)
from rnntext.config import RunConfig  # noqa: E402
from rnntext.data import prepare  # noqa: E402
from rnntext.training.trainer import train  # noqa: E402


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, {}).update(v)
    return out


_REG: dict[str, Any] = {"model": {"embed_dropout": 0.3}, "train": {"weight_decay": 0.1}, "data": {"min_freq": 2}}

# Overrides of BEFORE (below): the defaults as they were before tuning.
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "sweep1": {
        "base": {},
        "mf2": {"data": {"min_freq": 2}},
        "ed03": {"model": {"embed_dropout": 0.3}},
        "wd01": {"train": {"weight_decay": 0.1}},
        "d64": {"model": {"embed_dim": 64, "hidden_dim": 64}, "data": {"min_freq": 2}},
        "b128": {"train": {"batch_size": 128, "lr": 6e-3}},
        "b256": {"train": {"batch_size": 256, "lr": 1e-2}},
        "ep3": {"train": {"epochs": 3}},
        "ng2": {"data": {"ngrams": 2, "min_freq": 2}},
        "lstm": {"model": {"model": "lstm"}},
        "len64": {"data": {"max_len": 64}},
        "e200ed3": {"model": {"embed_dim": 200, "embed_dropout": 0.3}, "data": {"min_freq": 2}},
        "drop5": {"model": {"embed_dropout": 0.5, "dropout": 0.5}},
        "ep8reg": {"model": {"embed_dropout": 0.3}, "train": {"epochs": 8, "weight_decay": 0.1}},
        "max": {"model": {"pooling": "max"}},
        "l2": {"model": {"num_layers": 2}},
        "ep4": {"train": {"epochs": 4}},
        "reg": {"model": {"embed_dropout": 0.3}, "train": {"weight_decay": 0.1}, "data": {"min_freq": 2}},
        "ng2reg": {"model": {"embed_dropout": 0.3}, "train": {"weight_decay": 0.1},
                   "data": {"ngrams": 2, "min_freq": 2}},
        "ng2d64": {"model": {"embed_dim": 64, "hidden_dim": 64, "embed_dropout": 0.3},
                   "data": {"ngrams": 2, "min_freq": 2}},
        "d64b128": {"model": {"embed_dim": 64, "hidden_dim": 64}, "data": {"min_freq": 2},
                    "train": {"batch_size": 128, "lr": 6e-3}},
        "uni64": {"model": {"bidirectional": False, "embed_dim": 64, "hidden_dim": 64}, "data": {"min_freq": 2}},
        "lstmreg": {"model": {"model": "lstm", "embed_dropout": 0.3}, "train": {"weight_decay": 0.1},
                    "data": {"min_freq": 2}},
        "lr1e3": {"train": {"lr": 1e-3}},
        "lr6e3": {"train": {"lr": 6e-3}},
        "ed05mf2": {"model": {"embed_dropout": 0.5}, "data": {"min_freq": 2}},
        "h256": {"model": {"hidden_dim": 256, "embed_dropout": 0.3}, "data": {"min_freq": 2}},
        "bag": {"model": {"model": "bag", "embed_dim": 64, "dropout": 0.0, "embed_dropout": 0.0},
                "data": {"ngrams": 2}, "train": {"lr": 1e-2, "epochs": 10, "batch_size": 64}},
    },
    # round 2: around the best of round 1 ("reg": min_freq 2, embedding dropout 0.3, weight decay 0.1)
    "sweep2": {f"r_{k}": _deep_merge(_REG, v) for k, v in {
        "base": {},
        "b128": {"train": {"batch_size": 128, "lr": 6e-3}},
        "e200": {"model": {"embed_dim": 200}},
        "h256": {"model": {"hidden_dim": 256}},
        "e200h256": {"model": {"embed_dim": 200, "hidden_dim": 256}},
        "lstm": {"model": {"model": "lstm"}},
        "ed05": {"model": {"embed_dropout": 0.5}},
        "wd03": {"train": {"weight_decay": 0.3}},
        "ep4": {"train": {"epochs": 4}},
        "ep6": {"train": {"epochs": 6}},
        "mf3": {"data": {"min_freq": 3}},
        "d64b128": {"model": {"embed_dim": 64, "hidden_dim": 64}, "train": {"batch_size": 128, "lr": 6e-3}},
        "h64": {"model": {"hidden_dim": 64}},
        "lr5e3": {"train": {"lr": 5e-3}},
        "drop5": {"model": {"dropout": 0.5}},
        "big_lstm": {"model": {"model": "lstm", "embed_dim": 300, "hidden_dim": 256, "embed_dropout": 0.4},
                     "train": {"epochs": 6}},
        "big_gru": {"model": {"embed_dim": 300, "hidden_dim": 256, "embed_dropout": 0.4}, "train": {"epochs": 6}},
    }.items()},
}


# The defaults before tuning, spelled out so that the grids keep their meaning when config.py changes.
BEFORE: dict[str, dict[str, Any]] = {
    "data": {"min_freq": 1, "ngrams": 1, "max_len": None},
    "model": {"model": "gru", "embed_dim": 128, "hidden_dim": 128, "num_layers": 1, "bidirectional": True,
              "dropout": 0.3, "embed_dropout": 0.1, "pooling": "meanmax", "packed": False},
    "train": {"epochs": 5, "batch_size": 64, "lr": 3e-3, "schedule": "onecycle", "weight_decay": 0.0, "clip": 1.0},
}


def merged(overrides: dict[str, Any], data_path: str, seed: int, threads: int, device: str) -> RunConfig:
    overrides = _deep_merge(BEFORE, overrides)
    d = {"data": {"dataset": "ag_news", "data_dir": data_path, **overrides.get("data", {})},
         "model": overrides.get("model", {}),
         "train": {**overrides.get("train", {}), "seed": seed, "threads": threads, "device": device}}
    return RunConfig.from_dict(d)


def run_worker(jobs: list[tuple[str, dict[str, Any], int]], data_path: str, threads: int, device: str,
               out: Path) -> None:
    cache: dict[str, Any] = {}
    for name, overrides, seed in jobs:
        cfg = merged(overrides, data_path, seed, threads, device)
        key = json.dumps([cfg.data.__dict__, seed], sort_keys=True, default=str)
        t0 = time.perf_counter()
        if key not in cache:
            cache.clear()
            cache[key] = prepare(cfg.data, seed=seed, progress=False)
        data_seconds = time.perf_counter() - t0
        res = train(cfg, prepared=cache[key], progress=False, log=quiet_log)
        m = res.metrics
        row = {"name": name, "seed": seed, "overrides": overrides,
               "valid_accuracy": m["epochs"][m["best_epoch"] - 1].get("valid_accuracy"),
               "valid_by_epoch": [r.get("valid_accuracy") for r in m["epochs"]],
               "test_accuracy": m["test"]["accuracy"], "best_epoch": m["best_epoch"],
               "train_seconds": m["train_seconds"], "data_seconds": data_seconds, "parameters": m["parameters"],
               "vocab": res.config.model.vocab_size}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name:10s} seed {seed} valid {row['valid_accuracy']:.4f} test {row['test_accuracy']:.4f} "
              f"epoch {row['best_epoch']} {row['train_seconds']:.0f}s {row['valid_by_epoch']}", flush=True)


def describe_overrides(overrides: dict[str, Any]) -> str:
    """{"model": {"embed_dropout": 0.3}, "data": {"min_freq": 2}} -> "data.min_freq 2, model.embed_dropout 0.3"."""
    items = sorted(f"{section}.{key} {value}" for section, values in overrides.items() for key, value in values.items())
    return ", ".join(items) or "(none: the pre-tuning defaults)"


def markdown(results: dict[str, Any]) -> str:
    """The table of NAME.md: the candidates ranked by mean validation accuracy over the seeds."""
    r = results
    table = [[f"`{x['name']}`", describe_overrides(x["overrides"]), f"{x['valid_mean'] * 100:.2f}%",
              f"{x['test_mean'] * 100:.2f}%", f"{x['seconds_mean']:.0f}", ", ".join(map(str, x["best_epochs"]))]
             for x in r["summary"]]
    seeds = ", ".join(map(str, r["seeds"]))
    what = (f"Candidates for the default configuration trained on AG News (20k train) with seeds {seeds} (a seed "
            f"also draws the 5% validation split), on {r['device']}; ranked by mean validation accuracy. Overrides "
            f"are of the defaults before tuning (`BEFORE` in `benchmarks/tune.py`); training seconds are "
            f"{r['device']} seconds with several runs sharing the device.")
    return (md_header(short_command(r.get("command")), r.get("machine"), what) + "\n"
            + md_table(["candidate", "overrides", "valid (mean)", "test (mean)", "train s (mean)", "best epochs"],
                       table, "llrrrl"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--grid", default="sweep1", choices=sorted(GRIDS))
    ap.add_argument("--configs", help="a JSON file {name: overrides} instead of --grid")
    ap.add_argument("--only", help="comma-separated candidate names")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / "tune.jsonl"))
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    grid = json.loads(Path(args.configs).read_text()) if args.configs else GRIDS[args.grid]
    if args.only:
        grid = {k: grid[k] for k in args.only.split(",")}
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(name, ov, seed) for seed in seeds for name, ov in grid.items()]
    path = data_dir(args.data_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.worker is not None:
        run_worker(jobs[args.worker::args.jobs], path, args.threads, args.device, out)
        return
    if out.exists():
        out.unlink()
    base = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    procs = [subprocess.Popen([*base, "--worker", str(w)]) for w in range(min(args.jobs, len(jobs)))]
    for p in procs:
        p.wait()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = summary.setdefault(r["name"], {"valid": [], "test": [], "seconds": [], "epochs": []})
        s["valid"].append(r["valid_accuracy"])
        s["test"].append(r["test_accuracy"])
        s["seconds"].append(r["train_seconds"])
        s["epochs"].append(r["best_epoch"])
    print(f"\n{'name':10s} {'valid':>7s} {'test':>7s} {'seconds':>8s} best epochs")
    table = []
    for name, s in sorted(summary.items(), key=lambda kv: -sum(kv[1]["valid"]) / len(kv[1]["valid"])):
        v, t, sec = (sum(x) / len(x) for x in (s["valid"], s["test"], s["seconds"]))
        table.append({"name": name, "overrides": grid[name], "valid_mean": v, "test_mean": t, "seconds_mean": sec,
                      "best_epochs": s["epochs"]})
        print(f"{name:10s} {v:7.4f} {t:7.4f} {sec:8.1f} {s['epochs']}")
    payload = {"benchmark": "tune", "command": "python3 " + " ".join(sys.argv), "machine": machine(args.threads),
               "device": args.device, "seeds": seeds, "summary": table, "runs": rows}
    write_json(out.stem, payload, out.parent)
    write_markdown(out.stem, markdown_document(out.stem, "tune.py", markdown(payload)), out.parent)


if __name__ == "__main__":
    main()
