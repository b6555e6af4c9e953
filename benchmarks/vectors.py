"""Pretrained word vectors: loading speed, and accuracy on AG News (20k train).

(i) load: generates a GloVe text file of --words words x --dim dims in a temporary directory (not
    kept), then loads it for a vocabulary of --vocab words (90% of them every k-th word of the file,
    10% absent from it) in a fresh process, --repeats times. Reports lines scanned per second and
    the process's peak resident memory, next to the same process without the load and the file's
    size: what the loader holds is the vocabulary's vectors, not the file.
(ii) accuracy: one configuration (--config JSON with RunConfig sections, default: the package's
    RunConfig defaults) trained on AG News (20k train) with (a) random embeddings and (b) vectors
    that `rnntext vectors` trains on the training texts (dimension = the config's embed_dim),
    frozen and tuned. Reports test accuracy, coverage and times.

Results go to benchmarks/results/vectors.json (each part replaces its own section) and vectors.md.

    python3 benchmarks/vectors.py load
    python3 benchmarks/vectors.py accuracy [--config cfg.json] [--epochs N] [--threads N]
    python3 benchmarks/vectors.py accuracy --epochs 1 --epoch-size 100 --threads 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    short_command,
    write_json,
    write_markdown,
)
from rnntext import train  # noqa: E402
from rnntext.config import RunConfig  # noqa: E402
from rnntext.data.train_vectors import VectorOptions, read_texts, train_vectors  # noqa: E402

# ------------------------------------------------------------------------------ (i) loading speed


def generate_glove(path: Path, words: int, dim: int, seed: int = 0) -> None:
    """`words` lines `w<i> x1 ... x<dim>`, numbers with 5 decimals like GloVe's own files. Numbers come
    from a pool of pre-formatted values so that generating is fast; parsing cost is the same."""
    rng = np.random.default_rng(seed)
    pool = np.array([f"{x:.5f}".encode() for x in rng.normal(0, 0.4, 4096)], dtype=object)
    with open(path, "wb") as f:
        for start in range(0, words, 10_000):
            idx = rng.integers(0, 4096, size=(min(10_000, words - start), dim))
            f.write(b"".join(b"w%d " % (start + r) + b" ".join(pool[row]) + b"\n" for r, row in enumerate(idx)))


_CHILD = r"""
import json, resource, sys, time
from rnntext.data.vectors import load_vectors
path, do_load = sys.argv[1], sys.argv[5] == "1"
n_vocab, n_words, repeats = (int(x) for x in sys.argv[2:5])
hits = n_vocab * 9 // 10  # about the share of a news vocabulary that glove.6B covers
step = max(1, n_words // max(hits, 1))
words = ["<pad>", "<unk>"] + [f"w{i}" for i in range(0, n_words, step)][:hits]
words += [f"absent{i}" for i in range(n_vocab - len(words))]
base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
runs = []
for _ in range(repeats if do_load else 0):
    t = time.perf_counter()
    lk = load_vectors(path, words)
    runs.append({"seconds": time.perf_counter() - t, "scanned": lk.scanned, "found": int(lk.found.sum())})
peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
heap = None
if do_load:  # one more load under tracemalloc (slower): the peak of what it allocates, numpy included
    import tracemalloc
    tracemalloc.start()
    load_vectors(path, words)
    heap = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps({"vocab": len(words), "runs": runs, "rss_before_kib": base_kib, "peak_rss_kib": peak_rss_kib,
                  "heap_peak_bytes": heap}))
