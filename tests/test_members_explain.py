"""Members runs (`--members K`, model/members.py) on the paths that look inside a model: explanations
(`rnntext explain`, the Python API, the server's /explain), `--precision bf16`, `--encoder`, `rnntext compare`
and `rnntext tune`.

A members model's explanation is the mean of its members' attributions toward the class the members model
predicts, the rule an ensemble of runs already follows: the tests build each member as a plain run from the
same weights and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rnntext
from conftest import make_tiny_config, write_table
from rnntext import fast
from rnntext.cli import main
from rnntext.config import RunConfig
from rnntext.fast import gru
from rnntext.inference.predictor import Predictor
from rnntext.model.members import MembersClassifier, combine
from rnntext.model.registry import build_model
from rnntext.training.rundir import load_run, save_run, state_to_cpu
from test_explain import KEYWORDS, keyword_rows

pytest.importorskip("captum")

TEXTS = ["w7 w8 crimson w9 w10", "azure w3", "w1 w2 w3 emerald w4 w5 w6 w7 w8 w9 w10 w11", "w40"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("members_keywords")
    return (write_table(d / "train.csv", ["text", "label"], keyword_rows(1200, seed=1)),
            write_table(d / "test.csv", ["text", "label"], keyword_rows(60, seed=2)))


def _train(data: tuple[Path, Path], out: Path, **extra: object) -> Path:
    cfg = make_tiny_config(data__train=str(data[0]), data__test=str(data[1]), model__members=2,
                           model__dropout=0.0, model__embed_dropout=0.0, **extra)
    rnntext.train(cfg, str(out), progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def runs(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("members_runs")
    # a GRU that learns the task; a bag model with n-grams and a wide part (each member a WideClassifier)
    return {"gru": _train(data, d / "gru", train__epochs=3),
            "wide": _train(data, d / "wide", model__model="bag", data__ngrams=2, model__wide_ngrams=2,
                           model__wide_buckets=512, model__wide_dim=4, train__lr=2e-2)}


def split_members(run_dir: Path, out: Path) -> list[Path]:
    """Each member of a members run as a plain run directory (members 1) holding that member's weights."""
    run = load_run(run_dir)
    assert isinstance(run.model, MembersClassifier) and len(run.model.each()) == 2
    cfg = RunConfig.from_dict(run.config.to_dict())
    cfg.model.members = 1
    dirs = []
    for k, member in enumerate(run.model.each()):
        plain = build_model(cfg.model)
        assert not isinstance(plain, MembersClassifier)
        plain.load_state_dict(member.state_dict())  # strict: the same architecture, key for key
        dirs.append(save_run(out / f"member{k}", cfg, run.vocab, run.label_names, state_to_cpu(plain)))
    return dirs


def _load(path: Path | list[Path]) -> Predictor:
    return rnntext.load(path, device="cpu", threads=1)


@pytest.mark.parametrize("name", ["gru", "wide"])
@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_a_members_explanation_is_the_mean_of_its_members_explained_alone(runs: dict[str, Path], name: str,
                                                                           method: str, tmp_path: Path) -> None:
    together = _load(runs[name])
    alone = [_load(d) for d in split_members(runs[name], tmp_path)]
    got = together.explain(TEXTS, method=method)
    probs = together.probabilities(TEXTS)
    for i, e in enumerate(got):
        # toward the class the members model predicts (the mean of the members' logits)
        assert e.predicted == e.label == together.labels[int(probs[i].argmax())]
        each = [p.explain(TEXTS[i], label=e.label, method=method)[0] for p in alone]
        assert e.tokens == each[0].tokens == each[1].tokens == TEXTS[i].split()
        assert e.attributions == pytest.approx([(a + b) / 2 for a, b in zip(each[0].attributions,
                                                                            each[1].attributions)], abs=1e-6)
        assert max(map(abs, e.attributions)) > 1e-4  # not all zero: the members' own tables were read
        if method == "ig":
            assert e.delta == pytest.approx((each[0].delta + each[1].delta) / 2, abs=1e-6)
        else:
            assert e.delta is None
        if name == "wide":  # n-grams are averaged the same way
            assert [g for g, _ in e.ngrams] == [g for g, _ in each[0].ngrams]
            assert [s for _, s in e.ngrams] == pytest.approx(
                [(a + b) / 2 for (_, a), (_, b) in zip(each[0].ngrams, each[1].ngrams)], abs=1e-6)
    # member 0 alone is not the answer (what reading `model.embedding` would have given)
    first = alone[0].explain(TEXTS[0], label=got[0].label, method=method)[0]
    assert first.attributions != pytest.approx(got[0].attributions, abs=1e-4)


