"""Multi-label classification (--multi-label): reading sets of labels, the iteratively stratified split,
per-label thresholds, the metrics, and the round trip through train / evaluate / predict / serve, every
model, ensembles, resume and two processes.

The data are generated with a rule the model can learn: a text has label L exactly when it holds L's
keyword (among filler words), and each text has one to four labels."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_config, write_table
from interrupt import ctrl_c_after
from live_server import free_port, live_server
from rnntext.cli import main
from rnntext.config import RunConfig
from rnntext.data.labels import iterative_split, label_sets, read_multilabel
from rnntext.errors import ConfigError, DataError
from rnntext.inference.predictor import Predictor
from rnntext.model.registry import model_names
from rnntext.training.multilabel import THRESHOLDS, fit_thresholds, load_thresholds, multilabel_report

KEYWORDS = {"money": "stock", "politics": "vote", "science": "atom", "sports": "goal"}
FILLER = "the a of and to in is it that was for on are with as his they be at one have this from or had by".split()


def make_rows(n: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = [k for k in KEYWORDS if rng.random() < 0.35] or [rng.choice(list(KEYWORDS))]
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))] + [KEYWORDS[k] for k in labels]
        rng.shuffle(words)
        rows.append((" ".join(words), labels))
    return rows


def true_labels(text: str) -> set[str]:
    return {label for label, word in KEYWORDS.items() if word in text.split()}


def write_sets(path: Path, rows: list[tuple[str, list[str]]], separator: str = ",") -> Path:
    """JSONL with lists, or CSV/TSV with the labels joined by `separator` in one column."""
    if path.name.endswith(".jsonl"):
        return write_table(path, ["text", "label"], [[t, labels] for t, labels in rows])
    return write_table(path, ["text", "label"], [[t, separator.join(labels)] for t, labels in rows])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("multilabel-data")
    return {"train": write_sets(d / "train.jsonl", make_rows(600, 1)), "test": write_sets(d / "test.jsonl",
                                                                                         make_rows(150, 2)),
            "train_csv": write_sets(d / "train.csv", make_rows(200, 3))}


def ml_config(train: Path, test: Path | None = None, **overrides: Any) -> RunConfig:
    settings = {"data__train": str(train), "data__multi_label": True, "train__epochs": 12, "train__lr": 0.02,
                "train__batch_size": 32, **overrides}
    if test is not None:
        settings["data__test"] = str(test)
    return make_tiny_config(**settings)


QUIET: dict[str, Any] = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label GRU run trained by the command line, in its own process."""
    out = tmp_path_factory.mktemp("multilabel-run") / "run"
    done = subprocess.run([sys.executable, "-m", "rnntext", "train", "--train", str(data["train"]), "--test",
                           str(data["test"]), "--multi-label", "--epochs", "12", "--lr", "0.02", "--batch-size", "32",
                           "--embed-dim", "32", "--hidden-dim", "32", "--threads", "1", "--device", "cpu", "-q",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("test micro-F1 ") and ", subset accuracy " in done.stdout
    assert ", micro-F1 " in done.stderr  # the log's test line
    return out


# --- reading --------------------------------------------------------------------------------------------


def test_a_jsonl_list_and_a_separated_column_give_the_same_sets(tmp_path: Path) -> None:
    rows = [("a text", ["x", "y"]), ("another", ["z"]), ("third", ["y", "x", "z"])]
    cfg = RunConfig().data
    cfg.multi_label = True
    jsonl = read_multilabel(str(write_sets(tmp_path / "t.jsonl", rows)), cfg)
    cfg.label_separator = "|"
    tsv = read_multilabel(str(write_sets(tmp_path / "t.tsv", rows, " | ")), cfg)  # spaces around: stripped
    assert label_sets(jsonl) == label_sets(tsv) == [["x", "y"], ["z"], ["y", "x", "z"]]
    assert jsonl.texts == tsv.texts
    # repeats and empty pieces ("a,,a,") are dropped; --label-names names each label
    cfg.label_separator, cfg.label_names = ",", {"0": "neg", "1": "pos"}
    named = read_multilabel(str(write_table(tmp_path / "n.csv", ["text", "label"], [["t", "1,,1,0,"]])), cfg)
    assert label_sets(named) == [["pos", "neg"]]


@pytest.mark.parametrize(("name", "content", "extra", "message"), [
    ("x.jsonl", '{"text": "a", "label": ["p"]}\n{"text": "b", "label": []}\n', [], "x.jsonl:2: empty label list"),
    ("x.jsonl", '{"text": "a", "label": ["p", ""]}\n', [], "x.jsonl:1: empty label in the list"),
    ("x.jsonl", '{"text": "a", "label": ["p", {"q": 1}]}\n', [], "x.jsonl:1: labels in a list must be strings"),
    ("x.jsonl", '{"text": "a", "label": ["p,q"]}\n', [], "x.jsonl:1: label 'p,q' holds the label separator ','"),
    ("x.jsonl", '{"text": "a", "label": ["p"]}\n', ["--no-multi-label"],
     "x.jsonl:1: label must be a string or a number, found a list (give --multi-label"),
    ("x.csv", 'text,label\na,p\nb," , "\n', [], "x.csv:3: no label in ',' (split on the label separator ',')"),
    ("x.csv", 'text,label\na,p\nb,"[\'p\', \'q\']"\n', [],
     "x.csv:3: the labels \"['p', 'q']\" are a list written as text; write them as one string split by the label "
     "separator (a,b), or use JSONL"),
    ("x.csv", 'text,label\na,p\nb,p;q\n', ["--label-separator", ";", "--label-names", "p=P"],
     "x.csv:3: label 'q' has no name in --label-names"),
])
def test_bad_sets_of_labels_are_one_line_errors_naming_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, extra: list[str],
        message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    argv = ["train", "--train", str(path), "--multi-label", "--epochs", "1", "--threads", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnntext: error: ") and "Traceback" not in err, err
    assert message in err
    # --skip-bad-rows skips the row instead (the file's other rows are good)
    if name == "x.jsonl" and content.count("\n") == 2:
        cfg = RunConfig().data
        cfg.multi_label, cfg.skip_bad_rows = True, True
        rows = read_multilabel(str(path), cfg)
        assert len(rows) == 1 and rows.skipped == 1


def test_a_label_unknown_to_training_is_an_error_naming_the_test_file_and_line(
        data: dict[str, Path], tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test = write_sets(tmp_path / "test.jsonl", [("a goal", ["sports"]), ("a cat", ["sports", "pets"])])
    from rnntext.data.dataset import load_splits

    with pytest.raises(DataError, match=r"test\.jsonl:2: label 'pets' never appears in the training data"):
        load_splits(ml_config(data["train"], test).data)  # at training, and at evaluation:
    assert main(["evaluate", str(run), "--test", str(test), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{test}:2: label 'pets' never appears in the training data" in err
    assert main(["evaluate", str(run), "--test", str(test), "--threads", "1", "--skip-bad-rows", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1 and report["skipped"] == 1


def test_multi_label_settings_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ConfigError, match="multi_label is for your own files"):
        make_tiny_config(data__dataset="ag_news", data__multi_label=True).validate()
    with pytest.raises(ConfigError, match="class_weight weighs the classes of single-label data"):
        make_tiny_config(data__train="x.csv", data__multi_label=True, train__class_weight="balanced").validate()
    with pytest.raises(ConfigError, match="label_separator must be a non-empty string"):
        make_tiny_config(data__label_separator="")


# --- split, thresholds, metrics ---------------------------------------------------------------------------


def test_iterative_split_gives_each_label_its_share_and_is_reproducible() -> None:
    rng = random.Random(0)
    # label 5 is rare (10 rows): a random 20% split leaves it out of validation one time in ten
    sets = [[j for j in range(5) if rng.random() < 0.3] or [rng.randrange(5)] for _ in range(990)]
    sets += [[5, rng.randrange(5)] for _ in range(10)]
    valid = iterative_split(sets, 6, 0.2, seed=3)
    assert valid == iterative_split(sets, 6, 0.2, seed=3) and valid != iterative_split(sets, 6, 0.2, seed=4)
    assert valid == sorted(set(valid)) and abs(len(valid) - 200) <= 5  # labels first, the total about right
    for j in range(6):
        total = sum(j in s for s in sets)
        share = sum(j in sets[i] for i in valid)
        assert abs(share - 0.2 * total) <= 1.5, (j, share, total)


def test_each_threshold_maximises_its_labels_f1() -> None:
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(300, 5, generator=g) < 0.3).float()
    probs = (0.35 * targets + 0.65 * torch.rand(300, 5, generator=g)).clamp(0, 1)  # informative, not separable
    probs[:, 4] = 0.2  # one value only: everything or nothing
    targets[:, 3] = 0  # never positive: keeps 0.5
    thresholds = fit_thresholds(probs, targets)
    assert thresholds[3] == 0.5

    def f1(j: int, t: float) -> float:
        pred, y = probs[:, j] >= t, targets[:, j] > 0.5
        tp = int((pred & y).sum())
        return 2 * tp / (int(pred.sum()) + int(y.sum()))

    for j in (0, 1, 2, 4):
        best = max(f1(j, float(t)) for t in probs[:, j].unique())  # every distinct cut, by brute force
        assert f1(j, thresholds[j]) == pytest.approx(best, abs=1e-12), j


def test_the_metrics_equal_their_definitions() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.rand(50, 4, generator=g) < 0.4
    p = torch.rand(50, 4, generator=g) < 0.4
    r = multilabel_report(y.float(), p, ["a", "b", "c", "d"])
    tp, fp, fn = (y & p).sum().item(), (~y & p).sum().item(), (y & ~p).sum().item()
    assert r["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["micro_precision"] == pytest.approx(tp / (tp + fp)) and r["micro_recall"] == pytest.approx(tp / (tp + fn))
    per = []
    for j, name in enumerate("abcd"):
        tpj = (y[:, j] & p[:, j]).sum().item()
        f1 = 2 * tpj / (y[:, j].sum().item() + p[:, j].sum().item())
        per.append(f1)
        assert r["per_class"][name]["f1"] == pytest.approx(f1)
        assert r["per_class"][name]["support"] == y[:, j].sum().item()
    assert r["macro_f1"] == pytest.approx(sum(per) / 4)
    assert r["subset_accuracy"] == r["accuracy"] == sum(bool((y[i] == p[i]).all()) for i in range(50)) / 50
    assert r["hamming_loss"] == pytest.approx((y != p).sum().item() / 200)


# --- the command line, the API and the server ---------------------------------------------------------------


def test_train_evaluate_predict_round_trip(run: Path, data: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    saved = json.loads((run / THRESHOLDS).read_text())["thresholds"]
    labels = json.loads((run / "labels.json").read_text())
    assert labels == sorted(KEYWORDS) and list(saved) == labels and metrics["thresholds"] == saved
    assert metrics["test"]["multi_label"] and metrics["test"]["micro_f1"] >= 0.95, metrics["test"]

    # evaluate: the same test set, the same thresholds, the same report as training wrote
    assert main(["evaluate", str(run), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "per_class", "thresholds", "n"):
        assert report[key] == metrics["test"][key], key
    assert main(["evaluate", str(run), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "micro-F1" in text and "Hamming loss" in text and "threshold" in text

    # predict: the set of labels, each with its probability, as the rule says
    texts = ["the goal of a vote", "atom and stock on it", "a stock"]
    assert main(["predict", str(run), "--json", "--threads", "1", *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for text, line in zip(texts, lines):
        assert set(line["labels"]) == true_labels(text), (text, line)
        assert all(line["labels"][k] == line["probabilities"][k] >= saved[k] for k in line["labels"])
        assert list(line["labels"].values()) == sorted(line["labels"].values(), reverse=True)
    assert main(["predict", str(run), "--threads", "1", texts[0]]) == 0
    names, probs = capsys.readouterr().out.strip().split("\t")
    assert set(names.split(",")) == {"politics", "sports"} and len(probs.split(",")) == 2

    # the Python API: thresholds from thresholds.json; the probabilities are sigmoids (not summing to 1)
    predictor = Predictor.load(run, device="cpu")
    assert predictor.thresholds == [saved[k] for k in labels]
    pred = predictor.predict(texts[0])[0]
    assert pred.to_dict() == lines[0] and sum(pred.probabilities.values()) > 1.5

    # explanations read each label's sigmoid: the keyword carries its label
    ex = predictor.explain(texts[0], label="sports")[0]
    assert ex.probabilities == pred.probabilities
    assert max(zip(ex.attributions, ex.tokens))[1] == "goal"
    # completeness: the attributions add up (within the reported delta) to the change of the label's sigmoid
    # from the all-<pad> text's; for a members run (this run's default) the members' mean change
    # (test_members_explain.py)
    from rnntext.inference.explain import _PositionModel

    model, c = predictor.run.model, labels.index("sports")
    ids = torch.tensor([predictor.run.vocab.encode(ex.tokens)])
    lengths = torch.tensor([ids.shape[1]])
    with torch.no_grad():
        change = [float(f(ids, lengths)[0, c] - f(torch.zeros_like(ids), lengths)[0, c])
                  for f in (_PositionModel(m, multi_label=True) for m in
                            (model.each() if hasattr(model, "each") else [model]))]
    assert sum(ex.attributions) - ex.delta == pytest.approx(sum(change) / len(change), abs=1e-5)
    assert abs(ex.delta) < 0.05

    # the thresholds are the saved ones: raise one past every probability and its label is never predicted
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (changed / f.name).write_bytes(f.read_bytes())
    (changed / THRESHOLDS).write_text(json.dumps({"thresholds": {**saved, "sports": 1.0}}))
    assert load_thresholds(changed, labels)[labels.index("sports")] == 1.0
    assert set(Predictor.load(changed, device="cpu").predict(texts[0])[0].labels or {}) == {"politics"}
    (changed / THRESHOLDS).write_text(json.dumps({"thresholds": {**saved, "sports": "high"}}))
    assert main(["predict", str(changed), "x"]) == 2
    assert "thresholds.json: the threshold of 'sports' must be a number in [0, 1]" in capsys.readouterr().err
    (changed / THRESHOLDS).unlink()
    assert main(["evaluate", str(changed)]) == 2
    assert "thresholds.json: missing file" in capsys.readouterr().err


def test_the_server_and_its_page_return_the_set_with_each_probability(run: Path) -> None:
    texts = ["the goal of a vote", "atom", "nothing at all"]
    want = [p.to_dict() for p in Predictor.load(run, device="cpu").predict(texts)]
    with live_server(run) as url:
        got = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30).json()["predictions"]
        page = httpx.get(url, timeout=30).text
    assert got == want
    assert set(got[0]["labels"]) == {"politics", "sports"} and set(got[1]["labels"]) == {"science"}
    assert "prediction.labels" in page  # the page shows the set: test_the_web_page_shows_the_set drives a browser


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium is not installed (see test_webpage.py)")
def test_the_web_page_shows_the_set_with_each_probability(run: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    want = Predictor.load(run, device="cpu").predict(["the goal of a vote"])[0]
    assert want.labels is not None and set(want.labels) == {"politics", "sports"}
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    with live_server(run) as url:
        driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
        try:
            driver.set_page_load_timeout(30)
            driver.get(url + "/")
            driver.find_element(By.ID, "text").send_keys("the goal of a vote")
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "label").text)
            shown = driver.find_element(By.ID, "label").text
            best = {r.get_attribute("data-label") for r in driver.find_elements(By.CSS_SELECTOR, "#bars .row.best")}
        finally:
            driver.quit()
    assert shown == ", ".join(f"{n} ({100 * p:.1f}%)" for n, p in want.labels.items())
    assert best == set(want.labels)


# --- every model, ensembles, resume, two processes ------------------------------------------------------------


@pytest.mark.parametrize("model", model_names())
def test_every_model_learns_sets_of_labels(model: str, data: dict[str, Path]) -> None:
    from rnntext import train

    # one plain model (--members 1): the 0.8 bar below was taken with one model of each family (with 12
    # validation rows to fit the thresholds on, the bag's members land on either side of it)
    cfg = ml_config(data["train_csv"], data["test"], model__model=model, train__epochs=8, model__members=1)
    result = train(cfg, None, **QUIET)
    test = result.metrics["test"]
    assert result.config.model.num_classes == 4 and len(result.metrics["thresholds"]) == 4
    assert test["multi_label"] and test["n"] == 150
    assert test["micro_f1"] > 0.8, (model, test)  # the rule is learnable by every model
    first, last = result.metrics["epochs"][0], result.metrics["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]


@pytest.mark.parametrize("select_by", ["accuracy", "macro_f1", "loss"])
def test_select_by_chooses_the_epoch_by_the_multi_label_validation_figures(data: dict[str, Path],
                                                                           select_by: str) -> None:
    from rnntext import train

    cfg = ml_config(data["train_csv"], None, model__model="bag", train__epochs=5, train__select_by=select_by)
    result = train(cfg, None, **QUIET)
    epochs = result.metrics["epochs"]
    assert all({"valid_accuracy", "valid_macro_f1", "valid_micro_f1", "valid_loss"} <= set(e) for e in epochs)
    key, sign = {"accuracy": ("valid_accuracy", 1), "macro_f1": ("valid_macro_f1", 1), "loss": ("valid_loss", -1)}[
        select_by]
    scores = [sign * e[key] for e in epochs]
    assert result.metrics["best_epoch"] == 1 + scores.index(max(scores))  # the first of the best


def test_an_ensemble_averages_the_sigmoids_and_the_thresholds(data: dict[str, Path], tmp_path: Path) -> None:
    from rnntext.training.ensemble import train_ensemble

    cfg = ml_config(data["train_csv"], data["test"], model__model="bag", train__epochs=4)
    metrics = train_ensemble(cfg, 2, str(tmp_path / "ens"), progress=False)
    members = [Predictor.load(tmp_path / "ens" / f"member-{k}", device="cpu") for k in range(2)]
    both = Predictor.load(tmp_path / "ens", device="cpu")
    texts = ["the goal of a vote", "atom and stock", "of the"]
    mean = (members[0].probabilities(texts) + members[1].probabilities(texts)) / 2
    assert torch.allclose(both.probabilities(texts), mean, atol=1e-6)
    assert both.thresholds == pytest.approx([(a + b) / 2 for a, b in zip(members[0].thresholds or [],
                                                                           members[1].thresholds or [])])
    assert metrics["test"]["multi_label"]
    report = json.loads(json.dumps(metrics["test"]))
    from rnntext.inference.evaluate import evaluate_run

    again = evaluate_run(tmp_path / "ens", device="cpu", threads=1)
    assert again["micro_f1"] == pytest.approx(report["micro_f1"]) and again["ensemble"]


def test_resume_after_ctrl_c_gives_the_identical_run(data: dict[str, Path], tmp_path: Path,
                                                     sigint_handler: None) -> None:
    from rnntext.errors import TrainingInterrupted
    from rnntext.training.trainer import resume, train

    cfg = ml_config(data["train_csv"], data["test"], train__epochs=2)

    CtrlCAtStep5 = ctrl_c_after(5)  # handled by the trainer: finish the step, checkpoint, stop

    train(cfg, str(tmp_path / "straight"), **QUIET)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 5"):
        CtrlCAtStep5(cfg, str(tmp_path / "stopped"), **QUIET).fit()
    resume(str(tmp_path / "stopped"), **QUIET)
    for name in ("metrics.json", THRESHOLDS):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("stopped", "straight"))
        if name == "metrics.json":
            a, b = (_without_timing(x) for x in (a, b))
        assert a == b, name
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("stopped", "straight"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items()
                if k not in ("seconds", "rows_per_second", "train_seconds", "data_seconds", "total_seconds")}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


_TRAIN = """
import json, sys
from rnntext import RunConfig, train
train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_two_processes_train_a_multi_label_run_that_one_process_reloads(data: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from rnntext.inference.evaluate import evaluate_run

    cfg = ml_config(data["train"], data["test"], model__model="bag", train__epochs=6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN, json.dumps(cfg.to_dict()), str(tmp_path / "r")],
                              env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                   "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2",
                                   "OMP_NUM_THREADS": "1"},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        results = [(p.wait(150), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.kill()
    assert [rc for rc, _ in results] == [0, 0], results
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["test"]["n"] == 150 and metrics["test"]["micro_f1"] > 0.8
    # the test metrics (predicted shard by shard) equal one process's evaluation at the saved thresholds
    report = evaluate_run(tmp_path / "r", device="cpu", threads=1)
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        assert report[key] == pytest.approx(metrics["test"][key]), key


def test_the_benchmark_set_joins_pairs_of_texts_with_both_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import multilabel as bench

    texts, labels = [f"t{i}" for i in range(11)], ["World", "Sports", "Business", "Sci/Tech"] * 3
    rows = bench.build(texts, labels[:11], seed=0)
    assert len(rows) == 5 + 3  # 5 alone, 6 of the other 6 in 3 pairs
    assert sorted(len(t.split()) for t, _ in rows) == [1] * 5 + [2] * 3
    for text, got in rows:
        assert got == sorted({labels[int(w[1:])] for w in text.split()})
    assert rows == bench.build(texts, labels[:11], seed=0) != bench.build(texts, labels[:11], seed=1)
