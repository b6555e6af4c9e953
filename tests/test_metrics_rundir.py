"""Metrics against hand-computed values; the run directory round trip; the prediction API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rnntext
from rnntext.config import RunConfig
from rnntext.data import Tokenizer, Vocab, encode_texts
from rnntext.data.ag_news import CLASSES
from rnntext.inference.evaluate import evaluate_run
from rnntext.model import build_model
from rnntext.training.logits import predict_logits
from rnntext.training.metrics import classification_report, confusion_matrix, format_report
from rnntext.training.rundir import load_run, save_run


def test_classification_report_by_hand() -> None:
    y_true = torch.tensor([0, 0, 1, 1, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 0, 2])
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["n"] == 6
    pc = r["per_class"]
    assert pc["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert pc["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["labels"] == ["a", "b", "c"]


def test_classification_report_absent_and_never_predicted_classes() -> None:
    # class 2 never occurs and is never predicted; class 1 is never predicted
    r = classification_report(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0]), ["x", "y", "z"])
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["per_class"]["x"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["x"]["f1"] == pytest.approx(0.8)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert confusion_matrix(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0]), 3).tolist() == \
        [[2, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_format_report_shows_everything() -> None:
    r = classification_report(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ["World", "Sci/Tech"])
    text = format_report(r)
    assert "accuracy 0.6667" in text and "macro-F1" in text and "(3 texts)" in text
    assert "World" in text and "Sci/Tech" in text and "confusion matrix" in text
    assert json.loads(json.dumps(r)) == r  # JSON-ready as it is
    assert "skipped" not in text
    assert "skipped 2 bad rows in f.csv" in format_report({**r, "skipped": 2, "file": "f.csv"})


def _random_run(tmp_path: Path, model: str = "lstm") -> tuple[Path, RunConfig, Vocab, list[str]]:
    texts = ["good film", "bad film", "a very good day", "terrible , bad"]
    cfg = RunConfig()
    cfg.model.model, cfg.model.embed_dim, cfg.model.hidden_dim = model, 8, 6
    tok = Tokenizer()
    vocab = Vocab.build([tok(t) for t in texts])
    cfg.model.vocab_size, cfg.model.num_classes = len(vocab), 2
    torch.manual_seed(1)
    net = build_model(cfg.model)
    labels = ["neg", "pos"]
    save_run(tmp_path / "run", cfg, vocab, labels, net.state_dict(), {"note": "x"})
    enc = encode_texts(texts, tok, vocab)
    expected = predict_logits(net, enc, torch.device("cpu"))
    return tmp_path / "run", cfg, enc, expected


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn", "bag"])
def test_save_load_round_trip(tmp_path: Path, model: str) -> None:
    path, cfg, enc, expected = _random_run(tmp_path, model)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "labels.json", "metrics.json",
                                                      "model.safetensors", "vocab.json"]
    run = load_run(path)
    assert run.config.to_dict() == cfg.to_dict()
    assert run.label_names == ["neg", "pos"]
    assert not run.model.training
    got = predict_logits(run.model, enc, torch.device("cpu"))
    assert torch.equal(got, expected)
    # safetensors, never pickle
    assert not (path / "model.safetensors").read_bytes().startswith(b"\x80")


def test_predictor_api(trained_run: Path) -> None:
    predictor = rnntext.load(trained_run, device="cpu")
    assert predictor.labels == CLASSES
    texts = ["Stocks fell as oil prices rose and investors sold shares",
             "The team won the championship game in overtime"]
    preds = predictor.predict(texts)
    assert len(preds) == 2
    for p in preds:
        assert p.label in CLASSES
        assert set(p.probabilities) == set(CLASSES)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert p.to_dict() == {"label": p.label, "probabilities": p.probabilities}
    # a single string, an empty text, and no texts
    assert predictor.predict(texts[0])[0] == preds[0]
    assert predictor.predict([""])[0].label in CLASSES
    assert predictor.predict([]) == []
    # order of inputs does not change a prediction (batches are length-sorted inside)
    assert predictor.predict(texts[::-1]) == preds[::-1]
    probs = predictor.probabilities(texts)
    assert probs.shape == (2, 4)


def test_evaluate_run_reproduces_the_training_test_metrics(trained_run: Path) -> None:
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    report = evaluate_run(trained_run, device="cpu", threads=1)
    assert report["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-12)
    assert report["confusion"] == saved["confusion"]
    assert report["n"] == 500


def test_evaluation_data_keeps_the_runs_columns() -> None:
    from rnntext.config import DataConfig
    from rnntext.inference.evaluate import evaluation_data

    trained = DataConfig(train="tr.csv", test="te.csv", text_columns=["sentence"], label_column="y")
    assert evaluation_data(trained).test == "te.csv"
    other = evaluation_data(trained, test="dev.csv")
    assert (other.test, other.text_columns, other.label_column) == ("dev.csv", ["sentence"], "y")
    renamed = evaluation_data(trained, test="x.jsonl", text_columns=["q"], label_column="a", skip_bad_rows=True)
    assert (renamed.text_columns, renamed.label_column, renamed.skip_bad_rows) == (["q"], "a", True)
    ag = evaluation_data(trained, data_dir="/data/ag")
    assert (ag.dataset, ag.test, ag.data_dir) == ("ag_news", None, "/data/ag")
    assert trained.test == "te.csv"  # the run's own config is not changed


def test_many_classes_keep_the_top_confusions_not_a_matrix() -> None:
    import tracemalloc

    k, n = 10_000, 50_000
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, k, (n,), generator=g)
    y_pred = torch.where(torch.rand(n, generator=g) < 0.7, y_true, torch.randint(0, k, (n,), generator=g))
    y_pred[:500] = 7  # one frequent confusion: true X -> 7
    y_true[:500] = 3
    names = [f"c{i}" for i in range(k)]
    tracemalloc.start()
    report = classification_report(y_true, y_pred, names)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "confusion" not in report and report["confusions"][0] == ["c3", "c7", 500]
    assert len(report["confusions"]) == 100 and peak < 200 * 2**20
    assert report["accuracy"] == pytest.approx(float((y_true == y_pred).float().mean()))
    assert report["per_class"]["c3"]["support"] == int((y_true == 3).sum())
    text = format_report(report)
    assert "most frequent confusions" in text and len(text.splitlines()) < k + 200
    small = classification_report(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), ["a", "b"])
    assert small["confusion"] == [[1, 0], [1, 1]]