def test_completeness_holds_for_the_members_mean(runs: dict[str, Path]) -> None:
    """Integrated gradients' completeness, as for one model: the attributions add up (within the reported
    delta) to the change of probability from the all-<pad> baseline, here the members' mean change; and on
    the keyword task the keyword gets the largest attribution."""
    from rnntext.inference.explain import _PositionModel

    predictor = _load(runs["gru"])
    run = predictor.run
    rows = keyword_rows(40, seed=3)
    out = predictor.explain([t for t, _ in rows])
    assert sum(e.label == y for e, (_, y) in zip(out, rows)) >= 38  # the model learnt the task
    hits = 0
    for e, (text, label) in zip(out, rows):
        ids = torch.tensor([run.vocab.encode(text.split())])
        lengths = torch.tensor([ids.shape[1]])
        c = predictor.labels.index(e.label)
        with torch.no_grad():
            change = [float(f(ids, lengths)[0, c] - f(torch.zeros_like(ids), lengths)[0, c])
                      for f in (_PositionModel(m) for m in run.model.each())]
        assert sum(e.attributions) - e.delta == pytest.approx(sum(change) / len(change), abs=1e-5)
        assert abs(e.delta) < 0.02
        hits += e.tokens[max(range(len(e.tokens)), key=e.attributions.__getitem__)] == KEYWORDS[label]
    assert hits >= 36, f"the keyword was on top in {hits} of 40 texts"


def test_in_an_ensemble_a_members_run_weighs_as_one_run(runs: dict[str, Path], tmp_path: Path) -> None:
    plain = split_members(runs["gru"], tmp_path)[0]
    both = _load([runs["gru"], plain])
    e = both.explain(TEXTS[0])[0]
    members = _load(runs["gru"]).explain(TEXTS[0], label=e.label)[0]
    one = _load(plain).explain(TEXTS[0], label=e.label)[0]
    assert e.attributions == pytest.approx([(a + b) / 2 for a, b in zip(members.attributions, one.attributions)],
                                           abs=1e-6)
    assert e.delta == pytest.approx((members.delta + one.delta) / 2, abs=1e-6)


def test_position_model_refuses_a_members_model(runs: dict[str, Path]) -> None:
    """The one-model attribution layer cannot stand for K word tables: it says so rather than explain member 0."""
    from rnntext.inference.explain import _PositionModel, attribute

    model = load_run(runs["gru"]).model
    with pytest.raises(ValueError, match="member by member"):
        _PositionModel(model)
    with pytest.raises(ValueError, match="member by member"):
        attribute(model, [[2, 3]], [0], torch.device("cpu"))


