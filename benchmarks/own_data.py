"""Your own data: `rnntext train` with its defaults against fastText, on the same files and splits.

Datasets (../shared/data, read in place): TREC coarse and fine (official split), SST-2 (train, dev as
validation, test), CR and MPQA (no official split: a fixed, stratified 90/10 split drawn with SPLIT_SEED,
written to --work-dir), 20 Newsgroups (bydate), AG News (20k train).

rnntext: `rnntext train --train TRAIN --test TEST --text-column C --label-column L` and nothing else
(SST-2 adds `--valid dev`; AG News is `--dataset ag_news --data-dir DIR`), each in its own process: wall
time from process start to exit and its peak RSS (the child's own ru_maxrss, from wait4).

fastText (`fasttext`, supervised; dim 100, lr 0.1, otherwise its defaults), reading the texts tokenised by
rnntext's basic_english: every point of the grid wordNgrams {1,2,3} x epochs {5,10,25,50} is trained on
train minus a validation split (SST-2: dev; otherwise a stratified FT_VALID of train, seed SPLIT_SEED)
and scored there; the point with the best validation accuracy is the one reported, trained again on
the whole train file and evaluated on test. The grid's models are also scored on test, only to print
fastText's best-on-test figure for reference (never used to choose).

Nothing is chosen on a test split. `--valid-only` runs rnntext without its test file (the levers of
docs/guides/own-data.md were measured so: `-- --epochs 10` passes options to every rnntext run) and
skips fastText.

    python3 benchmarks/own_data.py                          # everything; writes results/own_data.{json,md}
    python3 benchmarks/own_data.py --datasets trec,cr --quick   # a smoke run
    python3 benchmarks/own_data.py --valid-only --out levers_x --datasets trec -- --epochs 10

Datasets can run as separate invocations side by side (`--datasets 20ng --out own_data_20ng`, ...) and
be joined: `python3 benchmarks/own_data.py --merge A.json B.json ...` writes own_data.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HERE,
    machine,
    markdown_document,
    md_header,
    md_table,
    short_command,
    write_json,
    write_markdown,
)
from rnntext.data.ag_news import read_split  # noqa: E402
from rnntext.data.readers import Rows, read_rows  # noqa: E402
from rnntext.data.tokenizer import basic_english  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
SPLIT_SEED = 15  # the CR/MPQA 90/10 split and fastText's validation split
DEV_SEED, DEV_FRACTION = 16, 0.1  # --dev: the held-out part of train that stands in for test
FT_VALID = 0.1  # fastText's validation split of train (where there is no validation file)
FT_NGRAMS = (1, 2, 3)
FT_EPOCHS = (5, 10, 25, 50)
FT_LR, FT_DIM = 0.1, 100


@dataclass
class Dataset:
    name: str
    title: str
    folder: str
    train: str  # file name in the folder (all.csv.gz: split 90/10 here)
    test: str | None
    text: str
    label: str
    valid: str | None = None
    extra: list[str] = field(default_factory=list)


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("trec", "TREC coarse", "trec", "train.csv.gz", "test.csv.gz", "text", "coarse_label"),
    Dataset("trec_fine", "TREC fine", "trec", "train.csv.gz", "test.csv.gz", "text", "fine_label"),
    Dataset("sst2", "SST-2", "sst2", "train.csv.gz", "test.csv.gz", "sentence", "label", valid="dev.csv.gz"),
    Dataset("cr", "CR", "cr", "all.csv.gz", None, "text", "label"),
    Dataset("mpqa", "MPQA", "mpqa", "all.csv.gz", None, "text", "label"),
    Dataset("20ng", "20 Newsgroups", "20newsgroups", "train.csv.gz", "test.csv.gz", "text", "label"),
    Dataset("ag_news", "AG News (20k train)", "ag_news_20k", "train.csv.gz", "test.csv.gz", "text", "label"),
]}


# ------------------------------------------------------------------------------------------------ data


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) row indices: `fraction` of each class held out, drawn with `seed`."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_class[lab].append(i)
    rng = random.Random(seed)
    held: list[int] = []
    for lab in sorted(by_class):
        idx = by_class[lab]
        rng.shuffle(idx)
        held += idx[: round(len(idx) * fraction)]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def write_csv(path: Path, rows: Rows, text: str, label: str) -> None:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([label, text])
        w.writerows(zip(rows.labels, rows.texts))


@dataclass
class Files:
    """One dataset's files as rnntext reads them, and its rows as fastText reads them."""

    args: list[str]  # rnntext train's data options (test excluded)
    test_args: list[str]
    train: Rows
    test: Rows
    valid: Rows | None  # a validation file (SST-2's dev), else None


