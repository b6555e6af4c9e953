"""Sharing the machine (issue 18, item 5): one training epoch and one prediction pass of the default
model, each alone and beside one busy single-threaded process (`yes > /dev/null`), with the old
behaviour (as many threads as cores, libgomp's own spin) and the new one (threads from the cores the
others leave free, followed as it runs; the command line's shorter spin), interleaved in every repeat.

Each measurement is a fresh worker process (this script with --worker), so that libgomp reads the
policy's environment when torch loads it, as it does under `rnntext`. Before each one the script
measures the other processes' load for half a second (`others_load`): a figure taken on a machine that
was not quiet says so in the table.

    python3 benchmarks/sharing.py                 # full: AG News 20k, one epoch, the 7,600 test texts, 3 repeats
    python3 benchmarks/sharing.py --ablations     # also each part alone, passive waits, 1 thread
    python3 benchmarks/sharing.py --quick         # 4,000 rows, 30 batches, 2,000 texts, 1 repeat (~2 min)

Writes benchmarks/results/sharing.json and sharing.md. Target: beside the busy process, about a fair
share's slowdown (1.5x on 2 cores) instead of 3x; alone, no slower than the old behaviour.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
    quiet_log,
    short_command,
    write_json,
    write_markdown,
)
from rnntext import cores  # noqa: E402

HERE = Path(__file__).resolve()
ALL = "all"  # every core, as rnntext did before
# policy -> (threads: "auto", "all" or N; environment for libgomp: "default" (none set), "rnntext"
# (what the command line sets, cores.apply_wait_policy), or VARIABLE=VALUE)
POLICIES: dict[str, tuple[str, str]] = {
    "old": (ALL, "default"),
    "new": ("auto", "rnntext"),
    "auto threads only": ("auto", "default"),
    "short spin only": (ALL, "rnntext"),
    "passive": (ALL, "OMP_WAIT_POLICY=PASSIVE"),
    "auto threads, passive": ("auto", "OMP_WAIT_POLICY=PASSIVE"),
    "1 thread": ("1", "default"),
}
MAIN = ("old", "new")
SITUATIONS = ("alone", "beside 1 busy process")


# --------------------------------------------------------------------------------------------- workers

def _threads(value: str) -> int | str:
    if value == ALL:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return value if value == "auto" else int(value)


def worker_train(args: argparse.Namespace) -> dict[str, Any]:
    from rnntext.config import RunConfig
    from rnntext.training import device
    from rnntext.training.trainer import Trainer

    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir, cfg.train.device = "ag_news", args.data_dir, "cpu"
    cfg.train.epochs, cfg.train.epoch_size = 1, args.epoch_size
    threads = _threads(args.threads)
    cfg.train.threads = None if threads == "auto" else int(threads)
    trainer = Trainer(cfg, None, progress=False, log=quiet_log)
    c0 = time.process_time()
    row = trainer.run_epoch(0)
    auto = device.auto_threads()
    return {"seconds": row["seconds"], "cpu_seconds": time.process_time() - c0,
            "rows_per_second": row["rows_per_second"], "threads_end": trainer_threads(),
            "thread_changes": auto.changes if auto else 0}


def trainer_threads() -> int:
    import torch

    return torch.get_num_threads()


def worker_predict(args: argparse.Namespace) -> dict[str, Any]:
    from rnntext.inference.predictor import Predictor
    from rnntext.training import device

    texts = test_texts(args.data_dir, args.texts)
    predictor = Predictor.load(args.run_dir, "cpu", _threads(args.threads))
    predictor.probabilities(texts[:64])  # warm-up: first calls, the fast path's tables
    c0, t0 = time.process_time(), time.perf_counter()
    predictor.probabilities(texts)
    seconds = time.perf_counter() - t0
    auto = device.auto_threads()
    return {"seconds": seconds, "cpu_seconds": time.process_time() - c0, "texts_per_second": len(texts) / seconds,
            "threads_end": trainer_threads(), "thread_changes": auto.changes if auto else 0}


def test_texts(data: str, n: int) -> list[str]:
    from rnntext.data.ag_news import load

    return list(load(data, progress=False)[1].texts[:n])


# ---------------------------------------------------------------------------------------------- driver

def worker_env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in cores.WAIT_VARIABLES}
    wait = POLICIES[policy][1]
    if wait == "rnntext":
        cores.apply_wait_policy(env)
    elif wait != "default":
        key, _, value = wait.partition("=")
        env[key] = value
    return env


def run_worker(task: str, policy: str, args: argparse.Namespace, data: str, run_dir: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--worker", task, "--threads", POLICIES[policy][0], "--data-dir", data,
           "--epoch-size", str(args.epoch_size or 0), "--texts", str(args.texts)]
    if run_dir:
        cmd += ["--run-dir", run_dir]
    out = subprocess.run(cmd, env=worker_env(policy), capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        sys.exit(f"worker {task}/{policy} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Busy:
    """One busy single-threaded process (`yes > /dev/null`) for the time of a `with` block."""

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # running before the worker starts, as a competitor already there would be
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def others_now(seconds: float = 0.5) -> float | None:
    """The other processes' load (cores) over `seconds`, from /proc/stat (None where there is none)."""
    sampler = cores.Sampler()
    before = sampler.sample()
    time.sleep(seconds)
    after = sampler.sample()
    return round(cores.others_load(before, after), 2) if before and after else None


