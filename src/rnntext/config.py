"""All settings as dataclasses. `RunConfig` is saved as config.json beside every checkpoint,
so a run can always be rebuilt (model and preprocessing) and explained.

Each setting is declared once, as a dataclass field made by `setting(...)`: its type (the annotation),
default, help text, valid range or choices, and how the command line spells it (metadata). Everything
else derives from that declaration:

- the command line's options (`cli.py` generates `--embed-dim N` from `ModelConfig.embed_dim`);
- validation (`validate()`, with the setting named the way the caller gave it: `--valid-split` on the
  command line, `data.valid_split` from Python, `run.toml: data.valid_split` from a file);
- loading (`RunConfig.from_dict`: config.json, `train --config FILE`, presets, compare's run entries)
  checks every value's type and range, with one-line ConfigErrors.

Only the rules between settings (`--vocab-from-embeddings` needs `--embeddings`, ...) are code.

Upper bounds stop absurd sizes with a message instead of an allocation failure or a hang:
embed_dim and hidden_dim <= 65536, num_layers <= 64, ngrams <= 8, threads <= 1024, every integer
within 64 bits (seed in 0..2**63-1), dist_timeout <= 1e9 s, batch_wait_ms <= 60000, lr <= 10 and
weight_decay <= 100 (beyond, AdamW's step overflows: the loss turns NaN). Floats must be finite.
Memory is bounded by max_batch_tokens (padded tokens per batch) and max_len (words kept per text), see
docs/guides/limits.md.

This module imports nothing from the rest of rnntext but errors (and no torch): the layers above it
(data, model, training, serving, the CLI) import it. So the model name is not checked here against
the registry (`rnntext.model.registry`); building the model does that, and the CLI offers its names."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

FORMAT_VERSION = 1

CELLS = ("rnn", "lstm", "gru")
MODELS = (*CELLS, "bag")  # the models of the first release; the registry (rnntext.model.registry) has them all
POOLINGS = ("last", "mean", "max", "meanmax")
# CSV/TSV quoting: "csv" reads "quoted" fields ("" inside), as spreadsheets and pandas write them; "none"
# takes quotes as ordinary characters, as in raw TSV corpora (GLUE, SNLI) where a text may start with one.
QUOTINGS = ("csv", "none")
TOKENIZER_NAMES = ("basic_english", "whitespace")  # rnntext.data.tokenizer.TOKENIZERS (a test keeps them equal)
UNSEEN_WORDS = ("unk", "stem")  # rnntext.data.vocab.UNSEEN (a test keeps them equal)
SCHEDULES = ("onecycle", "constant")
DATASETS = ("ag_news",)
ALGORITHMS = ("skipgram", "cbow", "fasttext")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

INT64_MAX = 2**63 - 1
MAX_DIM = 65536
MAX_LAYERS = 64
MAX_NGRAMS = 8
MAX_WIDE_BUCKETS = 1 << 24  # model/wide.py's MAX_BUCKETS: its hash stays within 64 bits below it
WIDE_JOINS = ("sum", "mix")  # model/wide.py's JOINS
MAX_THREADS = 1024
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 100.0
MAX_BATCH_TOKENS = 64 * 1024  # train.max_batch_tokens's default
MAX_TEXT_TOKENS = 4096  # the longest pretrain.seq_len (and data.max_len's default until issue 15)
DEFAULT_MAX_LEN = 192  # data.max_len's default
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 5, 40  # epochs of a run without --epochs (training/stopping.py)
MAX_MEMBERS = 16  # --members (model/members.py)
AUTO_MAX_MEMBERS = 5  # the most members a run gets without --members (training/stopping.py)
SELECT_BY = ("accuracy", "macro_f1", "loss")

# (section, field) -> how to name the setting in a message: "data.valid_split", "--valid-split", ...
Namer = Callable[[str, str], str]


def python_name(section: str, name: str) -> str:
    return f"{section}.{name}"


# --- declaring a setting ----------------------------------------------------------------------------


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, help: str = "",
            min: float | None = None, max: float | None = None, gt: float | None = None, lt: float | None = None,
            choices: tuple[str, ...] | None = None, check: Callable[[Any], str | None] | None = None,
            flag: str | None = None, metavar: str | None = None, parse: Callable[[str], Any] | None = None,
            cli: bool = True, group: str | None = None, path: bool = False, show_default: bool = True) -> Any:
    """A dataclass field with the setting's metadata.

    min/max: inclusive bounds; gt/lt: exclusive bounds. choices: the allowed strings. check(value): a
    further test returning what the value must be (an error) or None. flag: the command-line option
    (default "--" + the name with "-"; lists: the singular, repeated). parse: text -> value for the command
    line (argparse type). cli=False: not an option (filled in by training). group: the help section.
    path: a file or directory, made absolute on the command line. show_default: "(default: X)" in the help."""
    meta = {"help": help, "min": min, "max": max, "gt": gt, "lt": lt, "choices": choices, "check": check,
            "flag": flag, "metavar": metavar, "parse": parse, "cli": cli, "group": group, "path": path,
            "show_default": show_default}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Kind:
    """A setting's type, from its annotation: base is int, float, str, bool, list (of str) or dict (str -> str)."""

    base: type
    optional: bool


