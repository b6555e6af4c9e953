"""Calibrated confidence: temperature scaling fitted on validation, saved with the run, applied by
evaluate / predict / the Python API / the server / the ONNX predictor; ECE and the reliability diagram;
--min-confidence (abstain below P); old runs without a temperature."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import rnntext
from conftest import make_tiny_config
from rnntext.cli import main
from rnntext.errors import CheckpointError, ConfigError
from rnntext.inference.evaluate import evaluate_run
from rnntext.inference.predictor import Predictor
from rnntext.serving.server import create_app
from rnntext.training.calibration import (
    CALIBRATION,
    apply_temperature,
    ece,
    fit_temperature,
    nll,
    reliability,
)
from rnntext.training.logits import mean_probabilities, predict_logits
from rnntext.training.rundir import load_run
from rnntext.training.trainer import train

TEXTS = ["Stocks rally as oil prices fall and investors cheer earnings", "Late goal wins the cup final",
         "New chip promises faster laptops", "Rebels and government sign cease-fire after long talks",
         "Central bank raises interest rates", "Star striker signs five-year contract", "the", "rates and goals"]


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's trained run (GRU, AG News 2,000 rows), free to change."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _set_temperature(run: Path, t: float | None) -> None:
    if t is None:
        (run / CALIBRATION).unlink(missing_ok=True)
    else:
        (run / CALIBRATION).write_text(json.dumps({"method": "temperature", "temperature": t}))


# --- the fit and the measures -----------------------------------------------------------------------------


def test_fit_recovers_the_temperature_of_overconfident_logits() -> None:
    """Labels drawn from softmax(z); the model reports 3z: the fit divides by ~3, and the NLL falls."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=gen) * 1.5
    y = torch.multinomial(z.softmax(1), 1, generator=gen)[:, 0]
    t = fit_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.08)
    assert nll(3 * z, y, t) < nll(3 * z, y)
    assert ece(apply_temperature(3 * z, t), y) < ece(apply_temperature(3 * z, 1.0), y)
    assert fit_temperature(z[:0], y[:0]) == 1.0  # nothing to fit on


