"""The `rnntext` command. Thin: it parses options, builds the config and calls the Python API."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import MODELS, POOLINGS, QUOTINGS, RunConfig
from .errors import ConfigError, RnnTextError, TrainingInterrupted
from .presets import PRESETS


def _add_data_options(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["ag_news"], help="a built-in dataset")
    g.add_argument("--data-dir", help="directory with the dataset's train/test CSVs "
                   "(default: $RNNTEXT_DATA_DIR, else download and cache)")
    if train:
        g.add_argument("--train", help="your own training file: CSV, TSV or JSONL, optionally .gz")
        g.add_argument("--valid", help="validation file (default: --valid-split of train)")
    g.add_argument("--test", help="test file, same format as --train (with --dataset ag_news: replaces its "
                   "test split; labels are its class names)")
    g.add_argument("--text-column", action="append", dest="text_columns", metavar="NAME",
                   help="text column (repeat to join several; default: text)")
    g.add_argument("--label-column", help="label column (default: label)")
    if train:
        g.add_argument("--label-names", type=_label_names, metavar="LABEL=NAME,...",
                       help="name the files' labels, in class order, e.g. 0=negative,1=positive")
    g.add_argument("--skip-bad-rows", action="store_true", default=None,
                   help="skip and count malformed rows instead of stopping")
    g.add_argument("--quoting", choices=QUOTINGS,
                   help='CSV/TSV: "quoted" fields (csv, the default) or quotes as ordinary characters (none: raw TSV)')
    if train:
        g.add_argument("--valid-split", type=float, help="fraction of train held out for validation (0.05)")
        g.add_argument("--ngrams", type=int, help="append 2..N-grams to the tokens (1)")
        g.add_argument("--min-freq", type=int, help="minimum token count to enter the vocabulary (2)")
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
                   help="run on packed sequences (pack_padded_sequence) instead of masked padding; on a CPU "
                   "this runs as masked padding (same outputs, faster) unless --pack-on-cpu")
    m.add_argument("--pack-on-cpu", action="store_true", default=None,
                   help="with --packed: pack on the CPU too (slower; for comparison)")
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
    t.add_argument("--lazy-embedding", action="store_true", default=None,
                   help="on a CPU, update only the embedding rows of each batch's words (faster with small "
                        "batches and large vocabularies; changes the optimiser's results)")
    t.add_argument("--overlap-update", action=argparse.BooleanOptionalAction, default=None,
                   help="on a CPU with 2+ threads, update the embedding table on a second thread while the "
                        "next batch trains: the same results, faster with small batches and large "
                        "vocabularies, slower with large batches (default: on for batches of <= 32 rows "
                        "and tables of >= 1M weights)")
    t.add_argument("--ensemble", type=int, metavar="N", help="train N runs with seeds SEED..SEED+N-1 into "
                   "OUT/member-K; evaluate, predict and serve then average their class probabilities")
    t.add_argument("--nproc", type=int, help="train data-parallel in N processes on this machine (torchrun "
                   "--standalone); on several nodes run torchrun yourself, see the README")
    t.add_argument("--dist-timeout", type=float, help="seconds a distributed process waits for a dead or stuck "
                   "peer before failing (300)")
    t.add_argument("--out", help="run directory to write (config, vocab, weights, metrics)")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N steps (a checkpoint is always written at the end of each epoch)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint, "
                   "with the configuration saved in RUN_DIR (no other data/model/training options)")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    _add_embedding_options(p)


def _add_embedding_options(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("pretrained word vectors")
    e.add_argument("--embeddings", metavar="PATH", help="GloVe / word2vec (text or .bin) / fastText .vec file, "
                   "optionally .gz or in a .zip (ARCHIVE.zip/MEMBER); sets --embed-dim from the file")
    e.add_argument("--freeze-embeddings", action="store_true", default=None,
                   help="keep the pretrained vectors fixed (default: tune them)")
    e.add_argument("--embeddings-lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="a word missing from the file takes the vector of its lowercase twin (default: on)")
    e.add_argument("--vocab-from-embeddings", action="store_true", default=None,
                   help="add the vector file's most frequent words to the vocabulary")
    e.add_argument("--vocab-from-embeddings-max", type=int, metavar="N",
                   help="consider the first N words of the vector file (50000); --max-vocab caps the total")


def _add_vectors_command(sub: Any) -> None:
    p = sub.add_parser("vectors", help="train word vectors on unlabelled text (for train --embeddings)")
    p.add_argument("--train", nargs="+", default=[], metavar="FILE",
                   help="text files (one text per line, optionally .gz) or CSV/TSV/JSONL (--text-column)")
    p.add_argument("--dataset", choices=["ag_news"], help="also use a built-in dataset's training texts")
    p.add_argument("--data-dir", help="directory with the dataset's train/test CSVs")
    p.add_argument("--text-column", action="append", dest="text_columns", metavar="NAME",
                   help="text column of CSV/TSV/JSONL inputs (repeat to join several; default: text)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows instead of stopping")
    p.add_argument("--quoting", choices=QUOTINGS, default="csv",
                   help='CSV/TSV: "quoted" fields (csv) or quotes as ordinary characters (none: raw TSV)')
    p.add_argument("--out", required=True, help="the .vec file to write")
    p.add_argument("--algorithm", choices=["skipgram", "cbow", "fasttext"], default="skipgram",
                   help="gensim Word2Vec skip-gram or CBOW, or gensim FastText (default: skipgram)")
    p.add_argument("--dim", type=int, default=100, help="vector size (100)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the text (5)")
    p.add_argument("--min-count", type=int, default=2, help="ignore words seen fewer times (2)")
    p.add_argument("--window", type=int, default=5, help="context window (5)")
    p.add_argument("--tokenizer", choices=["basic_english", "whitespace"], default="basic_english",
                   help="use the classifier's tokenizer so the words match its vocabulary")
    p.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)


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
    p.add_argument("run_dir", nargs="+", help="a run directory; several: evaluate their ensemble "
                                               "(mean of class probabilities) on the first one's test set")
    _add_data_options(p, train=False)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="predict labels of texts")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts (none and no --file: one per line on stdin)")
    p.add_argument("--file", help="a file with one text per line (predicted after any texts given)")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN_DIR",
                   help="another run directory whose class probabilities are averaged with RUN_DIR's (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="JSON lines with all class probabilities")

    p = sub.add_parser("compare", help="train several models on one dataset; write report.html and report.md")
    _add_data_options(p, train=True)
    p.add_argument("--config", help="JSON or TOML file listing the runs (default: tutorial RNN, LSTM, packed LSTM, "
                   "GRU, BiLSTM)")
    p.add_argument("--out", required=True, help="directory for the report and the runs (OUT/runs/NAME)")
    for flag, kind, what in (("--epochs", int, "epochs"), ("--epoch-size", int, "batches per epoch"),
                             ("--threads", int, "CPU threads"), ("--seed", int, "seed"), ("--device", str, "device")):
        p.add_argument(flag, type=kind, help=f"{what} for every run (overrides the config)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("serve", help="HTTP API and web page for a trained run")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request (256)")
    p.add_argument("--max-chars", type=int, default=20_000, help="characters per text (20000)")
    p.add_argument("--max-body-bytes", type=int, default=2_000_000, help="request body size (2000000)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests (2)")
    p.add_argument("--max-batch", type=int, default=256, help="texts per model call when batching requests (256)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_vectors_command(sub)
    for subparser in sub.choices.values():  # `rnntext train ... --debug` works as well as `rnntext --debug train`
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _set(obj: Any, **values: Any) -> None:
    for k, v in values.items():
        if v is not None:
            setattr(obj, k, v)


def _label_names(text: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for item in text.split(","):
        label, sep, name = item.partition("=")
        if not sep or not label.strip() or label.strip() in names:
            raise argparse.ArgumentTypeError(f"expected distinct LABEL=NAME pairs separated by commas, got {item!r}")
        names[label.strip()] = name.strip()
    return names


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
         text_columns=args.text_columns, label_column=args.label_column, label_names=args.label_names,
         skip_bad_rows=args.skip_bad_rows, quoting=args.quoting, valid_split=args.valid_split, ngrams=args.ngrams,
         min_freq=args.min_freq, max_vocab=args.max_vocab, max_len=args.max_len, tokenizer=args.tokenizer)
    _set(d, embeddings=args.embeddings, embeddings_lowercase=args.embeddings_lowercase,
         vocab_from_embeddings=args.vocab_from_embeddings, vocab_from_embeddings_max=args.vocab_from_embeddings_max)
    _set(cfg.model, freeze_embeddings=args.freeze_embeddings)
    _set(cfg.model, model=args.model, bidirectional=args.bidirectional, num_layers=args.num_layers,
         pooling=args.pooling, packed=args.packed, pack_on_cpu=args.pack_on_cpu, embed_dim=args.embed_dim,
         hidden_dim=args.hidden_dim,
         dropout=args.dropout, embed_dropout=args.embed_dropout)
    _set(cfg.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
         weight_decay=args.weight_decay, clip=args.clip, seed=args.seed, device=args.device,
         threads=args.threads, epoch_size=args.epoch_size, bucket=args.bucket, dist_timeout=args.dist_timeout)
    _set(cfg.train, checkpoint_every=args.checkpoint_every)
    _set(cfg.train, lazy_embedding=getattr(args, "lazy_embedding", None),
         overlap_update=getattr(args, "overlap_update", None))
    if cfg.train.checkpoint_every is not None and args.out is None:
        raise ConfigError("--checkpoint-every needs --out (checkpoints are written into the run directory)")
    # config.json records absolute paths, so `rnntext evaluate RUN` works from any directory
    for name in ("data_dir", "train", "valid", "test", "embeddings"):
        if getattr(d, name):
            setattr(d, name, os.path.abspath(getattr(d, name)))
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    if args.resume is not None:
        return cmd_resume(args)
    cfg = config_from_args(args)
    if args.ensemble is not None:
        return cmd_train_ensemble(cfg, args)
    if args.nproc is not None and args.nproc != 1:
        from .training.distributed import launch

        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        return launch(args.argv, args.nproc)
    result = train(cfg, args.out, progress=not args.quiet)
    return _print_result(result, args)


def cmd_train_ensemble(cfg: Any, args: argparse.Namespace) -> int:
    from .training.ensemble import train_ensemble

    if args.nproc is not None and args.nproc != 1:
        raise ConfigError("--ensemble trains its members one after another in this process; drop --nproc")
    metrics = train_ensemble(cfg, args.ensemble, args.out, progress=not args.quiet,
                             log=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps(metrics, indent=2))
    elif "test" in metrics:
        print(f"ensemble test accuracy {metrics['test']['accuracy']:.4f}")
    return 0


def _print_result(result: Any, args: argparse.Namespace) -> int:
    if os.environ.get("RANK", "0") != "0":  # a distributed run reports once, from rank 0
        return 0
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    elif "test" in result.metrics:
        print(f"test accuracy {result.metrics['test']['accuracy']:.4f}")
    return 0


# Options that may accompany --resume: everything else comes from the run directory.
_RESUME_OPTIONS = {"command", "debug", "quiet", "json", "resume", "argv", "nproc"}


def cmd_resume(args: argparse.Namespace) -> int:
    from .training.checkpoint import read_manifest
    from .training.trainer import resume

    extra = sorted(k for k, v in vars(args).items() if k not in _RESUME_OPTIONS and v not in (None, False))
    if extra:
        raise ConfigError("--resume continues with the configuration saved in the run directory; drop "
                          + ", ".join("--" + k.replace("_", "-") for k in extra))
    if args.nproc is not None and args.nproc != 1:  # a distributed run resumes with its number of processes
        from .training.distributed import launch

        return launch(args.argv, args.nproc)
    if read_manifest(args.resume).get("finished"):
        print(f"rnntext: {args.resume} has finished training; nothing to resume", file=sys.stderr)
        return 0
    result = resume(args.resume, progress=not args.quiet)
    return _print_result(result, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .training.evaluate import evaluate_run
    from .training.metrics import format_report

    # Unset options keep what the run was trained with (its test file, columns, AG News directory).
    report = evaluate_run(args.run_dir, device=args.device, threads=args.threads, test=args.test, dataset=args.dataset,
                          data_dir=args.data_dir, text_columns=args.text_columns, label_column=args.label_column,
                          skip_bad_rows=args.skip_bad_rows, quoting=args.quoting)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .serving.predictor import Predictor

    # a bad run dir fails before stdin is read
    predictor = Predictor.load([args.run_dir, *args.ensemble], args.device, args.threads)
    texts = list(args.texts)
    if args.file:  # after any texts given as arguments
        from .data.readers import read_text_file

        texts += [line for line in read_text_file(args.file).splitlines() if line.strip()]
    if not args.texts and not args.file:
        if sys.stdin.isatty():  # otherwise a forgotten argument looks like a hang
            print("rnntext: reading texts from the terminal, one per line; end with Ctrl-D", file=sys.stderr)
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    for pred in predictor.predict(texts):
        if args.json:
            print(json.dumps(pred.to_dict(), ensure_ascii=False))
        else:
            print(f"{pred.label}\t{pred.probabilities[pred.label]:.4f}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import DEFAULT_ENTRIES, OVERRIDABLE, compare, load_entries, markdown_table

    # The data options go through config_from_args like train's; model/train options keep their defaults.
    scratch = argparse.ArgumentParser(add_help=False)
    _add_train_options(scratch)
    data_args = {k: v for k, v in vars(args).items() if k not in OVERRIDABLE}
    base = config_from_args(argparse.Namespace(**{**vars(scratch.parse_args([])), **data_args}))
    entries = load_entries(args.config) if args.config else DEFAULT_ENTRIES
    summary = compare(base, entries, args.out, overrides={k: getattr(args, k) for k in OVERRIDABLE},
                      progress=not args.quiet, log=lambda s: print(s, file=sys.stderr))
    print(markdown_table(summary))
    print(f"report: {args.out}/report.html")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serving.server import Limits, serve
    except ImportError as e:
        raise ConfigError(f"rnntext serve needs FastAPI and uvicorn: pip install 'rnntext[serve]' ({e})") from None
    for name in ("max_texts", "max_chars", "max_body_bytes", "max_batch", "port"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_wait_ms < 0:
        raise ConfigError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    serve(args.run_dir, args.host, args.port, device=args.device, threads=args.threads,
          limits=Limits(args.max_texts, args.max_chars, args.max_body_bytes), max_batch_texts=args.max_batch,
          max_wait_ms=args.batch_wait_ms, log_level=args.log_level)
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from .data.train_vectors import VectorOptions, read_texts, train_vectors

    if not args.train and not args.dataset and not args.data_dir:
        raise ConfigError("give --train FILE [FILE ...] and/or --dataset ag_news [--data-dir DIR]")
    opts = VectorOptions(dim=args.dim, epochs=args.epochs, min_count=args.min_count, window=args.window,
                         algorithm=args.algorithm, threads=args.threads, seed=args.seed, tokenizer=args.tokenizer)
    texts = read_texts(args.train, args.text_columns, "ag_news" if args.dataset or args.data_dir else None,
                       args.data_dir, args.skip_bad_rows, args.quoting)
    train_vectors(texts, args.out, opts, log=lambda s: print(s, file=sys.stderr))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "compare": cmd_compare,
            "serve": cmd_serve, "vectors": cmd_vectors}


def _ignore_sigint() -> None:
    """After Ctrl-C: a further Ctrl-C while the process exits should not print a traceback."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # main() called outside the main thread
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives `predict RUN --json "text"`'s texts no home once an option followed RUN: take them here.
    if extra and args.command == "predict" and not any(e.startswith("-") and e != "--" for e in extra):
        args.texts += [e for e in extra if e != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what `train --nproc` relaunches
    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as e:  # Ctrl-C during training: a checkpoint was saved
        if args.debug:
            raise
        _ignore_sigint()
        print(f"rnntext: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        _ignore_sigint()
        print("rnntext: interrupted", file=sys.stderr)
        return 130
    except RnnTextError as e:
        if args.debug:
            raise
        print(f"rnntext: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable output path, a full disk, ...: the user's to fix, no traceback
        if args.debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"rnntext: error: {e.strerror or e}{where} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's "can't allocate memory" / CUDA out of memory are RuntimeErrors
        if args.debug or not (isinstance(e, MemoryError) or "allocate memory" in str(e) or "out of memory" in str(e)):
            raise  # anything else is a bug: show it
        print("rnntext: error: out of memory; use a smaller model or batch (--embed-dim, --hidden-dim, --batch-size, "
              "--max-vocab) (--debug shows the traceback)", file=sys.stderr)
        return 2
