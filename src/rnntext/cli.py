"""The `rnntext` command. Thin: it parses options, builds the config and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import MODELS, POOLINGS, DataConfig, RunConfig
from .errors import RnnTextError
from .presets import PRESETS


def _add_data_options(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["ag_news"], help="a built-in dataset")
    g.add_argument("--data-dir", help="directory with the dataset's train/test CSVs "
                   "(default: $RNNTEXT_DATA_DIR, else download and cache)")
    if train:
        g.add_argument("--train", help="your own training file: CSV, TSV or JSONL, optionally .gz")
        g.add_argument("--valid", help="validation file (default: --valid-split of train)")
    g.add_argument("--test", help="test file, same format as --train")
    g.add_argument("--text-column", action="append", dest="text_columns", metavar="NAME",
                   help="text column (repeat to join several; default: text)")
    g.add_argument("--label-column", help="label column (default: label)")
    g.add_argument("--skip-bad-rows", action="store_true", default=None,
                   help="skip and count malformed rows instead of stopping")
    if train:
        g.add_argument("--valid-split", type=float, help="fraction of train held out for validation (0.05)")
        g.add_argument("--ngrams", type=int, help="append 2..N-grams to the tokens (1)")
        g.add_argument("--min-freq", type=int, help="minimum token count to enter the vocabulary (1)")
        g.add_argument("--max-vocab", type=int, help="vocabulary size cap, <pad> and <unk> included")
        g.add_argument("--max-len", type=int, help="tokens kept per text (all)")
        g.add_argument("--tokenizer", choices=["basic_english", "whitespace"])


def _add_train_options(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration")
    m.add_argument("--model", choices=MODELS, help="recurrent cell, or bag (EmbeddingBag baseline)")
    m.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    m.add_argument("--num-layers", type=int)
    m.add_argument("--pooling", choices=POOLINGS)
    m.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                   help="run on packed sequences (pack_padded_sequence) instead of masked padding")
    m.add_argument("--embed-dim", type=int)
    m.add_argument("--hidden-dim", type=int)
    m.add_argument("--dropout", type=float)
    m.add_argument("--embed-dropout", type=float)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--schedule", choices=["onecycle", "constant"])
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--clip", type=float, help="gradient norm clip")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    t.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    t.add_argument("--epoch-size", type=int, help="stop each epoch after this many batches")
    t.add_argument("--no-bucket", dest="bucket", action="store_false", default=None,
                   help="plain shuffled batches instead of length buckets")
    t.add_argument("--out", help="run directory to write (config, vocab, weights, metrics)")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnntext", description="Text classification with recurrent networks.")
    parser.add_argument("--version", action="version", version=f"rnntext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a classifier")
    _add_data_options(p, train=True)
    _add_train_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="accuracy, per-class P/R/F1 and confusion matrix of a run")
    p.add_argument("run_dir")
    _add_data_options(p, train=False)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="predict labels of texts")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts (default: --file, else one per line on stdin)")
    p.add_argument("--file", help="a file with one text per line")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="JSON lines with all class probabilities")
    return parser


def _set(obj: Any, **values: Any) -> None:
    for k, v in values.items():
        if v is not None:
            setattr(obj, k, v)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()
    if args.preset:
        for section, values in PRESETS[args.preset].items():
            _set(getattr(cfg, section), **values)
    d = cfg.data
    if args.train:
        d.dataset = None
    elif args.dataset or args.data_dir:
        d.dataset = "ag_news"
    _set(d, data_dir=args.data_dir, train=args.train, valid=args.valid, test=args.test,
         text_columns=args.text_columns, label_column=args.label_column, skip_bad_rows=args.skip_bad_rows,
         valid_split=args.valid_split, ngrams=args.ngrams, min_freq=args.min_freq,
         max_vocab=args.max_vocab, max_len=args.max_len, tokenizer=args.tokenizer)
    _set(cfg.model, model=args.model, bidirectional=args.bidirectional, num_layers=args.num_layers,
         pooling=args.pooling, packed=args.packed, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
         dropout=args.dropout, embed_dropout=args.embed_dropout)
    _set(cfg.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
         weight_decay=args.weight_decay, clip=args.clip, seed=args.seed, device=args.device,
         threads=args.threads, epoch_size=args.epoch_size, bucket=args.bucket)
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = config_from_args(args)
    result = train(cfg, args.out, progress=not args.quiet)
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    elif "test" in result.metrics:
        print(f"test accuracy {result.metrics['test']['accuracy']:.4f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .training.evaluate import evaluate_run
    from .training.metrics import format_report

    data = None
    if args.test or args.dataset or args.data_dir:
        from .training.rundir import load_run  # noqa: F401  (validated inside evaluate_run)

        data = DataConfig(dataset="ag_news" if not args.test else None, data_dir=args.data_dir, test=args.test,
                          skip_bad_rows=bool(args.skip_bad_rows))
        if args.text_columns:
            data.text_columns = args.text_columns
        if args.label_column:
            data.label_column = args.label_column
    report = evaluate_run(args.run_dir, data, device=args.device)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .serving.predictor import Predictor

    if args.texts:
        texts = list(args.texts)
    elif args.file:
        from .data.readers import read_text_file

        texts = [line for line in read_text_file(args.file).splitlines() if line.strip()]
    else:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    predictor = Predictor.load(args.run_dir, args.device)
    for pred in predictor.predict(texts):
        if args.json:
            print(json.dumps(pred.to_dict(), ensure_ascii=False))
        else:
            print(f"{pred.label}\t{pred.probabilities[pred.label]:.4f}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RnnTextError as e:
        if args.debug:
            raise
        print(f"rnntext: error: {e}", file=sys.stderr)
        return 2
