"""The results of a ``chtorch compare`` directory, from its runs' saved records alone.

For each method, over its seeds: mean ± standard error (sample standard deviation / √n, the
paper's "±") of the recipe's primary metric at the last epoch; at the epoch selected on validation
(:mod:`chtorch.train.selection`: the best validation epoch among those at the target density, so never
an epoch of a density decay's denser start; shown when the runs hold out a validation split); and, as
a labelled comparator, at the best *test* epoch once the topology is final (after T_end: what the
official MLP code keeps, so the column to read beside the paper's cell,
:data:`chtorch.train.paper_tables.REPORTED`; choosing on the test set is not a model selection). Then
the active-neuron percentage (ANP) and density at the end — and, where the comparison names a paper
table (``run.paper_table``), the paper's cell beside it (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
Table 7). Written as ``compare.md``, ``compare.csv`` (every column of ``compare.md``, unscaled, and the
per-seed values) and ``compare.json`` with the overlay plots of :mod:`chtorch.train.compare_plots`;
``chtorch report COMPARE_DIR`` rebuilds them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chtorch._io import UnreadableFileError, atomic_write_text, read_json, sandbox
from chtorch.train.compare_plots import compare_plots
from chtorch.train.metrics import read_metrics
from chtorch.train.paper_tables import (
    REPORTED,
    best_after_final_topology,
    paper_cell,
    protocol_departures,
    protocol_warning,
)
from chtorch.train.seed_stats import mean_stderr
from chtorch.train.selection import select_epoch

__all__ = [
    "PLAN_NAME",
    "CSV_COLUMNS",
    "OUTPUT_NAMES",
    "load_plan",
    "collect_rows",
    "has_selection",
    "format_table",
    "write_compare",
    "is_compare_dir",
]

#: The plan ``chtorch compare`` writes before training: name, methods, seeds, paper table, run directories.
PLAN_NAME = "compare-plan.json"
#: The tables a compare directory gets (beside the plan and the overlay plots).
OUTPUT_NAMES = ("compare.md", "compare.csv", "compare.json")


def is_compare_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / PLAN_NAME).is_file()


def load_plan(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The plan of the compare directory ``out_dir``, checked: every run directory a plain name in it."""
    out_dir = Path(out_dir)
    path = out_dir / PLAN_NAME
    plan = read_json(path, 4 << 20, what="compare plan")

    def bad(why: str) -> UnreadableFileError:
        return UnreadableFileError(
            f"{path} is not a plan written by chtorch compare ({why}); run chtorch compare again into a new --out"
        )

    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        raise bad("no list of runs")
    if not isinstance(plan.get("seeds"), list) or not isinstance(plan.get("methods"), list):
        raise bad("no lists of methods and seeds")
    plan["name"] = str(plan.get("name", out_dir.name))
    for run in plan["runs"]:
        name = run.get("dir") if isinstance(run, dict) else None
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise bad(f"run directory {name!r} is not a name inside the compare directory")
        if not isinstance(run.get("method"), str):
            raise bad(f"run {name!r} has no method")
        run["dir"] = str(out_dir / name)  # stored relative: the directory can move
    return plan


def _summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = read_json(path, what="run summary")
    if not isinstance(summary, dict):
        raise UnreadableFileError(f"{path} is not a run summary (not a JSON object); remove the run to retrain it")
    return summary if summary.get("finished") else None


