"""Training throughput at the tutorial's own configuration: the tutorial's loop vs. rnntext.

(a) A faithful re-implementation of the classic PyTorch/torchtext RNN tutorial loop: a DataLoader
    with shuffle over (label, text) pairs and a collate function that tokenises every batch of 16
    with torchtext's basic_english (its regular expressions), looks the tokens up in a
    torchtext-style vocabulary (specials ['<unk>'] only, most frequent first) and right-pads with
    the <unk> id; nn.LSTM / packed nn.LSTM / nn.RNN
    models (embed 64, hidden 32), Adam at 1e-3.
(b) rnntext with the same settings (presets tutorial-lstm, tutorial-lstm-packed, tutorial-rnn:
    same dims, batch 16, Adam 1e-3 constant, min_freq 1, no cap) through the Trainer's own
    code path: texts encoded once, length-bucketed batches, Trainer.run_epoch (at batch 16 its
    embedding's update runs on a second thread beside the next batch, --overlap-update); the same
    with --no-overlap-update (the same weights, one step after the other); and with --lazy-embedding
    (Adam updates only the embedding rows of the batch's words: a different optimiser).

Both train one pass over the same rows; the pairs are interleaved over several repeats (the
order inside a pair alternating) so that machine noise hits both alike. Prints rows/s and the
ratio rnntext / tutorial per model, writes benchmarks/results/throughput.json and throughput.md.

    python3 benchmarks/throughput.py                 # 20k rows, 3 repeats, all cores
    python3 benchmarks/throughput.py --quick         # < 60 s
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence
from torch.utils.data import DataLoader

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
from rnntext.data import Prepared, Tokenizer, Vocab  # noqa: E402
from rnntext.data.ag_news import CLASSES, load  # noqa: E402
from rnntext.data.encode import encode_tokens  # noqa: E402
from rnntext.presets import PRESETS  # noqa: E402
from rnntext.training.trainer import Trainer  # noqa: E402

SYSTEMS = ("tutorial-lstm", "tutorial-lstm-packed", "tutorial-lstm-packed-on-cpu", "tutorial-rnn")
# rnntext's packed LSTM runs as masked padding on a CPU (same outputs); "-on-cpu" forces real packing
# (--pack-on-cpu) so both ways are measured against the tutorial's packed LSTM.
FORCED_PACKING = "tutorial-lstm-packed-on-cpu"
EMBED, HIDDEN, BATCH, LR = 64, 32, 16, 1e-3


# ---------------------------------------------------------------- (a) the tutorial, as it was written
# torchtext's basic_english: twelve regular expressions in this order (rnntext's own does the same with
# literal replacements, 2.3x faster; tests/test_benchmarks.py checks that they split alike)
_TORCHTEXT_RULES = [(re.compile(p), r) for p, r in [
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " ")]]


def torchtext_basic_english(text: str) -> list[str]:
    text = text.lower()
    for pattern, repl in _TORCHTEXT_RULES:
        text = pattern.sub(repl, text)
    return text.split()


class TutorialVocab:
    """torchtext's build_vocab_from_iterator(..., specials=['<unk>']) + set_default_index(<unk>)."""

    def __init__(self, texts: list[str]):
        counter: Counter[str] = Counter()
        for t in texts:
            counter.update(torchtext_basic_english(t))
        # torchtext: sorted by frequency, ties in first-seen order; specials first
        words = [w for w, _ in sorted(counter.items(), key=lambda kv: -kv[1])]
        self.itos = ["<unk>", *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __call__(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, 0) for t in tokens]

    def __len__(self) -> int:
        return len(self.itos)


class TutorialLSTM(nn.Module):
    def __init__(self, vocab_size: int, num_class: int, packed: bool):
        super().__init__()
        self.packed = packed
        self.embedding = nn.Embedding(vocab_size, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
        self.fc = nn.Linear(HIDDEN, num_class)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(text)
        if self.packed:
            embedded = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(embedded)
        return self.fc(hidden[-1])


class TutorialRNN(nn.Module):
    def __init__(self, vocab_size: int, num_class: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBED)
        self.rnn = nn.RNN(EMBED, HIDDEN, batch_first=True)
        self.fc = nn.Linear(HIDDEN, num_class)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.embedding(text))
        return self.fc(output.mean(dim=1))


