"""ONNX export and the torch-free onnxruntime backend (rnntext.inference.export, .onnx_predictor):
probabilities equal torch's within 1e-4 for every cell, direction, depth and pooling, the bag and
CNN families, one-token texts and batches of mixed lengths; the runtime imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402

from rnntext.cli import main  # noqa: E402
from rnntext.config import ModelConfig  # noqa: E402
from rnntext.data.vocab import Vocab  # noqa: E402
from rnntext.inference import onnx_predictor  # noqa: E402
from rnntext.inference.export import export_model, export_run  # noqa: E402
from rnntext.inference.onnx_predictor import OnnxPredictor, session_options  # noqa: E402
from rnntext.inference.predictor import Predictor  # noqa: E402
from rnntext.model.registry import build_model  # noqa: E402
from rnntext.training.rundir import load_run  # noqa: E402

VOCAB, CLASSES = 40, 3

# Every cell with both directions and both depths, every pooling with every cell at least once
# (12 exports, not the 48 of the full product: each takes a few seconds).
RECURRENT = [
    ("rnn", False, 1, "last"), ("rnn", True, 2, "mean"), ("rnn", True, 1, "max"), ("rnn", False, 2, "meanmax"),
    ("lstm", True, 1, "last"), ("lstm", False, 2, "max"), ("lstm", False, 1, "mean"), ("lstm", True, 2, "meanmax"),
    ("gru", False, 2, "last"), ("gru", True, 1, "meanmax"), ("gru", False, 1, "max"), ("gru", True, 2, "mean"),
]
CONFIGS = [dict(model=c, bidirectional=b, num_layers=n, pooling=p) for c, b, n, p in RECURRENT]
CONFIGS += [dict(model="bag"), dict(model="cnn", hidden_dim=5)]


def _batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    lens = torch.tensor(lengths)
    tokens[torch.arange(T)[None, :] >= lens[:, None]] = 0
    return tokens, lens


BATCHES = [[1], [1, 1, 1], [7, 1, 3, 12, 2], [30, 29, 4, 1, 17, 8, 8, 2], [2, 2]]


@pytest.mark.parametrize("settings", CONFIGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_probabilities_equal_torch(settings: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"embed_dim": 8, "hidden_dim": 6, "dropout": 0.3, **settings})
    cfg.vocab_size, cfg.num_classes = VOCAB, CLASSES
    model = build_model(cfg).eval()
    with torch.no_grad():  # larger weights than the initialisation: probabilities far from uniform
        for p in model.parameters():
            p.mul_(3)
    export_model(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), session_options(1))
    for i, lengths in enumerate(BATCHES):
        tokens, lens = _batch(lengths, i)
        with torch.no_grad():
            if model.batch_layout == "flat":
                flat = torch.cat([t[:n] for t, n in zip(tokens, lens)])
                offsets = torch.cumsum(lens, 0) - lens
                expected = model(flat, lens, offsets).softmax(1).numpy()
            else:
                expected = model(tokens, lens).softmax(1).numpy()
        got = session.run(None, {"tokens": tokens.numpy(), "lengths": lens.numpy()})[0]
        assert got.shape == (len(lengths), CLASSES)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"lengths {lengths}")
        assert float(np.abs(expected - 1 / CLASSES).max()) > 0.05  # a model that says something


TEXTS = ["Stocks fell on Wall Street as oil prices rose", "goal", "", "the the the", "Microsoft releases a new "
         "version of Windows with security fixes " * 5, "Yankees beat the Red Sox 5-3 in extra innings", "?",
         # words the training data lack, read as their stems' words (data.unseen_words "stem")
         "Stockings falling; the oilers' pricings rose securitized"]


def test_exported_run_predicts_as_torch(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_run(trained_run, out, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.onnx", "vocab.json"]
    settings = json.loads((out / "export.json").read_text())
    assert settings["tokenizer"]["name"] == "basic_english" and settings["tokenizer"]["ngrams"] == 1
    assert settings["tokenizer"]["unseen_words"] == "stem"
    assert settings["format"] == onnx_predictor.FORMAT  # the runtime reads what export writes
    onnx_pred = OnnxPredictor.load(out, threads=1, batch_size=3)  # several batches of mixed lengths
    run = load_run(trained_run)
    ids, _ = onnx_pred.encode(TEXTS)
    assert ids[-1] == run.vocab.encode(run.tokenizer(TEXTS[-1]))  # unseen words read as the run reads them
    assert ids[-1] != Vocab(run.vocab.itos).encode(run.tokenizer(TEXTS[-1]))  # ... which is not as <unk>
    torch_pred = Predictor.load(trained_run, "cpu")
    expected = torch_pred.probabilities(TEXTS).numpy()
    np.testing.assert_allclose(onnx_pred.probabilities(TEXTS), expected, atol=1e-4, rtol=0)
    assert [p.label for p in onnx_pred.predict(TEXTS)] == [p.label for p in torch_pred.predict(TEXTS)]
    assert onnx_pred.probabilities([]).shape == (0, len(onnx_pred.labels))

    old = json.loads((out / "export.json").read_text())  # an export of format 1 read unseen words as <unk>
    old["format"] = 1
    del old["tokenizer"]["unseen_words"]
    (out / "export.json").write_text(json.dumps(old))
    assert OnnxPredictor.load(out, threads=1).vocab.unseen == "unk"

    q = tmp_path / "int8"
    export_run(trained_run, q, int8=True, log=lambda s: None)
    assert (q / "model.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    int8 = OnnxPredictor.load(q, threads=1).probabilities(TEXTS)
    assert np.abs(int8 - expected).max() < 0.1


def test_runtime_imports_no_torch(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_run(trained_run, out, log=lambda s: None)
    code = ("import sys; from rnntext.inference.onnx_predictor import OnnxPredictor; "
            f"p = OnnxPredictor.load({str(out)!r}, threads=1); print(p.predict(['oil prices rose', ''])[0].label); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in json.loads((out / "labels.json").read_text())


def test_cli_export_predict_evaluate(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-export"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "--backend", "onnx", "--json", "--threads", "1", "oil prices rose", "goal"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    torch_rows = [p.to_dict() for p in Predictor.load(trained_run, "cpu").predict(["oil prices rose", "goal"])]
    assert [r["label"] for r in rows] == [r["label"] for r in torch_rows]
    assert main(["evaluate", str(out), "--backend", "onnx", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(trained_run), "--json", "--threads", "1"]) == 0
    assert abs(report["accuracy"] - json.loads(capsys.readouterr().out)["accuracy"]) <= 1 / report["n"]
    # a non-empty --out, an export given to the torch backend, a run given to the onnx one: one line each
    assert main(["export", str(trained_run), "--out", str(out)]) == 2
    assert "must be a new or empty directory" in capsys.readouterr().err
    assert main(["predict", str(trained_run), "--backend", "onnx", "x"]) == 2
    assert "not an export directory" in capsys.readouterr().err


def test_server_runs_an_export(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnntext.serving.server import create_app

    out = tmp_path / "export"
    export_run(trained_run, out, log=lambda s: None)
    predictor = OnnxPredictor.load(out, threads=1)
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", json={"texts": ["oil prices rose", "goal"]})
        assert r.status_code == 200
        assert [p["label"] for p in r.json()["predictions"]] == [p.label for p in predictor.predict(
            ["oil prices rose", "goal"])]
        assert client.get("/health").json()["run"] == str(out)
        assert client.post("/explain", json={"texts": ["oil"]}).status_code == 501
