"""The fast paths (rnntext.fast) against their stock-torch fallbacks: the GRU inference loop against
nn.GRU, and training with the CPU optimiser path against torch.optim.AdamW with the fallback forced
(RNNTEXT_FAST=0). Private torch calls live only in rnntext/fast (checked here too)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_config
from rnntext import fast
from rnntext.config import POOLINGS
from rnntext.data.encode import Encoded
from rnntext.data.vocab import PAD_ID
from rnntext.fast import adamw, gru
from rnntext.model.recurrent import RecurrentClassifier
from rnntext.training.logits import predict_logits
from rnntext.training.trainer import Trainer

VOCAB, CLASSES = 50, 4
LENGTHS = [1, 17, 5, 40, 2]
SRC = Path(__file__).resolve().parent.parent / "src" / "rnntext"


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(2, VOCAB, (n,), generator=g)
    return tokens, torch.tensor(lengths)


def _model(cell: str, bi: bool, layers: int, pooling: str, packed: bool = False) -> RecurrentClassifier:
    torch.manual_seed(0)
    return RecurrentClassifier(VOCAB, CLASSES, cell=cell, embed_dim=8, hidden_dim=16, num_layers=layers,
                               bidirectional=bi, dropout=0.2, embed_dropout=0.1, pooling=pooling, packed=packed,
                               pack_on_cpu=True).eval()


def _encoded(tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
    return Encoded(torch.cat([t[:n] for t, n in zip(tokens, lengths)]),
                   torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]), torch.zeros(len(lengths)))


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
def test_gru_loop_equals_nn_gru(bi: bool, layers: int, pooling: str, monkeypatch) -> None:
    monkeypatch.setattr(gru, "MIN_BATCH", 1)  # these batches are small
    model = _model("gru", bi, layers, pooling)
    tokens, lengths = _batch(LENGTHS)
    expected = model(tokens, lengths).detach()  # the model's own forward: nn.GRU
    forward = fast.inference_forward(model, torch.device("cpu"))
    assert isinstance(forward, gru.GRUInference)
    with torch.inference_mode():
        got = forward(tokens, lengths)
        assert forward._cache is not None
        monkeypatch.setattr(gru, "MIN_BATCH", 6)  # a batch of 5 runs nn.GRU
        torch.testing.assert_close(forward(tokens, lengths), got, atol=1e-5, rtol=0)
        monkeypatch.setattr(gru, "MIN_BATCH", 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # a weight changed in place (copy_, mul_) rebuilds the tables
        model.embedding.weight.mul_(2)
        model.layers[0][0].weight_ih_l0.add_(0.1)
        torch.testing.assert_close(forward(tokens, lengths), model(tokens, lengths), atol=1e-5, rtol=0)
    model.train()
    with torch.no_grad():  # training mode never uses the tables
        model.embed_dropout.p = model.dropout.p = 0.0
        torch.testing.assert_close(forward(tokens, lengths), model(tokens, lengths), atol=0, rtol=0)


def test_fallback_forced_gives_the_models_own_forward(monkeypatch) -> None:
    model = _model("gru", True, 1, "meanmax")
    cpu = torch.device("cpu")
    assert isinstance(fast.inference_forward(model, cpu), gru.GRUInference)
    monkeypatch.setenv("RNNTEXT_FAST", "0")
    assert not fast.enabled()
    assert fast.inference_forward(model, cpu) is model
    assert fast.prediction_batch(model, cpu) == 256


def test_prediction_batch_is_large_only_for_the_gru_loop() -> None:
    cpu = torch.device("cpu")
    assert fast.prediction_batch(_model("gru", True, 1, "meanmax"), cpu) == gru.BATCH
    assert fast.prediction_batch(_model("gru", True, 2, "meanmax"), cpu) == 256
    assert fast.prediction_batch(_model("lstm", True, 1, "meanmax"), cpu) == 256  # nn.LSTM: slower at 1024
    assert fast.prediction_batch(_model("gru", True, 1, "meanmax", packed=True), cpu) == 256  # really packs
    assert fast.prediction_batch(_model("gru", True, 1, "meanmax"), torch.device("cuda")) == 256


def test_predictions_follow_fused_adamw_steps(monkeypatch) -> None:
    # torch's fused AdamW updates weights without bumping their version counters: each evaluation
    # between training steps builds its tables anew
    monkeypatch.setattr(gru, "MIN_BATCH", 1)
    model = _model("gru", True, 1, "meanmax")
    tokens, lengths = _batch(LENGTHS)
    data = _encoded(tokens, lengths)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    for _ in range(3):
        got = predict_logits(model, data, torch.device("cpu"))
        model.eval()
        expected = model(tokens, lengths).detach()
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
        model.train()
        model(tokens, lengths).logsumexp(1).sum().backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("overrides", [
    dict(model__model="gru"),  # the defaults' recipe: bi-GRU, one-cycle, weight decay, clipping, dropout
    dict(model__model="lstm", model__bidirectional=False, model__pooling="last", train__clip=None,
         train__schedule="constant", train__batch_size=16, train__overlap_update=True, train__threads=2),
    dict(model__model="bag", train__batch_size=64),
    dict(model__model="cnn"),
], ids=["gru", "lstm-overlapped", "bag", "cnn"])
def test_training_fast_path_equals_the_stock_fallback(ag_news_small: Path, overrides, monkeypatch) -> None:
    """The CPU optimiser path (sparse embedding gradient made dense, direct fused step, overlapped
    update) against torch.optim.AdamW(fused=True) with dense gradients: the same weights, up to the
    order in which duplicate words' gradients are summed."""
    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__epochs=2, **overrides)
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("RNNTEXT_FAST", mode)
        t = Trainer(cfg, progress=False, log=lambda s: None)
        assert isinstance(t.optimizer, adamw.AdamW) is (mode == "1")
        assert t.model.embedding.sparse is (mode == "1")
        results[mode] = t.fit()
    fast_state, stock_state = results["1"].model.state_dict(), results["0"].model.state_dict()
    for k in fast_state:
        torch.testing.assert_close(fast_state[k], stock_state[k], atol=2e-5, rtol=1e-4, msg=k)
    assert results["1"].metrics["test"]["accuracy"] == pytest.approx(results["0"].metrics["test"]["accuracy"],
                                                                       abs=0.01)


def test_lazy_embedding_needs_the_fast_path(ag_news_small: Path, monkeypatch) -> None:
    from rnntext.errors import ConfigError

    monkeypatch.setenv("RNNTEXT_FAST", "0")
    cfg = make_tiny_config(data__dataset="ag_news", data__data_dir=str(ag_news_small), train__lazy_embedding=True)
    with pytest.raises(ConfigError, match="lazy-embedding needs"):
        Trainer(cfg, progress=False, log=lambda s: None)


def test_fast_paths_off_for_an_untested_torch(monkeypatch) -> None:
    monkeypatch.setattr(fast, "_torch_version", lambda: (fast.TESTED_TORCH[1][0], fast.TESTED_TORCH[1][1]))
    assert not fast.enabled()
    monkeypatch.setattr(fast, "_torch_version", lambda: fast.TESTED_TORCH[0])
    assert fast.enabled()


def test_private_torch_calls_only_in_the_fast_package() -> None:
    private = re.compile(r"torch\._[a-z]|\._parameters\[|\._version\b|_fused_adamw_|_foreach_")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if "fast" not in p.relative_to(SRC).parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not offenders, offenders
