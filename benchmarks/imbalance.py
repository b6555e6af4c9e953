"""Imbalanced classes: macro-F1 and minority recall with and without --class-weight balanced (and with
--select-by macro_f1), on SST-2 made imbalanced 20:1; and what the calibration does to the test ECE.

The data (documented here, built in a temporary directory, never in the repository):

- train: from SST-2's training phrases (../shared/data/sst2/train.csv.gz: 37,569 positive, 29,780
  negative), --majority positive rows and --majority / --ratio negative rows (default 20,000 and 1,000:
  20:1), each drawn at random with --data-seed. The minority class is "negative" (label 0). Validation
  is rnntext's own: 5% held out of this train, stratified (so 20:1 as well).
- test: SST-2's labelled test sentences (test.csv.gz: 912 negative, 909 positive), as they are
  (balanced: minority recall on 912 negatives), and the same test with the negatives subsampled to 20:1
  (all 909 positives, 45 negatives drawn with --data-seed; noisy, but the distribution the model was
  trained for).

Each configuration trains --seeds seeds with the default model and settings (GRU, 5 epochs) and
reports the mean and the spread (min..max) over the seeds. The runs are deleted afterwards.

    python3 benchmarks/imbalance.py                          # 3 seeds, all cores
    python3 benchmarks/imbalance.py --seeds 1 --epochs 1 --majority 2000 --threads 1   # quick check

Writes benchmarks/results/imbalance.json and imbalance.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

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
from rnntext import train  # noqa: E402
from rnntext.config import RunConfig, TrainConfig  # noqa: E402
from rnntext.inference.predictor import Predictor  # noqa: E402
from rnntext.training.calibration import ece  # noqa: E402
from rnntext.training.metrics import classification_report  # noqa: E402

DEFAULT_SST2 = HERE.parent.parent / "shared" / "data" / "sst2"
NAMES = {"0": "negative", "1": "positive"}
MINORITY = "negative"


def configurations() -> dict[str, dict[str, Any]]:
    """name -> train settings changed from the defaults. --select-by exists once engineer OWNDATA's
    training/stopping.py is in; without it those rows are left out."""
    configs: dict[str, dict[str, Any]] = {"plain": {}, "class-weight balanced": {"class_weight": "balanced"}}
    if "select_by" in TrainConfig.__dataclass_fields__:
        configs["select-by macro_f1"] = {"select_by": "macro_f1"}
        configs["class-weight balanced + select-by macro_f1"] = {"class_weight": "balanced", "select_by": "macro_f1"}
    return configs


def read_sst2(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return [(row["sentence"], NAMES[row["label"]]) for row in csv.DictReader(f)]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def build_data(sst2: Path, out: Path, majority: int, ratio: float, seed: int) -> dict[str, Any]:
    """train.csv (imbalanced), test.csv (SST-2's test) and test_imbalanced.csv in `out`; their class counts."""
    rng = random.Random(seed)
    rows = read_sst2(sst2 / "train.csv.gz")
    pos = [r for r in rows if r[1] == "positive"]
    neg = [r for r in rows if r[1] == "negative"]
    minority = int(round(majority / ratio))
    train_rows = rng.sample(pos, majority) + rng.sample(neg, minority)
    rng.shuffle(train_rows)
    test = read_sst2(sst2 / "test.csv.gz")
    test_pos = [r for r in test if r[1] == "positive"]
    test_neg = [r for r in test if r[1] == "negative"]
    test_imb = test_pos + rng.sample(test_neg, int(round(len(test_pos) / ratio)))
    write_csv(out / "train.csv", train_rows)
    write_csv(out / "test.csv", test)
    write_csv(out / "test_imbalanced.csv", test_imb)
    return {"train": {"positive": majority, "negative": minority},
            "test": {"positive": len(test_pos), "negative": len(test_neg)},
            "test_imbalanced": {"positive": len(test_pos), "negative": len(test_imb) - len(test_pos)}}


def scores(predictor: Predictor, rows: list[tuple[str, str]]) -> dict[str, Any]:
    """Metrics of the calibrated predictions (the class never changes with the temperature) and the ECE of
    the raw and the calibrated probabilities."""
    texts = [t for t, _ in rows]
    y = torch.tensor([predictor.labels.index(label) for _, label in rows])
    fitted, raw = predictor.probabilities(texts), predictor.probabilities(texts, calibrated=False)
    report = classification_report(y, fitted.argmax(1), predictor.labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "minority_recall": report["per_class"][MINORITY]["recall"],
            "minority_precision": report["per_class"][MINORITY]["precision"],
            "minority_f1": report["per_class"][MINORITY]["f1"],
            "ece_raw": ece(raw, y), "ece_calibrated": ece(fitted, y)}


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sst2", default=str(DEFAULT_SST2), help="directory with SST-2's train.csv.gz and test.csv.gz")
    ap.add_argument("--majority", type=int, default=20_000, help="positive training rows")
    ap.add_argument("--ratio", type=float, default=20.0, help="majority : minority in train (and in the "
                    "imbalanced test)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per configuration")
    ap.add_argument("--epochs", type=int, default=None, help="(default: rnntext's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="imbalance")
    args = ap.parse_args(argv)
    if not (Path(args.sst2) / "train.csv.gz").is_file():
        sys.exit(f"SST-2 not found in {args.sst2} (pass --sst2 DIR with train.csv.gz and test.csv.gz)")

    results: dict[str, Any] = {"benchmark": "imbalance", "command": " ".join([Path(sys.executable).name,
                                                                              *sys.argv]),
                               "machine": machine(args.threads), "ratio": args.ratio, "runs": []}
    with tempfile.TemporaryDirectory(prefix="rnntext-bench-imbalance-") as tmp:
        data = Path(tmp)
        results["data"] = build_data(Path(args.sst2), data, args.majority, args.ratio, args.data_seed)
        print(f"data: {results['data']}", file=sys.stderr)
        tests = {name: read_sst2_csv(data / f"{name}.csv") for name in ("test", "test_imbalanced")}
        for name, changes in configurations().items():
            for seed in range(args.seeds):
                cfg = RunConfig()
                cfg.data.train = str(data / "train.csv")
                cfg.train.seed = seed
                if args.epochs:
                    cfg.train.epochs = args.epochs
                if args.threads:
                    cfg.train.threads = args.threads
                for key, value in changes.items():
                    setattr(cfg.train, key, value)
                run_dir = data / f"run-{len(results['runs'])}"
                t0 = time.perf_counter()
                result = train(cfg, str(run_dir), progress=False, log=lambda s: None)
                seconds = time.perf_counter() - t0
                predictor = Predictor.load(run_dir, "cpu")
                row = {"config": name, "settings": changes, "seed": seed, "seconds": seconds,
                       "best_epoch": result.metrics["best_epoch"],
                       "temperature": result.metrics.get("calibration", {}).get("temperature", 1.0),
                       **{k: scores(predictor, rows) for k, rows in tests.items()}}
                results["runs"].append(row)
                t = row["test"]
                print(f"{name}, seed {seed}: test macro-F1 {t['macro_f1']:.4f}, minority recall "
                      f"{t['minority_recall']:.4f}; 20:1 test macro-F1 {row['test_imbalanced']['macro_f1']:.4f}; "
                      f"T {row['temperature']:.3f}, ECE {t['ece_raw']:.4f} -> {t['ece_calibrated']:.4f}; "
                      f"{seconds:.0f}s", file=sys.stderr)
    results["summary"] = summary(results["runs"])
    write_json(args.out, results)
    write_markdown(args.out, markdown_document(args.out, "imbalance.py", markdown(results)))


def read_sst2_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], row["label"]) for row in csv.DictReader(f)]