def _values(values: Sequence[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def collect_rows(plan: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(primary metric, one row per method, one entry per finished run) of ``plan``'s runs."""
    runs: list[dict[str, Any]] = []
    for entry in plan["runs"]:
        summary = _summary(Path(entry["dir"]))
        if summary is None:
            continue
        metric = summary["primary_metric"]
        higher = bool(summary.get("higher_is_better", True))
        epochs = [r for r in read_metrics(entry["dir"]) if r.get("kind") == "epoch"]
        rule = summary.get("selection")
        pick = select_epoch(epochs, rule, summary.get("sparsity"))
        settled = best_after_final_topology(epochs, metric, higher)
        last = float(summary["final"][metric])
        runs.append(
            {
                **entry,
                "metric": metric,
                "higher_is_better": higher,
                "last": last,
                "selected": None if pick is None or pick.get(metric) is None else float(pick[metric]),
                "selected_epoch": None if pick is None else int(pick["epoch"]),
                "selected_by": None if rule is None else rule["metric"],
                "best_final": settled[0] if settled else last,
                "best_final_epoch": settled[1] if settled else summary["epochs"],
                "active_neurons": float(summary["final"].get("active_neurons", 1.0)),
                "density": float(summary["final"].get("density", 1.0)),
                "epochs": summary["epochs"],
                "steps": summary["steps"],
                "seconds": summary.get("seconds"),
                "dataset": (summary.get("data") or {}).get("dataset"),
            }
        )
    metric = runs[0]["metric"] if runs else None
    rows = []
    for method in plan["methods"]:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        chosen = [r for r in mine if r["selected"] is not None]
        last, last_se = mean_stderr([r["last"] for r in mine])
        selected, selected_se = mean_stderr([r["selected"] for r in chosen]) if chosen else (None, None)
        final_mean, final_se = mean_stderr([r["best_final"] for r in mine])
        anp, anp_se = mean_stderr([r["active_neurons"] for r in mine])
        cell = paper_cell(plan.get("paper_table"), (plan.get("paper_rows") or {}).get(method))
        rows.append(
            {
                "method": method,
                "metric": metric,
                "mean": last,
                "stderr": last_se,
                "selected_mean": selected,
                "selected_stderr": selected_se,
                "selected_runs": len(chosen),
                "best_final_mean": final_mean,
                "best_final_stderr": final_se,
                "active_neurons": anp,
                "active_neurons_stderr": anp_se,
                "density": sum(r["density"] for r in mine) / len(mine),
                "runs": len(mine),
                "planned": sum(1 for e in plan["runs"] if e["method"] == method),
                "seeds": [r["seed"] for r in mine],
                "values": [r["last"] for r in mine],
                "selected_values": [r["selected"] for r in chosen],
                "selected_epochs": [r["selected_epoch"] for r in chosen],
                "best_final_values": [r["best_final"] for r in mine],
                "paper": None
                if cell is None
                else {"row": cell.row, "accuracy": cell.accuracy, "stderr": cell.stderr, "anp": cell.anp},
            }
        )
    return metric, rows, runs


def _scale(metric: str | None) -> float:
    return 100.0 if metric and "accuracy" in metric else 1.0


def _pm(mean: float | None, err: float | None, scale: float, digits: int = 2) -> str:
    if mean is None:
        return "—"
    return f"{scale * mean:.{digits}f}" + ("" if err is None else f" ± {scale * err:.{digits}f}")


def _runs(row: dict[str, Any]) -> str:
    return f"{row['runs']}" + (f" of {row['planned']}" if row.get("planned", row["runs"]) != row["runs"] else "")


def _selected(row: dict[str, Any], scale: float) -> str:
    """The selected-on-validation cell, with how many runs it averages when some runs have no selection."""
    shown = _pm(row.get("selected_mean"), row.get("selected_stderr"), scale)
    n = row.get("selected_runs", 0)
    return shown + (f" ({n} of {row['runs']} runs)" if 0 < n < row["runs"] else "")


def has_selection(rows: Sequence[dict[str, Any]]) -> bool:
    """True when some row has an epoch selected on validation (the table then shows that column)."""
    return any(r.get("selected_mean") is not None for r in rows)


def format_table(rows: list[dict[str, Any]], metric: str | None) -> str:
    """The Markdown table of :func:`collect_rows`' rows: the last epoch, the epoch selected on validation
    (when the runs have a validation split), the paper's protocol (best test epoch after T_end), ANP,
    density, runs, and the paper's cell when a row has one."""
    scale = _scale(metric)
    name = (metric or "metric").replace("_", " ") + (" (%)" if scale == 100.0 else "")
    paper = any(r.get("paper") for r in rows)
    selection = has_selection(rows)
    columns = [f"{name}, last epoch"]
    if selection:
        columns.append(f"{name}, epoch selected on validation")
    columns += [f"{name}, {REPORTED} (on test: the paper's protocol)", "active neurons (%)", "density", "runs"]
    if paper:
        columns += ["paper (row)", "paper ANP (%)"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = [_pm(row["mean"], row["stderr"], scale)]
        if selection:
            cells.append(_selected(row, scale))
        cells += [
            _pm(row["best_final_mean"], row["best_final_stderr"], scale),
            _pm(row["active_neurons"], row["active_neurons_stderr"], 100.0, 1),
            f"{row['density']:.4f}",
            _runs(row),
        ]
        if paper:
            cell = row.get("paper")
            if cell:
                anp = "—" if cell["anp"] is None else f"{cell['anp']:.0f}"
                cells += [f"{cell['accuracy']:.2f} ± {cell['stderr']:.2f} ({cell['row']})", anp]
            else:
                cells += ["—", "—"]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: ``compare.csv``'s columns: every column of ``compare.md`` (unscaled: accuracies as fractions, ANP as a
#: fraction; the paper's cells as printed, in %), then the per-seed values.
CSV_COLUMNS = (
    "method",
    "metric",
    "last",
    "last_stderr",
    "selected",
    "selected_stderr",
    "selected_runs",
    "best_after_t_end",
    "best_after_t_end_stderr",
    "active_neurons",
    "active_neurons_stderr",
    "density",
    "runs",
    "planned",
    "paper_row",
    "paper_accuracy",
    "paper_stderr",
    "paper_anp",
    "seeds",
    "values",
    "selected_values",
    "selected_epochs",
    "best_after_t_end_values",
)


def _csv(rows: list[dict[str, Any]], metric: str | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    blank = lambda v: "" if v is None else v  # noqa: E731
    for r in rows:
        cell = r.get("paper") or {}
        writer.writerow(
            [r["method"], metric or "", r["mean"], blank(r["stderr"]), blank(r.get("selected_mean"))]
            + [blank(r.get("selected_stderr")), r.get("selected_runs", 0), r["best_final_mean"]]
            + [blank(r["best_final_stderr"]), r["active_neurons"], blank(r["active_neurons_stderr"]), r["density"]]
            + [r["runs"], r.get("planned", r["runs"]), cell.get("row", ""), blank(cell.get("accuracy"))]
            + [blank(cell.get("stderr")), blank(cell.get("anp")), " ".join(str(s) for s in r.get("seeds", []))]
            + [
                _values(r["values"]),
                _values(r.get("selected_values", [])),
                " ".join(map(str, r.get("selected_epochs", []))),
            ]
            + [_values(r["best_final_values"])]
        )
    return buffer.getvalue()


def _departures(table: str | None, runs: list[dict[str, Any]]) -> list[str]:
    """How the finished runs depart from the paper's protocol of ``table`` (each phrase once)."""
    from chtorch.config.safe_yaml import safe_load_file

    found: dict[str, None] = {}
    for run in runs:
        path = Path(run["dir"]) / "config.yaml"
        if path.is_file():
            found.update(dict.fromkeys(protocol_departures(table, safe_load_file(path) or {})))
    return list(found)


def write_compare(
    out_dir: str | os.PathLike[str], plots: bool = True
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[Path]]:
    """Aggregate the finished runs of the compare directory ``out_dir`` into ``compare.md``,
    ``compare.csv``, ``compare.json`` and (with matplotlib) the overlay plots. Returns (the
    Markdown text, rows, runs, plot files)."""
    out_dir = Path(out_dir)
    plan = load_plan(out_dir)
    metric, rows, runs = collect_rows(plan)
    if not runs:
        text = f"# chtorch compare: {plan['name']}\n\nNo run has finished yet.\n"
        atomic_write_text(out_dir / "compare.md", text, root=out_dir)
        return text, rows, runs, []
    first = runs[0]
    budget = (
        f"Budget for every method: {first['epochs']} epochs = "
        f"{first['steps']} optimizer steps, sparsity {plan.get('sparsity')} "
        f"for the sparse methods, seeds {', '.join(map(str, plan['seeds']))}; dataset `{first.get('dataset') or '?'}`. "
        "± is the standard error over seeds. "
        + (
            "The epoch selected on validation is each run's best epoch by "
            f"{first['selected_by'] or 'its validation metric'} "
            "among the epochs at the target density (after a density decay ends), and the value is the test metric of "
            "that epoch (chtorch.train.selection). "
            if has_selection(rows)
            else "The runs hold out no validation split, so no epoch is selected on validation. "
        )
        + "The best after T_end is the best *test* epoch once the topology is final: the official MLP code's protocol, "
        "the column to compare with the paper's cells, not a model selection."
    )
    if plan.get("paper_table"):
        budget += (
            f" Paper cells: {plan['paper_table']} (Zhang et al., NeurIPS 2025), accuracy ± SE over 3 seeds and ANP."
        )
        departures = _departures(plan.get("paper_table"), runs)
        if departures:
            budget += "\n\n" + protocol_warning(plan["paper_table"], departures)
    table = format_table(rows, metric)
    figures: list[Path] = []
    if plots:
        try:
            with sandbox(out_dir):  # no plot through a link out of the directory
                figures = compare_plots(out_dir, plan, rows, runs, metric or "metric")
        except ImportError:
            figures = []
    pictures = "".join(f"\n![{p.stem}]({p.name})\n" for p in figures)
    text = f"# chtorch compare: {plan['name']}\n\n{budget}\n\n{table}\n{pictures}"
    atomic_write_text(out_dir / "compare.md", text, root=out_dir)
    atomic_write_text(out_dir / "compare.csv", _csv(rows, metric), root=out_dir)
    atomic_write_text(
        out_dir / "compare.json",
        json.dumps({"metric": metric, "rows": rows, "runs": runs}, indent=2, default=str),
        root=out_dir,
    )
    return f"{budget}\n{table}", rows, runs, figures
