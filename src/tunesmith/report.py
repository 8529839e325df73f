"""The run report: report.html and PNG plots in the run directory, and the same table in the terminal.

    metrics.jsonl -> curves (train/eval loss, the recipe's main metric, kl_to_base and probe perplexity
    over steps) -> PNGs -> a start-vs-end table -> report.html (the PNGs, the table, run.json)

Everything is read back from the run's own files, so `write_report(run_dir, recipe)` can redraw it later.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from tunesmith.atomic import atomic_write_bytes, atomic_write_text
from tunesmith.recipes import RECIPES
from tunesmith.train.metrics import read_metrics

PLOTS = {"loss.png": "training and evaluation loss", "main.png": "main metric", "forgetting.png": "drift from the base"}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r]
    return [s for s, _ in points], [v for _, v in points]


def _png(curves: list[tuple[str, list[int], list[float], str | None]], title: str) -> bytes | None:
    """One figure, a panel per axis label ("left"/"right" share a panel); None if there is nothing to draw."""
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    import matplotlib  # heavy: deferred until a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_labels = list(dict.fromkeys(c[3] or c[0] for c in curves))
    fig, axes = plt.subplots(len(axes_labels), 1, figsize=(7, 2.6 * len(axes_labels)), squeeze=False, sharex=True)
    for name, steps, values, axis in curves:
        ax = axes[axes_labels.index(axis or name)][0]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
        ax.set_ylabel(axis or name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1][0].set_xlabel("step")
    axes[0][0].set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def summary_rows(records: list[dict], recipe: str) -> list[tuple[str, float, float]]:
    """(metric, first value, last value) for the metrics a reader compares at start and end. When the
    forgetting budget stopped the run, "end" is the kept step (the result), not the step over budget."""
    stop = next((r for r in records if "budget_exceeded" in r), None)
    if stop is not None:
        records = [r for r in records if r.get("step", 0) <= stop["kept_step"] and "budget_exceeded" not in r]
    main = RECIPES[recipe].main_metric  # its eval_ twin is plotted with it when present
    keys = [
        None if RECIPES[recipe].samples else "loss",  # RL's "loss" is a surrogate: no yardstick
        f"eval_{main}" if main != "loss" else None,
        main,
        "eval_loss",
        "eval_reward_mean",
        "probe_perplexity",
        "probe_ppl_increase",
        "kl_to_base",
    ]
    rows = []
    for key in dict.fromkeys(k for k in keys if k):
        _, values = _series(records, key)
        if values:
            rows.append((key, values[0], values[-1]))
    return rows


def format_summary(rows: list[tuple[str, float, float]], stop: dict | None) -> str:
    lines = [f"{'metric':24s} {'start':>12s} {'end':>12s}"]
    lines += [f"{key:24s} {first:12.4f} {last:12.4f}" for key, first, last in rows]
    if stop:
        lines.append(
            f"forgetting budget exceeded at {stop['budget_exceeded']}; result (the end column) = step "
            f"{stop['kept_step']}"
        )
    return "\n".join(lines)


def write_report(run_dir: str | Path, recipe: str) -> str:
    """Write the PNGs and report.html into `run_dir`; return the table printed at the end of a run."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    main = RECIPES[recipe].main_metric
    figures = {
        "loss.png": _png(
            [("loss", *_series(records, "loss"), "loss"), ("eval_loss", *_series(records, "eval_loss"), "loss")], "loss"
        ),
        "main.png": None
        if main == "loss"
        else _png(
            [
                (main, *_series(records, main), main),
                (f"eval_{main}", *_series(records, f"eval_{main}"), main),
                ("eval_reward_mean", *_series(records, "eval_reward_mean"), main),
            ],
            main,
        ),
        "forgetting.png": _png(
            [
                ("kl_to_base", *_series(records, "kl_to_base"), "KL(base || tuned) per token"),
                ("probe_perplexity", *_series(records, "probe_perplexity"), "probe perplexity"),
            ],
            "drift from the base on the probe",
        ),
    }
    for name, data in figures.items():
        if data is not None:
            atomic_write_bytes(run_dir / name, data)
    stop = next((r for r in records if "budget_exceeded" in r), None)
    rows = summary_rows(records, recipe)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{a:.4f}</td><td>{b:.4f}</td></tr>" for k, a, b in rows)
    images = "".join(
        f'<h2>{PLOTS[name]}</h2><img src="{name}" alt="{PLOTS[name]}">'
        for name, data in figures.items()
        if data is not None
    )
    budget = (
        f"<p class=stop>Forgetting budget exceeded at {html.escape(stop['budget_exceeded'])}; the result is "
        f"the model at step {stop['kept_step']}, the last measurement within budget.</p>"
        if stop
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tunesmith {html.escape(recipe)} run: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}td:first-child{{text-align:left}}
.stop{{color:#a00;font-weight:bold}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>tunesmith {html.escape(recipe)}: {html.escape(str(run_dir))}</h1>{budget}
<h2>start and end</h2><table><tr><th>metric</th><th>start</th><th>end</th></tr>{table}</table>
{images}<h2>run.json</h2><pre>{html.escape(json.dumps(run, indent=2))}</pre></body></html>
"""
    atomic_write_text(run_dir / "report.html", page)
    return format_summary(rows, stop)
