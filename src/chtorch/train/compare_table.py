"""The results of a ``chtorch compare`` directory, from its runs' saved records alone.

For each method, over its seeds: mean ± standard error (sample standard deviation / √n, the
paper's "±") of the recipe's primary metric at the last epoch and at the best epoch (the best
evaluated epoch of each run: highest accuracy/BLEU, lowest perplexity) and at the best epoch once
the topology is final (after T_end: what the official MLP code keeps, so the column to read beside
the paper's cell, :data:`chtorch.train.paper_tables.REPORTED`), the active-neuron
percentage (ANP) and density at the end — and, where the comparison names a paper table
(``run.paper_table``), the paper's cell beside it (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
Table 7). Written as ``compare.md``, ``compare.csv`` and ``compare.json`` with the overlay plots of
:mod:`chtorch.train.compare_plots`; ``chtorch report COMPARE_DIR`` rebuilds them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from chtorch._io import UnreadableFileError, atomic_write_text, read_json, sandbox
from chtorch.train.compare_plots import compare_plots
from chtorch.train.metrics import read_metrics
from chtorch.train.paper_tables import REPORTED, best_after_final_topology, paper_cell
from chtorch.train.seed_stats import mean_stderr

__all__ = ["PLAN_NAME", "OUTPUT_NAMES", "load_plan", "collect_rows", "format_table", "write_compare", "is_compare_dir"]

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


def best_epoch_value(epochs: list[dict[str, Any]], metric: str, higher_is_better: bool) -> tuple[float, int] | None:
    """(best value of ``metric`` over the evaluated epochs, its epoch)."""
    scored = [(float(r[metric]), int(r["epoch"])) for r in epochs if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    return max(scored) if higher_is_better else min(scored, key=lambda t: (t[0], -t[1]))


def collect_rows(plan: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(primary metric, one row per method, one entry per finished run) of ``plan``'s runs."""
    runs: list[dict[str, Any]] = []
    for entry in plan["runs"]:
        summary = _summary(Path(entry["dir"]))
        if summary is None:
            continue
        metric = summary["primary_metric"]
        epochs = [r for r in read_metrics(entry["dir"]) if r.get("kind") == "epoch"]
        best = best_epoch_value(epochs, metric, bool(summary.get("higher_is_better", True)))
        settled = best_after_final_topology(epochs, metric, bool(summary.get("higher_is_better", True)))
        runs.append(
            {
                **entry,
                "metric": metric,
                "higher_is_better": bool(summary.get("higher_is_better", True)),
                "last": float(summary["final"][metric]),
                "best": best[0] if best else float(summary["final"][metric]),
                "best_epoch": best[1] if best else summary["epochs"],
                "best_final": settled[0] if settled else float(summary["final"][metric]),
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
        last, last_se = mean_stderr([r["last"] for r in mine])
        best_mean, best_se = mean_stderr([r["best"] for r in mine])
        final_mean, final_se = mean_stderr([r["best_final"] for r in mine])
        anp, anp_se = mean_stderr([r["active_neurons"] for r in mine])
        cell = paper_cell(plan.get("paper_table"), (plan.get("paper_rows") or {}).get(method))
        rows.append(
            {
                "method": method,
                "metric": metric,
                "mean": last,
                "stderr": last_se,
                "best_mean": best_mean,
                "best_stderr": best_se,
                "best_final_mean": final_mean,
                "best_final_stderr": final_se,
                "active_neurons": anp,
                "active_neurons_stderr": anp_se,
                "density": sum(r["density"] for r in mine) / len(mine),
                "runs": len(mine),
                "planned": sum(1 for e in plan["runs"] if e["method"] == method),
                "seeds": [r["seed"] for r in mine],
                "values": [r["last"] for r in mine],
                "best_values": [r["best"] for r in mine],
                "paper": None
                if cell is None
                else {"row": cell.row, "accuracy": cell.accuracy, "stderr": cell.stderr, "anp": cell.anp},
            }
        )
    return metric, rows, runs


def _scale(metric: str | None) -> float:
    return 100.0 if metric and "accuracy" in metric else 1.0


def _pm(mean: float, err: float | None, scale: float, digits: int = 2) -> str:
    return f"{scale * mean:.{digits}f}" + ("" if err is None else f" ± {scale * err:.{digits}f}")


def format_table(rows: list[dict[str, Any]], metric: str | None) -> str:
    """The Markdown table of :func:`collect_rows`' rows (paper columns when a row has a paper cell)."""
    scale = _scale(metric)
    name = (metric or "metric").replace("_", " ") + (" (%)" if scale == 100.0 else "")
    paper = any(r.get("paper") for r in rows)
    head = (
        f"| method | {name}, last epoch | {name}, best epoch | "
        f"{name}, {REPORTED} | active neurons (%) | density | runs |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if paper:
        head += " paper (row) | paper ANP (%) |"
        rule += "---:|---:|"
    lines = [head, rule]
    for row in rows:
        runs = f"{row['runs']}" + (f" of {row['planned']}" if row.get("planned", row["runs"]) != row["runs"] else "")
        line = (
            f"| {row['method']} | {_pm(row['mean'], row['stderr'], scale)} "
            f"| {_pm(row['best_mean'], row['best_stderr'], scale)} | "
            f"{_pm(row['best_final_mean'], row['best_final_stderr'], scale)} | "
            f"{_pm(row['active_neurons'], row['active_neurons_stderr'], 100.0, 1)} | {row['density']:.4f} | {runs} |"
        )
        if paper:
            cell = row.get("paper")
            if cell:
                anp = "—" if cell["anp"] is None else f"{cell['anp']:.0f}"
                line += f" {cell['accuracy']:.2f} ± {cell['stderr']:.2f} ({cell['row']}) | {anp} |"
            else:
                line += " — | — |"
        lines.append(line)
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]], metric: str | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "method",
            metric or "metric",
            "stderr",
            "best",
            "best_stderr",
            "active_neurons",
            "active_neurons_stderr",
            "density",
            "runs",
        ]
        + ["values", "best_values", "paper_row", "paper_accuracy", "paper_stderr", "paper_anp"]
    )
    for r in rows:
        cell = r.get("paper") or {}
        blank = lambda v: "" if v is None else v  # noqa: E731
        writer.writerow(
            [r["method"], r["mean"], blank(r["stderr"]), r["best_mean"], blank(r["best_stderr"]), r["active_neurons"]]
            + [blank(r["active_neurons_stderr"]), r["density"], r["runs"], " ".join(f"{v:.6g}" for v in r["values"])]
            + [" ".join(f"{v:.6g}" for v in r["best_values"]), cell.get("row", ""), blank(cell.get("accuracy"))]
            + [blank(cell.get("stderr")), blank(cell.get("anp"))]
        )
    return buffer.getvalue()


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
        "± is the standard error over seeds; the best epoch is each "
        "run's best evaluated epoch; the best after T_end is the "
        "best epoch once the topology is final (what the official "
        "MLP code keeps, the column to compare with the paper)."
    )
    if plan.get("paper_table"):
        budget += (
            f" Paper cells: {plan['paper_table']} (Zhang et al., NeurIPS 2025), accuracy ± SE over 3 seeds and ANP."
        )
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
