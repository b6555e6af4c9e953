"""`rnntext compare`: train several configurations on one dataset and write report.md / report.html.

The data is read, split, tokenised and encoded once and shared by every run, so the runs differ
only in their model and training settings (a run entry therefore has no `data` section)."""

from __future__ import annotations

import base64
import dataclasses
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, RunConfig, TrainConfig, read_config_file
from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..model.registry import model_names
from ..presets import PRESETS, preset_config
from .plots import CONFUSION, CURVES, have_matplotlib, render_scatter, write_run_plots

SCATTER = "scatter.png"
OVERRIDABLE = ("epochs", "epoch_size", "threads", "seed", "device")  # command-line settings applied to every run


@dataclass
class Entry:
    """One configuration to train: a preset (optional), then these model / train settings on top."""

    name: str
    preset: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# The tutorial's three systems, and GRU and BiLSTM at the tutorial's sizes (embed 64, hidden 32).
DEFAULT_ENTRIES = [
    Entry("tutorial-rnn", "tutorial-rnn"),
    Entry("tutorial-lstm", "tutorial-lstm"),
    Entry("tutorial-lstm-packed", "tutorial-lstm-packed"),
    Entry("gru", "tutorial-lstm", model={"model": "gru"}),
    Entry("bilstm", "tutorial-lstm", model={"bidirectional": True}),
]


