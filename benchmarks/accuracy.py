"""AG News (20k train) test accuracy and training time: the rnntext model zoo and fastText, in one run.

Rows: the tutorial's three systems with their own settings (1 epoch, batch 16, Adam 1e-3), a
unidirectional GRU, a BiLSTM, a 2-layer bi-GRU, the EmbeddingBag baseline with bigrams, the
default configuration, a large one, and an ensemble of 5 default runs (seeds 0-4; "train s" is
the ensemble's whole wall time, each member's data preparation included); then fastText
(`fasttext` module, supervised) on the same train/test rows, the best of wordNgrams {1,2,3} x
epochs {5,10,25,50,100} by TEST accuracy (which flatters fastText). fastText reads the texts
tokenised by rnntext's basic_english, joined by spaces.

The rnntext rows train through rnntext.train() on data prepared once per data configuration;
"train s" is the wall time of train() (epochs, per-epoch validation, test), "data s" the one-off
read/tokenise/encode. Writes benchmarks/results/accuracy.json and accuracy.md (the tables of the docs).

    python3 benchmarks/accuracy.py                       # everything (~15-25 min on 2 cores)
    python3 benchmarks/accuracy.py --only default,fasttext
    python3 benchmarks/accuracy.py --quick               # a smoke run: 3 rows of 20 batches, 1 fastText run
"""

from __future__ import annotations

import argparse
import os
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
from rnntext.config import RunConfig  # noqa: E402
from rnntext.data import prepare  # noqa: E402
from rnntext.data.ag_news import load  # noqa: E402
from rnntext.data.tokenizer import basic_english  # noqa: E402
from rnntext.presets import PRESETS  # noqa: E402
from rnntext.training.ensemble import train_ensemble  # noqa: E402
from rnntext.training.trainer import train  # noqa: E402

# name -> (description, overrides of the defaults in config.py)
ZOO: dict[str, tuple[str, dict[str, Any]]] = {
    "tutorial-rnn": ("tutorial RNN (mean of outputs), 1 epoch", PRESETS["tutorial-rnn"]),
    "tutorial-lstm": ("tutorial LSTM (last state), 1 epoch", PRESETS["tutorial-lstm"]),
    "tutorial-lstm-packed": ("tutorial packed LSTM, 1 epoch", PRESETS["tutorial-lstm-packed"]),
    "gru": ("GRU 128, unidirectional, meanmax", {"model": {"model": "gru", "bidirectional": False}}),
    "bilstm": ("BiLSTM 128, meanmax", {"model": {"model": "lstm"}}),
    "bigru-2layer": ("bi-GRU 128, 2 layers, meanmax", {"model": {"num_layers": 2}}),
    "bag": ("EmbeddingBag 64 + bigrams, 10 epochs", {
        "model": {"model": "bag", "embed_dim": 64, "dropout": 0.0, "embed_dropout": 0.0},
        "data": {"ngrams": 2, "min_freq": 1}, "train": {"lr": 1e-2, "epochs": 10, "batch_size": 64,
                                                         "weight_decay": 0.0}}),
    "default": ("rnntext defaults: bi-GRU 128, meanmax", {}),
    "large": ("bi-GRU, embed 300, hidden 256, 6 epochs", {
        "model": {"embed_dim": 300, "hidden_dim": 256, "embed_dropout": 0.4},
        "train": {"epochs": 6, "batch_size": 64, "lr": 3e-3}}),
    # `rnntext train --ensemble 5`: the defaults with seeds 0-4, class probabilities averaged
    "ensemble": ("ensemble of 5 rnntext defaults (seeds 0-4), mean of probabilities", {"ensemble": 5}),
}
QUICK = ("tutorial-lstm", "bag", "default", "ensemble")  # --quick: a smoke test of each kind of row
FASTTEXT_NGRAMS = (1, 2, 3)
FASTTEXT_EPOCHS = (5, 10, 25, 50, 100)


def describe_model(cfg: RunConfig) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    return (f"{m.model} e{m.embed_dim}/h{m.hidden_dim} x{m.num_layers}{' bi' if m.bidirectional else ''} "
            f"{m.pooling}; min_freq {d.min_freq}, ngrams {d.ngrams}; batch {t.batch_size}, lr {t.lr:g} "
            f"{t.schedule}, {t.epochs} epochs, wd {t.weight_decay:g}")


