"""The `rnntext` command. Thin: it parses options, builds the config and calls the Python API.

The options that are settings (those of RunConfig, ServeConfig and VectorOptions) are generated from
their declarations in config.py: flag, type, choices, help and default come from there, and so do the
checks, whose messages name the option as typed (`--valid-split must be in [0, 1), got 2.0`). Only a
command's own options (--out, --resume, --json, --preset, --config, ...) are written here.
Importing this module and building the parser import no torch: each command imports what it needs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import __version__
from .config import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    ServeConfig,
    Settings,
    TrackConfig,
    TrainConfig,
    TuneConfig,
    VectorOptions,
    default_of,
    flag_of,
    kinds,
    load_run_config,
)
from .cores import apply_wait_policy
from .errors import ConfigError, RnnTextError, TrainingInterrupted
from .model.registry import model_names
from .presets import PRESETS, preset_config

# section -> settings dataclass, for the options generated from them
SETTINGS: dict[str, type[Settings]] = {k.SECTION: k for k in (
    DataConfig, ModelConfig, TrainConfig, ServeConfig, VectorOptions, TrackConfig, TuneConfig, InferenceConfig,
    PretrainConfig)}
RUN_SECTIONS = ("data", "model", "train")
# the data settings `evaluate` may change (unset: as the run was trained), and those `vectors` reads its input with
EVALUATE_DATA = ("dataset", "data_dir", "test", "text_columns", "label_column", "skip_bad_rows", "quoting")
VECTORS_DATA = ("dataset", "data_dir", "text_columns", "skip_bad_rows", "quoting")
# the run settings `pretrain` takes (rnntext.training.pretrain): how texts are read and split into words, the
# encoder, and its training
PRETRAIN_SETTINGS = {
    DataConfig: ("text_columns", "skip_bad_rows", "quoting", "tokenizer", "min_freq", "max_vocab", "max_len"),
    ModelConfig: ("model", "embed_dim", "hidden_dim", "num_layers", "bidirectional", "dropout", "embed_dropout"),
    TrainConfig: ("epochs", "min_steps", "batch_size", "max_batch_tokens", "lr", "schedule", "weight_decay", "clip",
                  "seed", "device", "threads", "checkpoint_every", "bucket"),
}
COMPARE_OVERRIDES = ("epochs", "epoch_size", "threads", "seed", "device")  # report.compare.OVERRIDABLE (a test)


def cli_name(section: str, name: str) -> str:
    """How a message names a setting on the command line: its option."""
    return flag_of(SETTINGS[section], name)


def _choices(klass: type[Settings], f: dataclasses.Field) -> Sequence[str] | None:
    if klass is ModelConfig and f.name == "model":
        return model_names()  # the registry checks the name; config.py knows no models
    return f.metadata.get("choices")


def _optional(kind: type) -> Callable[[str], Any]:
    """int / float that also takes `none` (unset a file's or a preset's value)."""

    def convert(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    convert.__name__ = kind.__name__  # argparse: "invalid int value: 'x'"
    return convert


def _parser_of(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _help(f: dataclasses.Field, kind: Any, show_default: bool, none_hint: bool) -> str:
    text = f.metadata.get("help", "")
    if show_default and f.metadata.get("show_default", True):
        default = default_of(f)
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, list):
            shown = ", ".join(default)
        else:
            shown = str(default)
        text += f" (default: {shown})"
    if none_hint and kind.optional and kind.base in (int, float):
        text += "; 'none' unsets a preset's or --config's value"
    return text.replace("%", "%%")


def add_settings(target: Any, klass: type[Settings], names: Iterable[str] | None = None, *,
                 show_defaults: bool = True, none_hint: bool = False,
                 group_of: Callable[[dataclasses.Field], Any] | None = None) -> None:
    """Options for the settings of `klass` (all that are options, or `names`), generated from their declarations.
    An option not given leaves no attribute (default SUPPRESS); one given is `args.<section>.<name>`."""
    wanted = set(names) if names is not None else None
    for f in dataclasses.fields(klass):
        meta = f.metadata
        if not meta.get("cli", False) or (wanted is not None and f.name not in wanted):
            continue
        kind = kinds(klass)[f.name]
        kw: dict[str, Any] = {"dest": f"{klass.SECTION}.{f.name}", "default": argparse.SUPPRESS,
                              "help": _help(f, kind, show_defaults, none_hint)}
        if kind.base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if meta.get("parse"):
                kw["type"] = _parser_of(meta["parse"])
            elif kind.base in (int, float):
                kw["type"] = _optional(kind.base) if kind.optional else kind.base
            if kind.base is list:
                kw["action"] = "append"
            choices = _choices(klass, f)
            if choices:
                kw["choices"] = choices
            kw["metavar"] = meta.get("metavar") or (None if choices else {int: "N", float: "X"}.get(
                kind.base, f.name.upper()))
        (group_of(f) if group_of else target).add_argument(flag_of(klass, f.name), **kw)


def given(args: argparse.Namespace, klass: type[Settings]) -> dict[str, Any]:
    """The settings of `klass` given on the command line: name -> value, checked (messages name the options)."""
    prefix = klass.SECTION + "."
    values = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return klass().checked(values, cli_name)


def settings_from_args(args: argparse.Namespace, klass: type[Settings]) -> Any:
    """An instance of `klass`: its defaults, then the options given; validated."""
    obj = klass()
    obj.update(given(args, klass))
    obj.validate(cli_name)
    return obj


def _add_run_settings(p: argparse.ArgumentParser) -> None:
    """A run's settings (data, model, training) and --preset / --config: `train`'s and `tune`'s."""
    data = p.add_argument_group("data")
    m = p.add_argument_group("model")
    t = p.add_argument_group("training")
    e = p.add_argument_group("pretrained word vectors")
    for klass, group in ((DataConfig, data), (ModelConfig, m), (TrainConfig, t)):
        add_settings(group, klass, none_hint=True,
                     group_of=lambda f, group=group: e if f.metadata.get("group") == "vectors" else group)
    c = p.add_argument_group("configuration")
    c.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration")
    c.add_argument("--config", metavar="FILE", help="a JSON or TOML file with config.json's sections (data, model, "
                   "train; partial is fine); precedence: defaults < --preset < --config < options given here")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    _add_run_settings(p)
    r = p.add_argument_group("run")
    r.add_argument("--out", help="run directory to write (config, vocab, weights, metrics)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint, "
                   "with the configuration saved in RUN_DIR (no other data/model/training options)")
    r.add_argument("--ensemble", type=int, metavar="N", help="train N runs with seeds SEED..SEED+N-1 into "
                   "OUT/member-K; evaluate, predict and serve then average their class probabilities")
    r.add_argument("--nproc", type=int, help="train data-parallel in N processes on this machine (torchrun "
                   "--standalone); on several nodes run torchrun yourself, see the README")
    r.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_settings(p.add_argument_group("tracking", "not saved with the run; also with --resume"), TrackConfig)