def _safe_name(name: str) -> str:
    """A run name usable as a directory name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def parse_entries(obj: Any, source: str = "<config>") -> list[Entry]:
    """Entries from a parsed config file: a list of run objects, or {"runs": [...]}."""
    if isinstance(obj, dict):
        extra = set(obj) - {"runs"}
        if extra:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(extra)}; expected only 'runs'")
        obj = obj.get("runs")
    if not isinstance(obj, list) or not obj:
        raise ConfigError(f"{source}: expected a non-empty list of runs (JSON: [{{...}}] or {{\"runs\": [...]}}; "
                          "TOML: [[runs]] tables)")
    entries, seen = [], set()
    for i, item in enumerate(obj, 1):
        where = f"{source}: run {i}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object, got {type(item).__name__}")
        if "data" in item:
            raise ConfigError(f"{where}: a 'data' section is not allowed here: all runs share one dataset, "
                              "set it with the command's data options")
        unknown = set(item) - {"name", "preset", "model", "train"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, preset, model, train")
        preset = item.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        sections = {}
        for section, klass in (("model", ModelConfig), ("train", TrainConfig)):
            try:  # each value against its setting's declaration, as config.json is checked
                sections[section] = klass().checked(item.get(section, {}))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        model = sections["model"].get("model")
        if model is not None and model not in model_names():
            raise ConfigError(f"{where}: unknown model {model!r}; choose one of {', '.join(model_names())}")
        default = preset or item.get("model", {}).get("model") or f"run{i}"
        name = _safe_name(str(item.get("name") or default))
        if name in seen:
            raise ConfigError(f"{where}: run name {name!r} is used twice; give each run a distinct 'name'")
        seen.add(name)
        entries.append(Entry(name, preset, sections["model"], sections["train"]))
    return entries


def load_entries(path: str | Path) -> list[Entry]:
    """Runs listed in a JSON or TOML file (by suffix; .toml is TOML, anything else JSON)."""
    obj = read_config_file(path, "comparison config")
    return parse_entries(obj, str(path))


def entry_config(base: RunConfig, entry: Entry, overrides: dict[str, Any] | None = None) -> RunConfig:
    """base -> preset -> the entry's settings -> command-line overrides; validated. A preset's data
    settings (the tutorial's min_freq 1) do not apply: every run shares the command's prepared data, and
    its config.json must say what it was trained on."""
    where = f"run {entry.name}"
    cfg = base
    if entry.preset:
        cfg = preset_config(entry.preset, cfg, sections=("model", "train"))
    cfg = RunConfig.from_dict({"model": entry.model, "train": entry.train}, where, base=cfg)
    cfg = RunConfig.from_dict({"train": {k: v for k, v in (overrides or {}).items() if v is not None}}, where, base=cfg)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def describe_model(m: ModelConfig) -> str:
    # a members run (model/members.py) has K times one model's parameters: the row says why
    members = f", {m.members} members" if m.members and m.members > 1 else ""
    if m.model == "bag":
        return f"EmbeddingBag (embed {m.embed_dim}){members}"
    cell = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}.get(m.model)
    if cell is None:  # another registered family: its name and sizes
        return f"{m.model} (embed {m.embed_dim}, hidden {m.hidden_dim}){members}"
    layers = f"{m.num_layers}x" if m.num_layers > 1 else ""
    return (f"{'Bi' if m.bidirectional else ''}{cell} {layers}{m.hidden_dim}, embed {m.embed_dim}, "
            f"{m.pooling}, {'packed' if m.packed else 'padded'}{members}")


def summarize(name: str, cfg: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """One table row from a finished run's metrics."""
    history = metrics["epochs"]
    seconds = sum(r["seconds"] for r in history)
    rows = sum(r["rows_per_second"] * r["seconds"] for r in history)
    test = metrics.get("test")
    best_valid = max((r["valid_accuracy"] for r in history if "valid_accuracy" in r), default=None)
    return {
        "name": name, "model": describe_model(cfg.model), "parameters": metrics["parameters"],
        "epochs": len(history), "best_epoch": metrics["best_epoch"],
        "test_accuracy": test["accuracy"] if test else None, "macro_f1": test["macro_f1"] if test else None,
        "valid_accuracy": best_valid, "train_seconds": seconds, "rows_per_second": rows / seconds if seconds else 0.0,
        "config": cfg.to_dict(),
    }


def compare(base: RunConfig, entries: list[Entry], out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
            progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every entry on the data `base.data` describes (prepared once), write the runs under
    OUT/runs/NAME and the report (report.md, report.html, scatter.png, summary.json) in OUT."""
    # Build and check every configuration first: a typo in the last entry must not cost the first runs.
    configs = [(e.name, entry_config(base, e, overrides)) for e in entries]
    from ..data import prepare
    from ..training import train

    log = log or (lambda s: None)
    out = Path(out_dir)
    data_seed = configs[0][1].train.seed  # the validation split; the runs' own seeds only change the weights
    t0 = time.perf_counter()
    prepared = prepare(base.data, seed=data_seed, progress=progress)
    log(f"compare: data prepared once in {prepared.seconds:.1f}s; {len(configs)} runs")
    rows = []
    for i, (name, cfg) in enumerate(configs, 1):
        log(f"compare: run {i}/{len(configs)}: {name} ({describe_model(cfg.model)})")
        result = train(cfg, str(out / "runs" / name), prepared=prepared, progress=progress, log=log)
        write_run_plots(out / "runs" / name, log)
        rows.append(summarize(name, result.config, result.metrics))
    p = prepared
    summary = {
        "data": {"config": dataclasses.asdict(base.data), "train_rows": len(p.train),
                 "valid_rows": len(p.valid) if p.valid else 0, "test_rows": len(p.test) if p.test else 0,
                 "vocabulary": len(p.vocab), "classes": p.label_names},
        "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
        "runs": rows, "total_seconds": time.perf_counter() - t0,
    }
    write_report(out, summary, log)
    return summary


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "model", "parameters", "epochs", "test accuracy", "macro-F1", "training s", "rows/s"]
    body = [[r["name"], r["model"], f"{r['parameters']:,}", str(r["epochs"]), _fmt(r["test_accuracy"], ".4f"),
             _fmt(r["macro_f1"], ".4f"), f"{r['train_seconds']:.1f}", f"{r['rows_per_second']:,.0f}"]
            for r in summary["runs"]]
    return head, body


def _data_line(summary: dict[str, Any]) -> str:
    d = summary["data"]
    cfg = d["config"]
    source = cfg["train"] or f"AG News ({cfg['data_dir'] or 'default location'})"
    text = (f"Data: {source}: {d['train_rows']:,} train / {d['valid_rows']:,} validation / {d['test_rows']:,} test "
            f"rows, vocabulary {d['vocabulary']:,}, {len(d['classes'])} classes.")
    if summary["overrides"]:
        text += " Settings for every run: " + ", ".join(f"{k}={v}" for k, v in summary["overrides"].items()) + "."
    return text


def _scatter_points(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Test accuracy when there is a test set, else the best validation accuracy."""
    runs = summary["runs"]
    key, what = ("test_accuracy", "test accuracy") if all(r["test_accuracy"] is not None for r in runs) \
        else ("valid_accuracy", "best validation accuracy")
    points = [{"name": r["name"], "seconds": r["train_seconds"], "accuracy": r[key]}
              for r in runs if r[key] is not None]
    return points, what


def markdown_table(summary: dict[str, Any]) -> str:
    head, body = _table(summary)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], scatter: bool) -> str:
    lines = ["# rnntext comparison", "", _data_line(summary), "", markdown_table(summary), ""]
    if scatter:
        lines += [f"![accuracy against training time]({SCATTER})", ""]
    for r in summary["runs"]:
        run = f"runs/{r['name']}"
        lines += [f"## {r['name']}", "", f"{r['model']}; best epoch {r['best_epoch']}; run directory `{run}`.", ""]
        if scatter:  # the run plots exist when matplotlib does
            lines += [f"![training curves of {r['name']}]({run}/{CURVES})", "",
                      f"[confusion matrix]({run}/{CONFUSION})", ""]
    return "\n".join(lines)


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(summary: dict[str, Any], out: Path) -> str:
    """A self-contained page: the images are embedded, so the file can be mailed or moved alone."""
    e = html.escape
    head, body = _table(summary)
    rows = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', "<title>rnntext comparison</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.35rem .6rem}"
        "td:nth-child(n+3){text-align:right}td:first-child{white-space:nowrap}th{background:#f2f2f2}"
        "img{max-width:100%}"
        "section{margin-top:2rem}</style></head><body>",
        "<h1>rnntext comparison</h1>", f"<p>{e(_data_line(summary))}</p>",
        "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead>",
        f"<tbody>\n{rows}\n</tbody></table>", _img(out / SCATTER, "accuracy against training time"),
    ]
    for r in summary["runs"]:
        run = out / "runs" / r["name"]
        parts += [f'<section><h2>{e(r["name"])}</h2><p>{e(r["model"])}; best epoch {r["best_epoch"]}; '
                  f'run directory <code>runs/{e(r["name"])}</code>.</p>',
                  _img(run / CURVES, f"training curves of {r['name']}"),
                  _img(run / CONFUSION, f"confusion matrix of {r['name']}"), "</section>"]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_report(out: Path, summary: dict[str, Any], log: Callable[[str], None]) -> None:
    plots = have_matplotlib()
    if plots:
        points, what = _scatter_points(summary)
        atomic_write_bytes(out / SCATTER, render_scatter(points, what))
    else:
        log("scatter plot skipped: matplotlib is not installed (pip install 'rnntext[plots]')")
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary, plots) + "\n")
    atomic_write_text(out / "report.html", render_html(summary, out))
    log(f"compare: wrote {out / 'report.html'} and {out / 'report.md'}")