def run_zoo(names: list[str], path: str, threads: int, quick: bool) -> list[dict[str, Any]]:
    rows = []
    cache: dict[str, Any] = {}
    for name in names:
        desc, overrides = ZOO[name]
        d = {"data": {"dataset": "ag_news", "data_dir": path, **overrides.get("data", {})},
             "model": dict(overrides.get("model", {})),
             "train": {**overrides.get("train", {}), "threads": threads, "device": "cpu", "seed": 0}}
        if quick:
            d["train"].update(epochs=1, epoch_size=20)
        cfg = RunConfig.from_dict(d)
        key = repr(cfg.data)
        t0 = time.perf_counter()
        if key not in cache:
            cache.clear()
            cache[key] = prepare(cfg.data, seed=cfg.train.seed, progress=False)
        data_seconds = time.perf_counter() - t0
        if "ensemble" in overrides:  # each member prepares its own data (its seed draws its validation split)
            rows.append(run_ensemble(name, desc, cfg, 2 if quick else overrides["ensemble"]))
            continue
        t0 = time.perf_counter()
        res = train(cfg, prepared=cache[key], progress=False, log=quiet_log)
        seconds = time.perf_counter() - t0
        m = res.metrics
        row = {"name": name, "system": "rnntext", "description": desc, "config": describe_model(res.config),
               "test_accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
               "train_seconds": seconds, "epoch_seconds": m["train_seconds"], "data_seconds": data_seconds,
               "best_epoch": m["best_epoch"], "parameters": m["parameters"], "vocab": res.config.model.vocab_size,
               "rows_per_second": [e["rows_per_second"] for e in m["epochs"]]}
        rows.append(row)
        print(f"{name:22s} test {row['test_accuracy']:.4f}  train {seconds:6.1f}s  data {data_seconds:4.1f}s  "
              f"{row['config']}", flush=True)
    return rows


def run_ensemble(name: str, desc: str, cfg: RunConfig, members: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = train_ensemble(cfg, members, progress=False, log=quiet_log)
    seconds = time.perf_counter() - t0
    row = {"name": name, "system": "rnntext", "description": desc, "config": f"{members} x ({describe_model(cfg)})",
           "test_accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"], "train_seconds": seconds,
           "epoch_seconds": m["train_seconds"], "data_seconds": seconds - m["train_seconds"],
           "parameters": sum(x["parameters"] for x in m["members"]), "members": m["members"], "ensemble": members}
    print(f"{name:22s} test {row['test_accuracy']:.4f}  train {seconds:6.1f}s (members: "
          + ", ".join(f"{x['test_accuracy']:.4f}" for x in m["members"]) + ")", flush=True)
    return row