"""


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_load(words: int, dim: int, vocab: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rnntext-bench-vectors-") as tmp:
        path = Path(tmp) / f"glove.{words}.{dim}d.txt"
        t0 = time.perf_counter()
        generate_glove(path, words, dim)
        size = path.stat().st_size
        print(f"generated {path.name}: {size / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        loaded = _child([str(path), str(vocab), str(words), str(repeats), "1"])
        idle = _child([str(path), str(vocab), str(words), "0", "0"])
    secs = [r["seconds"] for r in loaded["runs"]]
    median = statistics.median(secs)
    peak, base = loaded["peak_rss_kib"] / 1024, idle["peak_rss_kib"] / 1024
    result = {
        "file": {"format": "glove text", "words": words, "dim": dim, "mib": round(size / 2**20, 1)},
        "vocabulary": loaded["vocab"], "found": loaded["runs"][0]["found"], "repeats": repeats,
        "seconds": [round(s, 3) for s in secs], "seconds_median": round(median, 3),
        "lines_per_second": round(words / median), "mib_per_second": round(size / 2**20 / median, 1),
        "peak_rss_mib": round(peak, 1), "peak_rss_mib_without_load": round(base, 1),
        "peak_rss_mib_for_load": round(peak - base, 1),
        "allocated_peak_mib": round(loaded["heap_peak_bytes"] / 2**20, 1),
        "vectors_kept_mib": round(loaded["runs"][0]["found"] * dim * 4 / 2**20, 1),
    }
    print(f"load: {words:,} x {dim} GloVe ({size / 2**20:.0f} MiB), vocabulary {loaded['vocab']:,} "
          f"({result['found']:,} found): median {median:.2f}s = {result['lines_per_second']:,} lines/s; "
          f"peak RSS {peak:.0f} MiB ({peak - base:.0f} MiB above the same process without the load); "
          f"peak allocated by the load {result['allocated_peak_mib']:.0f} MiB")
    return result


# ------------------------------------------------------------------------------ (ii) accuracy


def base_config(path: str | None) -> RunConfig:
    if not path:
        return RunConfig()
    d = json.loads(Path(path).read_text())
    return RunConfig.from_dict(d)


def bench_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    cfg = base_config(args.config)
    cfg.data.dataset, cfg.data.data_dir = "ag_news", data_dir(args.data_dir)
    for section, name in (("train", "epochs"), ("train", "epoch_size"), ("train", "threads"), ("train", "seed"),
                          ("train", "device")):
        value = getattr(args, name)
        if value is not None:
            setattr(getattr(cfg, section), name, value)
    cfg.validate()
    log = (lambda s: print("  " + s, file=sys.stderr)) if args.verbose else (lambda s: None)
    results: dict[str, Any] = {"config": cfg.to_dict(), "runs": {}}

    with tempfile.TemporaryDirectory(prefix="rnntext-bench-vectors-") as tmp:
        vec = Path(tmp) / "ag_news.vec"
        opts = VectorOptions(dim=cfg.model.embed_dim, epochs=args.vec_epochs, min_count=args.vec_min_count,
                             algorithm=args.vec_algorithm, threads=args.vec_threads or cfg.train.threads,
                             seed=cfg.train.seed, tokenizer=cfg.data.tokenizer)
        summary = train_vectors(read_texts(dataset="ag_news", data_dir=cfg.data.data_dir), vec, opts, log=log)
        results["vectors"] = {k: summary[k] for k in ("words", "texts", "tokens", "train_seconds", "dim", "epochs",
                                                      "min_count", "algorithm", "threads")}
        print(f"vectors: {summary['words']:,} words x {opts.dim} in {summary['train_seconds']:.1f}s", file=sys.stderr)
        for name, embeddings, freeze in (("random", None, False), ("vectors-frozen", str(vec), True),
                                         ("vectors-tuned", str(vec), False)):
            run_cfg = RunConfig.from_dict(cfg.to_dict())
            run_cfg.data.embeddings, run_cfg.model.freeze_embeddings = embeddings, freeze
            t0 = time.perf_counter()
            res = train(run_cfg, None, progress=False, log=log)
            m = res.metrics
            row = {"test_accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
                   "best_epoch": m["best_epoch"], "train_seconds": round(m["train_seconds"], 1),
                   "total_seconds": round(time.perf_counter() - t0, 1), "parameters": m["parameters"]}
            if "embeddings" in m:
                row["coverage"] = {k: m["embeddings"][k] for k in ("vocab_coverage", "token_coverage",
                                                                    "vocab_found", "vocab_words")}
            results["runs"][name] = row
            print(f"{name:15s} test acc {row['test_accuracy']:.4f}  train {row['train_seconds']:.0f}s"
                  + (f"  coverage vocab {row['coverage']['vocab_coverage']:.1%} tokens "
                     f"{row['coverage']['token_coverage']:.1%}" if "coverage" in row else ""))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The tables of vectors.md: loading speed and memory (part "load"), accuracy with and without
    self-trained vectors (part "accuracy"); each part with its own command and machine."""
    parts = []
    load = results.get("load")
    if load:
        f = load["file"]
        what = (f"Loading a generated {f['words']:,}-word x {f['dim']}-d {f['format']} file ({f['mib']:,} MiB) for a "
                f"{load['vocabulary']:,}-word vocabulary, in a fresh process, {load['repeats']} times.")
        table = md_table(["measure", "value"], [
            ["vocabulary words found", f"{load['found']:,} of {load['vocabulary']:,}"],
            ["median load time", f"{load['seconds_median']:.2f} s"],
            ["lines (words) per second", f"**{load['lines_per_second']:,}**"],
            ["MiB per second", f"{load['mib_per_second']:,}"],
            ["peak RSS added by the load", f"{load['peak_rss_mib_for_load']} MiB (process peak {load['peak_rss_mib']} "
                                           f"MiB, {load['peak_rss_mib_without_load']} MiB without the load)"],
            ["peak allocated by the load", f"{load['allocated_peak_mib']} MiB"],
            ["the kept vectors", f"{load['vectors_kept_mib']} MiB"],
        ], "lr")
        parts.append("Loading:\n\n" + md_header(short_command(load.get("command")), load.get("machine"), what)
                     + "\n" + table)
    acc = results.get("accuracy")
    if acc:
        v, cfg = acc["vectors"], acc["config"]
        names = {"random": "random init (the default)", "vectors-frozen": "self-trained vectors, frozen",
                 "vectors-tuned": "self-trained vectors, tuned"}
        rows = []
        for name, r in acc["runs"].items():
            cov = r.get("coverage")
            rows.append([names.get(name, name), f"{r['test_accuracy'] * 100:.2f}%", f"{r['macro_f1'] * 100:.2f}%",
                         f"{r['train_seconds']:.0f} s",
                         f"{cov['vocab_coverage']:.1%} / {cov['token_coverage']:.1%}" if cov else ""])
        m = cfg["model"]
        what = (f"AG News (20k train), the configuration {m['model']} embed {m['embed_dim']} hidden {m['hidden_dim']}"
                f"{' bidirectional' if m['bidirectional'] else ''}, {cfg['train']['epochs']} epochs; vectors from "
                f"`rnntext vectors` on the training texts ({v['algorithm']}, {v['dim']}-d, {v['epochs']} epochs, "
                f"min count {v['min_count']}: {v['words']:,} words in {v['train_seconds']:.0f} s).")
        table = md_table(["embeddings", "test accuracy", "macro-F1", "training time", "coverage: vocabulary / tokens"],
                         rows, "lrrrr")
        parts.append("Accuracy:\n\n" + md_header(short_command(acc.get("command")), acc.get("machine"), what)
                     + "\n" + table)
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["load", "accuracy", "all"])
    g = ap.add_argument_group("load")
    g.add_argument("--words", type=int, default=400_000)
    g.add_argument("--dim", type=int, default=100)
    g.add_argument("--vocab", type=int, default=40_000)
    g.add_argument("--repeats", type=int, default=3)
    g = ap.add_argument_group("accuracy")
    g.add_argument("--config", help="RunConfig JSON (config.json of a run, or sections to override the defaults)")
    g.add_argument("--data-dir")
    g.add_argument("--epochs", type=int)
    g.add_argument("--epoch-size", type=int)
    g.add_argument("--threads", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--device")
    g.add_argument("--vec-epochs", type=int, default=5)
    g.add_argument("--vec-min-count", type=int, default=2)
    g.add_argument("--vec-algorithm", default="skipgram", choices=["skipgram", "cbow", "fasttext"])
    g.add_argument("--vec-threads", type=int)
    g.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    path = Path(args.out) / "vectors.json"
    payload: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("load", "all"):
        payload["load"] = {**bench_load(args.words, args.dim, args.vocab, args.repeats),
                           "machine": machine(1), "command": " ".join(["python3", *sys.argv])}
    if args.part in ("accuracy", "all"):
        acc = bench_accuracy(args)
        payload["accuracy"] = {**acc, "machine": machine(acc["config"]["train"]["threads"]),
                               "command": " ".join(["python3", *sys.argv])}
    payload["benchmark"] = "vectors"
    write_json("vectors", payload, Path(args.out))
    write_markdown("vectors", markdown_document("vectors", "vectors.py", markdown(payload)), Path(args.out))


if __name__ == "__main__":
    main()