METRICS = ("macro_f1", "minority_recall", "minority_precision", "accuracy", "ece_raw", "ece_calibrated")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """config -> test -> metric -> mean/min/max over the seeds."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        out[name] = {"seeds": len(mine), "temperature": summarise([r["temperature"] for r in mine]),
                     **{test: {m: summarise([r[test][m] for r in mine]) for m in METRICS}
                        for test in ("test", "test_imbalanced")}}
    return out


def markdown(results: dict[str, Any]) -> str:
    """The tables of imbalance.md: per configuration, the means over the seeds (min..max)."""
    d = results["data"]

    def cell(s: dict[str, float], pct: bool = True) -> str:
        if pct:
            return f"**{s['mean'] * 100:.1f}** ({s['min'] * 100:.1f}..{s['max'] * 100:.1f})"
        return f"{s['mean']:.3f} ({s['min']:.3f}..{s['max']:.3f})"

    rows, rows_imb, rows_cal = [], [], []
    for name, s in results["summary"].items():
        t, ti = s["test"], s["test_imbalanced"]
        rows.append([name, s["seeds"], cell(t["macro_f1"]), cell(t["minority_recall"]), cell(t["minority_precision"]),
                     cell(t["accuracy"])])
        rows_imb.append([name, cell(ti["macro_f1"]), cell(ti["minority_recall"]), cell(ti["minority_precision"])])
        rows_cal.append([name, cell(s["temperature"], pct=False), cell(t["ece_raw"], pct=False),
                         cell(t["ece_calibrated"], pct=False)])
    what = (f"SST-2 made imbalanced: train {d['train']['positive']:,} positive, {d['train']['negative']:,} negative "
            f"({results['ratio']:g}:1; 5% of it, stratified, for validation); the default model and settings. Mean "
            f"over the seeds (min..max), in %. Minority class: negative.")
    return (md_header(short_command(results.get("command")), results.get("machine"), what) + "\n"
            + f"SST-2 test as it is ({d['test']['negative']} negative, {d['test']['positive']} positive):\n\n"
            + md_table(["configuration", "seeds", "macro-F1", "minority recall", "minority precision", "accuracy"],
                       rows, "lrrrrr")
            + f"\nThe same test with the negatives subsampled to {results['ratio']:g}:1 "
              f"({d['test_imbalanced']['negative']} negative, {d['test_imbalanced']['positive']} positive):\n\n"
            + md_table(["configuration", "macro-F1", "minority recall", "minority precision"], rows_imb, "lrrr")
            + "\nCalibration: the temperature fitted on validation, and the expected calibration error (15 bins) "
              "of the balanced test's probabilities before and after it:\n\n"
            + md_table(["configuration", "temperature", "test ECE raw", "test ECE calibrated"], rows_cal, "lrrr"))


if __name__ == "__main__":
    main()