def tutorial_epoch(system: str, pairs: list[tuple[int, str]], vocab: TutorialVocab, seed: int) -> float:
    """One epoch of the tutorial's loop; returns seconds."""
    torch.manual_seed(seed)

    def collate_batch(batch: list[tuple[int, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels, texts, lengths = [], [], []
        for label, text in batch:
            labels.append(label)
            ids = torch.tensor(vocab(torchtext_basic_english(text)), dtype=torch.int64)
            texts.append(ids)
            lengths.append(len(ids))
        padded = pad_sequence(texts, batch_first=True, padding_value=0)  # the <unk> id, as the tutorial did
        return torch.tensor(labels, dtype=torch.int64), padded, torch.tensor(lengths, dtype=torch.int64)

    if system == "tutorial-rnn":
        model: nn.Module = TutorialRNN(len(vocab), len(CLASSES))
    else:
        model = TutorialLSTM(len(vocab), len(CLASSES), packed=system.startswith("tutorial-lstm-packed"))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(pairs, batch_size=BATCH, shuffle=True, collate_fn=collate_batch)
    model.train()
    t0 = time.perf_counter()
    total_acc, total_count = 0, 0
    for label, text, lengths in loader:
        optimizer.zero_grad()
        predicted = model(text, lengths)
        loss = criterion(predicted, label)
        loss.backward()
        optimizer.step()
        total_acc += (predicted.argmax(1) == label).sum().item()
        total_count += label.size(0)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- (b) rnntext's own training path
def rnntext_prepare(texts: list[str], labels: list[int]) -> tuple[Prepared, float]:
    """Tokenise, build the vocabulary, encode once; returns the data and the seconds it took."""
    t0 = time.perf_counter()
    tokenizer = Tokenizer("basic_english")
    tokens = [tokenizer(t) for t in texts]
    vocab = Vocab.build(tokens, min_freq=1)
    train = encode_tokens(tokens, vocab, labels)
    seconds = time.perf_counter() - t0
    return Prepared(tokenizer, vocab, list(CLASSES), train, None, None), seconds


# rnntext's variants: name -> (the flag, its train settings)
VARIANTS = {"rnntext": ("", {}), "sequential": ("--no-overlap-update", {"overlap_update": False}),
            "lazy": ("--lazy-embedding", {"lazy_embedding": True})}


def rnntext_epoch(system: str, prepared: Prepared, threads: int, seed: int, variant: str = "rnntext") -> float:
    preset = PRESETS["tutorial-lstm-packed" if system == FORCED_PACKING else system]
    model = {**preset["model"], "pack_on_cpu": system == FORCED_PACKING}
    cfg = RunConfig.from_dict({"model": model, "train": {**preset["train"], "threads": threads,
                                                                  "seed": seed, "device": "cpu",
                                                                  **VARIANTS[variant][1]}})
    trainer = Trainer(cfg, prepared=prepared, progress=False, log=quiet_log)
    return trainer.run_epoch(0)["seconds"]


def markdown(results: dict) -> str:
    """The table of throughput.md: rows/s of the tutorial's loop and of rnntext (as it trains by default,
    with --no-overlap-update, with --lazy-embedding) per system, and the ratios."""
    r = results
    table, pairs = [], []
    for row in r["results"]:
        table.append([f"`{row['system']}`", f"{row['tutorial_rows_per_s']:,.0f}", f"{row['rnntext_rows_per_s']:,.0f}",
                      f"**{row['ratio']:.2f}x**", f"{row['ratio_including_encoding']:.2f}x",
                      f"{row['rnntext_sequential_rows_per_s']:,.0f}", f"{row['sequential_ratio']:.2f}x",
                      f"{row['rnntext_lazy_rows_per_s']:,.0f}", f"{row['lazy_ratio']:.2f}x"])
        pairs.append(f"`{row['system']}` " + ", ".join(f"{x:.2f}" for x in row["pair_ratios"]))
    what = (f"One training pass over {r['rows']:,} AG News rows (batch {r['batch_size']}, embed {r['embed_dim']}, "
            f"hidden {r['hidden_dim']}, Adam 1e-3), {r['repeats']} interleaved repeats; rows/s of the median pass, "
            f"ratio = the median of the per-pair time ratios (tutorial / rnntext). rnntext encodes the texts once "
            f"before training ({r['rnntext_encode_seconds']:.2f} s); \"incl. encoding\" charges that to its pass.")
    header = ["system", "tutorial loop rows/s", "rnntext rows/s", "ratio", "incl. encoding",
              "`--no-overlap-update` rows/s", "ratio", "`--lazy-embedding` rows/s", "ratio"]
    return (md_header(short_command(r.get("command")), r.get("machine"), what) + "\n"
            + md_table(header, table, "lrrrrrrrr") + "\n"
            + "Per-pair ratios, rnntext (default) / tutorial: " + "; ".join(pairs) + ".\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--rows", type=int, default=20000, help="training rows per pass (20000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 2 repeats (< 60 s)")
    ap.add_argument("--out", default="throughput", help="results name (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 2000, 2
    import os

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    systems = args.systems.split(",")

    train_rows, _ = load(data_dir(args.data_dir), progress=False)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train_rows), generator=g)[: args.rows].tolist()
    texts = [train_rows.texts[i] for i in pick]
    labels = [CLASSES.index(train_rows.labels[i]) for i in pick]
    pairs = list(zip(labels, texts))
    vocab = TutorialVocab(texts)  # built before training, as in the tutorial (not timed)
    prepared, encode_seconds = rnntext_prepare(texts, labels)
    print(f"{len(texts)} rows, {threads} threads; tutorial vocabulary {len(vocab)}, rnntext {len(prepared.vocab)}; "
          f"rnntext encodes once in {encode_seconds:.2f}s")

    who_all = ("tutorial", *VARIANTS)
    times: dict[str, dict[str, list[float]]] = {s: {w: [] for w in who_all} for s in systems}
    for r in range(args.repeats):
        for s in systems:
            for who in (who_all if r % 2 == 0 else who_all[::-1]):
                if who == "tutorial":
                    sec = tutorial_epoch(s, pairs, vocab, seed=r)
                else:
                    sec = rnntext_epoch(s, prepared, threads, seed=r, variant=who)
                times[s][who].append(sec)
            tt = times[s]["tutorial"][-1]
            print(f"repeat {r + 1}/{args.repeats} {s:27s} tutorial {len(texts) / tt:6.0f} rows/s  " + "  ".join(
                f"{VARIANTS[w][0] or 'rnntext'} {len(texts) / times[s][w][-1]:6.0f} x{tt / times[s][w][-1]:.2f}"
                for w in VARIANTS), flush=True)

    rows = []
    print(f"\n{'system':27s} {'tutorial rows/s':>16s} {'rnntext rows/s':>15s} {'ratio':>7s} {'incl. encode':>13s} "
          f"{'sequential rows/s':>18s} {'ratio':>7s} {'lazy rows/s':>12s} {'ratio':>7s}")
    for s in systems:
        # the median pass of each, and the median of the per-pair ratios (pairs share the machine's state)
        tt = statistics.median(times[s]["tutorial"])
        row: dict = {"system": s, "tutorial_rows_per_s": len(texts) / tt, "tutorial_seconds": times[s]["tutorial"]}
        for w in VARIANTS:
            key = "rnntext" if w == "rnntext" else f"rnntext_{w}"
            ratio_key = "ratio" if w == "rnntext" else f"{w}_ratio"
            pair_ratios = [a / b for a, b in zip(times[s]["tutorial"], times[s][w])]
            sec = statistics.median(times[s][w])
            row.update({f"{key}_rows_per_s": len(texts) / sec, ratio_key: statistics.median(pair_ratios),
                        f"{ratio_key}_including_encoding": tt / (sec + encode_seconds),
                        f"{'' if w == 'rnntext' else w + '_'}pair_ratios": pair_ratios, f"{key}_seconds": times[s][w]})
        rows.append(row)
        print(f"{s:27s} {row['tutorial_rows_per_s']:16.0f} {row['rnntext_rows_per_s']:15.0f} {row['ratio']:6.2f}x "
              f"{row['ratio_including_encoding']:12.2f}x {row['rnntext_sequential_rows_per_s']:18.0f} "
              f"{row['sequential_ratio']:6.2f}x {row['rnntext_lazy_rows_per_s']:12.0f} {row['lazy_ratio']:6.2f}x")
    payload = {
        "benchmark": "throughput", "command": "python3 " + " ".join(sys.argv), "machine": machine(threads),
        "rows": len(texts), "repeats": args.repeats, "batch_size": BATCH, "embed_dim": EMBED, "hidden_dim": HIDDEN,
        "rnntext_encode_seconds": encode_seconds, "results": rows,
        "note": "rows/s of one training pass (median over repeats); ratio = median of per-pair tutorial/rnntext "
                "time ratios; ratio_including_encoding charges rnntext's one-off tokenise+encode to its pass; "
                "rnntext at batch 16 overlaps the embedding's AdamW update with the next batch (a second thread; "
                "its default there); sequential = rnntext with --no-overlap-update (bit-identical weights); "
                "lazy = rnntext with --lazy-embedding (only the embedding rows of a batch's words updated: a "
                "different optimiser)",
    }
    write_json(args.out, payload)
    write_markdown(args.out, markdown_document(args.out, "throughput.py", markdown(payload)))


if __name__ == "__main__":
    main()