def run_fasttext(path: str, threads: int, quick: bool) -> list[dict[str, Any]]:
    import fasttext

    train_rows, test_rows = load(path, progress=False)
    t0 = time.perf_counter()
    tok_test = [" ".join(basic_english(t)) for t in test_rows.texts]
    test_labels = [lab.replace("/", "_") for lab in test_rows.labels]
    tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    with tmp:
        for text, label in zip(train_rows.texts, train_rows.labels):
            tmp.write(f"__label__{label.replace('/', '_')} {' '.join(basic_english(text))}\n")
    prep_seconds = time.perf_counter() - t0
    grid = [(n, e) for n in ((2,) if quick else FASTTEXT_NGRAMS) for e in ((5,) if quick else FASTTEXT_EPOCHS)]
    rows = []
    try:
        for ngrams, epochs in grid:
            t0 = time.perf_counter()
            try:
                model = fasttext.train_supervised(tmp.name, wordNgrams=ngrams, epoch=epochs, thread=threads,
                                                  verbose=0, seed=0)
            except RuntimeError as e:  # fastText occasionally stops on "Encountered NaN"; record, go on
                print(f"fastText wordNgrams {ngrams} epochs {epochs:3d}: failed ({e})", flush=True)
                rows.append({"name": f"fasttext-ng{ngrams}-ep{epochs}", "system": "fasttext", "error": str(e),
                             "test_accuracy": 0.0, "train_seconds": time.perf_counter() - t0,
                             "description": f"fastText wordNgrams {ngrams}, {epochs} epochs (failed)"})
                continue
            seconds = time.perf_counter() - t0
            pred = model.predict(tok_test)[0]
            acc = sum(p[0] == f"__label__{g}" for p, g in zip(pred, test_labels)) / len(test_labels)
            rows.append({"name": f"fasttext-ng{ngrams}-ep{epochs}", "system": "fasttext",
                         "description": f"fastText wordNgrams {ngrams}, {epochs} epochs",
                         "config": f"dim 100, lr 0.1, wordNgrams {ngrams}, epoch {epochs}, thread {threads}",
                         "test_accuracy": acc, "train_seconds": seconds, "data_seconds": prep_seconds,
                         "wordNgrams": ngrams, "epochs": epochs})
            print(f"fastText wordNgrams {ngrams} epochs {epochs:3d}: test {acc:.4f}  {seconds:5.1f}s", flush=True)
    finally:
        os.unlink(tmp.name)
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The tables of accuracy.md: every model's test accuracy and training time, fastText's best, then
    fastText's whole grid."""
    rows, fasttext_rows, info = results["rnntext"], results.get("fasttext") or [], results.get("machine") or {}
    quick = results.get("quick", False)
    table = []
    for r in rows:
        table.append([r["description"], f"{r['test_accuracy'] * 100:.2f}%", f"{r['train_seconds']:.0f} s",
                      f"{r['parameters'] / 1e6:.2f}M"])
    ok = [r for r in fasttext_rows if "error" not in r]
    if ok:
        best = max(ok, key=lambda r: r["test_accuracy"])
        table.append([f"fastText, best of wordNgrams 1-3 x epochs 5-100 ({best['description'][9:]})",
                      f"{best['test_accuracy'] * 100:.2f}%", f"{best['train_seconds']:.0f} s", ""])
    what = ("AG News (20k train subset, canonical 7,600-row test)"
            + (": --quick (a smoke run: 20 batches per model, not a result)" if quick else ""))
    text = (md_header(short_command(results.get("command")), info, what) + "\n"
            + md_table(["model", "test accuracy", "training time", "parameters"], table, "lrrr") + "\n"
            + "Training time: rnntext's train() (epochs + per-epoch validation + test) after the data is encoded "
              "once; fastText's train_supervised. Test accuracy of fastText is its best over the grid, picked on "
              "the test set.\n")
    for r in rows:
        if r.get("members"):
            text += ("\nThe ensemble's members alone: "
                     + ", ".join(f"{m['test_accuracy'] * 100:.2f}%" for m in r["members"]) + ".\n")
    if fasttext_rows:
        grid = [[r["description"].removeprefix("fastText ").removesuffix(" (failed)"),
                 "failed: " + r["error"] if "error" in r else f"{r['test_accuracy'] * 100:.2f}%",
                 f"{r['train_seconds']:.1f} s"] for r in fasttext_rows]
        text += "\nfastText's grid:\n\n" + md_table(["setting", "test accuracy", "training time"], grid, "lrr")
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=None, help="torch / fastText threads (default: all cores)")
    ap.add_argument("--only", help=f"comma-separated rows: {','.join(ZOO)},fasttext")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 rows of 20 batches, one fastText setting (wordNgrams 2, 5 epochs)")
    ap.add_argument("--out", default="accuracy", help="results name (benchmarks/results/NAME.json and NAME.md)")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    wanted = args.only.split(",") if args.only else [*ZOO, "fasttext"]
    if args.quick and not args.only:
        wanted = [*QUICK, "fasttext"]
    unknown = set(wanted) - set(ZOO) - {"fasttext"}
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}")
    path = data_dir(args.data_dir)
    info = machine(threads)
    rows = run_zoo([n for n in ZOO if n in wanted], path, threads, args.quick)
    ft = run_fasttext(path, threads, args.quick) if "fasttext" in wanted else []
    payload: dict[str, Any] = {"benchmark": "accuracy", "command": "python3 " + " ".join(sys.argv), "machine": info,
                               "quick": args.quick, "rnntext": rows, "fasttext": ft}
    if ft:
        payload["fasttext_best"] = max(ft, key=lambda r: r["test_accuracy"])
    recurrent = [r for r in rows if not r["name"].startswith("bag")]
    if recurrent:
        payload["best_recurrent"] = max(recurrent, key=lambda r: r["test_accuracy"])
        single = [r for r in recurrent if "ensemble" not in r]
        if single:
            payload["best_single_recurrent"] = max(single, key=lambda r: r["test_accuracy"])
    if ft and recurrent:
        b, f = payload["best_recurrent"], payload["fasttext_best"]
        print(f"\nbest recurrent: {b['name']} {b['test_accuracy']:.4f} in {b['train_seconds']:.0f}s; "
              f"best fastText: {f['name']} {f['test_accuracy']:.4f}")
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "accuracy.py", markdown(payload)))


if __name__ == "__main__":
    main()
