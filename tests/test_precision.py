"""--precision bf16: the GRU inference loop in bfloat16 (rnntext.fast.gru), opt-in; float32 stays the default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnntext import fast
from rnntext.config import ModelConfig
from rnntext.errors import ConfigError
from rnntext.fast import gru
from rnntext.inference.predictor import Predictor
from rnntext.model.registry import build_model

pytestmark = pytest.mark.skipif(not fast.enabled(), reason="the fast paths are off")


@pytest.mark.parametrize("layers,bidirectional,pooling", [(1, True, "meanmax"), (2, True, "last"), (1, False, "mean"),
                                                         (2, False, "max")])
def test_bf16_loop_is_close_to_float32(layers: int, bidirectional: bool, pooling: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(model="gru", embed_dim=16, hidden_dim=16, num_layers=layers, bidirectional=bidirectional,
                      pooling=pooling)
    cfg.vocab_size, cfg.num_classes = 50, 3
    model = build_model(cfg).eval()
    lengths = torch.randint(1, 30, (64,))
    tokens = torch.randint(1, 50, (64, int(lengths.max())))
    tokens[torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = 0
    with torch.no_grad():
        expected = model(tokens, lengths).softmax(1)
        got = gru.GRUInference(model, torch.bfloat16)(tokens, lengths).softmax(1)
    assert got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 0.02


def test_predictor_bf16(trained_run: Path) -> None:
    texts = [f"oil prices rose {i} times as stocks fell" if i % 2 else f"the team won game {i}" for i in range(80)]
    fp32 = Predictor.load(trained_run, "cpu").probabilities(texts)
    bf16 = Predictor.load(trained_run, "cpu", precision="bf16").probabilities(texts)
    assert float((fp32 - bf16).abs().max()) < 0.02
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() >= 0.95
    with pytest.raises(ConfigError, match="precision"):
        Predictor.load(trained_run, "cpu", precision="fp8")
