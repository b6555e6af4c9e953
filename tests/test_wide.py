"""The wide part (model/wide.py, --wide-ngrams): hashed word n-grams joined to any model.

What is proved: the n-gram ids by hand; a text's ids and wide scores do not depend on its batch
(padding, layout); a fresh wide model gives its deep part's logits, and the deep part has the weights
the model without a wide part has; the CPU fast path (sparse gradients for both tables, fused AdamW)
trains as torch's AdamW does; prediction from a saved run hashes as training did (the inference fast
path included); ctrl-C and resume give the identical run; bad values are one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_tiny_config
from interrupt import ctrl_c_after
from rnntext import fast
from rnntext.config import ModelConfig, RunConfig
from rnntext.data.vocab import PAD_ID
from rnntext.model import build_model
from rnntext.model.wide import HASH_PRIME, WideClassifier, ngram_count, ngram_ids, padded_from_flat

VOCAB, CLASSES = 50, 3


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
    return tokens, torch.tensor(lengths)


def _cfg(**model: Any) -> ModelConfig:
    cfg = ModelConfig(embed_dim=8, hidden_dim=8, vocab_size=VOCAB, num_classes=CLASSES)
    for k, v in model.items():
        setattr(cfg, k, v)
    return cfg


def _flat(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.cat([t[:n] for t, n in zip(tokens, lengths)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return flat, offsets


def test_ngram_ids_by_hand() -> None:
    tokens = torch.tensor([[5, 7, 9, 0], [3, 4, 0, 0]])
    lengths = torch.tensor([3, 2])
    V, B = 50, 1000
    ids = ngram_ids(tokens, lengths, 3, V, B)
    assert ids.shape == (2, 12)

    def h(*t: int) -> int:
        x = (t[0] + 2 * HASH_PRIME) % B
        for n, tok in enumerate(t[1:], start=2):
            x = (x * HASH_PRIME + tok + n) % B
        return V + x

    assert ids[0].tolist() == [5, 7, 9, 0, h(5, 7), h(7, 9), 0, 0, h(5, 7, 9), 0, 0, 0]
    assert ids[1].tolist() == [3, 4, 0, 0, h(3, 4), 0, 0, 0, 0, 0, 0, 0]
    assert ngram_count(lengths, 3).tolist() == [6, 3]
    assert ngram_count(torch.tensor([1]), 3).tolist() == [1]
    # the largest ids and buckets stay within 64 bits: the same rows as Python's exact integers
    big = torch.tensor([[2**31 - 1, 2**31 - 2]])
    assert ngram_ids(big, torch.tensor([2]), 2, 2**31, 1 << 24)[0, 2].item() == (
        2**31 + (((2**31 - 1 + 2 * HASH_PRIME) % (1 << 24)) * HASH_PRIME + 2**31 - 2 + 2) % (1 << 24))


def test_a_texts_ids_do_not_depend_on_its_batch() -> None:
    tokens, lengths = _batch([4, 11, 1, 7])
    ids = ngram_ids(tokens, lengths, 3, VOCAB, 97)
    T = tokens.shape[1]
    for i, n in enumerate(lengths.tolist()):
        alone = ngram_ids(tokens[i:i + 1, :n], lengths[i:i + 1], 3, VOCAB, 97)[0]
        got = ids[i].view(3, T)[:, :n].reshape(-1)
        assert got.tolist() == alone.tolist()
        assert int((ids[i] != 0).sum()) == int(ngram_count(lengths[i:i + 1], 3))
    flat, offsets = _flat(tokens, lengths)
    assert torch.equal(padded_from_flat(flat, lengths, offsets), tokens)


@pytest.mark.parametrize("model", [{"model": "gru"}, {"model": "lstm", "num_layers": 2, "pooling": "last"},
                                   {"model": "bag"}, {"model": "cnn"}], ids=lambda m: m["model"])
def test_a_fresh_wide_model_is_its_deep_part(model: dict[str, Any]) -> None:
    """Built from the same seed, the deep part has the plain model's weights, and the wide part starts
    silent: the same logits (--wide-join sum), in a batch or alone."""
    torch.manual_seed(3)
    plain = build_model(_cfg(**model)).eval()
    torch.manual_seed(3)
    wide = build_model(_cfg(**model, wide_ngrams=2, wide_buckets=101)).eval()
    assert isinstance(wide, WideClassifier)
    deep_state = {k.removeprefix("deep."): v for k, v in wide.state_dict().items() if k.startswith("deep.")}
    assert deep_state.keys() == plain.state_dict().keys()
    assert all(torch.equal(deep_state[k], v) for k, v in plain.state_dict().items())
    tokens, lengths = _batch([6, 2, 9])
    args = (*_flat(tokens, lengths)[:1], lengths, _flat(tokens, lengths)[1]) if plain.batch_layout == "flat" else (
        tokens, lengths)
    assert torch.equal(wide(*args), plain(*args))
    assert wide.batch_layout == plain.batch_layout and wide.embedding is wide.deep.embedding


@pytest.mark.parametrize("join", ["sum", "mix"])
def test_wide_scores_do_not_depend_on_batch_or_layout(join: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(model="bag", wide_ngrams=3, wide_buckets=53, wide_join=join)).eval()
    with torch.no_grad():
        for p in model.wide.parameters():
            p.normal_()  # not the silent start: the wide part must count
        tokens, lengths = _batch([5, 1, 12, 3], seed=1)
        flat, offsets = _flat(tokens, lengths)
        together = model(flat, lengths, offsets)
        wide_padded = model.wide(tokens, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(tokens[i, :n], lengths[i:i + 1], torch.zeros(1, dtype=torch.long))
            torch.testing.assert_close(together[i:i + 1], alone, atol=1e-6, rtol=0)
            torch.testing.assert_close(wide_padded[i:i + 1], model.wide(tokens[i:i + 1, :n], lengths[i:i + 1]),
                                       atol=1e-6, rtol=0)
        if join == "mix":  # the log of the mean of the two parts' probabilities
            mix = (model.deep(flat, lengths, offsets).softmax(1) + wide_padded.softmax(1)) / 2
            torch.testing.assert_close(together.exp(), mix, atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(together, model.deep(flat, lengths, offsets) + wide_padded, atol=1e-6, rtol=0)


def test_the_inference_fast_path_joins_the_wide_part(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnntext.fast import gru

    monkeypatch.setattr(gru, "MIN_BATCH", 1)
    torch.manual_seed(0)
    model = build_model(_cfg(wide_ngrams=2, wide_buckets=31)).eval()
    with torch.no_grad():
        model.wide.fc.weight.normal_()
        tokens, lengths = _batch([3, 8, 1, 5])
        forward = fast.inference_forward(model, torch.device("cpu"))
        assert forward is not model  # the GRU loop, with the wide part joined
        torch.testing.assert_close(forward(tokens, lengths), model(tokens, lengths), atol=1e-5, rtol=0)
    assert fast.prediction_batch(model, torch.device("cpu")) == fast.prediction_batch(model.deep, torch.device("cpu"))


def _data(tmp_path: Path) -> tuple[str, str]:
    from test_resume import _write_data

    train_csv, test_csv = _write_data(tmp_path / "data", seed=3)
    return str(train_csv), str(test_csv)


def test_the_fast_path_gives_both_tables_sparse_gradients_and_trains_as_torch_adamw(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnntext.fast import adamw
    from rnntext.training.trainer import Trainer

    train_csv, test_csv = _data(tmp_path)
    # one plain model (--members 1): the test reads the WideClassifier's own tables (model.wide)
    cfg = make_tiny_config(data__train=train_csv, data__test=test_csv, model__wide_ngrams=2, model__wide_buckets=997,
                           model__embed_dim=16, model__hidden_dim=16, train__weight_decay=0.1, model__members=1)
    quiet: dict[str, Any] = {"progress": False, "log": lambda s: None}
    fast_run = Trainer(cfg, **quiet)
    assert isinstance(fast_run.optimizer, adamw.AdamW)
    assert fast_run.model.wide.table.sparse and fast_run.model.embedding.sparse
    fast_run.fit()
    monkeypatch.setenv("RNNTEXT_FAST", "0")
    stock = Trainer(cfg, **quiet)
    assert not isinstance(stock.optimizer, adamw.AdamW) and not stock.model.wide.table.sparse
    stock.fit()
    for (name, a), b in zip(fast_run.model.state_dict().items(), stock.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0, msg=name)
    assert not torch.equal(fast_run.model.wide.table.weight[VOCAB:], stock.model.wide.table.weight[VOCAB:] * 0)


def test_prediction_hashes_as_training_did(tmp_path: Path) -> None:
    from rnntext import load
    from rnntext.training.logits import predict_logits
    from rnntext.training.trainer import train

    train_csv, test_csv = _data(tmp_path)
    # one plain model (--members 1): the test reads the WideClassifier itself (model.wide)
    cfg = make_tiny_config(data__train=train_csv, data__test=test_csv, model__wide_ngrams=3, model__wide_buckets=499,
                           model__members=1)
    result = train(cfg, str(tmp_path / "run"), progress=False, log=lambda s: None)
    assert isinstance(result.model, WideClassifier)
    test = result.prepared.test
    texts = [line.rsplit(",", 1)[0] for line in Path(test_csv).read_text().splitlines()[1:]]
    predictor = load(tmp_path / "run", device="cpu")
    assert isinstance(predictor.run.model, WideClassifier)
    # (with the run's calibration temperature, training/calibration.py, as the predictor applies it)
    expected = (predict_logits(result.model, test, torch.device("cpu")) / predictor.run.temperature).softmax(1)
    torch.testing.assert_close(predictor.probabilities(texts), expected, atol=1e-5, rtol=0)
    assert result.model.wide.fc.weight.abs().sum() > 0  # it was trained


def test_ctrl_c_then_resume_gives_the_identical_wide_run(tmp_path: Path, sigint_handler: None) -> None:
    from rnntext.errors import TrainingInterrupted
    from rnntext.training.checkpoint import load_checkpoint
    from rnntext.training.trainer import resume, train
    from test_resume import assert_same_run

    train_csv, test_csv = _data(tmp_path)
    cfg = RunConfig()
    cfg.data.train, cfg.data.test = train_csv, test_csv
    for k, v in {"embed_dim": 8, "hidden_dim": 8, "wide_ngrams": 2, "wide_buckets": 211, "wide_dim": 4}.items():
        setattr(cfg.model, k, v)
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads, cfg.train.device, cfg.train.seed = 16, 2, 1, "cpu", 5
    quiet: dict[str, Any] = {"progress": False, "log": lambda s: None}

    CtrlCAtStep7 = ctrl_c_after(7)  # handled by the trainer: finish the step, checkpoint, stop

    train(cfg, str(tmp_path / "straight"), **quiet)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 7"):
        CtrlCAtStep7(cfg, str(tmp_path / "stopped"), **quiet).fit()
    assert load_checkpoint(tmp_path / "stopped").global_step == 7
    resume(str(tmp_path / "stopped"), **quiet)
    assert_same_run(tmp_path / "stopped", tmp_path / "straight")


@pytest.mark.parametrize("argv, message", [
    (["--wide-ngrams", "-1"], "--wide-ngrams must be >= 0, got -1"),
    (["--wide-ngrams", "9"], "--wide-ngrams must be <= 8, got 9"),
    (["--wide-buckets", "0"], "--wide-buckets must be >= 1, got 0"),
    (["--wide-buckets", str(1 << 25)], f"--wide-buckets must be <= {1 << 24}, got {1 << 25}"),
    (["--wide-dim", "0"], "--wide-dim must be >= 1, got 0"),
])
def test_bad_wide_options_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    from rnntext.cli import main

    assert main(["train", "--train", str(tmp_path / "t.csv"), *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_bad_wide_join_is_refused_on_the_command_line_and_in_a_config_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    from rnntext.cli import build_parser
    from rnntext.errors import ConfigError

    with pytest.raises(SystemExit):  # argparse's usage, then its one error line, as for every choice
        build_parser().parse_args(["train", "--wide-join", "max"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "argument --wide-join: invalid choice: 'max' (choose from 'sum', 'mix')")
    with pytest.raises(ConfigError, match=r"^run.json: model.wide_join must be one of sum, mix, got 'max'$"):
        RunConfig.from_dict({"model": {"wide_join": "max"}}, "run.json")


@pytest.mark.parametrize("settings", [
    {"model": "gru", "wide_join": "sum"}, {"model": "lstm", "bidirectional": False, "pooling": "last",
                                           "wide_join": "mix", "wide_ngrams": 3},
    {"model": "bag", "wide_join": "sum"}, {"model": "cnn", "hidden_dim": 5, "wide_join": "mix"},
], ids=lambda s: f"{s['model']}-{s['wide_join']}")
def test_onnx_export_of_a_wide_model_equals_torch(settings: dict[str, Any], tmp_path: Path) -> None:
    """Exported as ONNX, the wide part hashes as torch does: probabilities within 1e-4, texts of one
    token (shorter than every n-gram) and batches of mixed lengths included."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np
    import onnxruntime as ort

    from rnntext.inference.export import export_model
    from rnntext.inference.onnx_predictor import session_options

    torch.manual_seed(0)
    model = build_model(_cfg(**{"wide_ngrams": 2, "wide_buckets": 89, **settings})).eval()
    with torch.no_grad():  # the wide part not silent, and larger weights: probabilities far from uniform
        for p in model.parameters():
            p.normal_(0, 0.5) if p.dim() == 2 and p.shape[1] == model.wide.table.weight.shape[1] else p.mul_(3)
        model.wide.table.weight[0].zero_()
    export_model(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), session_options(1))
    for i, lengths in enumerate([[1], [1, 1, 1], [7, 1, 3, 12, 2], [30, 29, 4, 1, 17, 8, 8, 2]]):
        tokens, lens = _batch(lengths, i)
        with torch.no_grad():
            if model.batch_layout == "flat":
                flat, offsets = _flat(tokens, lens)
                expected = model(flat, lens, offsets).softmax(1).numpy()
            else:
                expected = model(tokens, lens).softmax(1).numpy()
        got = session.run(None, {"tokens": tokens.numpy(), "lengths": lens.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"lengths {lengths}")
        assert float(np.abs(expected - 1 / CLASSES).max()) > 0.05


@pytest.mark.parametrize("model", ["gru", "bag"])
def test_explanations_attribute_the_wide_part_too(model: str) -> None:
    """The explainer's per-position model gives the model's probabilities; with the deep part silenced,
    the words still get attributions (through their n-grams), and they add up to the change of
    probability from the all-<pad> baseline (integrated gradients' completeness)."""
    pytest.importorskip("captum")
    from rnntext.inference.explain import _PositionModel, attribute

    torch.manual_seed(0)
    m = build_model(_cfg(model=model, wide_ngrams=2, wide_buckets=41, wide_dim=6)).eval()
    with torch.no_grad():
        m.wide.fc.weight.normal_(0, 2.0)
        m.wide.table.weight.normal_()
        m.wide.table.weight[0].zero_()
    tokens, lengths = _batch([5, 2, 9])
    f = _PositionModel(m)
    with torch.no_grad():
        flat, offsets = _flat(tokens, lengths)
        expected = (m(flat, lengths, offsets) if m.batch_layout == "flat" else m(tokens, lengths)).softmax(1)
        torch.testing.assert_close(f(tokens, lengths), expected, atol=1e-5, rtol=0)
        deep_fc = m.deep.fc
        deep_fc.weight.zero_()
        deep_fc.bias.zero_()  # the deep part says nothing: whatever is attributed is the wide part's
    rows = [t[:n].tolist() for t, n in zip(tokens, lengths)]
    targets = [0, 1, 2]
    scores, deltas = attribute(m, rows, targets, torch.device("cpu"), steps=64)
    with torch.no_grad():
        p = f(tokens, lengths)
        base = f(torch.zeros_like(tokens), lengths)
    for i, target in enumerate(targets):
        change = float(p[i, target] - base[i, target])
        assert abs(sum(scores[i]) - change) < 2e-3 and abs(deltas[i] or 0.0) < 2e-3
        assert max(abs(s) for s in scores[i]) > 1e-3


def test_the_overlapped_embedding_update_with_a_wide_table_gives_the_same_weights(tmp_path: Path) -> None:
    """--overlap-update with a wide part (two sparse tables): the same weights as one update after the
    other."""
    from rnntext.training.trainer import Trainer

    train_csv, test_csv = _data(tmp_path)
    states = []
    for overlap in (True, False):
        cfg = make_tiny_config(data__train=train_csv, data__test=test_csv, model__wide_ngrams=2,
                               model__wide_buckets=101, train__batch_size=8, train__threads=2, train__epoch_size=6,
                               train__overlap_update=overlap)
        t = Trainer(cfg, progress=False, log=lambda s: None)
        assert (t.optimizer.overlap is not None) == overlap
        t.fit()
        states.append(t.model.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