def test_ece_and_reliability_by_hand() -> None:
    # 10 texts at confidence 0.75 of which 7 right, 10 at 0.55 of which 5 right:
    # ECE = 10/20 * |0.7 - 0.75| + 10/20 * |0.5 - 0.55| = 0.05
    probs = torch.tensor([[0.75, 0.25]] * 10 + [[0.55, 0.45]] * 10)
    labels = torch.tensor([0] * 7 + [1] * 3 + [0] * 5 + [1] * 5)
    assert ece(probs, labels) == pytest.approx(0.05)
    bins = reliability(probs, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 20
    assert bins[11] == pytest.approx({"count": 10, "confidence": 0.75, "accuracy": 0.7})  # (11/15, 12/15]
    assert bins[8] == pytest.approx({"count": 10, "confidence": 0.55, "accuracy": 0.5})  # (8/15, 9/15]
    assert ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0  # confidence exactly 1: the last bin


def test_temperature_one_gives_identical_probabilities(run_copy: Path) -> None:
    """T = 1 (a calibration.json saying 1, or --no-calibration) is the plain softmax, bit for bit."""
    _set_temperature(run_copy, 1.0)
    run = load_run(run_copy)
    assert run.temperature == 1.0
    calibrated = Predictor.load(run_copy, "cpu").probabilities(TEXTS)
    raw = Predictor.load(run_copy, "cpu", calibration=False).probabilities(TEXTS)
    assert torch.equal(calibrated, raw)
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(apply_temperature(logits, 1.0), logits.softmax(-1))

    _set_temperature(run_copy, 2.5)  # another T changes the probabilities, never the predicted class
    hot = Predictor.load(run_copy, "cpu").probabilities(TEXTS)
    assert not torch.equal(hot, raw)
    assert torch.equal(hot.argmax(1), raw.argmax(1))
    assert torch.equal(Predictor.load(run_copy, "cpu", calibration=False).probabilities(TEXTS), raw)


def test_ensemble_members_keep_their_own_temperature(run_copy: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(run_copy, tmp_path / "other"))
    _set_temperature(run_copy, 0.5)
    _set_temperature(other, 2.0)
    both = Predictor.load([run_copy, other], "cpu").probabilities(TEXTS)
    a = Predictor.load(run_copy, "cpu").probabilities(TEXTS)
    b = Predictor.load(other, "cpu").probabilities(TEXTS)
    assert torch.allclose(both, (a + b) / 2, atol=1e-6)
    run = load_run(run_copy)
    members = [(run.model, enc, None) for enc in [_encoded(run)]]
    assert torch.equal(mean_probabilities(members, (len(TEXTS), 4), torch.device("cpu"), 256, temperatures=[1.0]),
                       mean_probabilities(members, (len(TEXTS), 4), torch.device("cpu"), 256))


def _encoded(run):
    from rnntext.data.encode import encode_tokens

    return encode_tokens([run.tokenizer(t) for t in TEXTS], run.vocab)


# --- training fits it --------------------------------------------------------------------------------------


def _noisy(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Two classes told apart by one word, with a quarter of the labels flipped: a model that learns the
    words and keeps training grows overconfident."""
    rng = random.Random(seed)
    good, bad, filler = ["great", "superb", "fine"], ["awful", "boring", "dull"], ["the", "a", "film", "plot", "was"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        text = " ".join(rng.choices(filler, k=4) + [rng.choice(good if label == "pos" else bad), f"w{i}"])
        if rng.random() < 0.25:
            label = "neg" if label == "pos" else "pos"
        rows.append((text, label))
    return rows


def test_calibration_lowers_validation_nll(write_data: Callable[..., Path], tmp_path: Path) -> None:
    path = write_data("train.csv", ["text", "label"], _noisy(600))
    cfg = make_tiny_config(data__train=str(path), data__valid_split=0.2, train__epochs=12, train__lr=2e-2,
                           model__dropout=0.0, model__embed_dropout=0.0)
    result = train(cfg, str(tmp_path / "run"), progress=False, log=lambda s: None)
    saved = json.loads((tmp_path / "run" / CALIBRATION).read_text())
    valid = result.prepared.valid
    assert valid is not None and saved["rows"] == len(valid) == 120
    logits = predict_logits(result.model, valid, torch.device("cpu"))
    t = saved["temperature"]
    assert t > 1.0  # overconfident: the probabilities are softened
    assert nll(logits, valid.labels, t) < nll(logits, valid.labels)  # recomputed here, not read back
    assert saved["nll_after"] == pytest.approx(nll(logits, valid.labels, t))
    assert saved["nll_before"] == pytest.approx(nll(logits, valid.labels))
    assert result.metrics["calibration"] == saved
    assert load_run(tmp_path / "run").temperature == t


def test_no_validation_no_calibration_file(write_data: Callable[..., Path], tmp_path: Path) -> None:
    path = write_data("train.csv", ["text", "label"], _noisy(60))
    logs: list[str] = []
    train(make_tiny_config(data__train=str(path), data__valid_split=0.0), str(tmp_path / "run"), progress=False,
          log=logs.append)
    assert not (tmp_path / "run" / CALIBRATION).exists()
    assert any("calibration: none (no validation data" in line for line in logs)
    assert load_run(tmp_path / "run").temperature == 1.0


# --- old runs, damaged files -------------------------------------------------------------------------------


def test_old_run_without_a_temperature_still_loads(run_copy: Path) -> None:
    raw = Predictor.load(run_copy, "cpu", calibration=False).probabilities(TEXTS)
    _set_temperature(run_copy, None)  # a run directory written before calibration existed
    assert load_run(run_copy).temperature == 1.0
    assert torch.equal(rnntext.load(run_copy, device="cpu").probabilities(TEXTS), raw)


@pytest.mark.parametrize("content", ['{"temperature": "hot"}', '{"temperature": -1}', '{"temperature": 0}',
                                     '{"temperature": 1e300}', "[1.5]", "{not json", '{"temperature": true}'])
def test_a_damaged_calibration_file_is_a_one_line_error(run_copy: Path, content: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (run_copy / CALIBRATION).write_text(content)
    with pytest.raises(CheckpointError, match=r"calibration\.json"):
        load_run(run_copy)
    assert main(["predict", str(run_copy), "a text"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calibration.json" in err and "Traceback" not in err, err


# --- min_confidence -----------------------------------------------------------------------------------------


def test_min_confidence_abstains_exactly_below_p(trained_run: Path) -> None:
    predictor = Predictor.load(trained_run, "cpu")
    top = predictor.probabilities(TEXTS).max(1).values.tolist()
    p = sorted(top)[len(top) // 2]  # a threshold equal to one text's top probability
    preds = predictor.predict(TEXTS, min_confidence=p)
    for t, pred in zip(top, preds):
        assert (pred.label is None) == (t < p)
    assert preds[top.index(p)].label is not None  # exactly P: labelled
    above = math.nextafter(p, 1.0)
    assert predictor.predict(TEXTS, min_confidence=above)[top.index(p)].label is None  # just above: abstains
    assert all(x.label is not None for x in predictor.predict(TEXTS, min_confidence=0.0))
    assert [x.probabilities for x in preds] == [x.probabilities for x in predictor.predict(TEXTS)]
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="min_confidence must be a probability"):
            predictor.predict(TEXTS, min_confidence=bad)


def test_predict_cli_min_confidence_and_no_calibration(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _set_temperature(run_copy, 3.0)  # softer: the top probabilities fall
    assert main(["predict", str(run_copy), "--json", "--min-confidence", "1", *TEXTS[:3]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == [None, None, None]
    assert main(["predict", str(run_copy), "--min-confidence", "1", TEXTS[0]]) == 0
    assert capsys.readouterr().out.startswith("(abstain)\t")
    raw = Predictor.load(run_copy, "cpu", calibration=False).predict(TEXTS[:3])
    assert main(["predict", str(run_copy), "--json", "--no-calibration", *TEXTS[:3]]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got == [r.to_dict() for r in raw]
    assert main(["predict", str(run_copy), "--min-confidence", "2", "x"]) == 2
    assert "--min-confidence must be <= 1, got 2.0" in capsys.readouterr().err


def test_server_applies_calibration_and_min_confidence(run_copy: Path) -> None:
    _set_temperature(run_copy, 2.0)
    predictor = Predictor.load(run_copy, "cpu", threads=1)
    want = predictor.predict(TEXTS[:4])
    with TestClient(create_app(predictor)) as client:
        got = client.post("/predict", json={"texts": TEXTS[:4]}).json()["predictions"]
        assert [g["label"] for g in got] == [w.label for w in want]
        for g, w in zip(got, want):  # the calibrated probabilities
            assert g["probabilities"] == pytest.approx(w.probabilities, abs=1e-6)
        got = client.post("/predict", json={"texts": TEXTS[:4], "min_confidence": 1.0}).json()["predictions"]
        assert [g["label"] for g in got] == [None] * 4  # present, as JSON null
        assert client.post("/predict", json={"texts": ["x"], "min_confidence": 1.5}).status_code == 422
    with TestClient(create_app(predictor, min_confidence=1.0)) as client:  # serve --min-confidence 1
        assert client.post("/predict", json={"texts": ["x"]}).json()["predictions"][0]["label"] is None
        assert client.post("/predict", json={"texts": ["x"], "min_confidence": 0}).json()["predictions"][0]["label"]


# --- evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_reports_ece_before_and_after_and_draws_the_diagram(run_copy: Path, ag_news_small: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _set_temperature(run_copy, 1.7)
    report = evaluate_run(run_copy, device="cpu", min_confidence=0.5)
    cal = report["calibration"]
    assert cal["temperature"] == 1.7 and cal["applied"] and cal["bins"] == 15
    predictor = Predictor.load(run_copy, "cpu")
    rows = rnntext.inference.evaluate.read_eval_rows(load_run(run_copy).config.data)
    y = torch.tensor([predictor.labels.index(label) for label in rows.labels])
    fitted, raw = predictor.probabilities(rows.texts), predictor.probabilities(rows.texts, calibrated=False)
    assert cal["ece_before"] == pytest.approx(ece(raw, y)) and cal["ece_after"] == pytest.approx(ece(fitted, y))
    assert cal["ece_before"] != cal["ece_after"]
    sel = report["selective"]
    answered = fitted.max(1).values >= 0.5
    assert sel["answered"] == int(answered.sum()) and sel["answered"] + sel["abstained"] == report["n"]

    plot = tmp_path / "rel.png"
    assert main(["evaluate", str(run_copy), "--device", "cpu", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "calibration: temperature 1.700 (applied); ECE (15 bins)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(run_copy), "--device", "cpu", "--json", "--no-calibration"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["applied"] is False
    assert (run_copy / "calibration.png").is_file()  # the default place: the run directory


def test_onnx_predictor_applies_the_exported_temperature(run_copy: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rnntext.inference.export import export_run
    from rnntext.inference.onnx_predictor import OnnxPredictor

    _set_temperature(run_copy, 1.9)
    export_run(run_copy, tmp_path / "export", log=lambda s: None)
    assert json.loads((tmp_path / "export" / "export.json").read_text())["temperature"] == 1.9
    torch_probs = Predictor.load(run_copy, "cpu").probabilities(TEXTS).numpy()
    onnx = OnnxPredictor.load(tmp_path / "export", threads=1)
    assert abs(onnx.probabilities(TEXTS) - torch_probs).max() < 1e-4
    raw = Predictor.load(run_copy, "cpu", calibration=False).probabilities(TEXTS).numpy()
    assert abs(OnnxPredictor.load(tmp_path / "export", 1, calibration=False).probabilities(TEXTS) - raw).max() < 1e-4
    p = float(onnx.probabilities(TEXTS[:1]).max())
    assert onnx.predict(TEXTS[:1], min_confidence=p)[0].label is not None
    assert onnx.predict(TEXTS[:1], min_confidence=math.nextafter(p, 1.0))[0].label is None


def test_multi_label_runs_are_not_calibrated_and_say_so(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = {"sport": ["goal", "match"], "money": ["bank", "stocks"], "tech": ["chip", "laptop"]}
    lines = []
    for _ in range(120):
        labels = rng.sample(sorted(words), rng.randint(1, 2))
        text = " ".join(rng.choice(words[label]) for label in labels for _ in range(2))
        lines.append(json.dumps({"text": text, "label": labels}))
    path = tmp_path / "sets.jsonl"
    path.write_text("\n".join(lines) + "\n")
    logs: list[str] = []
    train(make_tiny_config(data__train=str(path), data__multi_label=True), str(tmp_path / "run"), progress=False,
          log=logs.append)
    assert any("calibration: none for multi-label runs" in line for line in logs)
    assert not (tmp_path / "run" / CALIBRATION).exists()
    assert load_run(tmp_path / "run").temperature == 1.0
