"""A/B: the same measurements on two source trees, interleaved, so that a refactor can show it moved
no figure. Each measurement runs in a fresh process with PYTHONPATH set to one tree's src/; the trees
alternate within every repeat, so the machine's drift falls on both alike.

    git worktree add /tmp/rnntext-old <rev>
    python3 benchmarks/ab.py --old /tmp/rnntext-old --repeats 5

Measures training throughput (rows/s of `rnntext train --preset P`, one epoch) for the tutorial's LSTM
(the overlapped embedding update), the packed LSTM, and the defaults' bi-GRU (one epoch); and
prediction throughput (texts/s of Predictor.probabilities on the 7,600 AG News test texts) with a
default model trained for one epoch by the old tree. Writes benchmarks/results/ab.json and ab.md."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, data_dir, machine, markdown_document, md_header, md_table, write_json, write_markdown  # noqa: E402

NEW = HERE.parent

# name -> extra `rnntext train` options. The tutorial presets say clip None, which releases before the settings
# were declared once dropped (a preset's None left the default, clip 1.0): --clip 1.0 runs both trees alike.
TRAIN = {
    "tutorial-lstm": ["--preset", "tutorial-lstm", "--clip", "1.0"],
    "tutorial-lstm-packed": ["--preset", "tutorial-lstm-packed", "--clip", "1.0"],
    "defaults (1 epoch)": ["--epochs", "1"],
}

PREDICT = """
import json, sys, time
from rnntext.data.ag_news import load
from rnntext import load as load_run
texts = load(sys.argv[2])[1].texts
pred = load_run(sys.argv[1], device="cpu", threads=int(sys.argv[3]))
pred.probabilities(texts[:2000])  # warm-up
best = []
for _ in range(3):
    t0 = time.perf_counter(); probs = pred.probabilities(texts); best.append(time.perf_counter() - t0)
print(json.dumps({"texts_per_second": len(texts) / min(best), "argmax": probs.argmax(1).tolist()[:50]}))
"""


def _env(tree: Path, threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads)}


def train_once(tree: Path, data: str, extra: list[str], threads: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "rnntext", "train", "--data-dir", data, *extra, "--threads", str(threads),
           "-q", "--json", "--out", str(out)]
    r = subprocess.run(cmd, env=_env(tree, threads), capture_output=True, text=True, check=False)
    if r.returncode:
        sys.exit(f"{tree}: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    m = json.loads(r.stdout)
    return {"rows_per_second": m["epochs"][0]["rows_per_second"], "train_loss": m["epochs"][0]["train_loss"],
            "test_accuracy": m["test"]["accuracy"]}


def predict_once(tree: Path, run: Path, data: str, threads: int) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", PREDICT, str(run), data, str(threads)], env=_env(tree, threads),
                       capture_output=True, text=True, check=False)
    if r.returncode:
        sys.exit(f"{tree}: prediction failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


def markdown(results: dict[str, Any]) -> str:
    rows = [[r["name"], r["unit"], f"{r['old']:,.0f}", f"{r['new']:,.0f}", f"{r['ratio']:.3f}",
             ", ".join(f"{x:.3f}" for x in r["pair_ratios"]), "yes" if r.get("same_results") else "no"]
            for r in results["rows"]]
    table = md_table(["measurement", "unit", "old (median)", "new (median)", "new / old", "per-pair ratios",
                      "same results"], rows)
    head = md_header(results.get("command"), results.get("machine"), "A/B: the old tree against the new, interleaved.")
    return head + "\n" + table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="root of the old tree (a git worktree)")
    ap.add_argument("--new", default=str(NEW), help="root of the new tree (this checkout)")
    ap.add_argument("--data-dir")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["train", "predict"], help="one half only")
    args = ap.parse_args()
    data = data_dir(args.data_dir)
    trees = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        measurements = [] if args.only == "predict" else list(TRAIN)
        for name in measurements:
            got: dict[str, list[dict]] = {"old": [], "new": []}
            for i in range(args.repeats):
                for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    got[side].append(train_once(trees[side], data, TRAIN[name], args.threads,
                                                Path(tmp) / f"{side}-{i}"))
                print(f"{name} repeat {i + 1}: old {got['old'][-1]['rows_per_second']:.0f}, "
                      f"new {got['new'][-1]['rows_per_second']:.0f} rows/s", file=sys.stderr)
            old = [g["rows_per_second"] for g in got["old"]]
            new = [g["rows_per_second"] for g in got["new"]]
            same = all(a["train_loss"] == b["train_loss"] and a["test_accuracy"] == b["test_accuracy"]
                       for a, b in zip(got["old"], got["new"]))
            rows.append({"name": f"train {name}", "unit": "rows/s", "old": statistics.median(old),
                         "new": statistics.median(new), "pair_ratios": [b / a for a, b in zip(old, new)],
                         "ratio": statistics.median(b / a for a, b in zip(old, new)), "same_results": same,
                         "test_accuracy": {"old": got["old"][0]["test_accuracy"],
                                           "new": got["new"][0]["test_accuracy"]}})
        if args.only != "train":
            run = Path(tmp) / "default-run"  # written by the old tree: the new one reads older run directories
            train_once(trees["old"], data, ["--epochs", "1"], args.threads, run)
            got = {"old": [], "new": []}
            for i in range(args.repeats):
                for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    got[side].append(predict_once(trees[side], run, data, args.threads))
                print(f"predict repeat {i + 1}: old {got['old'][-1]['texts_per_second']:.0f}, "
                      f"new {got['new'][-1]['texts_per_second']:.0f} texts/s", file=sys.stderr)
            old = [g["texts_per_second"] for g in got["old"]]
            new = [g["texts_per_second"] for g in got["new"]]
            rows.append({"name": "predict (default model, 7,600 texts)", "unit": "texts/s",
                         "old": statistics.median(old), "new": statistics.median(new),
                         "pair_ratios": [b / a for a, b in zip(old, new)],
                         "ratio": statistics.median(b / a for a, b in zip(old, new)),
                         "same_results": all(a["argmax"] == b["argmax"] for a, b in zip(got["old"], got["new"]))})
    results = {"benchmark": "ab", "command": "python3 benchmarks/ab.py " + " ".join(sys.argv[1:]),
               "machine": machine(args.threads), "repeats": args.repeats, "threads": args.threads, "rows": rows}
    write_json("ab", results)
    write_markdown("ab", markdown_document("ab", "ab.py", markdown(results)))
    print(markdown(results))


if __name__ == "__main__":
    main()
