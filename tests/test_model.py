"""The recurrent classifier: packed == padded, padding invariance, `last` pooling, agreement with
PyTorch's own (bidirectional, multi-layer) modules, the tutorial presets, and the bag model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rnntext.cli import build_parser, config_from_args
from rnntext.config import CELLS, POOLINGS, ModelConfig
from rnntext.data.vocab import PAD_ID
from rnntext.model import batch_layout, build_model
from rnntext.model.bag import BagClassifier
from rnntext.model.recurrent import RecurrentClassifier, reverse_within_length

VOCAB, CLASSES = 50, 4
LENGTHS = [1, 17, 5, 40, 2]  # very different lengths in one batch


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.full((len(lengths), T), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(2, VOCAB, (n,), generator=g)
    return tokens, torch.tensor(lengths)


def _model(cell: str, bidirectional: bool, layers: int, pooling: str, packed: bool = False) -> RecurrentClassifier:
    torch.manual_seed(0)
    m = RecurrentClassifier(VOCAB, CLASSES, cell=cell, embed_dim=8, hidden_dim=16, num_layers=layers,
                            bidirectional=bidirectional, dropout=0.2, embed_dropout=0.1, pooling=pooling,
                            packed=packed, pack_on_cpu=True)  # really pack here, on the CPU
    return m.eval()


COMBOS = list(itertools.product(CELLS, [False, True], [1, 2], POOLINGS))


def _id(combo: tuple) -> str:
    cell, bi, layers, pooling = combo
    return f"{cell}-{'bi' if bi else 'uni'}-{layers}l-{pooling}"


@pytest.mark.parametrize("combo", COMBOS, ids=[_id(c) for c in COMBOS])
def test_packed_equals_padded(combo: tuple) -> None:
    cell, bi, layers, pooling = combo
    model = _model(cell, bi, layers, pooling)
    tokens, lengths = _batch(LENGTHS)
    with torch.no_grad():
        model.packed = False
        padded = model(tokens, lengths)
        model.packed = True
        packed = model(tokens, lengths)
    assert padded.dtype == torch.float32
    assert padded.shape == (len(LENGTHS), CLASSES)
    assert torch.allclose(padded, packed, atol=1e-5, rtol=0), (padded - packed).abs().max()


@pytest.mark.parametrize("combo", COMBOS, ids=[_id(c) for c in COMBOS])
def test_forward_pools_directions_as_pool_of_encode(combo: tuple) -> None:
    # forward() pools the backward direction in its reading order and, in eval mode, embeds the reversed
    # token ids; it must equal pooling the text-ordered encode() output, in eval and in training mode
    cell, bi, layers, pooling = combo
    model = _model(cell, bi, layers, pooling)
    tokens, lengths = _batch(LENGTHS)
    with torch.no_grad():
        expected = model.fc(model.pool(model.encode(tokens, lengths), lengths))
        assert torch.allclose(model(tokens, lengths), expected, atol=1e-6, rtol=0)
        model.train()
        torch.manual_seed(1)
        got = model(tokens, lengths)
        torch.manual_seed(1)
        expected = model.fc(model.dropout(model.pool(model.encode(tokens, lengths), lengths)))
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("combo", COMBOS, ids=[_id(c) for c in COMBOS])
def test_padding_does_not_change_a_text(combo: tuple, packed: bool) -> None:
    """A text's logits alone equal its logits beside a much longer text (and beside garbage padding)."""
    cell, bi, layers, pooling = combo
    model = _model(cell, bi, layers, pooling, packed)
    tokens, lengths = _batch([6, 60])
    with torch.no_grad():
        alone = model(tokens[:1, :6], lengths[:1])
        together = model(tokens, lengths)
        # whatever sits past a text's length must be ignored, not only <pad>
        noisy = tokens.clone()
        noisy[0, 6:] = 7
        with_noise = model(noisy, lengths)
    assert torch.allclose(alone[0], together[0], atol=1e-5, rtol=0)
    assert torch.allclose(together, with_noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_last_pooling_is_the_last_real_token(cell: str) -> None:
    model = _model(cell, False, 1, "last")
    tokens, lengths = _batch([3, 9])
    with torch.no_grad():
        out = model.encode(tokens, lengths)
        pooled = model.pool(out, lengths)
        assert torch.allclose(pooled[0], out[0, 2]) and torch.allclose(pooled[1], out[1, 8])
        # ... which is the final hidden state of the cell run on the unpadded text
        emb = model.embedding(tokens[:1, :3])
        h = model.layers[0][0](emb)[1]
        h = h[0] if cell == "lstm" else h
        assert torch.allclose(pooled[0], h[0, 0], atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_last_is_forward_end_and_backward_start(cell: str) -> None:
    model = _model(cell, True, 1, "last")
    tokens, lengths = _batch([4, 11])
    with torch.no_grad():
        out = model.encode(tokens, lengths)
        pooled = model.pool(out, lengths)
    H = model.hidden_dim
    assert torch.allclose(pooled[0, :H], out[0, 3, :H]) and torch.allclose(pooled[0, H:], out[0, 0, H:])


@pytest.mark.parametrize("cell", CELLS)
def test_matches_pytorch_bidirectional_multilayer_on_packed_input(cell: str) -> None:
    """Our per-direction modules compute what nn.RNN/LSTM/GRU(bidirectional, num_layers=2) computes
    on packed sequences, the reference for variable-length input."""
    model = _model(cell, True, 2, "mean")
    ref = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](8, 16, num_layers=2, bidirectional=True,
                                                                   batch_first=True).eval()
    with torch.no_grad():
        for layer in range(2):
            for d, suffix in enumerate(["", "_reverse"]):
                ours = model.layers[layer][d]
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(ref, f"{name}_l{layer}{suffix}").copy_(getattr(ours, f"{name}_l0"))
        tokens, lengths = _batch(LENGTHS)
        emb = model.embedding(tokens)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        expected = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True)[0]
        for is_packed in (False, True):
            model.packed = is_packed
            got = model.encode(tokens, lengths)
            for i, n in enumerate(LENGTHS):
                assert torch.allclose(got[i, :n], expected[i, :n], atol=1e-5), (cell, is_packed, i)


