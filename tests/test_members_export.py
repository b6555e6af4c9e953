"""ONNX export of a members model (`--members K`, model/members.py; rnntext.inference.export): one graph
whose probabilities equal the torch model's eval-mode ones (the softmax of the mean of the members'
logits) for every family that exports, with and without the wide part; the torch-free predictor,
calibration, evaluate, the server and --int8 read it as any other export."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from conftest import make_tiny_config, write_table  # noqa: E402
from rnntext.cli import main  # noqa: E402
from rnntext.config import ModelConfig  # noqa: E402
from rnntext.inference.export import export_model, export_run  # noqa: E402
from rnntext.inference.onnx_predictor import OnnxPredictor, session_options  # noqa: E402
from rnntext.inference.predictor import Predictor  # noqa: E402
from rnntext.model.members import MembersClassifier  # noqa: E402
from rnntext.model.registry import build_model  # noqa: E402
from rnntext.training.rundir import load_run  # noqa: E402
from rnntext.training.trainer import train  # noqa: E402
from test_onnx import VOCAB, _batch  # noqa: E402

CLASSES = 3

# The recurrent families go through the hand-built graph (three members: it is quick), the bag and CNN
# through torch.onnx (two: each member is one export, a few seconds); the wide part with either join.
FAMILIES = [
    dict(model="gru", members=3),
    dict(model="lstm", bidirectional=True, pooling="meanmax", members=3),
    dict(model="rnn", num_layers=2, pooling="last", members=3),
    dict(model="gru", wide_ngrams=2, members=2),
    dict(model="lstm", wide_ngrams=3, wide_join="mix", members=2),
    dict(model="bag", members=2),
    dict(model="cnn", members=2),
    dict(model="bag", wide_ngrams=2, wide_join="mix", members=2),
]
BATCHES = [[1], [7, 1, 3, 12, 2], [30, 29, 4, 1, 17, 8]]



def _probabilities(model: torch.nn.Module, tokens: torch.Tensor, lens: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        if model.batch_layout == "flat":  # type: ignore[attr-defined]
            flat = torch.cat([t[:n] for t, n in zip(tokens, lens)])
            return model(flat, lens, torch.cumsum(lens, 0) - lens).softmax(1).numpy()
        return model(tokens, lens).softmax(1).numpy()


@pytest.mark.parametrize("settings", FAMILIES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_members_graph_equals_the_torch_models_eval_probabilities(settings: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"embed_dim": 8, "hidden_dim": 5, "dropout": 0.3, **settings})
    cfg.vocab_size, cfg.num_classes = VOCAB, CLASSES
    model = build_model(cfg).eval()
    assert isinstance(model, MembersClassifier) and len(model.each()) == settings["members"]
    with torch.no_grad():  # larger weights than the initialisation: probabilities far from uniform
        for p in model.parameters():
            p.mul_(3)
    export_model(model, tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["tokens", "lengths"] and [o.name for o in graph.output] == [
        "probabilities"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), session_options(1))
    for i, lengths in enumerate(BATCHES):
        tokens, lens = _batch(lengths, i)
        expected = _probabilities(model, tokens, lens)
        got = session.run(None, {"tokens": tokens.numpy(), "lengths": lens.numpy()})[0]
        assert got.shape == (len(lengths), CLASSES)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=f"lengths {lengths}")
        # the joint probabilities are no single member's: every member counts
        for k, member in enumerate(model.each()):
            assert np.abs(_probabilities(member, tokens, lens) - expected).max() > 1e-3, f"member {k}"
    assert float(np.abs(expected - 1 / CLASSES).max()) > 0.05  # a model that says something


def test_confident_members_that_disagree_average_as_logits(tmp_path: Path) -> None:
    """Member 0 puts class 0 200 above the others, member 1 200 below: each alone gives it a float32
    probability of 0 (or 1), and their mean logits are level. The graph averages logits, so it says 1/3
    each as torch does (the mean of log(probabilities) would be -inf for class 0)."""
    cfg = ModelConfig(model="gru", embed_dim=8, hidden_dim=5, members=2)
    cfg.vocab_size, cfg.num_classes = VOCAB, CLASSES
    model = build_model(cfg).eval()
    with torch.no_grad():
        for member, top in zip(model.each(), (200.0, -200.0)):
            member.fc.weight.zero_()  # type: ignore[union-attr, operator]
            member.fc.bias.copy_(torch.tensor([top, 0.0, 0.0]))  # type: ignore[union-attr, operator]
    export_model(model, tmp_path / "model.onnx")
    tokens, lens = _batch([3, 1], 0)
    got = ort.InferenceSession(str(tmp_path / "model.onnx"), session_options(1)).run(
        None, {"tokens": tokens.numpy(), "lengths": lens.numpy()})[0]
    np.testing.assert_allclose(got, _probabilities(model, tokens, lens), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, np.full((2, CLASSES), 1 / CLASSES), atol=1e-6, rtol=0)
    assert _probabilities(model.each()[1], tokens, lens)[:, 0].max() == 0.0  # member 1 alone: underflow


WORDS = {"sport": "goal match team cup striker", "money": "bank stocks rates market profit",
         "tech": "chip laptop software phone code"}
TEXTS = ["goal match team", "bank rates fell", "new chip and laptop", "", "cup", "stocks goal software " * 6,
         "unknownword"]


def _rows(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(WORDS))
        words = WORDS[label].split() + rng.sample(WORDS[rng.choice(sorted(WORDS))].split(), 2)
        rows.append([" ".join(rng.choices(words, k=rng.randint(2, 9))), label])
    return rows


@pytest.fixture(scope="module")
def members_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GRU run with 2 members, 1 epoch on 400 generated rows, calibrated on its validation file (a high
    learning rate: confident enough for a temperature other than 1)."""
    root = tmp_path_factory.mktemp("members_run")
    write_table(root / "train.csv", ["text", "label"], _rows(400, 0))
    write_table(root / "valid.csv", ["text", "label"], _rows(60, 1))
    write_table(root / "test.csv", ["text", "label"], _rows(60, 2))
    cfg = make_tiny_config(data__train=str(root / "train.csv"), data__valid=str(root / "valid.csv"),
                           data__test=str(root / "test.csv"), model__members=2, model__embed_dim=8,
                           model__hidden_dim=8, train__lr=3e-2)
    train(cfg, str(root / "run"), progress=False, log=lambda s: None)
    return root / "run"