def materialise(d: Dataset, data_root: Path, work: Path, dev: bool = False) -> Files:
    files = _materialise(d, data_root, work)
    return _dev_files(d, files, work) if dev else files


def _dev_files(d: Dataset, files: Files, work: Path) -> Files:
    """--dev: the test split is set aside and a held-out part of train takes its place (SST-2: its dev
    file; otherwise a stratified DEV_FRACTION drawn with DEV_SEED), so defaults are chosen without test."""
    if files.valid is not None:  # SST-2: train on train (rnntext draws its own validation), score on dev
        train, test = files.train, files.valid
    else:
        keep, held = stratified_split(files.train.labels, DEV_FRACTION, DEV_SEED)
        train, test = files.train.take(keep), files.train.take(held)
    text, label = (d.text, d.label) if d.name != "ag_news" else ("text", "label")
    train_path, test_path = work / f"{d.name}_devtrain.csv.gz", work / f"{d.name}_dev.csv.gz"
    write_csv(train_path, train, text, label)
    write_csv(test_path, test, text, label)
    return Files(["--train", str(train_path), "--text-column", text, "--label-column", label],
                 ["--test", str(test_path)], train, test, None)


def _materialise(d: Dataset, data_root: Path, work: Path) -> Files:
    folder = data_root / d.folder
    if d.name == "ag_news":
        train, test = read_split(folder / d.train), read_split(folder / d.test)  # type: ignore[arg-type]
        return Files(["--dataset", "ag_news", "--data-dir", str(folder)], [], train, test, None)
    if d.test is None:  # CR, MPQA: a fixed stratified 90/10 split, written once
        rows = read_rows(folder / d.train, [d.text], d.label)
        keep, held = stratified_split(rows.labels, 0.1, SPLIT_SEED)
        train, test = rows.take(keep), rows.take(held)
        train_path, test_path = work / f"{d.name}_train.csv.gz", work / f"{d.name}_test.csv.gz"
        write_csv(train_path, train, d.text, d.label)
        write_csv(test_path, test, d.text, d.label)
    else:
        train_path, test_path = folder / d.train, folder / d.test
        train, test = read_rows(train_path, [d.text], d.label), read_rows(test_path, [d.text], d.label)
    args = ["--train", str(train_path), "--text-column", d.text, "--label-column", d.label]
    valid = None
    if d.valid:
        args += ["--valid", str(folder / d.valid)]
        valid = read_rows(folder / d.valid, [d.text], d.label)
    return Files(args, ["--test", str(test_path)], train, test, valid)


# ------------------------------------------------------------------------------------------------ fastText


def _ft_label(label: str) -> str:
    return "__label__" + "_".join(label.split())


def _ft_file(path: Path, rows: Rows) -> Path:
    """fastText's training file, its lines in a seeded random order: fastText reads them in file order (it
    does not shuffle), and files sorted by label (20 Newsgroups, CR, MPQA) leave it near chance."""
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    with open(path, "w", encoding="utf-8") as f:
        for i in order:
            f.write(f"{_ft_label(rows.labels[i])} {' '.join(basic_english(rows.texts[i]))}\n")
    return path


def _ft_accuracy(model: Any, rows: Rows) -> float:
    pred = model.predict([" ".join(basic_english(t)) for t in rows.texts])[0]
    return sum(p[0] == _ft_label(g) for p, g in zip(pred, rows.labels)) / len(rows)