def test_packed_model_runs_padded_on_cpu_unless_told() -> None:
    """On a CPU a packed model runs as masked padding (faster, same logits); pack_on_cpu packs."""
    model = _model("lstm", True, 1, "last", packed=True).eval()
    tokens, lengths = _batch(LENGTHS)
    with torch.no_grad():
        packed_out = model.encode(tokens, lengths)
        packed_logits = model(tokens, lengths)
        model.pack_on_cpu = False
        assert not model.packs_on(torch.device("cpu")) and model.packs_on(torch.device("cuda"))
        padded_out = model.encode(tokens, lengths)
        padded_logits = model(tokens, lengths)
    short = int(torch.argmin(lengths))
    n = int(lengths[short])
    assert torch.all(packed_out[short, n:] == 0)  # pad_packed_sequence fills zeros past the length
    assert torch.any(padded_out[short, n:] != 0)  # the padded kernels ran over the padding
    assert torch.allclose(packed_logits, padded_logits, atol=1e-5, rtol=0)


def test_masked_mean_and_max() -> None:
    model = _model("gru", False, 1, "meanmax")
    out = torch.tensor([[[1.0], [3.0], [100.0]], [[-2.0], [-4.0], [-6.0]]])
    pooled = model.pool(out, torch.tensor([2, 3]))
    assert pooled.tolist() == [[2.0, 3.0], [-4.0, -2.0]]


def test_reverse_within_length() -> None:
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])[:, :, None]
    r = reverse_within_length(x, torch.tensor([3, 4]))[:, :, 0]
    assert r.tolist() == [[3, 2, 1, 0], [7, 6, 5, 4]]


def _preset(name: str) -> ModelConfig:
    args = build_parser().parse_args(["train", "--preset", name, "--train", "unused.csv"])
    cfg = config_from_args(args)
    assert cfg.train.batch_size == 16 and cfg.train.lr == 1e-3 and cfg.train.schedule == "constant"
    m = cfg.model
    m.vocab_size, m.num_classes = 100, 4
    return m


@pytest.mark.parametrize(
    ("preset", "cell_class", "pooling", "packed"),
    [("tutorial-rnn", nn.RNN, "mean", False), ("tutorial-lstm", nn.LSTM, "last", False),
     ("tutorial-lstm-packed", nn.LSTM, "last", True)],
)
def test_tutorial_presets_build_the_tutorial_models(preset: str, cell_class: type, pooling: str, packed: bool) -> None:
    model = build_model(_preset(preset))
    assert isinstance(model, RecurrentClassifier)
    assert model.pooling == pooling and model.packed is packed and model.directions == 1
    assert len(model.layers) == 1 and len(model.layers[0]) == 1
    cell = model.layers[0][0]
    assert type(cell) is cell_class and cell.input_size == 64 and cell.hidden_size == 32
    assert model.embedding.embedding_dim == 64 and model.embedding.padding_idx == PAD_ID
    assert model.fc.in_features == 32 and model.fc.out_features == 4
    tokens, lengths = _batch([3, 7])
    assert model.eval()(tokens.clamp(max=99), lengths).shape == (2, 4)


def test_cli_flags_override_a_preset() -> None:
    args = build_parser().parse_args(["train", "--preset", "tutorial-lstm", "--train", "x.csv", "--model", "gru",
                                      "--bidirectional", "--hidden-dim", "8"])
    m = config_from_args(args).model
    assert (m.model, m.bidirectional, m.hidden_dim, m.embed_dim, m.pooling) == ("gru", True, 8, 64, "last")


def test_build_model_from_config() -> None:
    cfg = ModelConfig(model="lstm", embed_dim=12, hidden_dim=10, num_layers=3, bidirectional=True,
                      pooling="meanmax", vocab_size=30, num_classes=5)
    model = build_model(cfg)
    assert len(model.layers) == 3 and all(len(layer) == 2 for layer in model.layers)
    assert model.layers[1][0].input_size == 20
    assert model.fc.in_features == 10 * 2 * 2
    assert batch_layout(cfg) == "padded" and model.batch_layout == "padded"


def test_bag_model_forward() -> None:
    cfg = ModelConfig(model="bag", embed_dim=6, vocab_size=20, num_classes=3, dropout=0.0)
    model = build_model(cfg).eval()
    assert isinstance(model, BagClassifier) and batch_layout(cfg) == "flat"
    assert torch.count_nonzero(model.embedding.weight[PAD_ID]) == 0
    tokens = torch.tensor([2, 3, 4, 5, 6, 7])
    offsets = torch.tensor([0, 3, 4])
    lengths = torch.tensor([3, 1, 2])
    with torch.no_grad():
        logits = model(tokens, lengths, offsets)
        E = model.embedding.weight
        means = torch.stack([E[[2, 3, 4]].mean(0), E[[5]].mean(0), E[[6, 7]].mean(0)])
        assert torch.allclose(logits, model.fc(means), atol=1e-6)
    assert logits.shape == (3, 3)


def test_training_mode_gradients_reach_every_layer() -> None:
    model = _model("lstm", True, 2, "meanmax").train()
    tokens, lengths = _batch(LENGTHS)
    model(tokens, lengths).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
