"""Settings are declared once (config.py) and everything derives from the declaration: the command
line's options, validation, loading config.json / `train --config FILE`, presets and compare's entries.
Messages name a setting the way the caller gave it: --valid-split, data.valid_split, run.toml: ...
None of these tests trains."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnntext.cli import COMPARE_OVERRIDES, build_parser, config_from_args, main
from rnntext.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    ServeConfig,
    TrainConfig,
    VectorOptions,
    flag_of,
    kinds,
    load_run_config,
)
from rnntext.errors import ConfigError
from rnntext.presets import PRESETS, preset_config

SETTINGS = (DataConfig, ModelConfig, TrainConfig, ServeConfig, VectorOptions)

# The defaults as they were before the settings were declared with metadata: the default run, and every
# config.json written so far, depend on them. Since then the memory bound added two (issue 16): data.max_len
# 4096 (was unlimited) and train.max_batch_tokens 65536; neither changes a batch or a token of AG News. Issue
# 15: train.epochs unset (as many as make train.min_steps 700 steps, at least 5: AG News's 5 x 149 as before),
# data.max_len 192 (AG News's longest text is 187 tokens: unchanged).
DEFAULTS = {
    "data": {"dataset": None, "data_dir": None, "train": None, "test": None, "valid": None, "text_columns": ["text"],
             "label_column": "label", "label_names": None, "multi_label": False, "label_separator": ",",
             "valid_split": 0.05, "skip_bad_rows": False,
             "token_store": None, "quoting": "csv", "tokenizer": "basic_english", "ngrams": 1, "min_freq": 2,
             "max_vocab": None, "unseen_words": "stem",
             "max_len": 192, "embeddings": None, "embeddings_lowercase": True, "vocab_from_embeddings": False,
             "vocab_from_embeddings_max": 50_000, "encoder": None},
    "model": {"model": "gru", "embed_dim": 128, "hidden_dim": 128, "num_layers": 1, "bidirectional": True,
              "dropout": 0.3, "embed_dropout": 0.3, "pooling": "meanmax", "packed": False, "pack_on_cpu": False,
              "vocab_size": 0, "num_classes": 0, "padding_idx": 0, "freeze_embeddings": False,
              "wide_ngrams": 0, "wide_buckets": 262144, "wide_dim": 16, "wide_join": "sum",
              "members": None},
    "train": {"epochs": None, "min_steps": 700, "patience": None, "select_by": "accuracy", "batch_size": 128,
              "lr": 6e-3, "schedule": "onecycle", "weight_decay": 0.1, "clip": 1.0,
              "seed": 0, "device": "auto", "epoch_size": None, "bucket": True, "threads": None,
              "checkpoint_every": None, "dist_timeout": 300.0, "lazy_embedding": False, "overlap_update": None,
              "max_batch_tokens": 65536, "class_weight": None},
    "format_version": 1,
}


def _cfg(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnntext: error: "), err
    return err.strip().removeprefix("rnntext: error: ")


# --- one declaration per setting -------------------------------------------------------------------------


def test_defaults_and_config_json_layout_are_unchanged() -> None:
    assert RunConfig().to_dict() == DEFAULTS
    assert RunConfig.from_dict(json.loads(json.dumps(DEFAULTS))) == RunConfig()
    RunConfig().validate()
    for klass in SETTINGS:
        klass().validate()


def test_every_setting_is_declared_with_a_type_and_help() -> None:
    for klass in SETTINGS:
        for f in dataclasses.fields(klass):
            assert f.name in kinds(klass), f"{klass.__name__}.{f.name}"
            if f.metadata["cli"]:
                assert f.metadata["help"], f"{klass.__name__}.{f.name} has no help text"


def test_the_train_parser_is_generated_from_the_declarations() -> None:
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    options = {s for a in train._actions for s in a.option_strings}
    for klass in (DataConfig, ModelConfig, TrainConfig):
        for f in dataclasses.fields(klass):
            flag = flag_of(klass, f.name)
            assert (flag in options) == f.metadata["cli"], flag
            if kinds(klass)[f.name].base is bool and f.metadata["cli"]:
                assert "--no-" + flag[2:] in options
    assert flag_of(DataConfig, "text_columns") == "--text-column"
    # the commands' own options are hand-written
    assert {"--out", "--resume", "--json", "--ensemble", "--nproc", "--preset", "--config", "-q"} <= options


def test_model_choices_come_from_the_registry() -> None:
    from rnntext.model.registry import model_names

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    action = next(a for a in train._actions if "--model" in a.option_strings)
    assert list(action.choices) == list(model_names())


def test_constants_agree_with_the_modules_that_use_them() -> None:
    from rnntext.data.tokenizer import TOKENIZERS
    from rnntext.data.vocab import UNSEEN
    from rnntext.report.compare import OVERRIDABLE

    assert tuple(TOKENIZERS) == DataConfig.__dataclass_fields__["tokenizer"].metadata["choices"]
    assert UNSEEN == DataConfig.__dataclass_fields__["unseen_words"].metadata["choices"]
    assert tuple(TOKENIZERS) == VectorOptions.__dataclass_fields__["tokenizer"].metadata["choices"]
    assert COMPARE_OVERRIDES == OVERRIDABLE


def test_a_saved_config_without_a_later_setting_reads_as_it_was_trained() -> None:
    """A run saved before data.unseen_words read unseen words as <unk>: loading it keeps that, where a config
    file a person writes gets today's default."""
    saved = RunConfig().to_dict()
    del saved["data"]["unseen_words"]
    assert RunConfig.from_saved(saved).data.unseen_words == "unk"
    assert RunConfig.from_dict(saved).data.unseen_words == "stem"
    assert RunConfig.from_saved(RunConfig().to_dict()).data.unseen_words == "stem"


