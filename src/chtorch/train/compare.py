"""``chtorch compare``: several methods × seeds on one budget, tabulated like the paper's tables.

Every run uses the same config — epochs, batch size, optimizer and schedule, sparsity — and differs
only in ``sparsity.method`` (``dense`` = no sparsification) and ``run.seed``; per-method extras come
from ``sparsity.method_options``. The table gives mean ± standard error over seeds (sample standard
deviation / √n, as the paper's "±"), the active-neuron percentage (ANP) and the final density
(Zhang et al., NeurIPS 2025, arXiv:2501.19107, Tables 1 and 7). Finished runs found in the output
directory are reused and unfinished ones resumed, so an interrupted comparison continues.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from chtorch.config import Config, ConfigError, build_config, config_to_dict
from chtorch.dst.options import closest
from chtorch.train.checkpoint import CHECKPOINT_NAME
from chtorch.train.lifecycle import SUMMARY_NAME
from chtorch.train.runs import resume, train

__all__ = ["compare", "CompareResult", "mean_stderr", "format_table"]


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, standard error of the mean) — the error is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass
class CompareResult:
    """Per-method rows (aggregated over seeds), per-run summaries, and the rendered table."""

    out_dir: Path
    metric: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""


def _scale(metric: str) -> float:
    return 100.0 if "accuracy" in metric else 1.0


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The Markdown table of :func:`compare`'s rows."""
    scale = _scale(metric)
    unit = " (%)" if scale == 100.0 else ""
    head = f"| method | {metric.replace('_', ' ')}{unit} | active neurons (%) | density | runs |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for row in rows:
        err = row["stderr"]
        value = f"{scale * row['mean']:.2f} ± {scale * err:.2f}" if err is not None else f"{scale * row['mean']:.2f}"
        lines.append(f"| {row['method']} | {value} | {100 * row['active_neurons']:.1f} | {row['density']:.4f} | {row['runs']} |")
    return "\n".join(lines)


def _run_config(base: Config, method: str, seed: int, run_dir: Path) -> Config:
    raw = config_to_dict(base)
    raw["sparsity"]["method"] = method
    raw["run"]["seed"] = seed
    raw["run"]["name"] = f"{base.run.name}-{method}-seed{seed}"
    raw["run"]["dir"] = str(run_dir.resolve())
    return build_config(raw)


def compare(
    config: Config,
    methods: Sequence[str],
    seeds: Sequence[int] = (0,),
    out_dir: str | os.PathLike[str] | None = None,
    *,
    out: TextIO | None = None,
) -> CompareResult:
    """Train every ``method`` with every seed in ``out_dir/<method>-seed<s>`` and write
    ``compare.md``, ``compare.csv`` and ``compare.json`` there."""
    from chtorch.dst.methods import all_methods

    out = out or sys.stdout
    known = all_methods()
    methods = [m.strip().lower() for m in methods if m.strip()]
    if not methods:
        raise ConfigError("--methods is empty: give a comma-separated list, e.g. dense,set,rigl,chts")
    for m in methods:
        if m not in known:
            raise ConfigError(f"unknown method {m!r}{closest(m, known)}; known methods: {', '.join(known)}", "sparsity.method")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {', '.join(methods)}")
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct non-negative integers, got {seeds}")
    if out_dir is None:
        out_dir = Path("runs") / f"compare-{config.run.name}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Validate every run's config before training anything.
    plan = [(m, s, _run_config(config, m, s, out_dir / f"{m}-seed{s}")) for m in methods for s in seeds]
    result = CompareResult(out_dir, metric="")
    for i, (method, seed, run_config) in enumerate(plan, start=1):
        run_dir = Path(run_config.run.dir)
        summary_path = run_dir / SUMMARY_NAME
        print(f"[{i}/{len(plan)}] {method}, seed {seed} -> {run_dir}", file=out, flush=True)
        if summary_path.is_file() and json.loads(summary_path.read_text(encoding="utf-8")).get("finished"):
            print("  finished earlier; reusing its result", file=out)
        elif (run_dir / CHECKPOINT_NAME).is_file():
            resume(run_dir, out=out)
        else:
            train(run_config, run_dir, out=out)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        result.runs.append(summary)

    metric = result.runs[0]["primary_metric"]
    result.metric = metric
    for method in methods:
        runs = [r for r in result.runs if r["method"] == method]
        mean, err = mean_stderr([float(r["final"][metric]) for r in runs])
        result.rows.append(
            {
                "method": method,
                "metric": metric,
                "mean": mean,
                "stderr": err,
                "active_neurons": sum(float(r["final"].get("active_neurons", 1.0)) for r in runs) / len(runs),
                "density": sum(float(r["final"].get("density", 1.0)) for r in runs) / len(runs),
                "runs": len(runs),
                "seeds": [r["seed"] for r in runs],
                "values": [float(r["final"][metric]) for r in runs],
            }
        )
    first = result.runs[0]
    budget = (
        f"Budget for every method: {first['epochs']} epochs = {first['steps']} optimizer steps, "
        f"sparsity {config.sparsity.sparsity} for the sparse methods, seeds {', '.join(map(str, seeds))}; "
        f"dataset `{first['data'].get('dataset', config.data.name if hasattr(config.data, 'name') else '?')}`. "
        "± is the standard error over seeds."
    )
    result.table = format_table(result.rows, metric)
    (out_dir / "compare.md").write_text(f"# chtorch compare: {config.run.name}\n\n{budget}\n\n{result.table}\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", metric, "stderr", "active_neurons", "density", "runs", "values"])
    for row in result.rows:
        writer.writerow(
            [
                row["method"],
                row["mean"],
                "" if row["stderr"] is None else row["stderr"],
                row["active_neurons"],
                row["density"],
                row["runs"],
                " ".join(f"{v:.6g}" for v in row["values"]),
            ]
        )
    (out_dir / "compare.csv").write_text(buffer.getvalue(), encoding="utf-8")
    (out_dir / "compare.json").write_text(
        json.dumps({"metric": metric, "rows": result.rows, "runs": result.runs}, indent=2, default=str), encoding="utf-8"
    )
    print("", file=out)
    print(budget, file=out)
    print(result.table, file=out)
    print(f"\nsaved {out_dir / 'compare.md'} and compare.csv", file=out, flush=True)
    return result
