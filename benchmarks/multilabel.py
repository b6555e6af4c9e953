"""Multi-label classification: rnntext --multi-label against fastText -loss ova, in one run, on a
multi-label set built from AG News.

The set (built here, deterministically from --seed): the 20k AG News training rows and the 7,600 test
rows are each shuffled; the first half of a split stays as single texts (one label), the second half is
cut into consecutive pairs, each pair's two texts joined into one text whose labels are both texts'
classes (one label when the two share a class, which a quarter of the pairs do). So a text has one or two
of the four labels, and the model must find every topic in it, wherever it is. 5% of the built training
rows, iteratively stratified (rnntext.data.labels.iterative_split), are the validation rows that both
systems choose their per-label thresholds on; the test rows are scored once.

Rows of the table:
- rnntext, the default model (GRU) with --multi-label, each label's threshold chosen on the validation rows;
- fastText supervised, -loss ova (one-vs-all: a sigmoid per label), wordNgrams 2, the given epochs: with
  fastText's usual threshold 0.5 (predict(k=-1, threshold=0.5)), and with per-label thresholds chosen on
  the same validation rows the same way (rnntext.training.multilabel.fit_thresholds);
- rnntext at threshold 0.5 too, for the same comparison.

    python3 benchmarks/multilabel.py                    # ~5 minutes on 2 cores
    python3 benchmarks/multilabel.py --quick            # a smoke run on 2,000 rows, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
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
    short_command,
    write_json,
    write_markdown,
)
from rnntext import RunConfig, train  # noqa: E402
from rnntext.data.ag_news import load  # noqa: E402
from rnntext.data.labels import iterative_split  # noqa: E402
from rnntext.data.tokenizer import basic_english  # noqa: E402
from rnntext.training.multilabel import decide, fit_thresholds, multilabel_report  # noqa: E402

LABELS = ("Business", "Sci/Tech", "Sports", "World")  # rnntext's class order (alphabetical)


def build(texts: list[str], labels: list[str], seed: int) -> list[tuple[str, list[str]]]:
    """Half single texts, half pairs of texts joined with both labels (see the module's docstring)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    rows = [(texts[i], [labels[i]]) for i in order[:half]]
    pairs = order[half:]
    for a, b in zip(pairs[0::2], pairs[1::2]):
        rows.append((texts[a] + " " + texts[b], sorted({labels[a], labels[b]})))
    random.Random(seed + 1).shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[tuple[str, list[str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, labels in rows:
            f.write(json.dumps({"text": text, "label": labels}, ensure_ascii=False) + "\n")


def targets(rows: list[tuple[str, list[str]]]) -> torch.Tensor:
    out = torch.zeros(len(rows), len(LABELS))
    for i, (_, labels) in enumerate(rows):
        for label in labels:
            out[i, LABELS.index(label)] = 1.0
    return out


def run_rnntext(files: dict[str, Path], threads: int, epochs: int | None, quick: bool) -> dict[str, Any]:
    cfg = RunConfig()
    cfg.data.train, cfg.data.valid, cfg.data.test = str(files["train"]), str(files["valid"]), str(files["test"])
    cfg.data.multi_label = True
    cfg.train.threads, cfg.train.device = threads, "cpu"
    if epochs is not None:
        cfg.train.epochs = epochs
    if quick:
        cfg.train.epochs, cfg.train.epoch_size = 1, 20
    t0 = time.perf_counter()
    result = train(cfg, None, progress=False, log=quiet_log)
    seconds = time.perf_counter() - t0
    thresholds = [result.metrics["thresholds"][name] for name in LABELS]
    from rnntext.training.multilabel import evaluate_multilabel

    at_half = evaluate_multilabel(result.model, result.prepared.test, list(LABELS), torch.device("cpu"))
    return {"system": "rnntext", "config": f"--multi-label, {cfg.model.model}, {result.config.train.epochs} epochs",
            "train_seconds": result.metrics["train_seconds"], "total_seconds": seconds,
            "best_epoch": result.metrics["best_epoch"], "thresholds": thresholds,
            "tuned": result.metrics["test"], "at_half": at_half}


def run_fasttext(rows: dict[str, list[tuple[str, list[str]]]], threads: int, epochs: int,
                 quick: bool) -> dict[str, Any]:
    import fasttext

    def tokens(text: str) -> str:
        return " ".join(basic_english(text))

    tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    with tmp:
        for text, labels in rows["train"]:
            tmp.write(" ".join(f"__label__{x.replace('/', '_')}" for x in labels) + " " + tokens(text) + "\n")
    t0 = time.perf_counter()
    try:
        model = fasttext.train_supervised(tmp.name, loss="ova", wordNgrams=2, epoch=1 if quick else epochs,
                                          thread=threads, verbose=0, seed=0)
    finally:
        os.unlink(tmp.name)
    seconds = time.perf_counter() - t0
    names = [f"__label__{x.replace('/', '_')}" for x in LABELS]

    def probabilities(part: list[tuple[str, list[str]]]) -> torch.Tensor:
        got, probs = model.predict([tokens(t) for t, _ in part], k=-1, threshold=0.0)
        out = torch.zeros(len(part), len(LABELS))
        for i, (labels, ps) in enumerate(zip(got, probs)):
            for label, p in zip(labels, ps):
                out[i, names.index(label)] = float(p)
        return out

    thresholds = fit_thresholds(probabilities(rows["valid"]), targets(rows["valid"]))
    test_probs, test_y = probabilities(rows["test"]), targets(rows["test"])
    return {"system": "fasttext", "config": f"-loss ova, wordNgrams 2, {1 if quick else epochs} epochs, dim 100, "
                                            "lr 0.1", "train_seconds": seconds, "thresholds": thresholds,
            "tuned": multilabel_report(test_y, decide(test_probs, thresholds), list(LABELS), thresholds),
            "at_half": multilabel_report(test_y, decide(test_probs, None), list(LABELS))}


def markdown(results: dict[str, Any]) -> str:
    d = results["dataset"]
    what = (f"AG News made multi-label: half the texts alone, half joined in pairs with both labels "
            f"({d['train']:,} train, {d['valid']:,} validation, {d['test']:,} test rows; "
            f"{d['labels_per_text']:.2f} labels per test text). Per-label thresholds chosen on the validation rows; "
            "test rows scored once.")
    out = [md_header(short_command(results.get("command")), results.get("machine"), what)]
    rows = []
    for r in results["systems"]:
        for key, how in (("tuned", "per-label thresholds (validation)"), ("at_half", "threshold 0.5")):
            m = r[key]
            rows.append([r["system"], r["config"], how, f"{m['micro_f1']:.4f}", f"{m['macro_f1']:.4f}",
                         f"{m['subset_accuracy']:.4f}", f"{m['hamming_loss']:.4f}", f"{r['train_seconds']:.0f}"])
    out.append(md_table(["system", "configuration", "decision", "micro-F1", "macro-F1", "subset accuracy",
                         "Hamming loss", "train s"], rows, "lllrrrrr"))
    out.append("\nPer-label F1 (per-label thresholds):\n")
    per = [[r["system"], *(f"{r['tuned']['per_class'][x]['f1']:.4f}" for x in LABELS)] for r in results["systems"]]
    out.append(md_table(["system", *LABELS], per, "l" + "r" * len(LABELS)))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=None, help="torch / fastText threads (default: all cores)")
    ap.add_argument("--epochs", type=int, default=None, help="rnntext epochs (default: rnntext's)")
    ap.add_argument("--fasttext-epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0, help="how the texts are paired")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 + 500 source rows, 1 epoch each")
    ap.add_argument("--out", default="multilabel", help="results name (benchmarks/results/NAME.json and NAME.md)")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    info = machine(threads)
    train_rows, test_rows = load(data_dir(args.data_dir), progress=False)
    n_train, n_test = (2000, 500) if args.quick else (len(train_rows), len(test_rows))
    built = build(train_rows.texts[:n_train], train_rows.labels[:n_train], args.seed)
    test = build(test_rows.texts[:n_test], test_rows.labels[:n_test], args.seed + 2)
    sets = [[LABELS.index(x) for x in labels] for _, labels in built]
    valid_idx = set(iterative_split(sets, len(LABELS), 0.05, args.seed))
    rows = {"train": [r for i, r in enumerate(built) if i not in valid_idx],
            "valid": [r for i, r in enumerate(built) if i in valid_idx], "test": test}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.jsonl" for name in rows}
        for name, part in rows.items():
            write_jsonl(files[name], part)
        systems = [run_rnntext(files, threads, args.epochs, args.quick),
                   run_fasttext(rows, threads, args.fasttext_epochs, args.quick)]
    for s in systems:
        print(f"{s['system']:8s} micro-F1 {s['tuned']['micro_f1']:.4f} macro-F1 {s['tuned']['macro_f1']:.4f} "
              f"subset acc {s['tuned']['subset_accuracy']:.4f} (threshold 0.5: micro-F1 "
              f"{s['at_half']['micro_f1']:.4f}), {s['train_seconds']:.0f}s", flush=True)
    payload = {"benchmark": "multilabel", "command": "python3 " + " ".join(sys.argv), "machine": info,
               "quick": args.quick,
               "dataset": {"train": len(rows["train"]), "valid": len(rows["valid"]), "test": len(test),
                           "labels_per_text": float(targets(test).sum(1).mean()), "seed": args.seed},
               "systems": systems}
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "multilabel.py", markdown(payload)))


if __name__ == "__main__":
    main()
