"""Members (--members K, model/members.py): K models trained side by side in one run.

What is proved here: each member of a members run takes exactly the steps it would take trained alone
(its own gradient, its own clipping, its own optimiser state), `--members 1` is the plain model, the
count a run gets without --members (training/stopping.py planned_members) and where it is recorded,
resume, evaluate / predict / the inference fast path on the members' mean logits, multi-label,
class weights and two processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_config
from interrupt import ctrl_c_after
from rnntext import fast
from rnntext.cli import main
from rnntext.config import AUTO_MAX_MEMBERS, MAX_MEMBERS, ModelConfig
from rnntext.data import prepare
from rnntext.data.encode import encode_texts
from rnntext.inference.evaluate import evaluate_run
from rnntext.inference.predictor import Predictor
from rnntext.model import build_model, model_class
from rnntext.model.members import MembersClassifier
from rnntext.training import stopping
from rnntext.training.checkpoint import load_checkpoint
from rnntext.training.rundir import load_run
from rnntext.training.trainer import Trainer, resume, train

QUIET: dict[str, Any] = {"progress": False, "log": lambda s: None}
WORDS = {"sport": "goal match team coach league score", "tech": "chip software robot laptop code data",
         "money": "bank stock market price trade profit"}
FILLER = "the a of and to in on with for new says report after over".split()


def _text(rng: random.Random, labels: list[str], filler: int = 0) -> str:
    words = [w for label in labels for w in rng.choices(WORDS[label].split(), k=rng.randint(1, 3))]
    words += rng.choices(FILLER, k=rng.randint(3, 12) + filler)
    rng.shuffle(words)
    return " ".join(words)


def _write(d: Path, n_train: int = 300, n_test: int = 100, seed: int = 0, skew: bool = False,
           filler: int = 0) -> tuple[Path, Path]:
    """train.csv and test.csv of three topics (`skew`: "sport" 4x as frequent as each other label; `filler`:
    that many more words in each text)."""
    rng = random.Random(seed)
    labels = sorted(WORDS) + ["sport"] * 3 * skew

    def rows(n: int) -> str:
        out = ["text,label"]
        for _ in range(n):
            label = rng.choice(labels)
            out.append(f"{_text(rng, [label], filler)},{label}")
        return "\n".join(out) + "\n"

    d.mkdir(parents=True, exist_ok=True)
    (d / "train.csv").write_text(rows(n_train))
    (d / "test.csv").write_text(rows(n_test))
    return d / "train.csv", d / "test.csv"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write(tmp_path_factory.mktemp("members_data"))


def _cfg(data: tuple[Path, Path], **overrides: Any):
    overrides.setdefault("model__members", None)  # the planned count, as a run without --members gets
    return make_tiny_config(data__train=str(data[0]), data__test=str(data[1]), **overrides)


def _states(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- each member trains as it would alone --------------------------------------------------------

@pytest.mark.parametrize("members, clip, class_weight, fast_path, overlap", [
    (2, 1.0, None, "1", False),
    (3, 1e-3, None, "1", False),  # clipping bites at every step: each member's norm must be clipped on its own
    (2, 1e-3, "balanced", "1", False),  # the weighted loss: its normaliser is the sum of the rows' weights
    (2, 1e-3, None, "0", False),  # the stock optimiser (torch.optim.AdamW, fused, dense gradients)
    # member 0's table updated on a second thread (--overlap-update), the other's in the step; one direction
    # and no clipping: the rows read ahead take a dense gradient, which says that the overlap really ran
    (2, None, None, "1", True),
])
def test_each_member_ends_with_the_weights_it_reaches_trained_alone(
        data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: int, clip: float | None,
        class_weight: str | None, fast_path: str, overlap: bool) -> None:
    """The real Trainer, 2 epochs of 6 steps (the schedule across an epoch end), weight decay on, no
    dropout (a member draws its masks from the generator the others share, so with dropout it could not
    match a run alone), no validation (the last epoch's weights are the run's). Each member's weights
    equal, torch.equal, those of a plain run started from that member's first weights."""
    monkeypatch.setenv("RNNTEXT_FAST", fast_path)
    if class_weight:
        data = _write(tmp_path / "skewed", skew=True)
    cfg = _cfg(data, model__dropout=0.0, model__embed_dropout=0.0, data__valid_split=0.0, train__epochs=2,
               train__epoch_size=6, train__weight_decay=0.1, train__clip=clip, train__class_weight=class_weight,
               train__seed=3, model__members=members, train__overlap_update=overlap, train__threads=1 + overlap,
               model__bidirectional=not overlap, model__pooling="last" if overlap else "meanmax")
    joint = Trainer(cfg, None, **QUIET)
    assert isinstance(joint.model, MembersClassifier) and len(joint.model.each()) == members
    assert isinstance(joint.optimizer, fast.adamw.AdamW) == (fast_path == "1")
    if overlap:  # it really overlaps
        assert joint.optimizer.overlap is joint.model.each()[0].embedding
    starts = [_states(m) for m in joint.model.each()]
    assert not torch.equal(starts[0]["embedding.weight"], starts[1]["embedding.weight"])  # own random starts
    joint.fit()
    if overlap:
        assert joint.optimizer.rows_were_dense

    cfg.model.members = 1
    for k, start in enumerate(starts):
        alone = Trainer(cfg, None, **QUIET)
        assert not isinstance(alone.model, MembersClassifier)
        if k == 0:  # member 0 is built from the random draws the plain model takes
            assert all(torch.equal(v, start[n]) for n, v in alone.model.state_dict().items())
        alone.model.load_state_dict(start)  # in place: the optimiser holds these very tensors
        alone.fit()
        got = joint.model.each()[k].state_dict()
        for name, want in alone.model.state_dict().items():
            assert torch.equal(got[name], want), (k, name, float((got[name] - want).abs().max()))

    if clip is not None and clip < 1.0:  # the clip did bite: without it member 0 ends elsewhere
        cfg.train.clip = None
        unclipped = Trainer(cfg, None, **QUIET)
        unclipped.fit()
        assert not torch.equal(unclipped.model.state_dict()["embedding.weight"],
                               joint.model.each()[0].state_dict()["embedding.weight"])