def test_command_line_and_server_explain_a_members_run(runs: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnntext.serving.server import create_app

    predictor = _load(runs["gru"])
    want = predictor.explain(TEXTS[:2])
    assert main(["explain", str(runs["gru"]), "--json", "--threads", "1", *TEXTS[:2]]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["label"] for g in got] == [w.label for w in want]
    assert [a["attribution"] for a in got[0]["attributions"]] == pytest.approx(want[0].attributions, abs=1e-5)
    with TestClient(create_app(predictor)) as client:
        r = client.post("/explain", json={"texts": TEXTS[:2]})
        assert r.status_code == 200, r.text
        served = r.json()["explanations"]
        assert [a["attribution"] for a in served[1]["attributions"]] == pytest.approx(want[1].attributions,
                                                                                       abs=1e-5)
        page = client.get("/")
        assert page.status_code == 200 and "rnntext" in page.text


@pytest.mark.skipif(not fast.enabled(), reason="the fast paths are off")
def test_bf16_runs_each_member_in_bfloat16(runs: dict[str, Path]) -> None:
    """--precision bf16 on a members GRU: each member's recurrence in bfloat16, their logits averaged."""
    texts = [t for t, _ in keyword_rows(40, seed=4)]
    fp32 = Predictor.load(runs["gru"], "cpu", precision="fp32", calibration=False)
    bf16 = Predictor.load(runs["gru"], "cpu", precision="bf16", calibration=False)
    model = bf16.run.model
    assert isinstance(model, MembersClassifier)
    run = bf16.run
    ids = [run.vocab.encode(t.split()) for t in texts]
    lengths = torch.tensor([len(r) for r in ids])
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(ids):
        tokens[i, : len(r)] = torch.tensor(r)
    with torch.no_grad():
        want = combine([gru.GRUInference(m, torch.bfloat16)(tokens, lengths) for m in model.each()]).softmax(1)
        got = bf16.forwards[0](tokens, lengths, None).softmax(1)
    assert torch.allclose(got, want, atol=1e-6)
    p16, p32 = bf16.probabilities(texts), fp32.probabilities(texts)
    assert not torch.equal(p16, p32)  # bfloat16 ran
    assert float((p16 - p32).abs().max()) < 0.02 and torch.equal(p16.argmax(1), p32.argmax(1))


def test_every_member_starts_from_the_encoder(tmp_path: Path) -> None:
    from rnntext.data.encoder_dir import load_encoder
    from rnntext.training.trainer import Trainer
    from test_pretrain import sentences

    rows = sentences(200)
    train = write_table(tmp_path / "train.csv", ["sentence", "label"], rows)
    (tmp_path / "texts.txt").write_text("\n".join(t for t, _ in rows) + "\n")
    enc_dir = tmp_path / "enc"
    assert main(["pretrain", "--text", str(tmp_path / "texts.txt"), "--embed-dim", "16", "--hidden-dim", "16",
                 "--epochs", "1", "--threads", "1", "--batch-size", "32", "--out", str(enc_dir), "-q"]) == 0
    enc = load_encoder(enc_dir)
    cfg = RunConfig()
    cfg.data.train, cfg.data.text_columns, cfg.data.encoder = str(train), ["sentence"], str(enc_dir)
    cfg.model.embed_dim = cfg.model.hidden_dim = 16
    cfg.model.members = 3
    cfg.train.epochs, cfg.train.threads = 1, 1
    trainer = Trainer(cfg, None, progress=False, log=lambda s: None)
    members = trainer.model.each()
    assert len(members) == 3
    for m in members:
        state = m.state_dict()
        assert set(enc.state) < set(state)
        for k, v in enc.state.items():
            assert torch.equal(state[k], v), k  # the encoder's weights, exactly, in every member
    # the output layers keep their own random starts: the members still differ
    assert not torch.equal(members[0].state_dict()["fc.weight"], members[1].state_dict()["fc.weight"])


def test_compare_and_tune_with_members(data: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    small = write_table(tmp_path / "small.csv", ["text", "label"], keyword_rows(200, seed=5))
    common = ["--train", str(small), "--test", str(data[1]), "--epochs", "1", "--threads", "1"]
    config = tmp_path / "runs.json"
    config.write_text(json.dumps([{"name": "two", "model": {"embed_dim": 16, "hidden_dim": 16, "members": 2}}]))
    assert main(["compare", *common, "--config", str(config), "--out", str(tmp_path / "cmp"), "-q"]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| two | BiGRU 16, embed 16, meanmax, padded, 2 members |" in report
    assert isinstance(load_run(tmp_path / "cmp" / "runs" / "two").model, MembersClassifier)

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"defaults": False, "model": {"members": {"choices": [2]}, "embed_dim": {"value": 16},
                                                              "hidden_dim": {"value": 16}}}))
    assert main(["tune", *common, "--trials", "1", "--space", str(space), "--out", str(tmp_path / "tune")]) == 0
    best = tmp_path / "tune" / "best-run"
    assert json.loads((tmp_path / "tune" / "best.json").read_text())["model"]["members"] == 2
    predictor = _load(best)
    assert isinstance(predictor.run.model, MembersClassifier)
    assert predictor.explain("w1 crimson")[0].tokens == ["w1", "crimson"]
