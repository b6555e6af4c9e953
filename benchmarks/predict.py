"""Batch prediction throughput: texts/s of a trained rnntext model (Predictor.probabilities: tokenise,
encode, length-sorted batches, softmax) and of fastText, on the 7,600 AG News test texts. With --onnx,
also the run exported to ONNX (fp32 and --int8) and run by onnxruntime (OnnxPredictor), timed in the same
repeats as the torch path, with each route's test accuracy.

    python3 benchmarks/predict.py --run-dir runs/default     # a run written by default_run.py / rnntext train
    python3 benchmarks/predict.py --run-dir runs/default --onnx --out predict_onnx
    python3 benchmarks/predict.py --quick                    # trains a small model itself (< 60 s)

Writes benchmarks/results/predict.json and predict.md. Target (issue 3): >= 20,000 texts/s with the default model.
"""

from __future__ import annotations

import argparse
import os
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
from rnntext.data import encode_texts  # noqa: E402
from rnntext.data.ag_news import load  # noqa: E402
from rnntext.data.tokenizer import basic_english  # noqa: E402
from rnntext.inference.predictor import Predictor  # noqa: E402
from rnntext.training.trainer import train  # noqa: E402


def timed(fn: Any, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rnntext_rows(run_dir: str, texts: list[str], threads: int, repeats: int, batch_sizes: list[int],
                 onnx_dirs: dict[str, str] | None = None, labels: list[int] | None = None,
                 bf16: bool = False) -> list[dict]:
    """Each route (the torch Predictor, and each export in `onnx_dirs`, name -> directory) at each batch
    size timed `repeats` times, all of them interleaved within each repeat so that the machine's drift
    from minute to minute falls on all of them alike; medians. With `labels`, each route's test accuracy."""
    pred = Predictor.load(run_dir, device="cpu", threads=threads)
    n = len(texts)
    enc_s = timed(lambda: encode_texts(texts, pred.tokenizer, pred.run.vocab), repeats)
    routes: dict[tuple[str, int], Any] = {("rnntext", bs): (lambda bs=bs: pred.probabilities(texts, batch_size=bs))
                                          for bs in batch_sizes}
    encode_s = {"rnntext": enc_s}
    if bf16:  # the GRU inference loop in bfloat16 (--precision bf16)
        pred16 = Predictor.load(run_dir, device="cpu", threads=threads, precision="bf16")
        encode_s["rnntext-bf16"] = enc_s
        routes.update({("rnntext-bf16", bs): (lambda bs=bs: pred16.probabilities(texts, batch_size=bs))
                       for bs in batch_sizes})
    if onnx_dirs:
        from rnntext.inference.onnx_predictor import OnnxPredictor

        for name, d in onnx_dirs.items():
            op = OnnxPredictor.load(d, threads=threads)
            encode_s[name] = timed(lambda op=op: op.encode(texts), repeats)
            routes.update({(name, bs): (lambda op=op, bs=bs: op.probabilities(texts, batch_size=bs))
                           for bs in batch_sizes})
    accuracy = {}
    for (name, _bs), fn in routes.items():  # warm-up (and each route's accuracy, at its first batch size)
        probs = fn()
        if labels is not None and name not in accuracy:
            best = probs.argmax(1)
            accuracy[name] = sum(int(b) == y for b, y in zip(best.tolist(), labels)) / len(labels)
    times: dict[tuple[str, int], list[float]] = {k: [] for k in routes}
    loads = []
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        for k, fn in routes.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rows = []
    for (name, bs) in routes:
        sec = statistics.median(times[name, bs])
        e = encode_s[name]
        rows.append({"system": name, "batch_size": bs, "texts_per_second": n / sec, "seconds": sec,
                     "tokenise_encode_seconds": e, "model_seconds": sec - e,
                     "texts_per_second_each_repeat": [n / t for t in times[name, bs]],
                     **({"accuracy": accuracy[name]} if name in accuracy else {}),
                     **({"load_average_1min_each_repeat": loads} if onnx_dirs or bf16 else {})})
        print(f"{name} batch {bs:5d}: {n / sec:9.0f} texts/s (tokenise+encode {e:.2f}s, "
              f"model {sec - e:.2f}s of {sec:.2f}s; repeats: "
              + " / ".join(f"{n / t:.0f}" for t in times[name, bs]) + ")"
              + (f" accuracy {accuracy[name]:.4f}" if name in accuracy else ""), flush=True)
    if onnx_dirs or bf16:
        print("load average (1 min) at each repeat: " + ", ".join(f"{x:.2f}" for x in loads), flush=True)
    return rows


def fasttext_row(path: str, texts: list[str], threads: int, repeats: int) -> dict[str, Any] | None:
    try:
        import fasttext
    except ImportError:
        print("fasttext not installed: pip install fasttext-numpy2-wheel")
        return None
    train_rows, _ = load(path, progress=False)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for text, label in zip(train_rows.texts, train_rows.labels):
            f.write(f"__label__{label.replace('/', '_')} {' '.join(basic_english(text))}\n")
    try:
        model = fasttext.train_supervised(f.name, wordNgrams=2, epoch=5, thread=threads, verbose=0, seed=0)
    finally:
        os.unlink(f.name)
    tokenised = [" ".join(basic_english(t)) for t in texts]
    n = len(texts)
    sec_raw = timed(lambda: model.predict(tokenised, k=-1), repeats)  # all class probabilities, like rnntext
    sec_tok = timed(lambda: model.predict([" ".join(basic_english(t)) for t in texts], k=-1), repeats)
    print(f"fastText (wordNgrams 2): {n / sec_tok:9.0f} texts/s with basic_english tokenising, "
          f"{n / sec_raw:9.0f} texts/s on pre-tokenised text", flush=True)
    return {"system": "fasttext", "texts_per_second": n / sec_tok, "seconds": sec_tok,
            "texts_per_second_pretokenised": n / sec_raw, "config": "wordNgrams 2, 5 epochs, dim 100, k=-1"}


def markdown(results: dict[str, Any]) -> str:
    """The table of predict.md: texts/s of the trained run at each batch size, and of fastText."""
    r = results
    m = r["model"]
    name = (f"{'bi-' if m['bidirectional'] else ''}{m['model'].upper()} {m['hidden_dim']}, embed {m['embed_dim']}, "
            f"{m['num_layers']} layer{'s' if m['num_layers'] > 1 else ''}, {m['pooling']}")
    onnx = any(row.get("system", "rnntext") != "rnntext" for row in r["rnntext"])
    route = {"rnntext": "torch fp32", "rnntext-bf16": "torch bf16 (--precision bf16)", "onnx-fp32": "onnxruntime fp32",
             "onnx-int8": "onnxruntime int8"}
    table = [[f"rnntext ({name})" if not onnx else f"rnntext, {route.get(row['system'], row['system'])} ({name})",
              row["batch_size"], f"{row['texts_per_second']:,.0f}",
              f"{row['tokenise_encode_seconds']:.2f}", f"{row['model_seconds']:.2f}"]
             + ([f"{row['accuracy']:.4f}" if "accuracy" in row else ""] if onnx else []) for row in r["rnntext"]]
    ft = r.get("fasttext")
    if ft:
        table.append([f"fastText ({ft['config']}), basic_english tokenising", "", f"{ft['texts_per_second']:,.0f}",
                      "", ""] + ([""] if onnx else []))
        table.append([f"fastText ({ft['config']}), pre-tokenised text", "",
                      f"{ft['texts_per_second_pretokenised']:,.0f}", "", ""] + ([""] if onnx else []))
    what = (f"Batch prediction of the {r['texts']:,} AG News test texts with all class probabilities "
            f"(`Predictor.probabilities`: tokenise, encode, length-sorted batches, softmax); batch sizes "
            f"interleaved within each repeat, medians." + (" --quick: a smoke run." if r.get("quick") else ""))
    if onnx:
        loads = r["rnntext"][0].get("load_average_1min_each_repeat") or []
        what += (" --bf16: the torch path with `--precision bf16` (the GRU loop in bfloat16)."
                 if any(row.get("system") == "rnntext-bf16" for row in r["rnntext"]) else "")
        what += (" --onnx: the run exported with `rnntext export` (fp32, --int8) and run by onnxruntime "
                 "(`OnnxPredictor`: one single-threaded session per core), timed in the same repeats; accuracy on "
                 "the test set." + (f" Load average (1 min) at the repeats: {min(loads):.2f} to {max(loads):.2f}."
                                    if loads else ""))
    head = ["predictor", "batch", "texts/s", "tokenise + encode s", "model s"] + (["accuracy"] if onnx else [])
    return (md_header(short_command(r.get("command")), r.get("machine"), what) + "\n"
            + md_table(head, table, "lrrrr" + ("r" if onnx else "")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--run-dir", help="a trained run (default: runs/default if it exists, else train one)")
    ap.add_argument("--threads", type=int, default=None, help="(default: all cores)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-sizes", default="256,512,1024,2048")
    ap.add_argument("--no-fasttext", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also the torch path with --precision bf16")
    ap.add_argument("--onnx", action="store_true", help="also the run exported to ONNX (fp32 and int8), run by "
                    "onnxruntime, and each route's test accuracy")
    ap.add_argument("--quick", action="store_true", help="train a 1-epoch default model on 2,000 batches' worth")
    ap.add_argument("--out", default="predict")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    path = data_dir(args.data_dir)
    run_dir = args.run_dir
    trained_here = None
    if run_dir is None and not args.quick and (HERE.parent / "runs" / "default" / "config.json").exists():
        run_dir = str(HERE.parent / "runs" / "default")
    if run_dir is None:
        # the default configuration; --quick trains one short epoch (the speed does not depend on training)
        run_dir = tempfile.mkdtemp(prefix="rnntext-predict-")
        cfg = RunConfig.from_dict({"data": {"dataset": "ag_news", "data_dir": path},
                                   "train": {"threads": threads, "device": "cpu",
                                             **({"epochs": 1, "epoch_size": 20} if args.quick else {})}})
        res = train(cfg, run_dir, progress=False, log=quiet_log)
        trained_here = res.metrics["test"]["accuracy"]
        print(f"trained the default model in {run_dir}: test accuracy {trained_here:.4f}")
    _, test_rows = load(path, progress=False)
    texts = test_rows.texts
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    onnx_dirs = None
    if args.onnx:
        from rnntext.inference.export import export_run

        where = tempfile.mkdtemp(prefix="rnntext-onnx-")
        onnx_dirs = {"onnx-fp32": os.path.join(where, "fp32"), "onnx-int8": os.path.join(where, "int8")}
        for name, d in onnx_dirs.items():
            export_run(run_dir, d, int8=name.endswith("int8"), log=print)
    label_names = __import__("json").loads((Path(run_dir) / "labels.json").read_text())
    labels = [label_names.index(y) for y in test_rows.labels] if args.onnx or args.bf16 else None
    rows = rnntext_rows(run_dir, texts, threads, 1 if args.quick else args.repeats, batch_sizes, onnx_dirs, labels,
                        args.bf16)
    ft = None if args.no_fasttext else fasttext_row(path, texts, threads, 1 if args.quick else args.repeats)
    best = max(rows, key=lambda r: r["texts_per_second"])
    cfg = RunConfig.from_dict(__import__("json").loads((Path(run_dir) / "config.json").read_text()))
    payload = {
        "benchmark": "predict", "command": "python3 " + " ".join(sys.argv), "machine": machine(threads),
        "texts": len(texts), "run_dir": run_dir, "model": {k: getattr(cfg.model, k) for k in (
            "model", "embed_dim", "hidden_dim", "num_layers", "bidirectional", "pooling")},
        "rnntext": rows, "rnntext_best": best, "fasttext": ft, "quick": args.quick,
    }
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "predict.py", markdown(payload)))


if __name__ == "__main__":
    main()
