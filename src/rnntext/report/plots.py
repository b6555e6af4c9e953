"""PNG plots of a run: `curves.png` (loss and accuracy per epoch and against training time) and
`confusion.png` (row-normalised confusion matrix), plus the comparison's accuracy-vs-time scatter and
evaluate's `calibration.png` (reliability diagram before and after the temperature).

matplotlib is the optional `plots` extra: it is imported only here, inside the functions, with
the Agg backend (no display needed), so training works without it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes

CURVES, CONFUSION, CALIBRATION_PLOT = "curves.png", "confusion.png", "calibration.png"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # the figures call tight_layout(); "tight" bbox would render twice
    _pyplot().close(fig)
    return buf.getvalue()


def render_curves(history: Sequence[dict[str, Any]], title: str | None = None) -> bytes:
    """Training loss (top) and train / validation accuracy (bottom), per epoch (left) and
    against cumulative training seconds (right)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    elapsed, t = [], 0.0
    for r in history:
        t += r["seconds"]
        elapsed.append(t)
    loss = [r["train_loss"] for r in history]
    train_acc = [r["train_accuracy"] for r in history]
    valid = [(i, r["valid_accuracy"]) for i, r in enumerate(history) if "valid_accuracy" in r]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharey="row")
    for col, (xs, xlabel) in enumerate(((epochs, "epoch"), (elapsed, "training time (s)"))):
        ax = axes[0][col]
        ax.plot(xs, loss, "o-", color="tab:red", label="train loss")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy" if col == 0 else "")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        ax = axes[1][col]
        ax.plot(xs, train_acc, "o-", color="tab:blue", label="train accuracy")
        if valid:
            ax.plot([xs[i] for i, _ in valid], [v for _, v in valid], "s--", color="tab:green",
                    label="validation accuracy")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy" if col == 0 else "")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    for ax in axes[:, 0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    return _png(fig)


def render_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str | None = None) -> bytes:
    """Each row (true class) divided by its total, so the diagonal is the per-class recall."""
    plt = _pyplot()
    k = len(labels)
    norm = []
    for row in confusion:
        total = sum(row)
        norm.append([v / total if total else 0.0 for v in row])
    size = max(4.5, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), labels, rotation=45 if max((len(x) for x in labels), default=0) > 6 else 0,
                  ha="right" if max((len(x) for x in labels), default=0) > 6 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:  # numbers in the cells stay legible up to about 20 classes
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i][j]:.2f}", ha="center", va="center", fontsize=9 if k <= 10 else 6,
                        color="white" if norm[i][j] > 0.5 else "black")
    n = sum(sum(r) for r in confusion)
    ax.set_title(title or f"confusion matrix, normalised by true class ({n:,} texts)")
    fig.tight_layout()
    return _png(fig)


def render_scatter(points: Sequence[dict[str, Any]], ylabel: str = "test accuracy") -> bytes:
    """Accuracy against training seconds, one labelled point per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [p["seconds"] for p in points]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for p in points:
        ax.scatter([p["seconds"]], [p["accuracy"]], s=60, zorder=3)
        right_half = len(points) > 1 and p["seconds"] > middle  # names point inwards, so none leaves the figure
        ax.annotate(p["name"], (p["seconds"], p["accuracy"]), textcoords="offset points",
                    xytext=(-6, 5) if right_half else (6, 5), ha="right" if right_half else "left", fontsize=9)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    ax.set_title(f"{ylabel} against training time")
    fig.tight_layout()
    return _png(fig)


def render_calibration(calibration: dict[str, Any], title: str | None = None) -> bytes:
    """The reliability diagram of an evaluation (evaluate's report["calibration"]): for each confidence bin,
    the accuracy of its texts against their mean confidence, for the raw and the calibrated probabilities
    (a calibrated model lies on the diagonal); below, how many texts fall in each bin."""
    plt = _pyplot()
    bins = int(calibration["bins"])
    edges = [k / bins for k in range(bins + 1)]
    centres = [(edges[k] + edges[k + 1]) / 2 for k in range(bins)]
    width = 1 / bins
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.5, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    t = calibration["temperature"]
    shown = f"{t:.2f}" if isinstance(t, (int, float)) else ", ".join(f"{x:.2f}" for x in t)
    for key, name, color, shift in (("before", "raw", "tab:red", -0.22), ("after", f"T = {shown}", "tab:blue", 0.22)):
        cells = calibration[f"reliability_{key}"]
        used = [k for k in range(bins) if cells[k]["count"]]
        ax.bar([centres[k] + shift * width for k in used], [cells[k]["accuracy"] for k in used], width=width * 0.42,
               color=color, alpha=0.75, label=f"{name}: ECE {calibration[f'ece_{key}']:.4f}")
        ax.plot([cells[k]["confidence"] for k in used], [cells[k]["accuracy"] for k in used], "o", color=color,
                markersize=3)
        hist.bar([centres[k] + shift * width for k in range(bins)], [c["count"] for c in cells], width=width * 0.42,
                 color=color, alpha=0.75)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in the bin")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"reliability diagram ({bins} bins of the top class probability)")
    hist.set_xlabel("confidence (probability of the predicted class)")
    hist.set_ylabel("texts")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def write_calibration_plot(calibration: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """calibration.png (render_calibration) at `path`, atomically; needs matplotlib."""
    path = Path(path)
    atomic_write_bytes(path, render_calibration(calibration, title))
    return path


MAX_CONFUSION_CLASSES = 50  # beyond this a confusion plot neither fits a page nor a reasonable amount of memory


def write_run_plots(run_dir: str | Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write curves.png (from metrics.json's epochs) and confusion.png (its test metrics) into the run
    directory `run_dir`. A plot never costs the run: without matplotlib, with too many classes for a
    confusion plot, or on any error, one log line says so and nothing more is written."""
    say = log or (lambda s: None)
    if not have_matplotlib():
        say("plots skipped: matplotlib is not installed (pip install 'rnntext[plots]')")
        return []
    run_dir = Path(run_dir)
    written = []
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        title = f"{config['model']['model']}, {metrics.get('parameters', 0):,} parameters"
        if metrics.get("epochs"):
            atomic_write_bytes(run_dir / CURVES, render_curves(metrics["epochs"], title))
            written.append(run_dir / CURVES)
        test = metrics.get("test")
        if test and test.get("confusion"):
            if len(test["labels"]) > MAX_CONFUSION_CLASSES:
                say(f"confusion plot skipped: {len(test['labels'])} classes (at most {MAX_CONFUSION_CLASSES} are "
                    "drawn; metrics.json has the matrix)")
            else:
                atomic_write_bytes(run_dir / CONFUSION, render_confusion(test["confusion"], test["labels"]))
                written.append(run_dir / CONFUSION)
    except Exception as e:  # noqa: BLE001 - the run is saved; a plot must not fail it
        say(f"plots skipped: {type(e).__name__}: {e}")
    return written
