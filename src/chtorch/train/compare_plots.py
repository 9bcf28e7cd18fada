"""Overlay plots of a ``chtorch compare`` directory:

- ``compare_curves.png``: the primary metric and the active-neuron percentage (ANP) per epoch, one
  line per method (mean over seeds) with a band of ± one standard error over seeds;
- ``compare_final.png``: the last-epoch metric by method (bars, ± SE, each seed as a dot, the mean at
  the epoch selected on validation as a hollow marker where the runs have one) and ANP by method,
  with the paper's cells as red diamonds where the comparison names a paper table;
- ``compare_cost.png``: what each method holds and pays over training — the network density at every
  epoch and topology-update record (the density decay of CHTss, GMP and GraNet update by update), and
  the cumulative training FLOPs of the sparsified layers per row (example or token), with each method's
  total as a fraction of the dense network's in the legend. x is the optimizer step for step-unit
  recipes (LM, translation), the epoch otherwise.

FLOP model (:mod:`chtorch.train.run_series`): a layer holding ``L`` links costs ``6L`` FLOPs per row and
step (``2L`` forward, ``2L`` for the input gradient, ``2L`` for the weight gradient), from the links it
actually held between consecutive records; the dense network's layers cost ``6 · n_out · n_in``.
Layers left dense, attention's score and value products, the topology updates and the optimizer are not
counted (they are the same or nearly the same for every method on one architecture).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from chtorch.train.metrics import read_metrics
from chtorch.train.plot_kit import epoch_axis, figure, legend_outside, save
from chtorch.train.plots import load_run_config
from chtorch.train.run_series import (
    dense_flops_per_step,
    density_points,
    held_links,
    layer_shapes,
    training_flops,
    uses_step_axis,
)
from chtorch.train.seed_stats import mean_stderr

__all__ = ["compare_plots", "epoch_bands", "cost_series"]


def epoch_bands(run_dirs: list[str], key: str, scale: float = 1.0) -> tuple[list[int], list[float], list[float | None]]:
    """(epochs, mean over runs, standard error) of ``key`` per epoch, over the epochs where every
    run that reached it recorded a value."""
    per_epoch: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        for r in read_metrics(run_dir):
            value = r.get(key)
            if (
                r.get("kind") == "epoch"
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                per_epoch.setdefault(int(r["epoch"]), []).append(scale * float(value))
    epochs = sorted(per_epoch)
    stats = [mean_stderr(per_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s for _, s in stats]


def _title(plan: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    return f"compare {plan['name']} — sparsity {plan.get('sparsity')}, seeds {', '.join(map(str, seeds))}"


def compare_plots(
    out_dir: Path, plan: dict[str, Any], rows: list[dict[str, Any]], runs: list[dict[str, Any]], metric: str
) -> list[Path]:
    """Write the overlay plots of the finished ``runs``; returns the files."""
    scale = 100.0 if "accuracy" in metric else 1.0
    label = metric.replace("_", " ") + (" (%)" if scale == 100.0 else "")
    methods = [row["method"] for row in rows]
    fig, axes = figure(1, 2, 5.4, 3.6)
    colours: dict[str, str] = {}
    for method in methods:
        dirs = [r["dir"] for r in runs if r["method"] == method]
        for ax, key, s in ((axes[0][0], metric, scale), (axes[0][1], "active_neurons", 100.0)):
            epochs, mean, err = epoch_bands(dirs, key, s)
            if not epochs:
                continue
            (line,) = ax.plot(
                epochs,
                mean,
                marker="o" if len(epochs) <= 30 else None,
                markersize=3,
                label=method,
                color=colours.get(method),
            )
            colours[method] = line.get_color()
            if any(e is not None for e in err):
                lo = [m - (e or 0.0) for m, e in zip(mean, err)]
                hi = [m + (e or 0.0) for m, e in zip(mean, err)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0][0].set_title(f"{label} per epoch (band: ± SE over seeds)")
    axes[0][1].set_title("active neurons, ANP (%) per epoch")
    axes[0][1].set_ylim(0.0, 105.0)
    for ax in axes[0]:
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    legend_outside(axes[0][1])
    fig.suptitle(_title(plan, runs))
    written = [save(fig, out_dir / "compare_curves.png")]

    fig, axes = figure(1, 2, max(3.2, 0.75 * len(methods) + 1.6), 3.6)
    x = np.arange(len(methods))
    paper_label_done = False
    for ax, mean_key, err_key, values_key, s, title in (
        (axes[0][0], "mean", "stderr", "values", scale, f"{label}, last epoch"),
        (axes[0][1], "active_neurons", "active_neurons_stderr", None, 100.0, "active neurons, ANP (%), last epoch"),
    ):
        means = [s * row[mean_key] for row in rows]
        errs = [s * (row[err_key] or 0.0) for row in rows]
        ax.bar(x, means, yerr=errs, capsize=4, color=[colours.get(m, "tab:blue") for m in methods], alpha=0.75)
        if values_key:
            circled = False
            for i, row in enumerate(rows):
                ax.plot(
                    [i] * len(row[values_key]),
                    [s * v for v in row[values_key]],
                    "k.",
                    markersize=4,
                    label="a seed" if i == 0 else None,
                )
                if row.get("selected_mean") is None:
                    continue
                ax.plot(
                    i,
                    s * row["selected_mean"],
                    marker="o",
                    markerfacecolor="none",
                    markeredgecolor="k",
                    linestyle="",
                    label="selected on validation (mean)" if not circled else None,
                )
                circled = True
            low = min([s * v for row in rows for v in row[values_key]] + [m - e for m, e in zip(means, errs)])
            high = max(
                [s * v for row in rows for v in row.get("selected_values", []) + row[values_key]]
                + [m + e for m, e in zip(means, errs)]
            )
        for i, row in enumerate(rows):
            cell = row.get("paper")
            if not cell:
                continue
            value = cell["accuracy"] if values_key else cell["anp"]
            if value is None:
                continue
            ax.plot(
                i, value, marker="D", color="tab:red", linestyle="", label="paper" if not paper_label_done else None
            )
            paper_label_done = True
            if values_key:
                low, high = min(low, value), max(high, value)
        if values_key:
            pad = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
            ax.set_ylim(low - pad, high + pad)  # differences of a few tenths must stay visible
        else:
            ax.set_ylim(0.0, 105.0)
        ax.set_xticks(x)
        ax.set_xticklabels(
            methods, rotation=30 if len(methods) > 5 else 0, ha="right" if len(methods) > 5 else "center"
        )
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
    handles, labels = [], []
    for ax in axes[0]:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize="small")
    fig.suptitle(_title(plan, runs))
    written.append(save(fig, out_dir / "compare_final.png"))
    cost = _cost_figure(out_dir, plan, runs, methods, colours)
    return written + ([cost] if cost is not None else [])


def _mean_over_runs(series: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """The mean over runs at the steps every run has a value for."""
    common = set(series[0][0]).intersection(*(set(steps) for steps, _ in series[1:]))
    tables = [dict(zip(steps, values)) for steps, values in series]
    steps = sorted(common)
    return steps, [sum(t[s] for t in tables) / len(tables) for s in steps]


def cost_series(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: ``density`` and ``flops`` as (steps, mean over its runs) and ``total`` (training FLOPs
    per row at the end), and ``dense_total`` (the same layers dense over the same steps); the layers'
    shapes come from the sparse runs (a dense run records none). Methods without a finished run are
    left out; a dense method gets density 1 and the dense FLOPs."""
    records = {r["dir"]: read_metrics(r["dir"]) for r in runs}
    shapes: dict[str, tuple[int, int]] = {}
    for found in records.values():
        shapes = shapes or layer_shapes(found)
    per_step = dense_flops_per_step(shapes)
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [records[r["dir"]] for r in runs if r["method"] == method]
        if not mine:
            continue
        ends = [max((int(r["step"]) for r in found if r.get("kind") == "epoch"), default=0) for found in mine]
        links = [held_links(found) for found in mine]
        if all(steps for steps, _ in links):
            density = _mean_over_runs([density_points(found) for found in mine])
            flops = _mean_over_runs([(steps, training_flops(steps, held)) for steps, held in links])
        else:  # dense: every link of every layer, at every step
            end = max(ends)
            density = ([0, end], [1.0, 1.0])
            flops = ([0, end], [0.0, per_step * end])
        total = flops[1][-1] if flops[1] else 0.0
        out[method] = {"density": density, "flops": flops, "total": total, "dense_total": per_step * max(ends)}
    return out


