"""Explanations (rnntext.inference.explain, `rnntext explain`, `predict --explain`): on generated
data where one keyword decides the class, the keyword gets the largest attribution; padding gets
none; every model family, n-grams and ensembles work."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import rnntext
from conftest import make_tiny_config
from rnntext.errors import ConfigError
from rnntext.inference.predictor import Predictor

pytest.importorskip("captum")

KEYWORDS = {"red": "crimson", "green": "emerald", "blue": "azure"}
FILLER = [f"w{i}" for i in range(150)]


def keyword_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """n texts of 5-14 random filler words with the class's keyword at a random position."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(KEYWORDS))
        words = rng.choices(FILLER, k=rng.randint(5, 14))
        words.insert(rng.randint(0, len(words)), KEYWORDS[label])
        rows.append((" ".join(words), label))
    return rows


# each family as it learns the task in a few epochs on 1,200 rows
FAMILIES = {
    "gru": {},
    "lstm": {"model__bidirectional": False, "train__lr": 1e-2},
    "cnn": {"model__hidden_dim": 16},
    "bag": {"train__lr": 2e-2},
}


@pytest.fixture(scope="module")
def keyword_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import write_table

    d = tmp_path_factory.mktemp("keywords")
    return (write_table(d / "train.csv", ["text", "label"], keyword_rows(1200, seed=1)),
            write_table(d / "test.csv", ["text", "label"], keyword_rows(100, seed=2)))


