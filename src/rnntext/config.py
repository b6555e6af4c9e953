"""All settings as dataclasses. `RunConfig` is saved as config.json beside every checkpoint,
so a run can always be rebuilt (model and preprocessing) and explained."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

FORMAT_VERSION = 1

CELLS = ("rnn", "lstm", "gru")
MODELS = (*CELLS, "bag")
POOLINGS = ("last", "mean", "max", "meanmax")
# CSV/TSV quoting: "csv" reads "quoted" fields ("" inside), as spreadsheets and pandas write them; "none"
# takes quotes as ordinary characters, as in raw TSV corpora (GLUE, SNLI) where a text may start with one.
QUOTINGS = ("csv", "none")


@dataclass
class DataConfig:
    dataset: str | None = None  # "ag_news" or None for own files
    data_dir: str | None = None
    train: str | None = None
    test: str | None = None
    valid: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    label_names: dict[str, str] | None = None  # the files' labels -> names (e.g. {"0": "negative"}), in class order
    valid_split: float = 0.05
    skip_bad_rows: bool = False
    quoting: str = "csv"  # one of QUOTINGS
    tokenizer: str = "basic_english"
    ngrams: int = 1
    min_freq: int = 2  # words seen once are mostly names and typos: halves the vocabulary, +0.4% (tune.py)
    max_vocab: int | None = None
    max_len: int | None = None  # tokens kept per text (None: all)
    embeddings: str | None = None  # pretrained word vectors (GloVe, word2vec, fastText .vec); read when training only
    embeddings_lowercase: bool = True  # a word missing from the vectors may take the vector of its lowercase twin
    vocab_from_embeddings: bool = False  # add the vector file's most frequent words to the vocabulary
    vocab_from_embeddings_max: int = 50_000  # how many of the file's first (most frequent) words to consider

    def validate(self) -> None:
        if not 0.0 <= self.valid_split < 1.0:
            raise ConfigError(f"--valid-split must be in [0, 1), got {self.valid_split}")
        if self.label_names is not None:
            if self.dataset is not None:
                raise ConfigError("--label-names is for your own files; AG News labels are named already")
            names = list(self.label_names.values())
            if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
                raise ConfigError(f"--label-names needs distinct, non-empty names, got {', '.join(map(repr, names))}")
        if self.quoting not in QUOTINGS:
            raise ConfigError(f"--quoting must be one of {', '.join(QUOTINGS)}, got {self.quoting!r}")
        if self.ngrams < 1:
            raise ConfigError(f"--ngrams must be >= 1, got {self.ngrams}")
        if self.min_freq < 1:
            raise ConfigError(f"--min-freq must be >= 1, got {self.min_freq}")
        if self.max_vocab is not None and self.max_vocab < 3:
            raise ConfigError(f"--max-vocab must be >= 3 (room for <pad>, <unk> and a word), got {self.max_vocab}")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"--max-len must be >= 1, got {self.max_len}")
        if self.vocab_from_embeddings and not self.embeddings:
            raise ConfigError("--vocab-from-embeddings needs --embeddings PATH")
        if self.vocab_from_embeddings_max < 1:
            raise ConfigError(f"--vocab-from-embeddings-max must be >= 1, got {self.vocab_from_embeddings_max}")


@dataclass
class ModelConfig:
    model: str = "gru"  # rnn | lstm | gru | bag
    embed_dim: int = 128
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3  # between layers and before the output layer
    embed_dropout: float = 0.3
    pooling: str = "meanmax"  # last | mean | max | meanmax
    packed: bool = False
    pack_on_cpu: bool = False  # a packed model runs as masked padding on a CPU (same outputs, ~2x faster)
    vocab_size: int = 0  # filled in from the vocabulary
    num_classes: int = 0  # filled in from the labels
    padding_idx: int = 0
    freeze_embeddings: bool = False  # keep pretrained vectors (--embeddings) fixed during training

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        for name in ("embed_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "embed_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128  # with lr 6e-3: as accurate as 64 / 3e-3 and ~1.5x faster on a CPU (tune.py)
    lr: float = 6e-3
    schedule: str = "onecycle"  # onecycle | constant
    weight_decay: float = 0.1  # decoupled (AdamW)
    clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    epoch_size: int | None = None  # batches per epoch (the tutorial's early cut-off)
    bucket: bool = True  # length-bucketed batches
    threads: int | None = None  # torch intra-op threads (None: all cores)
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints
    dist_timeout: float = 300.0  # seconds a distributed collective waits for a dead or stuck rank
    lazy_embedding: bool = False  # CPU: Adam updates only the embedding rows of a batch's words (training/optim.py)
    # CPU, >= 2 threads: the embedding's update runs on a second thread beside the next batch (same results,
    # training/optim.py). None: where it was measured faster, batches of <= 32 rows and a table of >= 1M weights
    overlap_update: bool | None = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.schedule not in ("onecycle", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose onecycle or constant")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError(f"--clip must be > 0, got {self.clip}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ConfigError(f"--epoch-size must be >= 1, got {self.epoch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if not self.dist_timeout > 0:
            raise ConfigError(f"--dist-timeout must be > 0 seconds, got {self.dist_timeout}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        if self.model.freeze_embeddings and not self.data.embeddings:
            raise ConfigError("--freeze-embeddings needs --embeddings PATH (pretrained vectors to freeze)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"config format version {version} is newer than this rnntext understands "
                f"({FORMAT_VERSION}); upgrade rnntext"
            )
        return cls(
            data=_build(DataConfig, d.get("data", {})),
            model=_build(ModelConfig, d.get("model", {})),
            train=_build(TrainConfig, d.get("train", {})),
            format_version=version,
        )


def _build(klass: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{klass.__name__}: expected an object, got {type(values).__name__}")
    unknown = unknown_fields(klass, values)
    if unknown:
        raise ConfigError(f"{klass.__name__}: unknown keys {unknown}")
    return klass(**values)


def unknown_fields(klass: type, values: dict[str, Any]) -> list[str]:
    """Keys of `values` that are not fields of the dataclass `klass`, sorted."""
    return sorted(set(values) - {f.name for f in dataclasses.fields(klass)})