def test_member_0_of_any_count_is_the_plain_model() -> None:
    cfg = ModelConfig(vocab_size=50, num_classes=3, embed_dim=8, hidden_dim=8)
    torch.manual_seed(11)
    plain = build_model(cfg)
    torch.manual_seed(11)
    cfg.members = 4
    joint = build_model(cfg)
    assert isinstance(joint, MembersClassifier) and len(joint.each()) == 4
    first = joint.each()[0].state_dict()
    assert all(torch.equal(v, first[k]) for k, v in plain.state_dict().items())
    assert joint.embedding is joint.each()[0].embedding
    assert len(joint.tables()) == 4 and len(joint.clip_groups()) == 4
    # the state dict is the members', one prefix each
    assert set(joint.state_dict()) == {f"members.{i}.{k}" for i in range(4) for k in plain.state_dict()}


# --- --members 1, and the count a run gets without --members ---------------------------------------

def test_members_1_is_the_plain_model_and_the_same_run_as_a_budget_of_one(tmp_path: Path) -> None:
    """A run whose cost (epochs x training tokens) leaves room for one member, with members unset and with
    --members 1: the plain model class, the same config and bit-identical weights. The epochs are computed
    from MEMBER_BUDGET (nothing is monkeypatched); small dimensions and wide batches keep the run short."""
    data = _write(tmp_path / "data", n_train=2000, n_test=20, filler=100)
    cfg = _cfg(data, data__valid_split=0.0, train__batch_size=600)
    prepared = prepare(cfg.data, seed=cfg.train.seed, progress=False)
    tokens = int(prepared.train.lengths.sum())
    cfg.train.epochs = stopping.MEMBER_BUDGET // (2 * tokens) + 1  # cost > budget / 2: one member
    assert stopping.planned_members(cfg.train.epochs * tokens) == 1
    auto = train(cfg, None, prepared=prepared, **QUIET)
    cfg.model.members = 1
    one = train(cfg, None, prepared=prepared, **QUIET)
    for result in (auto, one):
        assert type(result.model) is model_class("gru")
        assert result.config.model.members == 1
    a, b = auto.model.state_dict(), one.model.state_dict()
    assert set(a) == set(b) and not any(k.startswith("members.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_planned_members_is_as_many_as_fit_the_budget_from_1_to_the_cap() -> None:
    budget = stopping.MEMBER_BUDGET
    assert stopping.planned_members(0) == stopping.planned_members(1) == AUTO_MAX_MEMBERS
    assert stopping.planned_members(budget) == 1
    assert stopping.planned_members(10 * budget) == 1  # never fewer than one
    assert stopping.planned_members(budget // 2) == 2
    assert stopping.planned_members(budget // 2 + 1) == 1
    assert stopping.planned_members(budget // 3) == 3
    counts = [stopping.planned_members(c) for c in range(1, 2 * budget, budget // 97)]
    assert counts == sorted(counts, reverse=True)  # costlier runs never get more
    for cost in (budget // AUTO_MAX_MEMBERS, budget // (AUTO_MAX_MEMBERS + 3)):
        assert stopping.planned_members(cost) == AUTO_MAX_MEMBERS


def test_a_run_without_members_records_the_count_it_got(data, tmp_path: Path) -> None:
    cfg = _cfg(data, train__epochs=2, train__epoch_size=3)
    lines: list[str] = []
    result = train(cfg, str(tmp_path / "run"), progress=False, log=lines.append)
    tokens = int(result.prepared.train.lengths.sum())
    want = stopping.planned_members(2 * tokens)
    assert want > 1  # small data: several
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["members"] == result.config.model.members == want
    assert isinstance(result.model, MembersClassifier) and len(result.model.each()) == want
    assert f"members: {want} models trained side by side (small data: --members 1 for one)" in lines
    assert cfg.model.members is None  # the caller's config is left as it was
    run = load_run(tmp_path / "run")
    assert isinstance(run.model, MembersClassifier) and len(run.model.each()) == want


@pytest.mark.parametrize("value, message", [
    ("0", "--members must be >= 1, got 0"),
    (str(MAX_MEMBERS + 1), f"--members must be <= {MAX_MEMBERS}, got {MAX_MEMBERS + 1}"),
    ("x", "invalid int value: 'x'"),
])
def test_a_bad_members_count_is_a_one_line_error(data, value: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--train", str(data[0]), "--embed-dim", "4", "--hidden-dim", "4", "--epochs", "1",
            "--threads", "1", "-q", "--members", value]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and message in err, err
    messages = [line for line in err.splitlines() if "error:" in line]
    assert len(messages) == 1 and messages[0].startswith("rnntext"), err


# --- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("members", [None, 3])
def test_a_members_run_resumes_bit_identically_after_ctrl_c_mid_epoch(
        data, tmp_path: Path, members: int | None, sigint_handler: None) -> None:
    """A real SIGINT at step 7 (mid-epoch 1 of 2; dropout on: the members' masks come from the generators
    the checkpoint keeps), then resume(), equals one straight run, tensor for tensor."""
    from rnntext.errors import TrainingInterrupted

    cfg = _cfg(data, train__epochs=2, train__batch_size=16, train__seed=5, model__members=members,
               model__embed_dim=8, model__hidden_dim=8)

    CtrlCAtStep7 = ctrl_c_after(7)  # handled by the trainer: finish the step, checkpoint, stop
    train(cfg, str(tmp_path / "straight"), **QUIET)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 7"):
        CtrlCAtStep7(cfg, str(tmp_path / "stopped"), **QUIET).fit()
    ckpt = load_checkpoint(tmp_path / "stopped")
    assert ckpt.global_step == 7 and ckpt.config.model.members == (members or ckpt.config.model.members) > 1
    resume(str(tmp_path / "stopped"), **QUIET)
    a = load_file(tmp_path / "stopped" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    assert set(a) == set(b) and any(k.startswith("members.2.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = {"seconds", "rows_per_second", "train_seconds", "data_seconds", "total_seconds"}
    got, want = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("stopped", "straight"))
    assert [{k: v for k, v in e.items() if k not in drop} for e in got["epochs"]] == \
        [{k: v for k, v in e.items() if k not in drop} for e in want["epochs"]]
    assert got["test"] == want["test"]


# --- evaluate, predict, the inference fast path ---------------------------------------------------

@pytest.fixture(scope="module")
def members_run(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("members_run") / "run"
    train(_cfg(data, train__epochs=2, model__members=3), str(out), **QUIET)
    return out


def _test_texts(data: tuple[Path, Path]) -> tuple[list[str], list[str]]:
    rows = [line.rsplit(",", 1) for line in data[1].read_text().splitlines()[1:]]
    return [t for t, _ in rows], [y for _, y in rows]


def _mean_logits(run, texts: list[str]) -> torch.Tensor:
    """The members' logits averaged, member by member with each one's own forward, text by text."""
    enc = encode_texts(texts, run.tokenizer, run.vocab)
    out = []
    with torch.no_grad():
        for i in range(len(texts)):
            tokens = enc.tokens[enc.offsets[i]:enc.offsets[i + 1]].unsqueeze(0)
            lengths = enc.lengths[i:i + 1]
            out.append(torch.stack([m.eval()(tokens, lengths)[0] for m in run.model.each()]).mean(0))
    return torch.stack(out)


def test_predict_and_evaluate_give_the_mean_of_the_members_logits(members_run: Path, data) -> None:
    run = load_run(members_run)
    assert isinstance(run.model, MembersClassifier) and len(run.model.each()) == 3
    assert run.temperature != 1.0  # calibrated: the temperature divides the joint logits
    texts, gold = _test_texts(data)
    logits = _mean_logits(run, texts)
    # the eval-mode model itself returns the mean
    enc = encode_texts(texts[:1], run.tokenizer, run.vocab)
    with torch.no_grad():
        torch.testing.assert_close(run.model(enc.tokens.unsqueeze(0), enc.lengths)[0], logits[0], atol=1e-6, rtol=0)
    # predict (the GRU fast path, batched: within 1e-5 of nn.GRU, as tests/test_fast.py bounds it)
    for calibrated, temperature in ((False, 1.0), (True, run.temperature)):
        predictor = Predictor.load(members_run, "cpu", calibration=calibrated)
        got = predictor.probabilities(texts)
        torch.testing.assert_close(got, torch.softmax(logits / temperature, 1), atol=1e-5, rtol=0)
    preds = predictor.predict(texts)
    assert [p.label for p in preds] == [run.label_names[i] for i in logits.argmax(1).tolist()]
    # evaluate: the accuracy of those predictions on the test set, as training reported it
    want = sum(run.label_names[i] == y for i, y in zip(logits.argmax(1).tolist(), gold)) / len(gold)
    report = evaluate_run(members_run, device="cpu", threads=1, calibration=False)
    assert report["accuracy"] == pytest.approx(want, abs=1e-12)
    metrics = json.loads((members_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(want, abs=1e-12)


def test_the_inference_fast_path_equals_the_stock_forward_for_members() -> None:
    cfg = ModelConfig(vocab_size=300, num_classes=4, embed_dim=16, hidden_dim=16, members=3)
    torch.manual_seed(2)
    model = build_model(cfg).eval()
    lengths = torch.tensor([9, 3, 7, 1, 12, 5, 8, 2, 6, 4])
    tokens = torch.randint(1, 300, (len(lengths), int(lengths.max())))
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n:] = 0
    cpu = torch.device("cpu")
    forward = fast.inference_forward(model, cpu)
    assert forward is not model  # the GRU loop of each member
    with torch.inference_mode():
        stock = model(tokens, lengths)
        each = torch.stack([m(tokens, lengths) for m in model.each()]).mean(0)
        assert torch.equal(stock, each)
        torch.testing.assert_close(forward(tokens, lengths), stock, atol=1e-5, rtol=0)
    assert fast.prediction_batch(model, cpu) == fast.prediction_batch(model.each()[0], cpu)


# --- multi-label, class weights, two processes ----------------------------------------------------

def test_multi_label_members_train_choose_thresholds_and_evaluate(tmp_path: Path) -> None:
    rng = random.Random(4)
    names = sorted(WORDS)

    def rows(n: int) -> str:
        out = []
        for _ in range(n):
            labels = rng.sample(names, rng.choice([1, 1, 2]))
            out.append(json.dumps({"text": _text(rng, labels), "label": labels}))
        return "\n".join(out) + "\n"

    (tmp_path / "train.jsonl").write_text(rows(400))
    (tmp_path / "test.jsonl").write_text(rows(100))
    cfg = make_tiny_config(data__train=str(tmp_path / "train.jsonl"), data__test=str(tmp_path / "test.jsonl"),
                           data__multi_label=True, train__epochs=3, model__members=2)
    result = train(cfg, str(tmp_path / "run"), **QUIET)
    assert isinstance(result.model, MembersClassifier)
    metrics = result.metrics
    assert set(metrics["thresholds"]) == set(names)
    assert metrics["test"]["micro_f1"] > 0.5  # it learned
    report = evaluate_run(tmp_path / "run", device="cpu", threads=1)
    assert report["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"], abs=1e-9)
    pred = load_run(tmp_path / "run")
    preds = Predictor(pred, torch.device("cpu")).predict(["goal match team bank stock"])
    assert preds[0].labels is not None and set(preds[0].labels) <= set(names)


def test_class_weighted_members_train_and_evaluate(tmp_path: Path) -> None:
    data = _write(tmp_path / "data", skew=True)
    result = train(_cfg(data, train__epochs=2, train__class_weight="balanced", model__members=2),
                   str(tmp_path / "run"), **QUIET)
    assert isinstance(result.model, MembersClassifier)
    weights = result.metrics["class_weights"]
    assert weights["sport"] < weights["money"]  # the frequent label weighs less
    report = evaluate_run(tmp_path / "run", device="cpu", threads=1)
    assert report["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-12)


def test_two_processes_train_members_and_one_process_predicts(data, tmp_path: Path) -> None:
    """`rnntext train --nproc 2 --members 2` (torchrun, gloo): DDP over the members model; the run loads and
    evaluates in one process on the same test set to the same accuracy."""
    src = Path(__file__).resolve().parent.parent / "src"
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "rnntext", "train", "-q", "--train", str(data[0]), "--test",
                           str(data[1]), "--embed-dim", "8", "--hidden-dim", "8", "--batch-size", "16", "--epochs",
                           "2", "--epoch-size", "4", "--threads", "1", "--members", "2", "--nproc", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert json.loads((out / "config.json").read_text())["model"]["members"] == 2
    run = load_run(out)
    assert isinstance(run.model, MembersClassifier) and len(run.model.each()) == 2
    report = evaluate_run(out, device="cpu", threads=1)
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
