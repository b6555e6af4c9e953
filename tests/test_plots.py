"""Run plots: curves.png and confusion.png written at the end of training; PNGs that render for
any history; a missing matplotlib skips the plots with one log line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from rnntext.report.plots import render_confusion, render_curves, render_scatter, write_run_plots


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def history(epochs: int, valid: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 1.4 / e, "train_accuracy": 0.5 + 0.05 * e, "seconds": 2.0 + e,
               "rows_per_second": 1000.0}
        if valid:
            row["valid_accuracy"] = 0.45 + 0.05 * e
        rows.append(row)
    return rows


def _run_dir(path: Path, metrics: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"parameters": 1234, **metrics}))
    (path / "config.json").write_text(json.dumps({"model": {"model": "gru"}}))
    return path


def test_training_writes_both_plots_into_the_run_directory(trained_run: Path) -> None:
    # the command line draws them from the run directory once training has saved it
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test"]["confusion"]
    assert [p.name for p in write_run_plots(trained_run)] == ["curves.png", "confusion.png"]
    for name in ("curves.png", "confusion.png"):
        w, h = png_size((trained_run / name).read_bytes())
        assert w > 400 and h > 300
    assert not list(trained_run.glob(".*.tmp")), "atomic write left a temporary file"


@pytest.mark.parametrize(("epochs", "valid"), [(1, True), (5, True), (3, False)])
def test_curves_render_for_any_history(epochs: int, valid: bool) -> None:
    w, h = png_size(render_curves(history(epochs, valid), "gru"))
    assert w > h > 300


def test_confusion_handles_many_classes_and_empty_rows() -> None:
    labels = [f"class number {i}" for i in range(25)]  # long names, too many for numbers in cells
    cm = [[(i == j) * 10 + (j == 0) for j in range(25)] for i in range(25)]
    cm[3] = [0] * 25  # a class absent from the test set: no division by zero
    png_size(render_confusion(cm, labels))
    w, h = png_size(render_confusion([[5, 1], [2, 7]], ["neg", "pos"]))
    assert w > 300 and h > 300


def test_scatter_renders() -> None:
    png_size(render_scatter([{"name": "rnn", "seconds": 3.0, "accuracy": 0.6},
                             {"name": "lstm", "seconds": 5.0, "accuracy": 0.7}]))


def test_without_matplotlib_plots_are_skipped_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    lines: list[str] = []
    run = _run_dir(tmp_path / "run", {"epochs": history(2), "test": {"confusion": [[1, 0], [0, 1]],
                                                                      "labels": ["a", "b"]}})
    written = write_run_plots(run, log=lines.append)
    assert written == [] and sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json"]
    assert len(lines) == 1 and "matplotlib is not installed" in lines[0]


def test_only_the_curves_without_a_test_set(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, {"epochs": history(2)})
    written = write_run_plots(run)
    assert [p.name for p in written] == ["curves.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "curves.png", "metrics.json"]


def test_many_classes_get_no_confusion_plot_and_a_log_line(tmp_path: Path) -> None:
    n = 200  # a 200 x 200 confusion plot took 7.6 GB once; now it is not drawn
    run = _run_dir(tmp_path, {"epochs": history(2), "test": {"confusion": [[0] * n for _ in range(n)],
                                                             "labels": [f"c{i}" for i in range(n)]}})
    lines: list[str] = []
    assert [p.name for p in write_run_plots(run, log=lines.append)] == ["curves.png"]
    assert len(lines) == 1 and "confusion plot skipped: 200 classes" in lines[0]


def test_a_broken_plot_never_fails_the_run(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, {"epochs": [{"epoch": "one"}]})  # not a history a plot can draw
    lines: list[str] = []
    assert write_run_plots(run, log=lines.append) == []
    assert len(lines) == 1 and lines[0].startswith("plots skipped:")