def _cost_figure(
    out_dir: Path, plan: dict[str, Any], runs: list[dict[str, Any]], methods: list[str], colours: dict[str, str]
) -> Path | None:
    series = cost_series(runs, methods)
    if not series or not any(s["dense_total"] for s in series.values()):
        return None  # no sparse run: no layer shapes to count
    by_step = uses_step_axis(load_run_config(Path(runs[0]["dir"])))
    first = read_metrics(runs[0]["dir"])
    spe = next((r["step"] / r["epoch"] for r in first if r.get("kind") == "epoch" and r.get("epoch", 0) >= 1), None)
    scale = 1.0 if by_step or not spe else 1.0 / spe
    fig, axes = figure(1, 2, 5.4, 3.6)
    for method, s in series.items():
        ratio = s["total"] / s["dense_total"] if s["dense_total"] else float("nan")
        steps, density = s["density"]
        axes[0][0].plot(
            [x * scale for x in steps], density, drawstyle="steps-post", color=colours.get(method), label=method
        )
        steps, flops = s["flops"]
        axes[0][1].plot(
            [x * scale for x in steps], flops, color=colours.get(method), label=f"{method} ({ratio:.3g}× dense)"
        )
    axes[0][0].set_title("density (fraction of links kept)")
    axes[0][0].set_ylim(0.0, 1.05)
    axes[0][1].set_title("training FLOPs of the sparsified layers per row (cumulative)")
    for ax in axes[0]:
        if by_step:
            ax.set_xlabel("optimizer step")
        else:
            epoch_axis(ax)
        ax.grid(alpha=0.3)
    legend_outside(axes[0][1])
    fig.suptitle(_title(plan, runs))
    return save(fig, out_dir / "compare_cost.png")