def _ft_train(fasttext: Any, path: Path, ngrams: int, epochs: int, threads: int, record: dict[str, Any],
              lr: float = FT_LR) -> Any:
    """A supervised fastText model, or None. On small files it sometimes stops on "Encountered NaN" (its
    threads' shares of the learning-rate schedule overrun): two more seeds, then the same in one thread."""
    for n_threads in dict.fromkeys((threads, 1)):
        for seed in range(3):
            try:
                return fasttext.train_supervised(str(path), wordNgrams=ngrams, epoch=epochs, lr=lr, dim=FT_DIM,
                                                 thread=n_threads, verbose=0, seed=seed)
            except RuntimeError as e:
                record.setdefault("errors", []).append(f"seed {seed}, {n_threads} threads: {e}")
    return None


def run_fasttext(files: Files, work: Path, threads: int, quick: bool,
                 lrs: tuple[float, ...] = (FT_LR,)) -> dict[str, Any]:
    import fasttext

    t_all = time.perf_counter()
    if files.valid is not None:
        fit, valid = files.train, files.valid
        how = "the validation file"
    else:
        keep, held = stratified_split(files.train.labels, FT_VALID, SPLIT_SEED)
        fit, valid = files.train.take(keep), files.train.take(held)
        how = f"a stratified {FT_VALID:.0%} of train (seed {SPLIT_SEED})"
    fit_path = _ft_file(work / "ft_fit.txt", fit)
    ngrams_grid, epochs_grid = ((2,), (5,)) if quick else (FT_NGRAMS, FT_EPOCHS)
    grid = [(lr, n, e) for lr in lrs for n in ngrams_grid for e in epochs_grid]
    points = []
    for lr, ngrams, epochs in grid:  # each point trained on train minus the validation split, scored on both
        point: dict[str, Any] = {"lr": lr, "wordNgrams": ngrams, "epochs": epochs}
        t0 = time.perf_counter()
        model = _ft_train(fasttext, fit_path, ngrams, epochs, threads, point, lr)
        point["seconds"] = time.perf_counter() - t0
        point["valid_accuracy"] = _ft_accuracy(model, valid) if model else 0.0  # a failed point is never picked
        point["test_accuracy"] = _ft_accuracy(model, files.test) if model else 0.0
        points.append(point)
        print(f"  fastText lr {lr:g} wordNgrams {ngrams} epochs {epochs:2d}: valid {point['valid_accuracy']:.4f} "
              f"(test {point['test_accuracy']:.4f})", flush=True)
    picked = max(points, key=lambda p: p["valid_accuracy"])  # the first best: the fewer n-grams and epochs
    # the picked setting trained again on the whole train file: the figure reported
    t0 = time.perf_counter()
    final: dict[str, Any] = {}
    model = _ft_train(fasttext, _ft_file(work / "ft_full.txt", files.train), picked["wordNgrams"], picked["epochs"],
                      threads, final, picked["lr"])
    test_accuracy = _ft_accuracy(model, files.test) if model else 0.0
    train_seconds = time.perf_counter() - t0
    best_test = max(points, key=lambda p: p["test_accuracy"])
    best_on_test = {"wordNgrams": best_test["wordNgrams"], "epochs": best_test["epochs"],
                    "test_accuracy": max(best_test["test_accuracy"], test_accuracy)}
    if test_accuracy > best_test["test_accuracy"]:
        best_on_test.update(wordNgrams=picked["wordNgrams"], epochs=picked["epochs"])
    return {"valid_split": how, "fit_rows": len(fit), "valid_rows": len(valid), "grid": points,
            "picked": {"lr": picked["lr"], "wordNgrams": picked["wordNgrams"], "epochs": picked["epochs"]},
            "valid_accuracy": picked["valid_accuracy"], "test_accuracy": test_accuracy,
            "train_seconds": train_seconds, "errors": final.get("errors"), "best_on_test": best_on_test,
            "seconds": time.perf_counter() - t_all,
            "config": f"dim {FT_DIM}, lr {', '.join(map(str, lrs))}, thread {threads}, seed 0, texts tokenised by "
                      "basic_english"}