def test_config_and_parser_import_no_torch() -> None:
    code = ("import sys, rnntext.config, rnntext.cli; rnntext.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_options_reach_the_config() -> None:
    cfg = _cfg("--train", "t.csv", "--text-column", "a", "--text-column", "b", "--label-names", "0=no,1=yes",
               "--no-bidirectional", "--no-bucket", "--num-layers", "2", "--lr", "0.01", "--clip", "none",
               "--device", "cuda:1", "--quoting", "none", "--dist-timeout", "60")
    assert cfg.data.text_columns == ["a", "b"] and cfg.data.label_names == {"0": "no", "1": "yes"}
    assert cfg.data.train == str(Path("t.csv").resolve()) and cfg.data.dataset is None
    assert (cfg.model.bidirectional, cfg.model.num_layers, cfg.train.bucket) == (False, 2, False)
    assert (cfg.train.lr, cfg.train.clip, cfg.train.device, cfg.train.dist_timeout) == (0.01, None, "cuda:1", 60.0)
    assert _cfg("--train", "t.csv", "--bucket").train.bucket is True
    assert _cfg("--data-dir", "x").data.dataset == "ag_news"
    # an option not given keeps the default: the default run is built from the declarations' defaults
    plain = _cfg("--dataset", "ag_news")
    assert plain.model == ModelConfig() and plain.train == TrainConfig()


# --- validation: types, ranges, and names as the caller gave them ----------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--clip", "nan"], "--clip must be a finite number, got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--valid-split", "2"], "--valid-split must be in [0, 1), got 2.0"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    (["--num-layers", "100000"], "--num-layers must be <= 64, got 100000"),
    (["--ngrams", "1000000"], "--ngrams must be <= 8, got 1000000"),
    (["--embed-dim", "100000"], "--embed-dim must be <= 65536, got 100000"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--seed", str(2**63)], f"--seed must be <= {2**63 - 1}, got {2**63}"),
    (["--epochs", str(10**30)], f"--epochs must be <= {2**63 - 1}"),
    (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    (["--device", "mps"], "--device must be auto, cpu, cuda or cuda:N, got 'mps'"),
    (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    (["--threads", "100000"], "--threads must be <= 1024, got 100000"),
    (["--max-vocab", "2"], "--max-vocab must be >= 3, got 2"),
    (["--label-names", "0=a,1=a"], '--label-names needs distinct, non-empty names, got {"0": "a", "1": "a"}'),
    (["--vocab-from-embeddings"], "--vocab-from-embeddings needs --embeddings"),
    (["--freeze-embeddings"], "--freeze-embeddings needs --embeddings"),
    (["--dist-timeout", "1e300"], "--dist-timeout must be <= 1000000000, got 1e+300"),
])
def test_command_line_errors_name_the_option(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _cli_error(["train", "--train", "t.csv", *argv], capsys)


def test_argparse_rejects_what_is_not_a_number_or_a_choice(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
                          (["--model", "transformer"], "argument --model: invalid choice: 'transformer'"),
                          (["--pooling", "sum"], "argument --pooling: invalid choice: 'sum'")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", *argv])
        assert message in capsys.readouterr().err


def test_other_commands_options_are_checked_by_their_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli_error(["serve", "run", "--port", "70000"], capsys) == "--port must be <= 65535, got 70000"
    assert _cli_error(["serve", "run", "--max-texts", "0"], capsys) == "--max-texts must be >= 1, got 0"
    assert _cli_error(["serve", "run", "--batch-wait-ms", "inf"], capsys) == \
        "--batch-wait-ms must be a finite number, got inf"
    assert _cli_error(["vectors", "--out", "v.vec", "--dim", "0"], capsys) == "--dim must be >= 1, got 0"
    assert _cli_error(["predict", "run", "--device", "tpu", "hi"], capsys) == \
        "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"
    assert _cli_error(["evaluate", "run", "--threads", "0"], capsys) == "--threads must be >= 1, got 0"
    assert _cli_error(["compare", "--out", "o", "--seed", "-3"], capsys) == "--seed must be >= 0, got -3"


def test_python_callers_are_told_the_field_names() -> None:
    with pytest.raises(ConfigError, match=r"^data\.valid_split must be in \[0, 1\), got 2\.0$"):
        RunConfig(data=DataConfig(valid_split=2.0)).validate()
    with pytest.raises(ConfigError, match=r"^model\.embed_dim must be an integer, got 128\.0$"):
        RunConfig(model=ModelConfig(embed_dim=128.0)).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number, got nan$"):
        TrainConfig(lr=float("nan")).validate()
    with pytest.raises(ConfigError, match=r"^train\.epochs must be an integer, got true$"):
        TrainConfig(epochs=True).validate()
    with pytest.raises(ConfigError, match=r"^data\.vocab_from_embeddings needs data\.embeddings"):
        DataConfig(vocab_from_embeddings=True).validate()
    with pytest.raises(ConfigError, match=r"^model\.freeze_embeddings needs data\.embeddings"):
        RunConfig(model=ModelConfig(freeze_embeddings=True)).validate()
    with pytest.raises(ConfigError, match=r"^serve\.port must be >= 1, got 0$"):
        ServeConfig(port=0).validate()
    with pytest.raises(ConfigError, match=r"^vectors\.algorithm must be one of skipgram, cbow, fasttext"):
        VectorOptions(algorithm="glove").validate()


@pytest.mark.parametrize(("d", "message"), [
    ({"model": {"embed_dim": 128.0}}, "config.json: model.embed_dim must be an integer, got 128.0"),
    ({"model": {"hidden_dim": 1e400}}, "config.json: model.hidden_dim must be an integer, got inf"),
    ({"model": {"num_layers": float("nan")}}, "config.json: model.num_layers must be an integer, got nan"),
    ({"model": {"padding_idx": "x"}}, "config.json: model.padding_idx must be an integer, got 'x'"),
    ({"model": {"bidirectional": "no"}}, "config.json: model.bidirectional must be true or false, got 'no'"),
    ({"data": {"label_names": []}}, "config.json: data.label_names must be an object of strings, got []"),
    ({"data": {"label_names": {}}}, "config.json: data.label_names needs distinct, non-empty names, got {}"),
    ({"data": {"text_columns": "text"}}, "config.json: data.text_columns must be a list of strings, got 'text'"),
    ({"train": {"lr": -1}}, "config.json: train.lr must be > 0, got -1"),
    ({"train": {"clip": float("inf")}}, "config.json: train.clip must be a finite number, got inf"),
    ({"train": {"device": "mps"}}, "config.json: train.device must be auto, cpu, cuda or cuda:N, got 'mps'"),
    ({"train": {"epochs": 1.5}}, "config.json: train.epochs must be an integer, got 1.5"),
    ({"data": {"quoting": "double"}}, "config.json: data.quoting must be one of csv, none, got 'double'"),
    ({"extra": {}}, "config.json: unknown top-level keys ['extra']"),
    ({"model": {"cell": "gru"}}, "config.json: unknown model settings ['cell']"),
    ({"model": [1]}, "config.json: 'model' must be an object, got list"),
    ({"format_version": 99}, "config.json: config format version 99 is newer than this rnntext understands"),
    ({"format_version": "1"}, "config.json: format_version must be an integer, got '1'"),
    ([], "config.json: expected an object with data, model and train sections, got list"),
])
def test_from_dict_checks_every_value_on_load(d: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d, "config.json")  # type: ignore[arg-type]
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_from_dict_round_trip_and_overrides() -> None:
    cfg = _cfg("--train", "t.csv", "--label-names", "a=x,b=y", "--max-len", "40", "--clip", "2")
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    loaded = RunConfig.from_dict({"train": {"lr": 1, "dist_timeout": 5}})  # a number where a float belongs
    assert loaded.train.lr == 1.0 and isinstance(loaded.train.lr, float) and loaded.train.dist_timeout == 5.0
    over = RunConfig().with_overrides({"model.hidden_dim": 32, "train.epochs": 2})
    assert (over.model.hidden_dim, over.train.epochs, RunConfig().model.hidden_dim) == (32, 2, 128)
    with pytest.raises(ConfigError, match=r"^model\.hidden_dim must be >= 1, got 0$"):
        RunConfig().with_overrides({"model.hidden_dim": 0})
    with pytest.raises(ConfigError, match="expected SECTION.SETTING"):
        RunConfig().with_overrides({"hidden_dim": 3})


# --- presets and config files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_settings(name: str) -> None:
    for section, values in PRESETS[name].items():
        RunConfig().with_overrides({f"{section}.{k}": v for k, v in values.items()})  # each value checked
    cfg = preset_config(name)
    cfg.validate()
    assert cfg == _cfg("--preset", name)
    if name.startswith("tutorial-"):
        assert (cfg.model.embed_dim, cfg.model.hidden_dim, cfg.train.batch_size, cfg.train.clip) == (64, 32, 16, None)
        assert (cfg.data.min_freq, cfg.data.unseen_words) == (1, "unk")  # torchtext's vocabulary


RUN_TOML = """
[data]
train = "train.csv"
text_columns = ["title", "body"]
label_names = { "0" = "no", "1" = "yes" }
max_len = 50

[model]
model = "lstm"
hidden_dim = 64
bidirectional = false

[train]
lr = 0.01
epochs = 3
bucket = false
"""

SAME_FLAGS = ["--train", "train.csv", "--text-column", "title", "--text-column", "body", "--label-names", "0=no,1=yes",
              "--max-len", "50", "--model", "lstm", "--hidden-dim", "64", "--no-bidirectional", "--lr", "0.01",
              "--epochs", "3", "--no-bucket"]


def test_a_config_file_is_the_same_as_its_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(RUN_TOML)
    from_file = _cfg("--config", "run.toml")
    assert from_file == _cfg(*SAME_FLAGS)
    assert from_file.data.train == str(tmp_path / "train.csv")  # relative to the working directory, as a flag
    # JSON, config.json's own layout: a run's config.json trains the same configuration again
    (tmp_path / "run.json").write_text(json.dumps(from_file.to_dict()))
    assert _cfg("--config", "run.json") == from_file
    assert load_run_config(tmp_path / "run.toml").model.model == "lstm"


def test_precedence_defaults_preset_file_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(RUN_TOML)
    cfg = _cfg("--preset", "tutorial-rnn", "--config", "run.toml", "--hidden-dim", "8", "--max-len", "none",
               "--bucket")
    assert cfg.model.hidden_dim == 8  # flag > file
    assert cfg.data.max_len is None and cfg.train.bucket is True  # a flag unsets / flips the file's value
    assert cfg.model.model == "lstm" and cfg.train.lr == 0.01  # file > preset
    assert cfg.model.embed_dim == 64 and cfg.train.batch_size == 16 and cfg.data.min_freq == 1  # preset > defaults
    assert cfg.train.weight_decay == 0.0 and cfg.model.pooling == "mean"
    # --dataset on the command line beats the file's own training file
    (tmp_path / "own.toml").write_text('[data]\ntrain = "train.csv"\n')
    ag = _cfg("--config", "own.toml", "--dataset", "ag_news")
    assert ag.data.dataset == "ag_news" and ag.data.train is None


def test_a_bad_value_in_the_file_names_the_file_and_the_setting(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[train]\nlr = -1\n")
    assert _cli_error(["train", "--config", str(run)], capsys) == f"{run}: train.lr must be > 0, got -1"
    run.write_text("[model]\nembed_dim = 128.0\n")
    assert _cli_error(["train", "--config", str(run)], capsys) == \
        f"{run}: model.embed_dim must be an integer, got 128.0"
    run.write_text("[modle]\nembed_dim = 1\n")
    assert "unknown top-level keys ['modle']" in _cli_error(["train", "--config", str(run)], capsys)
    run.write_text("[model\n")
    assert _cli_error(["train", "--config", str(run)], capsys).startswith(f"{run}: invalid TOML")
    bad_json = tmp_path / "run.json"
    bad_json.write_text('{"train": {"seed": -5}}')
    assert _cli_error(["train", "--config", str(bad_json)], capsys) == f"{bad_json}: train.seed must be >= 0, got -5"
    assert _cli_error(["train", "--config", str(tmp_path / "nope.json")], capsys) == \
        f"{tmp_path / 'nope.json'}: config file not found"
    # a flag's value is named as the flag even with a file
    run.write_text("[train]\nlr = 0.5\n")
    assert _cli_error(["train", "--config", str(run), "--lr", "nan"], capsys) == "--lr must be a finite number, got nan"


def test_resume_takes_no_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(["train", "--resume", "somewhere", "--config", "x.toml", "--no-bucket", "--lr", "1"], capsys)
    assert err.endswith("drop --config, --lr, --no-bucket")