def _add_vectors_command(sub: Any) -> None:
    p = sub.add_parser("vectors", help="train word vectors on unlabelled text (for train --embeddings)")
    p.add_argument("--train", nargs="+", default=[], metavar="FILE",
                   help="text files (one text per line, optionally .gz) or CSV/TSV/JSONL (--text-column)")
    p.add_argument("--out", required=True, help="the .vec file to write")
    add_settings(p.add_argument_group("input"), DataConfig, VECTORS_DATA)
    add_settings(p.add_argument_group("vectors"), VectorOptions)


def _add_pretrain_command(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="pretrain a recurrent encoder as a language model on unlabelled text "
                                        "(for train --encoder)")
    p.add_argument("--text", nargs="+", action="extend", metavar="FILE",
                   help="text files: one text per line (optionally .gz), or CSV/TSV/JSONL with --text-column")
    for klass, title in ((DataConfig, "data"), (ModelConfig, "encoder"), (TrainConfig, "training")):
        add_settings(p.add_argument_group(title), klass, PRETRAIN_SETTINGS[klass])
    add_settings(p.add_argument_group("language model"), PretrainConfig)
    r = p.add_argument_group("encoder directory")
    r.add_argument("--out", metavar="ENCODER_DIR", help="the encoder directory to write (vocabulary, weights, "
                   "metrics, checkpoints)")
    r.add_argument("--resume", metavar="ENCODER_DIR", help="continue an interrupted pretraining from its last "
                   "checkpoint, with the settings saved there (no other options)")
    r.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_tune_command(sub: Any) -> None:
    p = sub.add_parser("tune", help="search a run's settings with Optuna; write best.json and a report")
    _add_run_settings(p)
    add_settings(p.add_argument_group("tuning", "settings given as options above are fixed: not searched"),
                 TuneConfig)
    d = p.add_argument_group("tuning directory")
    d.add_argument("--out", metavar="DIR", help="a new directory for the study (study.db), best.json, best-run/ "
                   "and report.md / report.html")
    d.add_argument("--resume", metavar="DIR", help="continue the study in DIR with the settings it was started "
                   "with (only --trials, --timeout and tracking options may be given)")
    d.add_argument("--json", action="store_true", help="print the summary (summary.json) as JSON")
    add_settings(p.add_argument_group("tracking", "per trial: a TensorBoard subdirectory DIR/trial-NNNN, an MLflow "
                                                  "run trial-N"), TrackConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnntext", description="Text classification with recurrent networks.")
    parser.add_argument("--version", action="version", version=f"rnntext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a classifier")
    _add_train_options(p)

    p = sub.add_parser("evaluate", help="accuracy, per-class P/R/F1 and confusion matrix of a run")
    p.add_argument("run_dir", nargs="+", help="a run directory; several: evaluate their ensemble "
                                               "(mean of class probabilities) on the first one's test set")
    add_settings(p.add_argument_group("data", "unset: as the run was trained"), DataConfig, EVALUATE_DATA,
                 show_defaults=False)
    add_settings(p, TrainConfig, ("device", "threads"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="FILE", help="where to draw the reliability diagram (default: "
                   "RUN_DIR/calibration.png; needs matplotlib)")
    add_settings(p, InferenceConfig)

    p = sub.add_parser("predict", help="predict labels of texts")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts (none and no --file: one per line on stdin)")
    p.add_argument("--file", help="a file with one text per line (predicted after any texts given); or a table, "
                   "by its extension: .csv, .tsv, .jsonl (optionally .gz), .parquet, .feather / .arrow, whose "
                   "--text-column is predicted row by row")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN_DIR",
                   help="another run directory whose class probabilities are averaged with RUN_DIR's (repeatable)")
    add_settings(p, TrainConfig, ("device", "threads"))
    p.add_argument("--json", action="store_true", help="JSON lines with all class probabilities")
    p.add_argument("--output", metavar="FILE", help="write every input row, all its columns kept, with the "
                   "prediction's columns (prediction.label, prediction.probabilities.CLASS, ...) to FILE: .csv, "
                   ".tsv, .jsonl (optionally .gz), .parquet or .feather / .arrow; streamed, in constant memory")
    add_settings(p.add_argument_group("table input (--file F.csv|tsv|jsonl|parquet|feather)"), DataConfig,
                 ("text_columns", "quoting", "skip_bad_rows"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (--output)")
    p.add_argument("--explain", action="store_true", help="add each word's attribution to the predicted class "
                   "(as `rnntext explain`; needs Captum: pip install 'rnntext[explain]')")
    add_settings(p, InferenceConfig)

    p = sub.add_parser("explain", help="which words made a prediction: each word's attribution to a class")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts (none and no --file: one per line on stdin)")
    p.add_argument("--file", help="a file with one text per line (explained after any texts given)")
    p.add_argument("--label", help="the class to explain (default: the predicted one)")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN_DIR",
                   help="another run directory: explain the ensemble (the mean of the runs' attributions)")
    p.add_argument("--method", choices=("ig", "occlusion"), default="ig",
                   help="ig: integrated gradients over the embedding layer, from <pad> (Captum); occlusion: "
                   "replace one word at a time by <pad> (default: ig)")
    p.add_argument("--steps", type=int, default=32, metavar="N", help="integration steps of ig (default: 32)")
    add_settings(p, TrainConfig, ("device", "threads"))
    p.add_argument("--json", action="store_true", help="one JSON object per text")

    p = sub.add_parser("compare", help="train several models on one dataset; write report.html and report.md")
    data = p.add_argument_group("data")
    add_settings(data, DataConfig, group_of=lambda f: data)
    p.add_argument("--config", help="JSON or TOML file listing the runs (default: tutorial RNN, LSTM, packed LSTM, "
                   "GRU, BiLSTM)")
    p.add_argument("--out", required=True, help="directory for the report and the runs (OUT/runs/NAME)")
    add_settings(p.add_argument_group("for every run (overrides the config)"), TrainConfig, COMPARE_OVERRIDES,
                 show_defaults=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("serve", help="HTTP API and web page for a trained run")
    p.add_argument("run_dir")
    add_settings(p, ServeConfig)
    add_settings(p, InferenceConfig)

    p = sub.add_parser("export", help="write a run as an ONNX model with its vocabulary, labels and tokenizer "
                       "settings (for --backend onnx)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    p.add_argument("--int8", action="store_true", help="int8 weights: onnxruntime's dynamic quantisation")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    _add_vectors_command(sub)
    _add_pretrain_command(sub)
    _add_tune_command(sub)
    for subparser in sub.choices.values():  # `rnntext train ... --debug` works as well as `rnntext --debug train`
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of `train`'s options: defaults < --preset < --config FILE < the options given."""
    return _run_config(args, RUN_SECTIONS, config_file=getattr(args, "config", None))


def _run_config(args: argparse.Namespace, sections: Sequence[str], config_file: str | None = None) -> RunConfig:
    cfg = RunConfig()
    preset = getattr(args, "preset", None)
    if preset:
        cfg = preset_config(preset, cfg)
    if config_file:
        cfg = load_run_config(config_file, base=cfg)
    values = {section: given(args, SETTINGS[section]) for section in sections}
    data = values["data"]
    if data.get("train"):  # own files, or AG News: whichever the command line names
        data["dataset"] = None
    elif data.get("dataset") or data.get("data_dir"):
        data["dataset"] = "ag_news"
        data.setdefault("train", None)
    for section, section_values in values.items():
        getattr(cfg, section).update(section_values, cli_name)
    if "train" in sections and cfg.train.checkpoint_every is not None and getattr(args, "out", None) is None:
        raise ConfigError("--checkpoint-every needs --out (checkpoints are written into the run directory)")
    # config.json records absolute paths, so `rnntext evaluate RUN` works from any directory
    for f in dataclasses.fields(cfg.data):
        if f.metadata.get("path") and getattr(cfg.data, f.name):
            setattr(cfg.data, f.name, os.path.abspath(getattr(cfg.data, f.name)))
    cfg.validate(cli_name)
    return cfg


def _write_plots(run_dir: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # a distributed run draws once, from rank 0
        from .report.plots import write_run_plots

        write_run_plots(run_dir, lambda s: print(s, file=sys.stderr))


def _check_dir_options(args: argparse.Namespace) -> None:
    """`--out ""` (an unset shell variable) would write into the current directory: refused."""
    for option in ("out", "resume"):
        value = getattr(args, option, None)
        if value is not None and not value.strip():
            raise ConfigError(f"--{option} is empty (an unset shell variable?); give the run directory")


def cmd_train(args: argparse.Namespace) -> int:
    _check_dir_options(args)
    if args.resume is not None:
        return cmd_resume(args)
    cfg = config_from_args(args)  # a mistake in the options is reported before torch is imported
    callbacks = _trackers(args)  # --tensorboard, --mlflow
    if args.ensemble is not None:
        if callbacks:
            raise ConfigError("--tensorboard and --mlflow track one run; drop them with --ensemble")
        return cmd_train_ensemble(cfg, args)
    if args.nproc is not None and args.nproc != 1:
        from .training.distributed import launch

        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        return launch(args.argv, args.nproc)
    from .training import train
    from .training.checkpoint import check_run_target, run_lock

    if args.out is None:
        return _print_result(train(cfg, None, progress=not args.quiet, callbacks=callbacks), args)
    check_run_target(args.out)
    with run_lock(args.out):  # the whole run, plots included: a second run into --out fails at once
        return _print_result(train(cfg, args.out, progress=not args.quiet, callbacks=callbacks), args)


def _trackers(args: argparse.Namespace, **kw: Any) -> list[Any]:
    """The training callbacks of --tensorboard and --mlflow (rnntext.report.tracking); none without them."""
    track = settings_from_args(args, TrackConfig)
    if not (track.tensorboard or track.mlflow):
        return []
    from .report.tracking import trackers

    return trackers(track, **kw)


def cmd_train_ensemble(cfg: Any, args: argparse.Namespace) -> int:
    from .training.ensemble import train_ensemble

    if args.nproc is not None and args.nproc != 1:
        raise ConfigError("--ensemble trains its members one after another in this process; drop --nproc")
    if args.out is None:
        metrics = train_ensemble(cfg, args.ensemble, None, progress=not args.quiet,
                                 log=lambda s: print(s, file=sys.stderr))
    else:
        from .training.checkpoint import check_run_target, run_lock

        check_run_target(args.out, members=True)
        with run_lock(args.out):
            metrics = train_ensemble(cfg, args.ensemble, args.out, progress=not args.quiet,
                                     log=lambda s: print(s, file=sys.stderr))
            for k in range(args.ensemble):
                _write_plots(os.path.join(args.out, f"member-{k}"))
    if args.json:
        print(json.dumps(metrics, indent=2))
    elif "test" in metrics:
        print(f"ensemble test accuracy {metrics['test']['accuracy']:.4f}")
    return 0


def _print_result(result: Any, args: argparse.Namespace) -> int:
    if os.environ.get("RANK", "0") != "0":  # a distributed run reports once, from rank 0
        return 0
    if result.run_dir is not None:  # (also after --resume)
        _write_plots(result.run_dir)
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    elif "test" in result.metrics:
        test = result.metrics["test"]
        print(f"test micro-F1 {test['micro_f1']:.4f}, subset accuracy {test['accuracy']:.4f}" if test.get("multi_label")
              else f"test accuracy {test['accuracy']:.4f}")
    return 0


# Options that may accompany --resume: everything else comes from the run directory.
_RESUME_OPTIONS = {"command", "debug", "quiet", "json", "resume", "argv", "nproc"}


def _option(dest: str, value: Any) -> str:
    section, dot, name = dest.partition(".")
    if not dot:
        return "--" + dest.replace("_", "-")
    flag = cli_name(section, name)
    return "--no-" + flag[2:] if value is False else flag


def cmd_resume(args: argparse.Namespace) -> int:
    from .training.checkpoint import read_manifest, run_lock
    from .training.trainer import resume

    # a generated option is there only when given; a command's own options are unset when None or False
    extra = sorted(_option(k, v) for k, v in vars(args).items()
                   if k not in _RESUME_OPTIONS and not k.startswith("track.") and ("." in k or v not in (None, False)))
    if extra:
        raise ConfigError("--resume continues with the configuration saved in the run directory; drop "
                          + ", ".join(extra))
    if args.nproc is not None and args.nproc != 1:  # a distributed run resumes with its number of processes
        from .training.distributed import launch

        return launch(args.argv, args.nproc)
    read_manifest(args.resume)  # a missing run directory or checkpoint: said before anything is created
    with run_lock(args.resume):  # a second --resume (or a train into it) fails at once
        if read_manifest(args.resume).get("finished"):
            print(f"rnntext: {args.resume} has finished training; nothing to resume", file=sys.stderr)
            return 0
        result = resume(args.resume, progress=not args.quiet, callbacks=_trackers(args))
        return _print_result(result, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference.evaluate import evaluate_run
    from .training.metrics import format_report

    data, train = given(args, DataConfig), given(args, TrainConfig)
    run = settings_from_args(args, InferenceConfig)
    if run.backend == "onnx":
        from .inference.evaluate import evaluate_export

        if len(args.run_dir) > 1:
            raise ConfigError("evaluate --backend onnx takes one export directory (ensembles need the torch backend)")
        report = evaluate_export(args.run_dir[0], train.get("threads"), run.calibration, run.min_confidence,
                                 **{name: data.get(name) for name in EVALUATE_DATA})
    else:  # unset options keep what the run was trained with (its test file, columns, AG News directory)
        report = evaluate_run(args.run_dir, device=train.get("device", "auto"), threads=train.get("threads") or "auto",
                              precision=run.precision, calibration=run.calibration, min_confidence=run.min_confidence,
                              **{name: data.get(name) for name in EVALUATE_DATA})
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    _plot_calibration(report, args.plot, args.run_dir[0])
    return 0


def _plot_calibration(report: dict[str, Any], plot: str | None, run_dir: str) -> None:
    """evaluate's reliability diagram: at --plot FILE, else RUN_DIR/calibration.png. Without matplotlib, or
    where the run directory cannot be written, one line on stderr says so; an explicit --plot that cannot
    be written is an error."""
    from pathlib import Path

    from .report.plots import CALIBRATION_PLOT, have_matplotlib, write_calibration_plot

    if not report.get("calibration"):  # multi-label: no temperature
        return
    if not have_matplotlib():
        print("rnntext: calibration plot skipped: matplotlib is not installed (pip install 'rnntext[plots]')",
              file=sys.stderr)
        return
    target = Path(plot) if plot else Path(run_dir) / CALIBRATION_PLOT
    try:
        title = f"reliability diagram: {Path(report['file']).name}" if report.get("file") else None
        write_calibration_plot(report["calibration"], target, title)
    except OSError as e:
        if plot:
            raise ConfigError(f"--plot {plot}: cannot write it ({e.strerror or e})") from None
        print(f"rnntext: calibration plot skipped: cannot write {target} ({e.strerror or e}); give --plot FILE",
              file=sys.stderr)
        return
    print(f"rnntext: reliability diagram: {target}", file=sys.stderr)


def _read_texts(args: argparse.Namespace) -> list[str]:
    """The texts given as arguments, then --file's lines, or else stdin's lines."""
    texts = list(args.texts)
    if args.file:  # after any texts given as arguments
        from .data.readers import iter_text_lines

        texts += [line for line in iter_text_lines(args.file) if line.strip()]  # streamed, under the input limits
    if not args.texts and not args.file:
        if sys.stdin.isatty():  # otherwise a forgotten argument looks like a hang
            print("rnntext: reading texts from the terminal, one per line; end with Ctrl-D", file=sys.stderr)
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    return texts


def _onnx_predictor(args: argparse.Namespace, threads: int | None, calibration: bool = True) -> Any:
    """The export directory of --backend onnx (no ensembles, no explanations)."""
    from .inference.onnx_predictor import OnnxPredictor

    if getattr(args, "ensemble", None):
        raise ConfigError("--ensemble needs the torch backend; export a run and predict with it alone")
    if getattr(args, "explain", False):
        raise ConfigError("--explain needs the torch backend (the run directory)")
    return OnnxPredictor.load(args.run_dir, threads, calibration=calibration)


def cmd_predict(args: argparse.Namespace) -> int:
    train, run = given(args, TrainConfig), settings_from_args(args, InferenceConfig)
    # a bad run dir fails before stdin is read
    if run.backend == "onnx":
        predictor: Any = _onnx_predictor(args, train.get("threads"), run.calibration)
    else:
        from .inference.predictor import Predictor

        predictor = Predictor.load([args.run_dir, *args.ensemble], train.get("device", "auto"),
                                   train.get("threads") or "auto", run.precision, run.calibration)
    if args.output or _is_table(args.file):  # a table in, or a table out: rnntext.inference.table_predict
        return _predict_table(args, predictor, lambda texts: predictor.predict(texts,
                                                                               min_confidence=run.min_confidence))
    texts = _read_texts(args)
    if args.explain:
        for ex in predictor.explain(texts):
            if args.json:
                d = ex.to_dict()
                print(json.dumps({"label": d["predicted"], "probabilities": d["probabilities"],
                                  "explanation": {k: d[k] for k in ("method", "delta", "attributions", "ngrams")
                                                  if k in d}}, ensure_ascii=False))
            else:
                words = " ".join(f"{t}:{a:+.3f}" for t, a in zip(ex.tokens, ex.attributions))
                print(f"{ex.predicted}\t{ex.probabilities[ex.predicted]:.4f}\t{words}")
        return 0
    for chunk in predictor.chunks(texts):  # printed as predicted: memory does not grow with the input
        # a NaN model is an error (never bare NaN in --json); below --min-confidence, no label (null)
        for pred in predictor.predict(list(chunk), min_confidence=run.min_confidence):
            if args.json:
                print(json.dumps(pred.to_dict(), ensure_ascii=False, allow_nan=False))
            else:
                print(_shown(pred))
    return 0


def _shown(pred: Any) -> str:
    """A prediction as `predict` prints it: label TAB probability; a multi-label run's: its labels and their
    probabilities, comma-separated (most probable first), or "(none)" when no label reaches its threshold."""
    if pred.labels is None and pred.label is None:  # --min-confidence: abstained; the top probability
        return f"(abstain)\t{max(pred.probabilities.values()):.4f}"
    if pred.labels is None:
        return f"{pred.label}\t{pred.probabilities[pred.label]:.4f}"
    if not pred.labels:
        return "(none)\t"
    return ",".join(pred.labels) + "\t" + ",".join(f"{p:.4f}" for p in pred.labels.values())


def _is_table(path: str | None) -> bool:
    """Whether `predict --file` names a table (read by its columns) rather than a text file (one text a line)."""
    if path is None:
        return False
    from .data.readers import detect_format
    from .errors import DataError

    try:
        detect_format(path)
    except DataError:
        return False
    return True


def _predict_table(args: argparse.Namespace, predictor: Any, predict: Callable[[list[str]], Any]) -> int:
    """`predict --file TABLE` and/or `--output FILE`: rows in, rows out, in chunks (inference/table_predict.py)."""
    from .data.tables import TableReader
    from .inference.table_predict import predict_chunks, predict_file, text_chunks, write_predictions

    if args.explain:
        raise ConfigError("--explain prints each text's attributions; drop it with a table --file or --output")
    data = given(args, DataConfig)
    columns, quoting, skip = data.get("text_columns", ["text"]), data.get("quoting", "csv"), data.get(
        "skip_bad_rows", False)
    table = _is_table(args.file)
    if table and args.texts:
        raise ConfigError("give texts as arguments or a table with --file, not both")
    if args.output:
        if table and os.path.abspath(args.output) == os.path.abspath(args.file):
            raise ConfigError("--output must not be the --file it reads")
        if table:
            summary = predict_file(args.file, args.output, predict, predictor.labels, columns, quoting=quoting,
                                   skip_bad_rows=skip, progress=not args.quiet)
        else:
            summary = write_predictions(text_chunks(_read_texts(args)), predict, predictor.labels, args.output,
                                        progress=not args.quiet)
        print(f"rnntext: {summary['rows']:,} rows predicted, written to {summary['output']}"
              + (f" ({summary['skipped']} bad rows skipped)" if summary["skipped"] else ""), file=sys.stderr)
        return 0
    reader = TableReader(args.file, columns, quoting=quoting, skip_bad_rows=skip)
    skipped = 0
    for chunk, preds in predict_chunks(reader.chunks(), predict, progress=False):
        skipped += chunk.skipped
        for pred in preds:
            print(json.dumps(pred.to_dict(), ensure_ascii=False, allow_nan=False) if args.json else _shown(pred))
    if skipped:
        print(f"rnntext: skipped {skipped} bad rows in {args.file}", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .inference.predictor import Predictor

    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    train = given(args, TrainConfig)
    predictor = Predictor.load([args.run_dir, *args.ensemble], train.get("device", "auto"),
                               train.get("threads") or "auto")
    if args.label is not None and args.label not in predictor.labels:
        raise ConfigError(f"--label {args.label!r} is not a class of this model: {', '.join(predictor.labels)}")
    texts = _read_texts(args)
    for i, ex in enumerate(predictor.explain(texts, args.label, args.method, args.steps)):
        if args.json:
            print(json.dumps({"text": texts[i], **ex.to_dict()}, ensure_ascii=False))
            continue
        how = (f"integrated gradients, delta {ex.delta:+.4f}" if ex.method == "ig" else "occlusion")
        print(f"{ex.label} {ex.probabilities[ex.label]:.4f}" + ("" if ex.label == ex.predicted else
              f" (predicted: {ex.predicted} {ex.probabilities[ex.predicted]:.4f})") + f"  [{how}]")
        print(_attribution_lines(ex.tokens, ex.attributions))
        if i + 1 < len(texts):
            print()
    return 0


def _attribution_lines(tokens: list[str], attributions: list[float], width: int = 20) -> str:
    """One line per word: the word, its attribution, and a bar (+ for, - against the class)."""
    if not tokens:
        return "  (no words)"
    top = max(abs(a) for a in attributions) or 1.0
    pad = min(24, max(len(t) for t in tokens))
    return "\n".join(f"  {t:<{pad}} {a:+.4f}  {('+' if a >= 0 else '-') * round(width * abs(a) / top)}"
                     for t, a in zip(tokens, attributions))


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import DEFAULT_ENTRIES, compare, load_entries, markdown_table

    # The data options go through the same path as train's; model/train settings come from the entries.
    base = _run_config(args, ("data",))
    train = given(args, TrainConfig)
    entries = load_entries(args.config) if args.config else DEFAULT_ENTRIES
    summary = compare(base, entries, args.out, overrides={k: train.get(k) for k in COMPARE_OVERRIDES},
                      progress=not args.quiet, log=lambda s: print(s, file=sys.stderr))
    print(markdown_table(summary))
    print(f"report: {args.out}/report.html")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    opts, run = settings_from_args(args, ServeConfig), settings_from_args(args, InferenceConfig)
    try:
        from .serving.server import Limits, Timeouts, serve
    except ImportError as e:
        raise ConfigError(f"rnntext serve needs FastAPI and uvicorn: pip install 'rnntext[serve]' ({e})") from None
    serve(args.run_dir, opts.host, opts.port, device=opts.device, threads=opts.threads,
          limits=Limits(opts.max_texts, opts.max_chars, opts.max_body_bytes), max_batch_texts=opts.max_batch,
          max_wait_ms=opts.batch_wait_ms, max_queue_texts=opts.max_queue,
          timeouts=Timeouts(opts.header_timeout, opts.body_timeout, opts.keep_alive_timeout, opts.drain_timeout),
          log_level=opts.log_level, backend=run.backend, precision=run.precision, calibration=run.calibration,
          min_confidence=run.min_confidence)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_run

    _check_dir_options(args)
    export_run(args.run_dir, args.out, args.format, args.int8, log=lambda s: print(s, file=sys.stderr))
    print(args.out)
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from .data.train_vectors import read_texts, train_vectors

    data = given(args, DataConfig)
    opts = settings_from_args(args, VectorOptions)
    ag_news = bool(data.get("dataset") or data.get("data_dir"))
    if not args.train and not ag_news:
        raise ConfigError("give --train FILE [FILE ...] and/or --dataset ag_news [--data-dir DIR]")
    texts = read_texts(args.train, data.get("text_columns"), "ag_news" if ag_news else None, data.get("data_dir"),
                       data.get("skip_bad_rows", False), data.get("quoting", "csv"))
    train_vectors(texts, args.out, opts, log=lambda s: print(s, file=sys.stderr))
    return 0



def cmd_pretrain(args: argparse.Namespace) -> int:
    _check_dir_options(args)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.resume is not None:
        extra = sorted(_option(k, v) for k, v in vars(args).items() if "." in k) + (["--text"] if args.text else []) \
            + (["--out"] if args.out is not None else [])
        if extra:
            raise ConfigError("--resume continues with the settings saved in the encoder directory; drop "
                              + ", ".join(extra))
        from .training.pretrain import read_manifest, resume_pretrain

        if read_manifest(args.resume).get("finished"):
            print(f"rnntext: {args.resume} has finished pretraining; nothing to resume", file=sys.stderr)
            return 0
        metrics = resume_pretrain(args.resume, progress=not args.quiet, log=log)
        out = args.resume
    else:
        if args.out is None:
            raise ConfigError("give --out ENCODER_DIR (or --resume ENCODER_DIR to continue one)")
        if not args.text:
            raise ConfigError("give --text FILE [FILE ...]: the texts to pretrain on")
        run = RunConfig()
        for klass in PRETRAIN_SETTINGS:
            getattr(run, klass.SECTION).update(given(args, klass), cli_name)
        run.validate(cli_name)
        opts = settings_from_args(args, PretrainConfig)
        opts.text = [os.path.abspath(t) for t in args.text]  # encoder.json names them from any directory
        from .data.encoder_dir import PretrainSettings
        from .training.pretrain import pretrain

        metrics = pretrain(PretrainSettings(run, opts), args.out, progress=not args.quiet, log=log)
        out = args.out
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"held-out perplexity {metrics['initial_valid_perplexity']:.1f} -> {metrics['valid_perplexity']:.1f}; "
              f"encoder: {out} (rnntext train ... --encoder {out})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    _check_dir_options(args)
    track = settings_from_args(args, TrackConfig)
    tune_given = given(args, TuneConfig)
    if args.resume is not None:
        extra = sorted(_option(k, v) for k, v in vars(args).items() if "." in k and not k.startswith("track.")
                       and k not in ("tune.trials", "tune.timeout"))
        extra += [f"--{k}" for k in ("preset", "config", "out") if getattr(args, k) is not None]
        if extra:
            raise ConfigError("--resume continues the study with the settings it was started with; drop "
                              + ", ".join(extra))
        from .tune import resume

        summary = resume(args.resume, trials=tune_given.get("trials"), timeout=tune_given.get("timeout"), track=track)
    else:
        if args.out is None:
            raise ConfigError("give --out DIR for a new study, or --resume DIR to continue one")
        cfg = config_from_args(args)
        opts = settings_from_args(args, TuneConfig)
        if opts.space:
            opts.space = os.path.abspath(opts.space)
        fixed = [k for k in vars(args) if k.partition(".")[0] in RUN_SECTIONS]  # options given: not searched
        from .tune import tune

        summary = tune(cfg, args.out, opts, fixed=fixed, track=track)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    best = summary["best"]
    print(f"best: trial {best['trial']}, validation accuracy {best['valid_accuracy']:.4f} (epoch {best['epoch']}): "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()))
    if "test" in summary:
        print(f"test accuracy of the best configuration (evaluated once, after the search): "
              f"{summary['test']['accuracy']:.4f}")
    print(f"config: {summary['best_json']} (rnntext train --config {summary['best_json']} --out RUN)")
    print(f"report: {os.path.join(os.path.dirname(summary['best_json']), 'report.html')}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "explain": cmd_explain,
            "compare": cmd_compare, "serve": cmd_serve, "vectors": cmd_vectors, "pretrain": cmd_pretrain,
            "tune": cmd_tune, "export": cmd_export}


def _ignore_sigint() -> None:
    """After Ctrl-C: a further Ctrl-C while the process exits should not print a traceback."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # main() called outside the main thread
        pass


def main(argv: Sequence[str] | None = None) -> int:
    apply_wait_policy()  # libgomp reads it once, when torch loads it: before any command imports torch
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives `predict RUN --json "text"`'s texts no home once an option followed RUN: take them here.
    if extra and args.command in ("predict", "explain") and not any(e.startswith("-") and e != "--" for e in extra):
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