def test_onnx_predictor_of_a_members_run_equals_the_torch_predictor(members_run: Path, tmp_path: Path) -> None:
    run = load_run(members_run, "cpu")
    assert isinstance(run.model, MembersClassifier) and len(run.model.each()) == 2
    assert run.temperature != 1.0  # calibrated: the comparison below applies a temperature
    out = tmp_path / "export"
    export_run(members_run, out, log=lambda s: None)
    assert json.loads((out / "export.json").read_text())["temperature"] == run.temperature
    for calibration in (True, False):
        expected = Predictor.load(members_run, "cpu", calibration=calibration).probabilities(TEXTS).numpy()
        onnx_pred = OnnxPredictor.load(out, threads=1, batch_size=3, calibration=calibration)
        np.testing.assert_allclose(onnx_pred.probabilities(TEXTS), expected, atol=1e-5, rtol=0)
    torch_pred = Predictor.load(members_run, "cpu")
    assert [p.label for p in onnx_pred.predict(TEXTS)] == [p.label for p in torch_pred.predict(TEXTS)]

    q = tmp_path / "int8"  # --int8 quantises the one graph: all members' weights
    export_run(members_run, q, int8=True, log=lambda s: None)
    quantised = {i.name for i in onnx.load(str(q / "model.onnx")).graph.initializer
                 if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert {"m0_embedding_quantized", "m1_embedding_quantized"} <= quantised  # (too small a model to shrink)
    int8 = OnnxPredictor.load(q, threads=1).probabilities(TEXTS)
    assert np.abs(int8 - torch_pred.probabilities(TEXTS).numpy()).max() < 0.1


def test_cli_export_predict_evaluate_serve_a_members_run(members_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-export"
    assert main(["export", str(members_run), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "--backend", "onnx", "--json", "--threads", "1", *TEXTS[:3]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    torch_rows = [p.to_dict() for p in Predictor.load(members_run, "cpu").predict(TEXTS[:3])]
    assert [r["label"] for r in rows] == [r["label"] for r in torch_rows]
    assert main(["evaluate", str(out), "--backend", "onnx", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(members_run), "--json", "--threads", "1"]) == 0
    assert report["n"] == 60  # the run's test file, read through export.json
    assert abs(report["accuracy"] - json.loads(capsys.readouterr().out)["accuracy"]) <= 1 / report["n"]

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnntext.serving.server import create_app

    predictor = OnnxPredictor.load(out, threads=1)
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", json={"texts": TEXTS[:3]})
        assert r.status_code == 200
        assert [p["label"] for p in r.json()["predictions"]] == [r["label"] for r in torch_rows]
