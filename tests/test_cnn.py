"""The model interface, proven by a family added through the model package and the registry only:
Kim (2014)'s CNN (`--model cnn`) trains, evaluates, predicts, serves, resumes, ensembles, compares and
trains data-parallel like the recurrent models."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnntext.config import ModelConfig
from rnntext.data.vocab import PAD_ID
from rnntext.model import build_model, model_names
from rnntext.model.base import BATCH_LAYOUTS, TextClassifier
from rnntext.model.cnn import CNNClassifier

SRC = Path(__file__).resolve().parent.parent / "src"


def _cnn(**kw) -> CNNClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(model="cnn", embed_dim=8, hidden_dim=6, vocab_size=40, num_classes=3, **kw)
    model = build_model(cfg)
    assert isinstance(model, CNNClassifier)
    return model.eval()


def test_every_registered_model_implements_the_interface() -> None:
    assert {"rnn", "lstm", "gru", "bag", "cnn"} <= set(model_names())
    for name in model_names():
        model = build_model(ModelConfig(model=name, embed_dim=8, hidden_dim=8, vocab_size=30, num_classes=3))
        assert isinstance(model, TextClassifier) and model.num_classes == 3
        assert model.batch_layout in BATCH_LAYOUTS
        assert model.embedding.weight.shape == (30, 8)
        assert model.prediction_batch(torch.device("cpu")) >= 1


def test_kim_widths_maps_and_dropout() -> None:
    model = _cnn(dropout=0.5)
    assert [c.kernel_size[0] for c in model.convs] == [3, 4, 5]
    assert all(c.out_channels == 6 for c in model.convs) and model.fc.in_features == 18
    assert model.dropout.p == 0.5


def test_kim_cnn_preset() -> None:
    from rnntext.presets import preset_config

    m = preset_config("kim-cnn").model
    assert (m.model, m.hidden_dim, m.dropout, m.embed_dropout) == ("cnn", 100, 0.5, 0.0)


def test_padding_never_changes_a_text() -> None:
    model = _cnn()
    g = torch.Generator().manual_seed(1)
    texts = [torch.randint(2, 40, (n,), generator=g) for n in (1, 2, 4, 5, 9, 30)]
    alone = torch.cat([model(t[None], torch.tensor([len(t)])) for t in texts])
    for width in (30, 45):  # one batch, padded to the longest text and beyond
        tokens = torch.full((len(texts), width), PAD_ID)
        for i, t in enumerate(texts):
            tokens[i, : len(t)] = t
        torch.testing.assert_close(model(tokens, torch.tensor([len(t) for t in texts])), alone, atol=1e-6, rtol=0)


def test_gradients_reach_every_weight() -> None:
    model = _cnn().train()
    tokens = torch.randint(2, 40, (4, 7))
    model(tokens, torch.tensor([7, 3, 1, 5])).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _rnntext(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RNNTEXT_CACHE_DIR": str(cwd / "no-cache")}
    return subprocess.run([sys.executable, "-m", "rnntext", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


CNN = ["--model", "cnn", "--embed-dim", "32", "--hidden-dim", "16", "--threads", "1", "--epochs", "3", "-q"]


def test_cnn_through_train_evaluate_predict_and_ensemble(ag_news_small: Path, tmp_path: Path) -> None:
    data = ["--data-dir", str(ag_news_small)]
    r = _rnntext("train", *data, *CNN, "--out", "run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trained = json.loads(r.stdout)["test"]["accuracy"]
    assert trained > 0.35  # 4 classes: above chance (0.25) after 3 epochs on 1,900 rows
    r = _rnntext("evaluate", "run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == trained
    r = _rnntext("predict", "run", "--json", "Stocks slump as oil prices soar", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["probabilities"]) == {"World", "Sports", "Business", "Sci/Tech"}
    # ensembles
    r = _rnntext("train", *data, *CNN, "--epochs", "1", "--ensemble", "2", "--out", "ens", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ens = json.loads(r.stdout)
    r = _rnntext("evaluate", "ens", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == ens["test"]["accuracy"]


def test_cnn_resumes_bit_identically(ag_news_small: Path, tmp_path: Path) -> None:
    from conftest import make_tiny_config
    from rnntext.training.checkpoint import load_checkpoint
    from rnntext.training.trainer import Trainer, resume, train

    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), model__model="cnn",
                           train__epochs=2, train__checkpoint_every=9)
    quiet = {"progress": False, "log": lambda s: None}
    straight = train(cfg, str(tmp_path / "straight"), **quiet)

    class StopAt(Trainer):
        def after_step(self, step, running):
            super().after_step(step, running)
            if self.global_step == 18:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StopAt(cfg, str(tmp_path / "stopped"), **quiet).fit()
    assert load_checkpoint(tmp_path / "stopped").global_step == 18
    resumed = resume(str(tmp_path / "stopped"), **quiet)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_in_compare_and_served(ag_news_small: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnntext.inference.predictor import Predictor
    from rnntext.serving.server import create_app

    (tmp_path / "runs.json").write_text(json.dumps([{"name": "kim", "model": {"model": "cnn", "embed_dim": 16,
                                                                               "hidden_dim": 8}},
                                                     {"name": "bag", "model": {"model": "bag", "embed_dim": 16}}]))
    r = _rnntext("compare", "--data-dir", str(ag_news_small), "--config", "runs.json", "--epochs", "1",
                 "--threads", "1", "--out", "cmp", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kim" in (tmp_path / "cmp" / "report.md").read_text()
    with TestClient(create_app(Predictor.load(tmp_path / "cmp" / "runs" / "kim"))) as client:  # (lifespan)
        got = client.post("/predict", json={"texts": ["Federer wins in straight sets"]})
    assert got.status_code == 200, got.text
    assert got.json()["predictions"][0]["label"] in {"World", "Sports", "Business", "Sci/Tech"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cnn_trains_data_parallel(ag_news_small: Path, tmp_path: Path) -> None:
    port, n = str(_free_port()), 2
    env = dict(os.environ, PYTHONPATH=str(SRC), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(n))
    procs = [subprocess.Popen([sys.executable, "-m", "rnntext", "train", "--data-dir", str(ag_news_small), *CNN,
                               "--epochs", "1", "--out", str(tmp_path / "ddp")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    try:
        results = [(p.wait(240), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.kill()
    for rc, err in results:
        assert rc == 0, err
    assert "distributed: 2 processes" in results[0][1]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["test"]["accuracy"] > 0.25