def _kind(annotation: Any) -> Kind:
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0]
    origin = typing.get_origin(annotation) or annotation
    if origin not in (int, float, str, bool, list, dict):
        raise TypeError(f"unsupported setting type {annotation!r}")
    return Kind(origin, optional)


_KINDS: dict[type, dict[str, Kind]] = {}


def kinds(klass: type) -> dict[str, Kind]:
    """field name -> Kind for a settings dataclass."""
    if klass not in _KINDS:
        hints = typing.get_type_hints(klass)
        _KINDS[klass] = {f.name: _kind(hints[f.name]) for f in dataclasses.fields(klass)}
    return _KINDS[klass]


def field_of(klass: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(klass):
        if f.name == name:
            return f
    raise KeyError(f"{klass.__name__} has no setting {name!r}")


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]


def flag_of(klass: type, name: str) -> str:
    """The command-line option of a setting: "--embed-dim", "--text-column"."""
    return field_of(klass, name).metadata.get("flag") or "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (bool, dict)) or value is None:
        return json.dumps(value, ensure_ascii=False)  # true / false / null / {...}, as written in a config file
    return str(value)


def _type_error(kind: Kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list of strings", dict: "an object of strings"}[kind.base]


def _num(bound: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5": bounds as a person writes them."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else str(bound)


def _bounds_error(meta: Mapping[str, Any], value: float) -> str | None:
    lo, gt, hi, lt = meta.get("min"), meta.get("gt"), meta.get("max"), meta.get("lt")
    low_ok = (lo is None or value >= lo) and (gt is None or value > gt)
    high_ok = (hi is None or value <= hi) and (lt is None or value < lt)
    if low_ok and high_ok:
        return None
    if lt is not None and (lo is not None or gt is not None):  # a half-open interval, such as [0, 1)
        return f"must be in {'[' if lo is not None else '('}{_num(lo if lo is not None else gt)}, {_num(lt)})"
    if not low_ok:
        return f"must be >= {_num(lo)}" if lo is not None else f"must be > {_num(gt)}"
    return f"must be <= {_num(hi)}" if hi is not None else f"must be < {_num(lt)}"


def check_value(f: dataclasses.Field, kind: Kind, value: Any, display: str) -> Any:
    """`value` for the setting `f`, checked against its type and metadata; ints become floats where a float
    belongs. A ConfigError names the setting as `display`."""

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{display} {what}, got {_show(value)}")

    if value is None:
        if kind.optional:
            return None
        raise fail(f"must be {_type_error(kind)}")
    base, meta = kind.base, f.metadata
    if base is bool:
        if not isinstance(value, bool):
            raise fail("must be true or false")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("must be an integer")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("must be a number")
        if not math.isfinite(value):
            raise fail("must be a finite number")
    elif base is str:
        if not isinstance(value, str):
            raise fail("must be a string")
    elif base is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("must be a list of strings")
    elif base is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail("must be an object of strings")
    if base in (int, float):
        error = _bounds_error(meta, value)
        if error is None and base is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
            error = f"must be <= {INT64_MAX}" if value > 0 else f"must be >= {-INT64_MAX - 1}"
        if error:
            raise fail(error)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise fail(f"must be one of {', '.join(choices)}")
    check = meta.get("check")
    if check is not None:
        error = check(value)
        if error:
            raise fail(error)
    if base is float:
        return float(value)
    if base in (list, dict):
        return copy.copy(value)
    return value


# --- checks and parsers named in the declarations -----------------------------------------------------

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_device(value: str) -> str | None:
    return None if _DEVICE.fullmatch(value) else "must be auto, cpu, cuda or cuda:N"


def _check_text_columns(value: list[str]) -> str | None:
    return None if value and all(v.strip() for v in value) else "must name at least one column"


def _check_label_names(value: dict[str, str]) -> str | None:
    names = list(value.values())
    if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
        return "needs distinct, non-empty names"
    return None


def _check_label_separator(value: str) -> str | None:
    return None if value and value not in ("\n", "\r") else "must be a non-empty string, not a line end"


def parse_label_names(text: str) -> dict[str, str]:
    """`0=negative,1=positive` -> {"0": "negative", "1": "positive"} (the command line's --label-names)."""
    names: dict[str, str] = {}
    for item in text.split(","):
        label, sep, name = item.partition("=")
        if not sep or not label.strip() or label.strip() in names:
            raise ValueError(f"expected distinct LABEL=NAME pairs separated by commas, got {item!r}")
        names[label.strip()] = name.strip()
    return names


def parse_class_weight(text: str) -> str | dict[str, float]:
    """`balanced`, or `pos=5,neg=1` -> {"pos": 5.0, "neg": 1.0} (--class-weight); ValueError says what is
    wrong. A name is what follows the last "=" back to the comma, so a label may hold "=" but not ","."""
    if text.strip() == "balanced":
        return "balanced"
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.rpartition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not name or name in weights or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"expected balanced or distinct NAME=WEIGHT pairs with positive weights, got {item!r}")
        weights[name] = weight
    return weights


def _check_class_weight(value: str) -> str | None:
    try:
        parse_class_weight(value)
    except ValueError as e:
        return str(e).replace("expected", "must be", 1).split(", got ")[0]
    return None


def _device(**kw: Any) -> Any:
    return setting("auto", help="auto (CUDA when present), cpu, cuda or cuda:N", check=_check_device,
                   metavar="DEVICE", **kw)


def _threads(**kw: Any) -> Any:
    return setting(None, help="CPU threads (default: as many as the cores other processes leave free, followed as "
                              "it runs)", min=1, max=MAX_THREADS, show_default=False, **kw)


# --- the settings -----------------------------------------------------------------------------------


class Settings:
    """What every settings dataclass can do; SECTION names it in messages ("data.valid_split")."""

    SECTION = ""

    def names(self, namer: Namer | None = None) -> Callable[[str], str]:
        namer = namer or python_name
        return lambda name: namer(self.SECTION, name)

    def check_fields(self, namer: Namer | None = None) -> None:
        """Every field's type, range and choices."""
        name = self.names(namer)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_value(f, kinds(type(self))[f.name], getattr(self, f.name), name(f.name))

    def check_rules(self, name: Callable[[str], str]) -> None:
        """Rules between fields (the few that are code)."""

    def validate(self, namer: Namer | None = None) -> None:
        self.check_fields(namer)
        self.check_rules(self.names(namer))

    def checked(self, values: Mapping[str, Any], namer: Namer | None = None) -> dict[str, Any]:
        """`values` (field -> value) checked and converted; an unknown field is an error."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"'{self.SECTION}' must be an object, got {type(values).__name__}")
        unknown = unknown_fields(type(self), values)
        if unknown:
            raise ConfigError(f"unknown {self.SECTION} settings {unknown}")
        name, klass = self.names(namer), type(self)
        return {k: check_value(field_of(klass, k), kinds(klass)[k], v, name(k)) for k, v in values.items()}

    def update(self, values: Mapping[str, Any], namer: Namer | None = None) -> None:
        """Set `values` (field -> value), each checked first; nothing is set when one is wrong."""
        for k, v in self.checked(values, namer).items():
            setattr(self, k, v)


@dataclass
class DataConfig(Settings):
    SECTION = "data"

    dataset: str | None = setting(None, choices=DATASETS, help="a built-in dataset", show_default=False)
    data_dir: str | None = setting(None, path=True, metavar="DIR", show_default=False,
                                   help="directory with the dataset's train/test CSVs (default: $RNNTEXT_DATA_DIR, "
                                        "else download and cache)")
    train: str | None = setting(None, path=True, metavar="FILE", show_default=False,
                                help="your own training file: CSV, TSV or JSONL, optionally .gz; Parquet; Feather / "
                                     "Arrow (pip install 'rnntext[data]')")
    test: str | None = setting(None, path=True, metavar="FILE", show_default=False,
                               help="test file, same format as --train (with --dataset ag_news: replaces its test "
                                    "split; labels are its class names)")
    valid: str | None = setting(None, path=True, metavar="FILE", show_default=False,
                                help="validation file (default: --valid-split of train)")
    text_columns: list[str] = setting(factory=lambda: ["text"], flag="--text-column", metavar="NAME",
                                      check=_check_text_columns, help="text column (repeat to join several)")
    label_column: str = setting("label", metavar="NAME", help="label column")
    # the files' labels -> names (e.g. {"0": "negative"}), in class order
    label_names: dict[str, str] | None = setting(None, parse=parse_label_names, metavar="LABEL=NAME,...",
                                                 check=_check_label_names, show_default=False,
                                                 help="name the files' labels, in class order, e.g. "
                                                      "0=negative,1=positive")
    # labels as sets (rnntext.data.labels, rnntext.training.multilabel): the model's outputs are read one by one
    multi_label: bool = setting(False, help="each text has a set of labels (one or several): a list in JSONL, "
                                            "or one CSV/TSV column split on --label-separator; sigmoid outputs, "
                                            "binary cross-entropy, one threshold per label chosen on validation")
    label_separator: str = setting(",", metavar="SEP", check=_check_label_separator,
                                   help="with --multi-label: what separates the labels in one column")
    valid_split: float = setting(0.05, min=0.0, lt=1.0,
                                 help="fraction of train held out for validation (stratified: that fraction of "
                                      "each class)")
    skip_bad_rows: bool = setting(False, help="skip and count malformed rows instead of stopping")
    # corpora larger than memory (rnntext.data.store): read, counted and encoded in chunks into memory-mapped files
    token_store: str | None = setting(None, path=True, metavar="DIR", show_default=False,
                                      help="stream the data through an on-disk token store in DIR (for corpora "
                                           "larger than memory; the same results as without): built once, reused "
                                           "while the files and data settings stay the same")
    quoting: str = setting("csv", choices=QUOTINGS, help='CSV/TSV: "quoted" fields (csv) or quotes as ordinary '
                                                         "characters (none: raw TSV)")
    tokenizer: str = setting("basic_english", choices=TOKENIZER_NAMES,
                             help="basic_english (lowercase, punctuation split off) or whitespace")
    ngrams: int = setting(1, min=1, max=MAX_NGRAMS, help="append 2..N-grams to the tokens")
    # words seen once are mostly names and typos: halves the vocabulary, +0.4% (tune.py)
    min_freq: int = setting(2, min=1, help="minimum token count to enter the vocabulary")
    max_vocab: int | None = setting(None, min=3, show_default=False,
                                    help="vocabulary size cap, <pad> and <unk> included (>= 3)")
    # what a word missing from the vocabulary reads as, in training and prediction alike (data/vocab.py): on a few
    # thousand short texts most words are rare, and "stem" gives an unseen "successfully" the vector of
    # "successful" (issue 15: docs/guides/own-data.md#what-we-tried). A run saved before this setting reads "unk"
    unseen_words: str = setting("stem", choices=UNSEEN_WORDS,
                                help="a word missing from the vocabulary (never seen in training, or fewer than "
                                     "--min-freq times): <unk> (unk), or the vocabulary's most frequent word with "
                                     "the same English stem (stem: Snowball; for other languages, unk), in training "
                                     "and prediction alike")
    # the memory bound on one text's length: a recurrent model's training keeps ~40 KB per time step whatever the
    # batch (CPU autograd, default model), so a text of 50k tokens took 2 GB by itself; AG News's are <= 187.
    # 192 (issue 15): long texts cost time in proportion to the words read; 20 Newsgroups (median 234 tokens) reads
    # 17% fewer than at 256 (docs/guides/own-data.md#long-texts). Not less: every text of AG News (the longest is
    # 187 tokens) stays whole, where 128 cut 23 and moved its result; 192 keeps every batch at 128 rows
    max_len: int | None = setting(DEFAULT_MAX_LEN, min=1, metavar="N",
                                  help="words kept per text: a longer text is cut to its first N, in training and "
                                       "prediction alike (the memory bound of one text; unset, --max-batch-tokens "
                                       "cuts)")
    # pretrained word vectors (GloVe, word2vec, fastText .vec); read when training only
    embeddings: str | None = setting(None, path=True, metavar="PATH", group="vectors", show_default=False,
                                     help="GloVe / word2vec (text or .bin) / fastText .vec file, optionally .gz or "
                                          "in a .zip (ARCHIVE.zip/MEMBER); sets --embed-dim from the file")
    embeddings_lowercase: bool = setting(True, group="vectors", help="a word missing from the file takes the vector "
                                                                     "of its lowercase twin")
    vocab_from_embeddings: bool = setting(False, group="vectors",
                                          help="add the vector file's most frequent words to the vocabulary")
    vocab_from_embeddings_max: int = setting(50_000, min=1, group="vectors", metavar="N",
                                             help="consider the first N words of the vector file; --max-vocab caps "
                                                  "the total")
    # an encoder directory of `rnntext pretrain` (rnntext.data.encoder_dir): its vocabulary, as pretrained (not
    # extended: a word the language model never saw would start from a random vector, which the encoder's
    # recurrent weights were not trained to read), and its embedding and recurrent weights (the trainer)
    encoder: str | None = setting(None, path=True, metavar="ENCODER_DIR", show_default=False,
                                  help="fine-tune from a pretrained encoder (`rnntext pretrain`): its vocabulary, "
                                       "embedding and recurrent weights; --model and its sizes must be the encoder's")

    def check_rules(self, name: Callable[[str], str]) -> None:
        if self.label_names is not None and self.dataset is not None:
            raise ConfigError(f"{name('label_names')} is for your own files; AG News labels are named already")
        if self.vocab_from_embeddings and not self.embeddings:
            raise ConfigError(f"{name('vocab_from_embeddings')} needs {name('embeddings')} (a vector file)")
        if self.multi_label and self.dataset is not None:
            raise ConfigError(f"{name('multi_label')} is for your own files (--train); AG News has one label per text")
        if self.encoder and self.embeddings:
            raise ConfigError(f"{name('encoder')} and {name('embeddings')} both give the embedding its start; "
                              "choose one")


@dataclass
class ModelConfig(Settings):
    SECTION = "model"

    # rnn | lstm | gru | bag | ...: the names of rnntext.model.registry, which checks it when building the model
    model: str = setting("gru", help="a recurrent cell (rnn, lstm, gru), or bag (EmbeddingBag baseline), cnn, ...")
    embed_dim: int = setting(128, min=1, max=MAX_DIM, help="embedding size")
    hidden_dim: int = setting(128, min=1, max=MAX_DIM, help="hidden state size")
    num_layers: int = setting(1, min=1, max=MAX_LAYERS, help="stacked recurrent layers")
    bidirectional: bool = setting(True, help="read the texts in both directions")
    dropout: float = setting(0.3, min=0.0, lt=1.0, help="dropout between layers and before the output layer")
    embed_dropout: float = setting(0.3, min=0.0, lt=1.0, help="dropout on the embeddings")
    pooling: str = setting("meanmax", choices=POOLINGS, help="how the outputs become one vector")
    packed: bool = setting(False, help="run on packed sequences (pack_padded_sequence) instead of masked padding; on "
                                       "a CPU this runs as masked padding (same outputs, faster) unless --pack-on-cpu")
    # a packed model runs as masked padding on a CPU (same outputs, ~2x faster)
    pack_on_cpu: bool = setting(False, help="with --packed: pack on the CPU too (slower; for comparison)")
    vocab_size: int = setting(0, min=0, cli=False)  # filled in from the vocabulary
    num_classes: int = setting(0, min=0, cli=False)  # filled in from the labels
    padding_idx: int = setting(0, min=0, cli=False)
    # the wide part (model/wide.py): hashed word n-grams as fastText uses them, joined to the model's output
    wide_ngrams: int = setting(0, min=0, max=MAX_NGRAMS, metavar="N",
                               help="add a wide part: the mean of vectors of the text's word 1..N-grams (hashed), "
                                    "joined to the model's output (0: none)")
    wide_buckets: int = setting(1 << 18, min=1, max=MAX_WIDE_BUCKETS, metavar="N",
                                help="hash buckets of the wide part's 2..N-grams (table rows besides the vocabulary)")
    wide_dim: int = setting(16, min=1, max=MAX_DIM, help="the wide part's vector size")
    wide_join: str = setting("sum", choices=WIDE_JOINS,
                             help="sum: the wide part's class scores added to the model's (the same as joining the "
                                  "features before the output layer); mix: the class probabilities averaged")
    # members (model/members.py): several models trained side by side in one run, their logits averaged
    members: int | None = setting(None, min=1, max=MAX_MEMBERS, metavar="K", show_default=False,
                                  help="models trained side by side in the run, predicting together (an ensemble "
                                       "in one run); default: as many as the training budget allows, 1 to "
                                       f"{AUTO_MAX_MEMBERS} (small data gets several, see docs/guides/own-data.md)")
    # keep pretrained vectors (--embeddings) fixed during training
    freeze_embeddings: bool = setting(False, group="vectors", help="keep the pretrained vectors fixed "
                                                                   "(default: tune them)", show_default=False)

    def check_rules(self, name: Callable[[str], str]) -> None:
        if self.vocab_size and self.padding_idx >= self.vocab_size:  # a saved run's: an index into its vocabulary
            raise ConfigError(f"{name('padding_idx')} must be < {name('vocab_size')} ({self.vocab_size}), "
                              f"got {self.padding_idx}")


@dataclass
class TrainConfig(Settings):
    SECTION = "train"

    # None: set by min_steps (training/stopping.py), so that small datasets get the steps a large one gets
    epochs: int | None = setting(None, min=1, show_default=False, metavar="N",
                                 help=f"passes over the training data (default: as many as make --min-steps "
                                      f"optimiser steps, {AUTO_MIN_EPOCHS} to {AUTO_MAX_EPOCHS}, fewer for long texts)")
    min_steps: int = setting(700, min=1, metavar="N",
                             help="without --epochs: train enough epochs for at least N optimiser steps")
    patience: int | None = setting(None, min=1, metavar="N", show_default=False,
                                   help="stop once N epochs in a row have not beaten the best epoch on validation "
                                        "(--select-by); the best epoch's weights are kept (default: no early stop)")
    select_by: str = setting("accuracy", choices=SELECT_BY,
                             help="the validation metric that picks the best epoch (whose weights are kept) and "
                                  "drives --patience")
    # with lr 6e-3: as accurate as 64 / 3e-3 and ~1.5x faster on a CPU (tune.py)
    batch_size: int = setting(128, min=1, help="texts per batch")
    # the memory bound of training and evaluation: 128 rows of 20 Newsgroups' longest texts took >24 GB
    # without it; AG News's batches (128 x <= 187 tokens) are all well inside it
    max_batch_tokens: int = setting(MAX_BATCH_TOKENS, min=1, metavar="N",
                                    help="padded tokens (rows x longest text) per batch, in training, evaluation "
                                         "and prediction: batches of long texts get fewer rows, and a text longer "
                                         "than N tokens is cut to its first N")
    lr: float = setting(6e-3, gt=0.0, max=MAX_LR, help="peak learning rate")
    schedule: str = setting("onecycle", choices=SCHEDULES, help="learning-rate schedule")
    weight_decay: float = setting(0.1, min=0.0, max=MAX_WEIGHT_DECAY, help="decoupled weight decay (AdamW)")
    clip: float | None = setting(1.0, gt=0.0, help="gradient norm clip")
    seed: int = setting(0, min=0, max=INT64_MAX, help="random seed (weights, shuffling, validation split)")
    class_weight: str | None = setting(None, check=_check_class_weight, metavar="balanced|NAME=W,...",
                                       show_default=False,
                                       help="weigh each class's rows in the training loss: balanced (n_rows / "
                                            "(n_classes * class rows), as scikit-learn) or NAME=WEIGHT pairs "
                                            "(classes left out weigh 1)")
    device: str = _device()
    epoch_size: int | None = setting(None, min=1, show_default=False, metavar="N",
                                     help="stop each epoch after N batches (the tutorial's early cut-off)")
    bucket: bool = setting(True, help="length-bucketed batches (--no-bucket: plain shuffled batches)")
    threads: int | None = _threads()  # torch intra-op threads (None: all cores)
    checkpoint_every: int | None = setting(None, min=1, metavar="N", show_default=False,
                                           help="also checkpoint every N steps (a checkpoint is always written at "
                                                "the end of each epoch)")
    dist_timeout: float = setting(300.0, gt=0.0, max=1e9, metavar="SECONDS",
                                  help="seconds a distributed process waits for a dead or stuck peer before failing")
    lazy_embedding: bool = setting(False, help="on a CPU, update only the embedding rows of each batch's words (faster "
                                               "with small batches and large vocabularies; changes the optimiser's "
                                               "results)")
    # CPU, >= 2 threads: the embedding's update runs on a second thread beside the next batch (same results,
    # training/optim.py). None: where it was measured faster, batches of <= 32 rows and a table of >= 1M weights
    overlap_update: bool | None = setting(None, show_default=False,
                                          help="on a CPU with 2+ threads, update the embedding table on a second "
                                               "thread while the next batch trains: the same results, faster with "
                                               "small batches and large vocabularies, slower with large batches "
                                               "(default: on for batches of <= 32 rows and tables of >= 1M weights)")


SECTIONS: dict[str, type[Settings]] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    format_version: int = FORMAT_VERSION

    def validate(self, namer: Namer | None = None) -> None:
        """Every setting's type and range, then the rules between them. `namer` says how a message names a
        setting (default: data.valid_split; the command line passes one that says --valid-split)."""
        for section in SECTIONS:
            getattr(self, section).check_fields(namer)
        for section in SECTIONS:
            getattr(self, section).check_rules(getattr(self, section).names(namer))
        name = namer or python_name
        if self.model.freeze_embeddings and not self.data.embeddings:
            raise ConfigError(f"{name('model', 'freeze_embeddings')} needs {name('data', 'embeddings')} "
                              "(pretrained vectors to freeze)")
        if self.data.multi_label and self.train.class_weight is not None:
            raise ConfigError(f"{name('train', 'class_weight')} weighs the classes of single-label data; it does "
                              f"not apply with {name('data', 'multi_label')}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None, base: RunConfig | None = None) -> RunConfig:
        """A RunConfig from config.json's layout ({"data": {...}, "model": {...}, "train": {...}}; sections and
        fields may be left out), on top of `base` (default: the defaults). Every value is checked against its
        setting's type and range; a ConfigError starts with `source` (a file name) when given. The rules
        between settings are for `validate()`."""

        def fail(message: str) -> ConfigError:
            return ConfigError(f"{source}: {message}" if source else message)

        if not isinstance(d, Mapping):
            raise fail(f"expected an object with data, model and train sections, got {type(d).__name__}")
        version = d.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise fail(f"format_version must be an integer, got {_show(version)}")
        if version > FORMAT_VERSION:
            raise fail(f"config format version {version} is newer than this rnntext understands "
                       f"({FORMAT_VERSION}); upgrade rnntext")
        unknown = sorted(set(d) - {*SECTIONS, "format_version"})
        if unknown:
            raise fail(f"unknown top-level keys {unknown}; expected data, model, train (and format_version)")
        cfg = copy.deepcopy(base) if base is not None else cls()
        for section in SECTIONS:
            try:
                getattr(cfg, section).update(d.get(section, {}))
            except ConfigError as e:
                raise fail(str(e)) from None
        cfg.format_version = version
        return cfg

    @classmethod
    def from_saved(cls, d: Any, source: str | None = None) -> RunConfig:
        """from_dict for a config a run saved (config.json, a checkpoint's manifest): a setting added after the
        run was saved takes the value that was in effect then (SAVED_BEFORE), not today's default."""
        if isinstance(d, Mapping):
            d = dict(d)
            for (section, name), then in SAVED_BEFORE.items():
                part = d.get(section)
                if isinstance(part, Mapping) and name not in part:
                    d[section] = {**part, name: then}
        return cls.from_dict(d, source)

    def with_overrides(self, overrides: Mapping[str, Any], source: str | None = None) -> RunConfig:
        """A copy with dotted settings replaced, each checked: `cfg.with_overrides({"model.hidden_dim": 32})`."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section, dot, name = key.partition(".")
            if not dot or section not in SECTIONS:
                raise ConfigError(f"{key!r}: expected SECTION.SETTING with SECTION one of {', '.join(SECTIONS)}")
            nested.setdefault(section, {})[name] = value
        return RunConfig.from_dict(nested, source, base=self)


# settings added after runs were first saved -> the value a run saved without them had in effect
SAVED_BEFORE: dict[tuple[str, str], Any] = {("data", "unseen_words"): "unk"}


def unknown_fields(klass: type, values: Mapping[str, Any]) -> list[str]:
    """Keys of `values` that are not fields of the dataclass `klass`, sorted."""
    return sorted(set(values) - {f.name for f in dataclasses.fields(klass)})


# --- other commands' settings -------------------------------------------------------------------------


@dataclass
class ServeConfig(Settings):
    """`rnntext serve`: where to listen, the model's device and threads, the request limits and batching."""

    SECTION = "serve"

    host: str = setting("127.0.0.1", metavar="HOST", help="address to listen on (127.0.0.1: this machine only)")
    port: int = setting(8000, min=1, max=65535, help="TCP port")
    device: str = _device()
    threads: int | None = _threads()
    max_texts: int = setting(256, min=1, help="texts per request")
    max_chars: int = setting(20_000, min=1, help="characters per text")
    max_body_bytes: int = setting(2_000_000, min=1, help="request body size")
    batch_wait_ms: float = setting(2.0, min=0.0, max=60_000.0, help="how long a batch waits for more requests")
    max_batch: int = setting(256, min=1, help="texts per model call when batching requests")
    max_queue: int = setting(1024, min=1, metavar="N", help="texts waiting for the model at most; a request "
                                                             "past that is answered 503 with Retry-After")
    header_timeout: float = setting(10.0, gt=0.0, max=3600.0, metavar="SECONDS",
                                    help="seconds a connection may take to send a request's headers (then "
                                         "closed, with 408 if it had started)")
    body_timeout: float = setting(30.0, gt=0.0, max=3600.0, metavar="SECONDS",
                                  help="seconds a request may take to send its body (then 408)")
    keep_alive_timeout: float = setting(5.0, gt=0.0, max=3600.0, metavar="SECONDS",
                                        help="seconds an idle connection stays open between requests")
    drain_timeout: float = setting(30.0, min=0.0, max=3600.0, metavar="SECONDS",
                                   help="on SIGTERM or Ctrl-C: seconds the requests in flight have to finish")
    log_level: str = setting("info", choices=LOG_LEVELS, help="uvicorn's log level")

    def check_rules(self, name: Callable[[str], str]) -> None:
        if self.max_queue < self.max_texts:
            raise ConfigError(f"{name('max_queue')} ({self.max_queue}) must be >= {name('max_texts')} "
                              f"({self.max_texts}): a request of {name('max_texts')} texts must fit in the queue")


@dataclass
class InferenceConfig(Settings):
    """`predict`, `evaluate` and `serve`: what runs the model."""

    SECTION = "inference"

    backend: str = setting("torch", choices=("torch", "onnx"),
                           help="torch: RUN_DIR is a run directory; onnx: RUN_DIR is an export directory "
                                "(`rnntext export`), run by onnxruntime without torch (pip install 'rnntext[onnx]')")
    precision: str = setting("fp32", choices=("fp32", "bf16"),
                             help="bf16: a GRU model on a CPU runs its recurrence in bfloat16 (faster on CPUs with "
                                  "AVX512-BF16; probabilities within ~0.01 of fp32's); other models fp32 (torch "
                                  "backend)")
    # training/calibration.py: the temperature fitted on validation after training (RUN_DIR/calibration.json)
    calibration: bool = setting(True, help="apply the run's temperature (fitted on validation after training) to "
                                           "its probabilities; --no-calibration: the raw softmax")
    min_confidence: float | None = setting(None, min=0.0, max=1.0, metavar="P", show_default=False,
                                           help="no label (null; abstain) where the most probable class's "
                                                "probability is below P")


@dataclass
class TrackConfig(Settings):
    """`train` and `tune`: where a run reports its scalars (rnntext.report.tracking). Not part of a run's
    configuration: tracking changes nothing that is trained, so it is not saved in config.json."""

    SECTION = "track"

    tensorboard: str | None = setting(None, path=True, metavar="DIR", show_default=False,
                                      help="write TensorBoard scalars (per step and per epoch) to DIR "
                                           "(needs: pip install 'rnntext[track]')")
    mlflow: str | None = setting(None, metavar="URI", show_default=False,
                                 help="log params, per-epoch metrics and the run directory to this MLflow tracking "
                                      "URI, e.g. file:./mlruns or sqlite:///mlflow.db (needs: pip install "
                                      "'rnntext[track]')")
    mlflow_experiment: str = setting("rnntext", metavar="NAME", help="the MLflow experiment to log to")
    log_every: int = setting(10, min=1, metavar="N",
                             help="per-step scalars every N optimiser steps (means over those steps)")


@dataclass
class TuneConfig(Settings):
    """`rnntext tune`: the study (rnntext.tune). Saved in the tuning directory's tune.json for --resume."""

    SECTION = "tune"

    trials: int = setting(20, min=1, help="trials to finish, completed or pruned (a resumed study counts those "
                                          "finished before it was stopped)")
    timeout: float | None = setting(None, gt=0.0, metavar="SECONDS", show_default=False,
                                    help="start no trial after SECONDS (of this invocation)")
    space: str | None = setting(None, path=True, metavar="FILE", show_default=False,
                                help="a TOML file that changes the default search space (see the tuning guide)")
    sampler_seed: int = setting(0, min=0, max=INT64_MAX, help="seed of the TPE sampler")
    prune: bool = setting(True, help="stop a trial whose validation accuracy after an epoch is below the median of "
                                     "earlier trials' at that epoch (MedianPruner)")
    prune_startup: int = setting(5, min=0, metavar="N", help="trials that finish before any is pruned")
    prune_warmup: int = setting(1, min=1, metavar="EPOCHS", help="epochs every trial runs before it can be pruned")


@dataclass
class PretrainConfig(Settings):
    """`rnntext pretrain`: the language-model pretraining of an encoder (rnntext.training.pretrain). The
    data, model and train sections give the rest (tokenizer, vocabulary, cell and sizes, epochs, lr, ...)."""

    SECTION = "pretrain"

    # the command line's --text FILE [FILE ...] (its own option: nargs)
    text: list[str] = setting(factory=list, cli=False, help="text files: one text per line (optionally .gz), or "
                                                            "CSV/TSV/JSONL with --text-column")
    # pieces, not cuts: a long document is read as several sequences, every token predicted once
    seq_len: int = setting(256, min=2, max=MAX_TEXT_TOKENS, metavar="N",
                           help="a text longer than N tokens is read as pieces of N tokens")
    valid_fraction: float = setting(0.05, gt=0.0, lt=1.0, metavar="X",
                                    help="fraction of the texts held out to report the perplexity each epoch")
    # the output layer is most of a language model's cost (vocabulary x embedding per word, the recurrent layer
    # ~6 x hidden^2): on 15k SST-2 phrases (vocabulary 8,258, 2 cores) 1,024 samples trained ~5x more words
    # per second, and 3 sampled epochs reached a lower held-out perplexity in less time than 1 full one
    softmax_samples: int = setting(1024, min=0, metavar="N",
                                   help="train with a sampled softmax over each batch's target words and N random "
                                        "words instead of the whole vocabulary (0: the full softmax)")
    tie_weights: bool = setting(True, help="the output layer shares the embedding's weights (Press & Wolf 2017; a "
                                           "projection where --hidden-dim differs from --embed-dim)")


@dataclass
class VectorOptions(Settings):
    """`rnntext vectors`: training word vectors with gensim (rnntext.data.train_vectors)."""

    SECTION = "vectors"

    dim: int = setting(100, min=1, max=MAX_DIM, help="vector size")
    epochs: int = setting(5, min=1, help="passes over the text")
    min_count: int = setting(2, min=1, help="ignore words seen fewer times")
    window: int = setting(5, min=1, help="context window")
    # skipgram | cbow (gensim Word2Vec) | fasttext (gensim FastText, skip-gram)
    algorithm: str = setting("skipgram", choices=ALGORITHMS,
                             help="gensim Word2Vec skip-gram or CBOW, or gensim FastText")
    negative: int = setting(5, min=1, help="negative samples per word")
    threads: int | None = setting(None, min=1, max=MAX_THREADS, show_default=False,
                                  help="worker threads (default: all cores)")
    seed: int = setting(0, min=0, max=INT64_MAX, help="random seed")
    tokenizer: str = setting("basic_english", choices=TOKENIZER_NAMES,
                             help="use the classifier's tokenizer so the words match its vocabulary")


# --- config files -----------------------------------------------------------------------------------------


def read_config_file(path: str | Path, what: str = "config") -> Any:
    """The parsed content of a JSON or TOML file (by suffix: .toml is TOML, anything else JSON). Every
    problem is a one-line ConfigError that starts with the file name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what} file ({e})") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ConfigError(f"{path}: TOML needs Python 3.11+ or the tomli package; "
                                  "or write the file as JSON") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None


def load_run_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from a JSON or TOML file with config.json's sections (partial is fine), on top of `base`."""
    return RunConfig.from_dict(read_config_file(path), str(path), base=base)
