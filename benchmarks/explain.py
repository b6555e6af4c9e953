"""Explanations (issue 18): cost per text and faithfulness of integrated gradients against occlusion,
on a trained run (the default model: `rnntext train --dataset ag_news ...`).

    python3 benchmarks/explain.py --run runs/ag_news --threads 2 --texts 200

Cost: ms per text, texts explained in one call (batched) and one call per text (as `rnntext explain`
and POST /explain with one text). Faithfulness (deletion, "comprehensiveness"): the drop in the
probability of the predicted class when a text's k tokens with the largest attributions are replaced
by <pad>, against k tokens chosen at random; larger is more faithful. For integrated gradients also
the convergence delta (|sum of attributions - change of probability|) at several step counts.

Writes benchmarks/results/explain.json and explain.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
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
    short_command,
    write_json,
    write_markdown,
)

KS = (1, 3)


def markdown(results: dict[str, Any]) -> str:
    r = results
    rows = []
    for m in r["methods"]:
        faith = m["deletion"]
        rows.append([m["method"] + (f" ({m['steps']} steps; {m['steps'] * 4} where abs delta > {r['delta_tol']})"
                                    if m.get("steps") else ""),
                     f"**{m['ms_per_text_batched']:.0f}** ({m['cpu_ms_per_text_batched']:.0f})",
                     f"{m['ms_per_text_single']:.0f} ({m['cpu_ms_per_text_single']:.0f})",
                     *[f"{faith[str(k)]:.3f}" for k in KS],
                     f"{m['flat'] * 100:.0f}%",
                     "" if m.get("abs_delta_median") is None else
                     f"{m['abs_delta_median']:.1e} / {m['abs_delta_p90']:.1e}"])
    rows.append(["random tokens (for comparison)", "", "", *[f"{r['random_deletion'][str(k)]:.3f}" for k in KS], "",
                 ""])
    table = md_table(["method", "ms per text, batched (CPU ms)", "ms per text, one per call (CPU ms)",
                      *[f"probability drop, top {k} deleted" for k in KS],
                      "texts with no word over 0.01", "abs delta, median / 90th pct"],
                     rows, "lrrrrrr")
    steps = md_table(["integration steps (no second pass)", "ms per text, batched (CPU ms)", "median abs delta",
                      "90th percentile"],
                     [[s["steps"], f"{s['ms_per_text_batched']:.0f} ({s['cpu_ms_per_text_batched']:.0f})",
                       f"{s['abs_delta_median']:.1e}",
                       f"{s['abs_delta_p90']:.1e}"] for s in r["ig_steps"]], "rrrr")
    agree = r.get("top1_agreement")
    return (md_header(short_command(r.get("command")), r.get("machine"),
                      f"Explanations of the run `{r['run']}` ({r['model']}) on {r['texts']} AG News test texts "
                      f"(mean {r['mean_tokens']:.1f} tokens).")
            + "\n" + table + "\n"
            + "ms: wall-clock time; CPU ms: the process's CPU time (all its threads), which depends less on "
              "what else the machine runs (see the load average above).\n\n"
            + (f"The two methods pick the same top token in {agree * 100:.0f}% of the texts.\n\n" if agree else "")
            + "Integrated gradients by number of steps:\n\n" + steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory (the default model)")
    ap.add_argument("--data-dir")
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--single", type=int, default=30, help="texts explained one call each")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-name", default="explain")
    args = ap.parse_args()

    import rnntext.inference.explain as explain_module
    from rnntext.inference.explain import _PositionModel, explain
    from rnntext.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    d = Path(data_dir(args.data_dir))
    texts = _ag_news_texts(d, args.texts)
    predictor = Predictor.load(args.run, "cpu")
    run = predictor.run
    explain(predictor, texts[:4])  # warm up (imports Captum)

    cpu: dict[str, float] = {}

    tol_default = explain_module.DELTA_TOL

    def timed(method: str, steps: int, batch: list[str], tol: float = tol_default) -> tuple[list, float]:
        explain_module.DELTA_TOL = tol
        t, c = time.perf_counter(), time.process_time()
        out = explain(predictor, batch, method=method, steps=steps)
        cpu["last"] = (time.process_time() - c) * 1000 / len(batch)
        return out, (time.perf_counter() - t) * 1000 / len(batch)

    f = _PositionModel(run.model)
    tok = run.tokenizer
    rows = [run.vocab.encode(tok(t)) or [1] for t in texts]
    probs = predictor.probabilities(texts)
    target = probs.argmax(1)
    base_p = probs[torch.arange(len(texts)), target]

    @torch.no_grad()
    def drop(i: int, positions: list[int]) -> float:
        ids = torch.tensor([rows[i]])
        ids[0, positions] = 0
        p = f(ids, torch.tensor([len(rows[i])]))[0, target[i]]
        return float(base_p[i] - p)

    methods, tops = [], {}
    for method, steps in (("ig", 32), ("occlusion", None)):
        out, ms = timed(method, steps or 32, texts)
        cpu_batched = cpu["last"]
        single, single_cpu = [], []
        for t in texts[: args.single]:
            single.append(timed(method, steps or 32, [t])[1])
            single_cpu.append(cpu["last"])
        faith = {}
        for k in KS:
            faith[str(k)] = statistics.mean(
                drop(i, sorted(range(len(e.attributions)), key=lambda j: -e.attributions[j])[:k])
                for i, e in enumerate(out))
        tops[method] = [max(range(len(e.attributions)), key=lambda j: e.attributions[j]) for e in out]
        entry: dict[str, Any] = {"method": method, "steps": steps, "ms_per_text_batched": ms,
                                 "ms_per_text_single": statistics.mean(single),
                                 "cpu_ms_per_text_batched": cpu_batched,
                                 "cpu_ms_per_text_single": statistics.mean(single_cpu), "deletion": faith}
        entry["flat"] = statistics.mean(max(map(abs, e.attributions)) < 0.01 for e in out)
        if method == "ig":
            entry["abs_delta_p90"] = sorted(abs(e.delta) for e in out)[int(0.9 * (len(out) - 1))]
            entry["abs_delta_median"] = statistics.median(abs(e.delta) for e in out)
        methods.append(entry)
        print(entry, flush=True)
    rng = random.Random(0)
    random_deletion = {str(k): statistics.mean(drop(i, rng.sample(range(len(rows[i])), min(k, len(rows[i]))))
                                               for i in range(len(texts))) for k in KS}
    ig_steps = []
    for steps in (8, 16, 32, 64):
        out, ms = timed("ig", steps, texts, tol=float("inf"))
        deltas = sorted(abs(e.delta) for e in out)
        ig_steps.append({"steps": steps, "ms_per_text_batched": ms, "cpu_ms_per_text_batched": cpu["last"],
                         "abs_delta_median": statistics.median(deltas),
                         "abs_delta_p90": deltas[int(0.9 * (len(deltas) - 1))]})
        print(ig_steps[-1], flush=True)
    agree = statistics.mean(a == b for a, b in zip(tops["ig"], tops["occlusion"]))
    m = run.config.model
    results = {
        "benchmark": "explain", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(args.threads), "run": Path(args.run).name,
        "model": f"{m.model}, embed {m.embed_dim}, hidden {m.hidden_dim}, "
                 f"{'bidirectional, ' if m.bidirectional else ''}{m.pooling} pooling",
        "texts": len(texts), "mean_tokens": statistics.mean(len(r) for r in rows),
        "methods": methods, "random_deletion": random_deletion, "ig_steps": ig_steps, "top1_agreement": agree,
        "delta_tol": tol_default,
    }
    write_json(args.out_name, results)
    write_markdown(args.out_name, markdown_document(args.out_name, "explain.py", markdown(results)))


def _ag_news_texts(d: Path, n: int) -> list[str]:
    import csv
    import gzip

    path = d / "test.csv.gz" if (d / "test.csv.gz").exists() else d / "test.csv"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        out = []
        for row in csv.reader(fh):
            out.append(" ".join(row[1:]))
            if len(out) == n:
                return out
    return out


if __name__ == "__main__":
    main()