def _train(name: str, data: tuple[Path, Path], out: Path, **extra) -> Path:
    cfg = make_tiny_config(data__train=str(data[0]), data__test=str(data[1]), model__model=name, train__epochs=3,
                           model__dropout=0.0, model__embed_dropout=0.0, **{**FAMILIES[name], **extra})
    rnntext.train(cfg, str(out), progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def runs(keyword_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keyword_runs")
    return {name: _train(name, keyword_data, d / name) for name in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_keyword_gets_the_largest_attribution(runs: dict[str, Path], family: str) -> None:
    predictor = rnntext.load(runs[family], device="cpu", threads=1)
    rows = keyword_rows(100, seed=3)
    texts = [t for t, _ in rows]
    out = predictor.explain(texts)
    assert sum(e.label == y for e, (_, y) in zip(out, rows)) >= 95  # the model learnt the task
    hits = 0
    for e, (text, label) in zip(out, rows):
        assert e.tokens == text.split() and len(e.attributions) == len(e.tokens)
        top = e.tokens[max(range(len(e.tokens)), key=e.attributions.__getitem__)]
        hits += top == KEYWORDS[label]
        # completeness: the attributions add up to the change of probability from the all-<pad> baseline
        assert abs(e.delta) < 0.02
    assert hits >= 90, f"{family}: the keyword was on top in {hits} of 100 texts"
    # occlusion finds it too
    occ = predictor.explain(texts[:20], method="occlusion")
    assert sum(e.tokens[max(range(len(e.tokens)), key=e.attributions.__getitem__)] == KEYWORDS[y]
               for e, (_, y) in zip(occ, rows)) >= 18


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_gets_no_attribution(runs: dict[str, Path], family: str) -> None:
    """A text explained beside longer ones (padded in the same batch) gets what it gets alone."""
    predictor = rnntext.load(runs[family], device="cpu", threads=1)
    short = "w1 crimson w2"
    long = " ".join(FILLER[:40]) + " azure"
    alone = predictor.explain([short])[0]
    batched = predictor.explain([long, short, long])[1]
    assert batched.tokens == alone.tokens == short.split()
    assert batched.attributions == pytest.approx(alone.attributions, abs=1e-5)
    assert batched.delta == pytest.approx(alone.delta, abs=1e-5)


def test_a_label_other_than_the_predicted(runs: dict[str, Path]) -> None:
    predictor = rnntext.load(runs["gru"], device="cpu", threads=1)
    e = predictor.explain("w3 w4 azure w5", label="red")[0]
    assert (e.predicted, e.label) == ("blue", "red")
    assert e.attributions[2] < 0  # the keyword of blue speaks against red
    with pytest.raises(ConfigError, match="unknown label 'purple'"):
        predictor.explain("w1", label="purple")
    assert predictor.explain([]) == []
    empty = predictor.explain("   ")[0]  # no words: nothing to attribute, still a prediction
    assert empty.tokens == [] and empty.attributions == [] and set(empty.probabilities) == set(KEYWORDS)


def test_ngrams_are_shared_out_among_their_words(keyword_data: tuple[Path, Path], tmp_path: Path) -> None:
    # one model (--members 1): _baseline reads a single model's baseline probability; a members run's
    # completeness is tests/test_members_explain.py's
    run = _train("bag", keyword_data, tmp_path / "bag2", data__ngrams=2, model__members=1)
    predictor = rnntext.load(run, device="cpu", threads=1)
    e = predictor.explain("w1 w2 emerald w3")[0]
    assert e.tokens == ["w1", "w2", "emerald", "w3"]
    assert [g for g, _ in e.ngrams] == ["w1 w2", "w2 emerald", "emerald w3"]
    # nothing lost in the sharing: the words' attributions still add up to the change of probability
    p = e.probabilities["green"]
    assert sum(e.attributions) == pytest.approx(p - _baseline(predictor, "green"), abs=0.01)
    assert e.tokens[max(range(4), key=e.attributions.__getitem__)] == "emerald"


def _baseline(predictor: Predictor, label: str) -> float:
    """p(label) for the all-<pad> text of 4 tokens, the baseline."""
    import torch

    from rnntext.inference.explain import _PositionModel

    run = predictor.run
    f = _PositionModel(run.model)
    with torch.no_grad():
        return float(f(torch.zeros(1, 4, dtype=torch.long), torch.tensor([4]))[0, predictor.labels.index(label)])


def test_an_ensemble_explains_with_the_mean_of_its_members(runs: dict[str, Path]) -> None:
    members = [rnntext.load(runs[n], device="cpu", threads=1) for n in ("gru", "cnn")]
    both = rnntext.load([runs["gru"], runs["cnn"]], device="cpu", threads=1)
    text = "w7 w8 crimson w9 w10"
    each = [m.explain(text)[0] for m in members]
    e = both.explain(text)[0]
    assert e.label == "red"
    assert e.attributions == pytest.approx([(a + b) / 2 for a, b in zip(each[0].attributions, each[1].attributions)],
                                           abs=1e-6)
    assert e.delta == pytest.approx((each[0].delta + each[1].delta) / 2, abs=1e-6)


def test_an_ensemble_whose_members_split_words_differently(keyword_data: tuple[Path, Path], runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    other = _train("bag", keyword_data, tmp_path / "ws", data__tokenizer="whitespace")
    both = rnntext.load([runs["bag"], other], device="cpu", threads=1)
    with pytest.raises(ConfigError, match="split texts into words differently"):
        both.explain("w1 crimson")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rnntext.cli import main

    code = main([*args, "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_line(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = str(runs["gru"])
    code, out, err = _cli(capsys, "explain", run, "w1 azure w2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("blue ") and "integrated gradients, delta" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["w1", "azure", "w2"]
    code, out, err = _cli(capsys, "explain", run, "--json", "--label", "green", "--method", "occlusion", "w1 azure w2")
    assert code == 0, err
    d = json.loads(out)
    assert d["text"] == "w1 azure w2" and d["label"] == "green" and d["predicted"] == "blue"
    assert d["method"] == "occlusion" and d["delta"] is None
    assert [a["token"] for a in d["attributions"]] == ["w1", "azure", "w2"]
    code, out, err = _cli(capsys, "predict", run, "--explain", "--json", "w1 azure w2", "w3 crimson")
    assert code == 0, err
    first, second = (json.loads(x) for x in out.splitlines())
    assert first["label"] == "blue" and set(first["probabilities"]) == set(KEYWORDS)
    assert [a["token"] for a in second["explanation"]["attributions"]] == ["w3", "crimson"]
    code, out, err = _cli(capsys, "explain", run, "--label", "purple", "w1")
    assert code == 2 and "--label 'purple' is not a class of this model" in err


def test_command_line_reads_a_file(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "texts.txt"
    f.write_text("w1 emerald\n\nw2 crimson\n")
    code, out, err = _cli(capsys, "explain", str(runs["cnn"]), "--file", str(f), "--json")
    assert code == 0, err
    assert [json.loads(x)["predicted"] for x in out.splitlines()] == ["green", "red"]


def test_server_explains(runs: dict[str, Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnntext.serving.server import Limits, create_app

    predictor = rnntext.load(runs["bag"], device="cpu", threads=1)
    want = predictor.explain(["w1 azure w2", "emerald"])
    with TestClient(create_app(predictor, limits=Limits(max_texts=2, max_chars=50))) as client:
        r = client.post("/explain", json={"texts": ["w1 azure w2", "emerald"]})
        assert r.status_code == 200, r.text
        got = r.json()["explanations"]
        assert [e["label"] for e in got] == ["blue", "green"]
        assert [a["token"] for a in got[0]["attributions"]] == ["w1", "azure", "w2"]
        assert [a["attribution"] for a in got[0]["attributions"]] == pytest.approx(want[0].attributions, abs=1e-5)
        r = client.post("/explain", json={"texts": ["w1 azure w2"], "label": "red"})
        assert r.status_code == 200 and r.json()["explanations"][0]["label"] == "red"
        assert client.post("/explain", json={"texts": ["w1"], "label": "purple"}).status_code == 422
        assert client.post("/explain", json={"texts": []}).status_code == 422
        assert client.post("/explain", json={"texts": "w1"}).status_code == 422
        assert client.post("/explain", json={"texts": ["w1"], "other": 1}).status_code == 422
        assert client.post("/explain", content=b"{not json", headers={"content-type": "application/json"}
                           ).status_code == 422
        assert client.post("/explain", json={"texts": ["a", "b", "c"]}).status_code == 413
        assert client.post("/explain", json={"texts": ["x" * 51]}).status_code == 413
        assert "/explain" in client.get("/openapi.json").json()["paths"]


def test_server_bounds_the_explanations_waiting(runs: dict[str, Path]) -> None:
    """Explanations waiting for the model's thread are bounded like the prediction queue: 503 past it."""
    pytest.importorskip("fastapi")
    import asyncio

    import httpx

    from rnntext.serving.server import create_app

    app = create_app(rnntext.load(runs["gru"], device="cpu", threads=1), max_queue_texts=2)
    text = " ".join(FILLER[:60]) + " azure"

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            rs = await asyncio.gather(*(client.post("/explain", json={"texts": [text, text]}) for _ in range(4)))
        return sorted(r.status_code for r in rs)

    codes = asyncio.run(go())
    assert codes[0] == 200 and codes[-1] == 503, codes
    assert set(codes) == {200, 503}
