"""Semi-supervised pretraining (`rnntext pretrain`, then `train --encoder`): validation accuracy with and
without it, on the dev datasets of ../shared/data. Validation only: no test split is read.

For each dataset a fixed, seeded split of its labelled training rows (SEED below) gives a training file
and a validation file, written to a temporary directory:

- TREC coarse, TREC fine: the official train split, 90% / 10%;
- CR, MPQA: the 90% of all.csv that the 90/10 train/test split (SEED) leaves for training, 90% / 10% of it;
- SST-2 (5k): 5,000 of the 67,349 training phrases, validated on the GLUE dev set; the encoder is pretrained
  on all 67,349 phrases as raw text (more unlabelled text than labelled rows);
- 20 Newsgroups: the bydate train split, 90% / 10% (long texts: slow; only with --datasets 20ng).

Each dataset: (a) `rnntext train` with the defaults; (b) `rnntext pretrain` on the training file's texts
(the validation texts are not among them) with the defaults, then `rnntext train --encoder` with the
defaults. The figure is the validation accuracy of the epoch the run keeps (its best on validation), the
same rule for both, over --seeds seeds (the classifier's; the encoder is pretrained once).

    python3 benchmarks/pretrain.py [--datasets trec,cr,mpqa,sst2] [--seeds 0,1] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_document, md_header, md_table, write_json, write_markdown  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SEED = 20260  # the fixed splits
NAME = "pretrain"


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _split(rows: list[list[str]], fraction: float, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    k = round(len(rows) * fraction)
    return [rows[i] for i in sorted(idx[k:])], [rows[i] for i in sorted(idx[:k])]


def make_files(name: str, tmp: Path) -> dict[str, Any]:
    """train / valid / pretraining-text files of a dataset, and its columns."""
    if name in ("trec", "trec_fine"):
        header, rows = _read(DATA / "trec" / "train.csv.gz")
        train, valid = _split(rows, 0.1, SEED)
        spec = {"text": "text", "label": "coarse_label" if name == "trec" else "fine_label"}
    elif name in ("cr", "mpqa"):
        header, rows = _read(DATA / name / "all.csv.gz")
        rest, _test = _split(rows, 0.1, SEED)  # the test 10% is set aside unread
        train, valid = _split(rest, 0.1, SEED + 1)
        spec = {"text": "text", "label": "label"}
    elif name == "sst2":
        header, rows = _read(DATA / "sst2" / "train.csv.gz")
        _, valid = _read(DATA / "sst2" / "dev.csv.gz")
        order = list(range(len(rows)))
        random.Random(SEED).shuffle(order)
        train = [rows[i] for i in sorted(order[:5000])]
        spec = {"text": "sentence", "label": "label", "raw": _write(tmp / f"{name}-raw.csv", header, rows)}
    elif name == "20ng":
        header, rows = _read(DATA / "20newsgroups" / "train.csv.gz")
        train, valid = _split(rows, 0.1, SEED)
        spec = {"text": "text", "label": "label"}
    else:
        raise SystemExit(f"unknown dataset {name}")
    spec["train"] = _write(tmp / f"{name}-train.csv", header, train)
    spec["valid"] = _write(tmp / f"{name}-valid.csv", header, valid)
    spec.setdefault("raw", spec["train"])
    spec["rows"] = {"train": len(train), "valid": len(valid)}
    return spec


def run_dataset(name: str, seeds: list[int], threads: int, tmp: Path, log: Any,
                encoders: Path | None = None) -> dict[str, Any]:
    from rnntext.config import RunConfig
    from rnntext.data.encoder_dir import PretrainSettings
    from rnntext.training import train
    from rnntext.training.pretrain import pretrain

    spec = make_files(name, tmp)
    base = RunConfig()
    base.data.train, base.data.valid = spec["train"], spec["valid"]
    base.data.text_columns, base.data.label_column = [spec["text"]], spec["label"]
    base.train.threads = threads
    settings = PretrainSettings()
    settings.pretrain.text = [spec["raw"]]
    settings.run.data.text_columns = [spec["text"]]
    settings.run.train.threads = threads
    t0 = time.perf_counter()
    enc_dir = (encoders or tmp) / f"{name}-encoder"
    if encoders is not None and (enc_dir / "metrics.json").is_file():  # --encoders: pretrained by an earlier run
        lm = json.loads((enc_dir / "metrics.json").read_text())
        pretrain_seconds = lm["train_seconds"]
    else:
        lm = pretrain(settings, str(enc_dir), progress=False, log=log)
        pretrain_seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"rows": spec["rows"], "pretrain_texts": lm["texts"], "pretrain_seconds": pretrain_seconds,
                           "pretrain_epochs": len(lm["epochs"]),
                           "perplexity": [lm["initial_valid_perplexity"], lm["valid_perplexity"]], "runs": []}
    for seed in seeds:
        for arm in ("none", "encoder"):
            cfg = base.with_overrides({"train.seed": seed, "data.encoder": str(enc_dir) if arm == "encoder" else None})
            t1 = time.perf_counter()
            r = train(cfg, None, progress=False, log=log)
            best = r.metrics["best_epoch"]
            acc = r.metrics["epochs"][best - 1]["valid_accuracy"]
            out["runs"].append({"arm": arm, "seed": seed, "valid_accuracy": acc, "best_epoch": best,
                                "epochs": len(r.metrics["epochs"]), "seconds": time.perf_counter() - t1})
            print(f"{name} seed {seed} {arm}: valid acc {acc:.4f} (epoch {best})", flush=True)
    for arm in ("none", "encoder"):
        accs = [r["valid_accuracy"] for r in out["runs"] if r["arm"] == arm]
        out[f"mean_{arm}"] = statistics.mean(accs)
    return out


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results["datasets"].items():
        rows.append([name, f"{r['rows']['train']:,} / {r['rows']['valid']:,}", f"{r['pretrain_texts']:,}",
                     f"{r['perplexity'][0]:.0f} -> {r['perplexity'][1]:.1f}", f"{r['pretrain_seconds']:.0f}",
                     f"{100 * r['mean_none']:.2f}", f"{100 * r['mean_encoder']:.2f}",
                     f"{100 * (r['mean_encoder'] - r['mean_none']):+.2f}"])
    body = md_header(results.get("command"), results.get("machine"),
                     "Validation accuracy (%) with the defaults, without and with an encoder pretrained on the "
                     f"dataset's own training texts (SST-2: all 67k training phrases); mean of seeds "
                     f"{results.get('seeds')}. Validation only.")
    body += "\n\n" + md_table(["dataset", "train / valid rows", "pretraining texts", "held-out perplexity",
                               "pretrain s", "without", "with encoder", "difference"], rows, "lrrrrrrr")
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="trec,cr,mpqa,sst2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--encoders", metavar="DIR", help="keep the encoders in DIR, and reuse those found there (the "
                    "same splits and settings: more seeds without pretraining again)")
    ap.add_argument("--name", default=NAME, help="results/NAME.json (to run datasets in parallel processes)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    log = (lambda s: print(s, file=sys.stderr)) if args.verbose else (lambda s: None)
    results: dict[str, Any] = {"command": "python3 benchmarks/pretrain.py " + " ".join(sys.argv[1:]),
                               "machine": machine(args.threads), "seeds": seeds, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="rnntext-pretrain-bench-") as tmp:
        for name in args.datasets.split(","):
            results["datasets"][name] = run_dataset(name, seeds, args.threads, Path(tmp), log,
                                                    Path(args.encoders) if args.encoders else None)
            write_json(args.name, results)
            write_markdown(args.name, markdown_document(args.name, "pretrain.py", markdown(results)))


if __name__ == "__main__":
    main()
