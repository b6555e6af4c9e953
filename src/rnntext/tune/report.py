"""The tuning report: DIR/report.md and DIR/report.html (self-contained), with the trials table, the
optimisation history and the parameter importances (optuna.importance: fANOVA over the completed trials).
The plots (history.png, importances.png) need matplotlib (the `plots` extra); without it they are skipped
with a line in the log, and the tables stay."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_text
from ..report.plots import have_matplotlib

HISTORY, IMPORTANCES = "history.png", "importances.png"


def importances(study: Any) -> dict[str, float] | None:
    """Each searched parameter's share of the variance of the validation accuracy; None with too few trials."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError):  # fewer than 2 completed trials, or no parameter varies
        return None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def render_history(trials: list[dict[str, Any]]) -> bytes:
    """Validation accuracy of each trial (pruned ones at their last report) and the best so far."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    done = [t for t in trials if t["state"] == "complete"]
    pruned = [t for t in trials if t["state"] == "pruned" and t["value"] is not None]
    ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", label="completed")
    if pruned:
        ax.plot([t["number"] for t in pruned], [t["value"] for t in pruned], "x", color="grey", label="pruned")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t["number"]):
        best = t["value"] if best is None else max(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    last = max((t["number"] for t in trials), default=0)
    if xs and last > xs[-1]:  # the best so far, on to the last trial
        xs.append(last)
        ys.append(ys[-1])
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def render_importances(imp: dict[str, float]) -> bytes:
    plt = _pyplot()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.8 + 0.4 * len(names))))
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set_xlabel("importance (share of the variance of validation accuracy)")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    return _png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _tables(summary: dict[str, Any], imp: dict[str, float] | None) -> dict[str, tuple[list[str], list[list[str]]]]:
    names = summary["searched"]
    trials_head = ["trial", "state", "valid accuracy", "epochs", "seconds", *names]
    trials_rows = [[str(t["number"]), t["state"], f"{t['value']:.4f}" if t["value"] is not None else "",
                    f"{t['epochs']}" + (f" (best {t['best_epoch']})" if t.get("best_epoch") else ""),
                    f"{t['seconds']:.1f}" if t["seconds"] is not None else "",
                    *[_fmt(t["params"].get(n)) for n in names]] for t in summary["trials"]]
    space = (["setting", "searched"], [[k, d] for k, d in summary["space"]])
    tables = {"trials": (trials_head, trials_rows), "space": space}
    if imp:
        tables["importances"] = (["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp.items()])
    return tables


def _lines(summary: dict[str, Any]) -> list[str]:
    c, best = summary["counts"], summary["best"]
    lines = [f"{c['complete'] + c['pruned']} of {summary['target']} trials finished: {c['complete']} completed, "
             f"{c['pruned']} pruned" + (f"; {c['fail']} failed (not counted)" if c["fail"] else "") + ". "
             f"Sampler: {summary['sampler']}; pruner: {summary['pruner']}.",
             f"Best: trial {best['trial']}, validation accuracy {best['valid_accuracy']:.4f} (epoch {best['epoch']}); "
             + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()) + "."]
    if "test" in summary:
        t = summary["test"]
        lines.append(f"Test set (evaluated once, for the best configuration, after the search; it played no part in "
                     f"choosing): accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}.")
    else:
        lines.append("No test set was given.")
    lines.append("Reproduce: `rnntext train --config best.json --out RUN`; the best trial's model: `best-run/`.")
    return lines


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(summary: dict[str, Any], imp: dict[str, float] | None, plots: bool) -> str:
    t = _tables(summary, imp)
    out = ["# rnntext tuning report", "", *[line + "\n" for line in _lines(summary)], "## Search space", "",
           *_md_table(*t["space"]), "", "## Trials", "", *_md_table(*t["trials"]), "", "## Optimisation history", ""]
    out += [f"![optimisation history]({HISTORY})", ""] if plots else ["(plots need matplotlib)", ""]
    out += ["## Parameter importances", ""]
    if imp:
        out += [*_md_table(*t["importances"]), ""]
        if plots:
            out += [f"![parameter importances]({IMPORTANCES})", ""]
    else:
        out += ["Not enough completed trials to estimate them.", ""]
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    body = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr></thead><tbody>\n{body}\n" \
           "</tbody></table>"


def render_html(summary: dict[str, Any], imp: dict[str, float] | None, out: Path) -> str:
    t = _tables(summary, imp)
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', "<title>rnntext tuning</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;"
             "color:#222}table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;"
             "padding:.3rem .55rem}th{background:#f2f2f2}img{max-width:100%}</style></head><body>",
             "<h1>rnntext tuning report</h1>", *[f"<p>{html.escape(line)}</p>" for line in _lines(summary)],
             "<h2>Search space</h2>", _html_table(*t["space"]), "<h2>Trials</h2>", _html_table(*t["trials"]),
             "<h2>Optimisation history</h2>", _img(out / HISTORY, "optimisation history"),
             "<h2>Parameter importances</h2>",
             _html_table(*t["importances"]) if imp else "<p>Not enough completed trials to estimate them.</p>",
             _img(out / IMPORTANCES, "parameter importances"), "</body></html>"]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(out: Path, summary: dict[str, Any], study: Any, log: Callable[[str], None]) -> None:
    imp = importances(study)
    if imp is not None:
        summary["importances"] = imp
    plots = have_matplotlib()
    if plots:
        atomic_write_bytes(out / HISTORY, render_history(summary["trials"]))
        if imp:
            atomic_write_bytes(out / IMPORTANCES, render_importances(imp))
        else:
            (out / IMPORTANCES).unlink(missing_ok=True)  # an earlier report's
    else:
        log("tune: plots skipped: matplotlib is not installed (pip install 'rnntext[plots]')")
    atomic_write_text(out / "report.md", render_markdown(summary, imp, plots) + "\n")
    atomic_write_text(out / "report.html", render_html(summary, imp, out))
    log(f"tune: wrote {out / 'report.md'} and {out / 'report.html'}")
