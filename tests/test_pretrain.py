"""`rnntext pretrain` and `train --encoder` (issue 15, item 3): the language model learns (held-out
perplexity falls), an encoder directory stands alone, fine-tuning starts from its weights, a resumed
pretraining is bit-identical to an uninterrupted one, and bad options and inputs are one-line errors."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from rnntext.cli import main
from rnntext.config import RunConfig
from rnntext.data.encoder_dir import ENCODER_JSON, WEIGHTS, PretrainSettings, load_encoder
from rnntext.errors import TrainingInterrupted
from rnntext.model.lm import RecurrentLM
from rnntext.model.members import MembersClassifier
from rnntext.model.recurrent import RecurrentClassifier
from rnntext.training.pretrain import Pretrainer, pretrain, resume_pretrain
from rnntext.training.trainer import Trainer

ANIMALS = ["cat", "dog", "horse", "bird", "cow"]
THINGS = ["car", "table", "phone", "lamp", "chair"]
ADJS = ["big", "small", "old", "red", "quiet"]
VERBS = ["sees", "likes", "finds", "wants"]


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts of a small grammar (word order matters: a language model can learn it), labelled by whether
    the subject is an animal."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        animal = rng.random() < 0.5
        subject = rng.choice(ANIMALS if animal else THINGS)
        text = f"the {rng.choice(ADJS)} {subject} {rng.choice(VERBS)} the {rng.choice(ADJS)} {rng.choice(THINGS)} ."
        out.append((text, "animal" if animal else "thing"))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    rows = sentences(400)
    (d / "texts.txt").write_text("\n".join(t for t, _ in rows) + "\n")
    with gzip.open(d / "texts.txt.gz", "wt") as f:
        f.write("\n".join(t for t, _ in rows[:200]) + "\n")
    for name, part in (("train.csv", rows[:300]), ("test.csv", rows[300:])):
        with open(d / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows(part)
    return {"dir": d, "txt": d / "texts.txt", "gz": d / "texts.txt.gz", "train": d / "train.csv",
            "test": d / "test.csv"}


def small(texts: list[Path], epochs: int = 3, **pretrain: object) -> PretrainSettings:
    s = PretrainSettings()
    s.pretrain.text = [str(t) for t in texts]
    s.pretrain.valid_fraction = 0.1
    for k, v in pretrain.items():
        setattr(s.pretrain, k, v)
    m, t = s.run.model, s.run.train
    m.embed_dim, m.hidden_dim = 16, 16
    t.epochs, t.batch_size, t.threads, t.lr = epochs, 32, 1, 0.02
    return s


def quiet(_: str) -> None:
    pass


def test_pretraining_lowers_heldout_perplexity(corpus: dict[str, Path]) -> None:
    metrics = pretrain(small([corpus["txt"]]), None, progress=False, log=quiet)
    ppl = [row["valid_perplexity"] for row in metrics["epochs"]]
    assert len(ppl) == 3
    # the grammar has ~20 words: from a random model's perplexity to a few choices per word
    assert metrics["initial_valid_perplexity"] > 20
    assert ppl[-1] < ppl[0] < metrics["initial_valid_perplexity"]
    assert metrics["valid_perplexity"] == min(ppl) < 8


def test_the_language_model_never_sees_the_word_it_predicts() -> None:
    """Changing word k changes the forward direction's losses only from step k on (it predicts word k at step
    k-1 from words before it) and the backward direction's only for words before k."""
    torch.manual_seed(0)
    enc = RecurrentClassifier(30, 1, cell="gru", embed_dim=8, hidden_dim=8, bidirectional=True)
    lm = RecurrentLM(enc).eval()
    tokens = torch.randint(2, 30, (1, 9))
    lengths = torch.tensor([9])

    def per_word(tok: torch.Tensor) -> list[torch.Tensor]:
        outs = enc.directions_out(tok, lengths)
        reads = enc.reading(tok, lengths)
        return [torch.nn.functional.cross_entropy(lm.logits(d, outs[d][0, :-1]), reads[d][0, 1:], reduction="none")
                for d in range(2)]

    k = 4
    changed = tokens.clone()
    changed[0, k] = (tokens[0, k] + 1 - 2) % 28 + 2
    before, after = per_word(tokens), per_word(changed)
    # forward: loss at step t is of word t+1 read from words 0..t; steps < k-1 read no word k and predict others
    assert torch.equal(before[0][: k - 1], after[0][: k - 1])
    # backward (reading order: word 8, 7, ...): steps predicting words 8-1-t > k from words after k are unchanged
    steps_unchanged = 8 - k - 1
    assert torch.equal(before[1][:steps_unchanged], after[1][:steps_unchanged])
    total, count = lm(tokens, lengths)
    assert count == 16 and torch.allclose(total, sum(x.sum() for x in before))