def subset(data: str, rows: int, out: Path) -> str:
    """The first `rows` training rows (and the test file) of an AG News directory, for --quick."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("test", None)):
        src = next(p for p in (Path(data) / f"{split}.csv.gz", Path(data) / f"{split}.csv") if p.exists())
        opener: Any = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as f:
            lines = f.readlines() if n is None else [f.readline() for _ in range(n)]
        (out / f"{split}.csv").write_bytes(b"".join(lines))
    return str(out)


def prediction_run(data: str, out: Path) -> str:
    """The default model after a few batches: a prediction pass costs the same whatever the weights."""
    from rnntext import RunConfig, train

    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "ag_news", data
    cfg.train.epochs, cfg.train.epoch_size, cfg.train.device = 1, 5, "cpu"
    train(cfg, str(out), progress=False, log=quiet_log)
    return str(out)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median seconds per (task, policy, situation), with each policy's slowdown beside the busy process."""
    out = []
    keys = sorted({(r["task"], r["policy"]) for r in rows}, key=lambda k: (k[0], list(POLICIES).index(k[1])))
    for task, policy in keys:
        entry: dict[str, Any] = {"task": task, "policy": policy, "threads": POLICIES[policy][0],
                                 "wait": POLICIES[policy][1]}
        for situation in SITUATIONS:
            mine = [r for r in rows if r["task"] == task and r["policy"] == policy and r["situation"] == situation]
            if mine:
                entry[situation] = {
                    "seconds": round(statistics.median(r["seconds"] for r in mine), 3),
                    "cpu_per_wall": round(statistics.median(r["cpu_seconds"] / r["seconds"] for r in mine), 2),
                    "threads_end": sorted({r["threads_end"] for r in mine}),
                    "others_load": [r["others_load"] for r in mine], "repeats": len(mine)}
        if all(s in entry for s in SITUATIONS):
            entry["slowdown"] = round(entry[SITUATIONS[1]]["seconds"] / entry[SITUATIONS[0]]["seconds"], 2)
        out.append(entry)
    return out


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    batches = f", {s['epoch_size']} batches" if s["epoch_size"] else ""
    parts = {"train": f"one training epoch ({s['train_rows']} AG News rows{batches})",
             "predict": f"one prediction pass ({s['texts']} test texts)"}
    done = " and ".join(parts[t] for t in s.get("tasks", parts))
    what = (f"{done[0].upper()}{done[1:]} of the default model, alone and beside one busy process "
            f"(`yes > /dev/null`); median of {s['repeats']} interleaved repeats, each a fresh process. "
            "Threads: `all` = every core (the old behaviour), `auto` = the cores the others leave free, followed "
            "as it runs. Wait: libgomp's `default` spin (~3 ms), `rnntext`'s (GOMP_SPINCOUNT="
            f"{s['spin_count']}), or as given. Others' load: cores kept busy by other processes just before "
            "each measurement (0 on a quiet machine; more means the machine was not quiet, and `auto` took "
            "fewer threads for it).")
    if s.get("note"):
        what += f"\n\n{s['note']}"
        command = (results.get("command") or "").replace(s["note"], "...")
    else:
        command = results.get("command")
    rows = []
    for e in results["summary"]:
        a, b = e.get(SITUATIONS[0]), e.get(SITUATIONS[1])
        rows.append([e["task"], e["policy"], e["threads"], e["wait"],
                     f"{a['seconds']:.2f}" if a else "", f"{b['seconds']:.2f}" if b else "",
                     f"{e['slowdown']:.2f}x" if "slowdown" in e else "",
                     "/".join(str(t) for t in a["threads_end"]) if a else "",
                     "/".join(str(t) for t in b["threads_end"]) if b else "",
                     " / ".join(f"{x['cpu_per_wall']:.2f}" for x in (a, b) if x),
                     " ".join(f"{v:.1f}" for x in (a, b) if x for v in x["others_load"] if v is not None)])
    table = md_table(["task", "policy", "threads", "wait", "alone s", "beside busy s", "slowdown",
                      "threads alone", "threads beside", "CPU/wall", "others' load"], rows, "lllllrrrrrl")
    lines = [md_header(short_command(command), results.get("machine"), what), table]
    by = {(e["task"], e["policy"]): e for e in results["summary"]}
    for task in ("train", "predict"):
        old, new = by.get((task, "old")), by.get((task, "new"))
        if old and new and all(s in old and s in new for s in SITUATIONS):
            alone = new[SITUATIONS[0]]["seconds"] / old[SITUATIONS[0]]["seconds"]
            busy = new[SITUATIONS[1]]["seconds"] / old[SITUATIONS[1]]["seconds"]
            lines.append(f"{task}: new/old time alone {alone:.2f}, beside the busy process {busy:.2f}.  ")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="AG News directory (default: ../shared/data/ag_news_20k)")
    ap.add_argument("--run-dir", help="a run to predict with (default: the default model, trained a few batches)")
    ap.add_argument("--quick", action="store_true", help="4,000 rows, 30 batches, 2,000 texts, 1 repeat")
    ap.add_argument("--rows", type=int, help="training rows (default: all; --quick: 4,000)")
    ap.add_argument("--epoch-size", type=int, help="batches of the timed epoch (default: all; --quick: 30)")
    ap.add_argument("--texts", type=int, help="texts of the prediction pass (default: 7,600; --quick: 2,000)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick: 1)")
    ap.add_argument("--tasks", default="train,predict", help="train, predict or both (default)")
    ap.add_argument("--policies", help=f"comma-separated, of: {', '.join(POLICIES)} (default: old,new)")
    ap.add_argument("--situations", default="alone,busy",
                    help="alone, busy (beside `yes > /dev/null`) or both (default)")
    ap.add_argument("--ablations", action="store_true", help="every policy: each part of the new one alone")
    ap.add_argument("--note", help="a line for the table's header: how the machine was when it ran")
    ap.add_argument("--out", default="sharing", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--worker", choices=("train", "predict"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", default=ALL, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.epoch_size = args.epoch_size or None
        result = worker_train(args) if args.worker == "train" else worker_predict(args)
        print(json.dumps(result))
        return
    args.rows = args.rows or (4000 if args.quick else None)
    args.epoch_size = args.epoch_size or (30 if args.quick else None)
    args.texts = args.texts or (2000 if args.quick else 7600)
    args.repeats = args.repeats or (1 if args.quick else 3)
    policies = list(POLICIES) if args.ablations else (args.policies.split(",") if args.policies else list(MAIN))
    tasks = args.tasks.split(",")
    for name in policies:
        if name not in POLICIES:
            sys.exit(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    for task in tasks:
        if task not in ("train", "predict"):
            sys.exit(f"unknown task {task!r}; choose from train, predict")
    chosen = {"alone": SITUATIONS[0], "busy": SITUATIONS[1]}
    if not set(args.situations.split(",")) <= set(chosen):
        sys.exit(f"unknown situation in {args.situations!r}; choose from alone, busy")
    situations = [chosen[x] for x in args.situations.split(",")]

    data = data_dir(args.data_dir)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rnntext-sharing-") as tmp:
        if args.rows:
            data = subset(data, args.rows, Path(tmp) / "data")
        run_dir = args.run_dir
        if "predict" in tasks and not run_dir:
            print("training a run to predict with ...", flush=True)
            run_dir = prediction_run(data, Path(tmp) / "run")
        for repeat in range(args.repeats):
            for situation in situations:
                for task in tasks:
                    for policy in policies:
                        load = others_now()
                        if situation == SITUATIONS[1]:
                            with Busy():
                                r = run_worker(task, policy, args, data, run_dir)
                        else:
                            r = run_worker(task, policy, args, data, run_dir)
                        r.update(task=task, policy=policy, situation=situation, repeat=repeat, others_load=load)
                        rows.append(r)
                        print(f"repeat {repeat + 1}/{args.repeats} {task:7} {policy:18} {situation:22} "
                              f"{r['seconds']:7.2f}s threads {r['threads_end']} (others' load before: {load})",
                              flush=True)
    info = machine()
    info.pop("threads")  # each policy chooses its own
    results = {
        "benchmark": "sharing", "command": "python3 " + " ".join(sys.argv), "machine": info,
        "settings": {"train_rows": args.rows or "all", "epoch_size": args.epoch_size, "texts": args.texts,
                     "repeats": args.repeats, "policies": policies, "tasks": tasks, "spin_count": cores.SPIN_COUNT,
                     "recheck_seconds": cores.RECHECK_SECONDS, "note": args.note},
        "summary": summarise(rows), "runs": rows,
    }
    write_json(args.out, results)
    write_markdown(args.out, markdown_document(args.out, "sharing.py", markdown(results)))


if __name__ == "__main__":
    main()