# ------------------------------------------------------------------------------------------------ rnntext


def run_rnntext(files: Files, run_dir: Path, extra: list[str], with_test: bool) -> dict[str, Any]:
    """`rnntext train` in a child process: its metrics, wall time and peak RSS (wait4's ru_maxrss)."""
    if run_dir.exists():  # a run of an earlier invocation (--work-dir): this one trains afresh
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "rnntext", "train", *files.args, *(files.test_args if with_test else []),
           "--out", str(run_dir), "-q", "--json", *extra]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.stderr.write(stderr[-3000:])
        return {"error": f"exit status {proc.returncode}: {stderr.strip().splitlines()[-1:] or ''}",
                "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
                "cpu_seconds": usage.ru_utime + usage.ru_stime}
    metrics = json.loads(stdout[stdout.index("{"):])
    if "members" in metrics:  # an ensemble (--ensemble N, or chosen by the defaults): its members' runs
        result = {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "members": metrics["members"],
                  "train_seconds": metrics.get("train_seconds"),
                  "log_tail": [line for line in stderr.splitlines() if line.strip()][-12:]}
        if with_test and "test" in metrics:
            result["test_accuracy"] = metrics["test"]["accuracy"]
            result["test_macro_f1"] = metrics["test"]["macro_f1"]
        return result
    epochs = metrics.get("epochs") or []
    best = next((e for e in epochs if e["epoch"] == metrics.get("best_epoch")), {})
    result: dict[str, Any] = {
        "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "best_epoch": metrics.get("best_epoch"),
        # CPU seconds (user + system) of the run: what it costs whatever else the machine is doing
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "epochs_run": len(epochs), "valid_accuracy": best.get("valid_accuracy"),
        "train_seconds": metrics.get("train_seconds"), "data_seconds": metrics.get("data_seconds"),
        "epochs": [{k: e.get(k) for k in ("epoch", "train_loss", "valid_accuracy", "valid_macro_f1", "valid_loss",
                                          "seconds")} for e in epochs],
        "log_tail": [line for line in stderr.splitlines() if line.strip()][-12:]}
    if with_test and "test" in metrics:
        result["test_accuracy"] = metrics["test"]["accuracy"]
        result["test_macro_f1"] = metrics["test"]["macro_f1"]
    return result


