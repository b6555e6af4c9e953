"""Evaluate a saved run on a labelled file or the AG News test split."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..data import ag_news
from ..data.dataset import read_labelled
from ..data.memory import given_one
from ..data.readers import Rows
from ..errors import ConfigError, DataError
from ..training.calibration import calibration_report, selective_report
from ..training.metrics import classification_report
from .prediction import check_min_confidence
from .predictor import Predictor


def read_eval_rows(data: DataConfig) -> Rows:
    if data.test:
        return read_labelled(data.test, data)
    if data.dataset == "ag_news":
        return ag_news.load(data.data_dir, data.skip_bad_rows)[1]
    raise ConfigError("nothing to evaluate on: give --test FILE or --dataset ag_news")


def evaluation_data(trained: DataConfig, *, test: str | None = None, dataset: str | None = None,
                    data_dir: str | None = None, text_columns: list[str] | None = None,
                    label_column: str | None = None, skip_bad_rows: bool | None = None,
                    quoting: str | None = None) -> DataConfig:
    """The data to evaluate on: what the run was trained with, changed by the options given. Columns
    default to the run's own, so a model trained with --text-column sentence reads `sentence` again."""
    data = copy.deepcopy(trained)
    if test is not None:
        data.dataset, data.test = None, test
    elif dataset is not None or data_dir is not None:
        data.dataset, data.test, data.data_dir = "ag_news", None, data_dir
    if text_columns:
        data.text_columns = list(text_columns)
    if label_column:
        data.label_column = label_column
    if skip_bad_rows is not None:
        data.skip_bad_rows = skip_bad_rows
    if quoting is not None:
        data.quoting = quoting
        data.validate()
    return data


def evaluate_run(run_dir: str | Path | Sequence[str | Path], data: DataConfig | None = None, device: str = "auto",
                 threads: int | str | None = None, precision: str = "fp32", calibration: bool = True,
                 min_confidence: float | None = None, **options: Any) -> dict[str, Any]:
    """Metrics of the run in `run_dir` on `data`'s test set, by default the one it was trained with;
    `options` (test, dataset, data_dir, text_columns, label_column, skip_bad_rows, quoting) change it as in
    `evaluation_data`; `test` may also be data held in Python, as `rnntext.train`'s (data/memory.py).
    Several run directories are evaluated as an ensemble (mean of their class
    probabilities) on the first one's test set. The metrics come from the calibrated probabilities unless
    `calibration` is False; the report's "calibration" gives the ECE and NLL before and after either way.
    `min_confidence` P: also how many texts would get a label and how accurate those are."""
    check_min_confidence(min_confidence)
    predictor = Predictor.load(run_dir, device, threads, precision)
    run = predictor.run
    given: AbstractContextManager[None] = nullcontext()
    if options.get("test") is not None and not isinstance(options["test"], (str, Path)):
        # data held in Python (a DataFrame, a datasets.Dataset, (texts, labels), ...): data/memory.py
        options["test"], given = given_one("test", options["test"], data or run.config.data)
    data = evaluation_data(data or run.config.data, **options)
    with given:
        rows = read_eval_rows(data)
    if predictor.multi_label:
        report = _multilabel_report(predictor, rows, data.skip_bad_rows)
    else:
        y = label_ids(rows, run.label_names)
        fitted = predictor.probabilities(rows.texts)
        raw = fitted if predictor.temperatures == [1.0] * len(predictor.runs) else \
            predictor.probabilities(rows.texts, calibrated=False)
        probs = fitted if calibration else raw
        report = classification_report(y, probs.argmax(1), run.label_names)
        report["calibration"] = calibration_report(raw, fitted, y, predictor.temperatures, calibration)
        if min_confidence is not None:
            report["selective"] = selective_report(probs, y, min_confidence)
    report["file"] = rows.path
    report.setdefault("skipped", rows.skipped)
    if len(predictor.runs) > 1:
        report["ensemble"] = [str(r.path) for r in predictor.runs]
    return report


def label_ids(rows: Rows, names: list[str]) -> torch.Tensor:
    """The class index of each row's label; a label the model does not know names the file and line."""
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for label, line in zip(rows.labels, rows.lines):
        if label not in index:
            raise DataError(f"label {label!r} is not one the model knows ({', '.join(names)})", rows.path, line)
        labels.append(index[label])
    return torch.tensor(labels, dtype=torch.long)


def _multilabel_report(predictor: Predictor, rows: Rows, skip_bad_rows: bool) -> dict[str, Any]:
    """The multi-label metrics (training/multilabel.py) of `predictor` on `rows` (sets of labels), at the
    run's thresholds. A label the model does not know is an error naming the file and line (or with
    skip_bad_rows a skipped row)."""
    from ..data.labels import known_only, multi_hot
    from ..training.multilabel import decide, multilabel_report

    names = predictor.labels
    known = known_only(rows, set(names), skip_bad_rows, names)
    assert known is not None
    pred = decide(predictor.probabilities(known.texts), predictor.thresholds)
    report = multilabel_report(multi_hot(known, names), pred, names, predictor.thresholds)
    report["skipped"] = known.skipped
    return report


def evaluate_export(path: str | Path, threads: int | None = None, calibration: bool = True,
                    min_confidence: float | None = None, **options: Any) -> dict[str, Any]:
    """evaluate_run for an export directory (`rnntext export`), run by onnxruntime: on the test set of the
    run it was exported from, changed by `options` as in `evaluation_data`."""
    check_min_confidence(min_confidence)
    from ..config import RunConfig
    from .onnx_predictor import SETTINGS, OnnxPredictor

    predictor = OnnxPredictor.load(path, threads)
    raw = predictor.settings.get("data")
    trained = RunConfig.from_dict({"data": raw}, source=str(Path(path) / SETTINGS)).data if raw else DataConfig()
    data = evaluation_data(trained, **options)
    rows = read_eval_rows(data)
    y = label_ids(rows, predictor.labels)
    fitted = torch.from_numpy(predictor.probabilities(rows.texts))
    raw = fitted if predictor.temperature == 1.0 else \
        torch.from_numpy(predictor.probabilities(rows.texts, calibrated=False))
    probs = fitted if calibration else raw
    report = classification_report(y, probs.argmax(1), predictor.labels)
    report["calibration"] = calibration_report(raw, fitted, y, [predictor.temperature], calibration)
    if min_confidence is not None:
        report["selective"] = selective_report(probs, y, min_confidence)
    report["file"] = rows.path
    report["skipped"] = rows.skipped
    report["backend"] = "onnx"
    return report