def test_a_bidirectional_encoder_of_two_layers_is_refused() -> None:
    enc = RecurrentClassifier(30, 1, embed_dim=8, hidden_dim=8, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="second layer reads both directions"):
        RecurrentLM(enc)


def test_encoder_loads_without_its_texts_and_finetuning_starts_from_it(corpus: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    text = tmp_path / "gone.txt"
    text.write_text(corpus["txt"].read_text())
    enc_dir = tmp_path / "enc"
    pretrain(small([text], epochs=1), str(enc_dir), progress=False, log=quiet)
    text.unlink()  # an encoder directory needs none of its text files
    assert not (enc_dir / "checkpoint" / "state-000001.safetensors").exists()
    enc = load_encoder(enc_dir)
    assert set(enc.state) == {k for k in RecurrentClassifier(5, 1, embed_dim=16, hidden_dim=16, bidirectional=True)
                              .state_dict() if not k.startswith("fc.")}

    cfg = RunConfig()
    cfg.data.train, cfg.data.text_columns = str(corpus["train"]), ["sentence"]
    cfg.model.embed_dim = cfg.model.hidden_dim = 16
    cfg.train.epochs, cfg.train.threads = 1, 1
    plain = Trainer(cfg, None, progress=False, log=quiet)
    cfg.data.encoder = str(enc_dir)
    tuned = Trainer(cfg, None, progress=False, log=quiet)
    assert tuned.data.vocab.itos == enc.vocab.itos  # the encoder's vocabulary, not one built on train.csv
    # small data: several members (model/members.py), each of them starting from the encoder
    assert isinstance(tuned.model, MembersClassifier) and isinstance(plain.model, MembersClassifier)
    assert len(tuned.model.each()) == len(plain.model.each()) > 1
    for member, alone in zip(tuned.model.each(), plain.model.each()):
        state, fresh = member.state_dict(), alone.state_dict()
        for k, v in enc.state.items():
            assert torch.equal(state[k], v)  # the encoder's weights, exactly
        assert not torch.equal(state["layers.0.0.weight_hh_l0"], fresh["layers.0.0.weight_hh_l0"])
        assert torch.equal(state["fc.weight"], fresh["fc.weight"])  # the output layer starts as without it (same seed)
    result = tuned.fit()
    assert result.metrics["epochs"][0]["valid_accuracy"] >= 0.0


def _drop_seconds(metrics: dict) -> dict:
    metrics = json.loads(json.dumps(metrics))
    for row in metrics["epochs"]:
        row.pop("seconds"), row.pop("tokens_per_second")
    metrics.pop("train_seconds")
    return metrics


def test_resumed_pretraining_is_bit_identical(corpus: dict[str, Path], tmp_path: Path) -> None:
    settings = small([corpus["txt"]], epochs=2)
    settings.run.model.model = "lstm"
    whole = pretrain(settings, str(tmp_path / "whole"), progress=False, log=quiet)

    def stop(trainer: Pretrainer) -> None:  # as Ctrl-C does, in the middle of the first epoch
        if trainer.global_step == 4:
            trainer.interrupt.set = True

    with pytest.raises(TrainingInterrupted, match="rnntext pretrain --resume"):
        pretrain(settings, str(tmp_path / "cut"), progress=False, log=quiet, on_step=stop)
    assert not (tmp_path / "cut" / ENCODER_JSON).exists()
    resumed = resume_pretrain(str(tmp_path / "cut"), progress=False, log=quiet)
    assert (tmp_path / "whole" / WEIGHTS).read_bytes() == (tmp_path / "cut" / WEIGHTS).read_bytes()
    assert _drop_seconds(resumed) == _drop_seconds(whole)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnntext: error: "), err
    return err


def test_cli_pretrain_then_train_with_encoder(corpus: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    enc = tmp_path / "enc"
    # a CSV column and a gzip plain-text file together
    assert main(["pretrain", "--text", str(corpus["train"]), str(corpus["gz"]), "--text-column", "sentence",
                 "--embed-dim", "16", "--hidden-dim", "16", "--epochs", "1", "--threads", "1", "--batch-size", "32",
                 "--out", str(enc), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("held-out perplexity ") and f"--encoder {enc}" in out
    texts = json.loads((enc / ENCODER_JSON).read_text())["config"]["pretrain"]["text"]
    assert texts == [str(corpus["train"]), str(corpus["gz"])]
    assert json.loads((enc / "metrics.json").read_text())["texts"] == 500
    assert main(["pretrain", "--resume", str(enc)]) == 0  # finished: nothing to resume
    assert "nothing to resume" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--train", str(corpus["train"]), "--test", str(corpus["test"]), "--text-column",
                 "sentence", "--encoder", str(enc), "--embed-dim", "16", "--hidden-dim", "16", "--epochs", "1",
                 "--threads", "1", "--out", str(run), "-q"]) == 0
    assert json.loads((run / "vocab.json").read_text()) == json.loads((enc / "vocab.json").read_text())
    capsys.readouterr()
    # the error of an encoder of other sizes names its file and what to give (before any data are read)
    err = _cli_error(["train", "--train", str(corpus["train"]), "--text-column", "sentence", "--encoder", str(enc),
                      "--hidden-dim", "32", "--embed-dim", "16", "--epochs", "1"], capsys)
    assert str(enc / ENCODER_JSON) in err and "--hidden-dim 16" in err


@pytest.mark.parametrize("extra, message", [
    ([], "give --text FILE"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--valid-fraction", "0"], "--valid-fraction must be in (0, 1)"),
    (["--model", "bag"], "only a recurrent encoder"),
    (["--num-layers", "2"], "second layer reads both directions"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_pretrain_options_are_one_line_errors(extra: list[str], message: str, corpus: dict[str, Path],
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = [] if not extra else ["--text", str(corpus["txt"])]
    err = _cli_error(["pretrain", *text, *extra, "--out", str(tmp_path / "enc"), "--threads", "1"], capsys)
    assert message in err


def test_bad_pretrain_inputs_are_one_line_errors(corpus: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    assert str(missing) in _cli_error(["pretrain", "--text", str(missing), "--out", str(tmp_path / "a")], capsys)
    one = tmp_path / "one.txt"
    one.write_text("a single text\n")
    assert "too few" in _cli_error(["pretrain", "--text", str(one), "--out", str(tmp_path / "b")], capsys)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    assert f"{bad}:2" in _cli_error(["pretrain", "--text", str(bad), "--out", str(tmp_path / "c")], capsys)
    err = _cli_error(["pretrain", "--text", str(corpus["train"]), "--text-column", "nope", "--out",
                      str(tmp_path / "d")], capsys)
    assert "no column named 'nope'" in err
    err = _cli_error(["pretrain", "--resume", str(tmp_path / "e"), "--text", str(one)], capsys)
    assert "drop --text" in err
    assert "no checkpoint to resume" in _cli_error(["pretrain", "--resume", str(tmp_path)], capsys)


def test_bad_encoder_options_are_one_line_errors(corpus: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--train", str(corpus["train"]), "--text-column", "sentence", "--epochs", "1", "--threads", "1"]
    assert "encoder directory does not exist" in _cli_error([*base, "--encoder", str(tmp_path / "none")], capsys)
    (tmp_path / "empty").mkdir()
    err = _cli_error([*base, "--encoder", str(tmp_path / "empty")], capsys)
    assert str(tmp_path / "empty" / ENCODER_JSON) in err and "missing file" in err
    vec = tmp_path / "v.vec"
    vec.write_text("1 2\nthe 0.1 0.2\n")
    err = _cli_error([*base, "--encoder", str(tmp_path / "empty"), "--embeddings", str(vec)], capsys)
    assert "--encoder and --embeddings" in err