# ------------------------------------------------------------------------------------------------ report


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    """The tables of own_data.md: rnntext's defaults against fastText per dataset, then fastText's grid."""
    rows, grid_rows = [], []
    for r in results["datasets"].values():
        rn, ft = r.get("rnntext") or {}, r.get("fasttext") or {}
        acc, ft_acc = rn.get("test_accuracy"), ft.get("test_accuracy")
        delta = "" if acc is None or ft_acc is None else f"{(acc - ft_acc) * 100:+.1f}"
        picked = ft.get("picked") or {}
        best = ft.get("best_on_test") or {}
        rows.append([
            r["title"], f"{r['train_rows']:,} / {r['test_rows']:,}",
            f"**{_pct(acc)}**" if acc is not None else rn.get("error", "not run"),
            _pct(rn.get("valid_accuracy")),
            f"{rn['best_epoch']} of {rn['epochs_run']}" if rn.get("best_epoch") else "",
            "" if rn.get("wall_seconds") is None else f"{rn['wall_seconds']:.0f}",
            "" if rn.get("cpu_seconds") is None else f"{rn['cpu_seconds']:.0f}",
            "" if rn.get("peak_rss_mb") is None else f"{rn['peak_rss_mb']:,.0f}",
            _pct(ft_acc) + (f" (lr {picked.get('lr', FT_LR):g}, ng {picked['wordNgrams']}, {picked['epochs']} ep)"
                            if picked else ""),
            delta, _pct(best.get("test_accuracy")) + (f" (ng {best['wordNgrams']}, {best['epochs']} ep)" if best
                                                       else ""),
        ])
        for p in ft.get("grid") or []:
            grid_rows.append([r["title"], p.get("lr", FT_LR), p["wordNgrams"], p["epochs"],
                              _pct(p.get("valid_accuracy")), _pct(p.get("test_accuracy"))])
    s = results.get("summary") or {}
    what = ("rnntext's defaults (train and test files, nothing else) against fastText with its settings "
            "picked on a validation split of train; test accuracy. Nothing is chosen on test.")
    if results.get("dev"):
        what = (f"Choosing defaults (--dev): the test splits set aside; every \"test\" figure below is on a "
                f"held-out stratified {DEV_FRACTION:.0%} of train (seed {DEV_SEED}; SST-2: its dev file), trained "
                "on the rest. rnntext options: " + (" ".join(results.get("rnntext_options") or []) or "none") + ".")
    if results.get("note"):  # added by hand to a results file: what the options alone do not say
        what += " " + results["note"]
    text = md_header(short_command(results.get("command")), results.get("machine"), what)
    text += "\n" + md_table(
        ["dataset", "rows (train / test)", "rnntext test", "rnntext valid", "best epoch", "wall s", "CPU s", "peak MiB",
         "fastText test (picked on valid)", "rnntext - fastText", "fastText best-on-test (reference)"],
        rows, "llrrrrrrlrl")
    if s.get("mean_rnntext") is not None and s.get("mean_fasttext") is not None:
        text += (f"\nMean over {s['datasets']} datasets: rnntext **{_pct(s['mean_rnntext'])}**, fastText "
                 f"{_pct(s['mean_fasttext'])} ({(s['mean_rnntext'] - s['mean_fasttext']) * 100:+.2f} points); "
                 f"rnntext >= fastText on {s['wins']} of {s['datasets']}.\n")
    if grid_rows:
        text += "\nfastText's grid, each point trained on train minus the validation split (its test figure for "
        text += "reference only; the reported figure is the picked point trained again on all of train):\n\n"
        text += md_table(["dataset", "lr", "wordNgrams", "epochs", "valid", "test"], grid_rows, "lrrrrr")
    return text


def summary(datasets: dict[str, Any]) -> dict[str, Any]:
    pairs = [((r.get("rnntext") or {}).get("test_accuracy"), (r.get("fasttext") or {}).get("test_accuracy"))
             for r in datasets.values()]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return {"datasets": 0}
    return {"datasets": len(pairs), "mean_rnntext": sum(a for a, _ in pairs) / len(pairs),
            "mean_fasttext": sum(b for _, b in pairs) / len(pairs), "wins": sum(a >= b for a, b in pairs)}


def merge(paths: list[Path], name: str) -> None:
    """One results file from several invocations' (each ran its own datasets, with the same code)."""
    parts = [json.loads(p.read_text()) for p in paths]
    out = dict(parts[0])
    out["command"] = " ; ".join(p["command"].replace(sys.executable, "python3") for p in parts)
    out["machines"] = [p["machine"] for p in parts]
    out["datasets"] = {}
    for p in parts:  # a dataset's fastText and rnntext may come from different invocations
        for k, v in p["datasets"].items():
            out["datasets"].setdefault(k, {}).update(v)
    order = list(DATASETS)
    out["datasets"] = dict(sorted(out["datasets"].items(), key=lambda kv: order.index(kv[0])))
    out["summary"] = summary(out["datasets"])
    write_json(name, out)
    write_markdown(name, markdown_document(name, "own_data.py", markdown(out)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    ap.add_argument("--data-root", default=str(SHARED), help="the folder holding trec/, sst2/, ... (read in place)")
    ap.add_argument("--work-dir", default=None, help="where the CR/MPQA splits, fastText files and runs go "
                                                     "(default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="fastText's threads")
    ap.add_argument("--quick", action="store_true", help="one fastText point and rnntext with --epochs 1")
    ap.add_argument("--valid-only", action="store_true", help="rnntext without its test file, no fastText")
    ap.add_argument("--dev", action="store_true", help="score on a held-out part of train instead of test "
                    "(SST-2: dev), to choose defaults; the test split is not used")
    ap.add_argument("--no-fasttext", action="store_true", help="rnntext only")
    ap.add_argument("--no-rnntext", action="store_true", help="fastText only")
    ap.add_argument("--ft-lrs", default=str(FT_LR), help="fastText learning rates in its grid, comma-separated")
    ap.add_argument("--out", default="own_data", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join the results of separate invocations")
    ap.add_argument("extra", nargs="*", help="more `rnntext train` options for every run, after --")
    args = ap.parse_args(argv)
    if args.merge:
        merge([Path(p) for p in args.merge], args.out)
        return
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        sys.exit(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None else \
        " ".join(["python3", "benchmarks/own_data.py", *argv])
    print(command, flush=True)
    extra = list(args.extra) + (["--epochs", "1"] if args.quick else [])
    tmp = tempfile.TemporaryDirectory(prefix="own_data_") if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": "own_data", "command": command, "machine": machine(args.threads),
                           "rnntext_options": extra, "valid_only": args.valid_only, "dev": args.dev,
                           "split_seed": SPLIT_SEED,
                           "datasets": {}}
    try:
        for name in names:
            d = DATASETS[name]
            files = materialise(d, Path(args.data_root), work, args.dev)
            r: dict[str, Any] = {"title": d.title, "train_rows": len(files.train), "test_rows": len(files.test),
                                 "valid_rows": len(files.valid) if files.valid is not None else None}
            print(f"{d.title}: {len(files.train)} train, {len(files.test)} test rows", flush=True)
            if not (args.valid_only or args.no_fasttext):
                ft_dir = work / f"ft_{name}"
                ft_dir.mkdir(exist_ok=True)
                r["fasttext"] = run_fasttext(files, ft_dir, args.threads, args.quick,
                                             tuple(float(x) for x in args.ft_lrs.split(",")))
                ft = r["fasttext"]
                print(f"  fastText: picked wordNgrams {ft['picked']['wordNgrams']}, epochs {ft['picked']['epochs']} "
                      f"(valid {ft['valid_accuracy']:.4f}): test {ft['test_accuracy']:.4f}; best-on-test "
                      f"{ft['best_on_test']['test_accuracy']:.4f} (reference); grid {ft['seconds']:.0f}s", flush=True)
            out["datasets"][name] = r
            if args.no_rnntext:
                write_json(args.out, out)
                continue
            r["rnntext"] = rn = run_rnntext(files, work / f"run_{name}", extra, not args.valid_only)
            print("  rnntext: " + (f"test {rn['test_accuracy']:.4f}, " if "test_accuracy" in rn else "")
                  + (f"valid {rn['valid_accuracy']:.4f} (best epoch {rn['best_epoch']} of {rn['epochs_run']}), "
                     if rn.get("valid_accuracy") is not None else "")
                  + f"{rn['wall_seconds']:.0f}s ({rn['cpu_seconds']:.0f} CPU s), peak RSS {rn['peak_rss_mb']:.0f} MiB"
                  + (f" -- {rn['error']}" if "error" in rn else ""), flush=True)
            out["datasets"][name] = r
            out["summary"] = summary(out["datasets"])
            write_json(args.out, out)  # after every dataset: a long run's figures survive an interruption
        if out.get("summary", {}).get("datasets"):
            s = out["summary"]
            print(f"mean: rnntext {s['mean_rnntext']:.4f}, fastText {s['mean_fasttext']:.4f} "
                  f"({(s['mean_rnntext'] - s['mean_fasttext']) * 100:+.2f} points); rnntext >= fastText on "
                  f"{s['wins']} of {s['datasets']}")
        write_markdown(args.out, markdown_document(args.out, "own_data.py", markdown(out)))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
