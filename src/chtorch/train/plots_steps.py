"""``curves.png`` and ``topology.png`` over optimizer steps, for step-unit runs (LM, translation).

Their epochs are arbitrary blocks of steps (2–8 per run) while the topology changes every ΔT steps,
so the epoch axis of :mod:`chtorch.train.plots` shows a handful of points and hides the density decay.
Here every record is placed at its ``step`` (:mod:`chtorch.train.run_series`):

- ``curves.png``: the training loss of every ``step`` record (``train.log_every``), validation and
  test metrics at the steps they were measured, the learning rate per logged step, and a marker at
  every topology update;
- ``topology.png``: network density at every epoch and update record (a staircase: CHTss's decay
  update by update), ANP and ITOP, and per-layer heatmaps of density and active neurons with one
  column per topology update.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from chtorch.train.plot_kit import figure, heatmap, layer_label, mark_updates, save
from chtorch.train.run_series import density_points

__all__ = ["step_curves", "step_topology"]

_NAMES = {"ppl": "perplexity", "bleu": "BLEU", "accuracy": "accuracy (%)", "loss": "loss"}
_SPLITS = ("train", "val", "test")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _of(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == kind and _number(r.get("step")) and not r.get("skipped")]


def _families(epochs: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in epochs:
        for key, value in r.items():
            split, _, metric = key.partition("_")
            if split in _SPLITS and metric and _number(value) and key not in found.setdefault(metric, []):
                found[metric].append(key)
    found = {m: keys for m, keys in found.items() if keys}
    order = sorted(found, key=lambda m: (m != "loss", m))
    return {m: sorted(found[m], key=lambda k: _SPLITS.index(k.partition("_")[0])) for m in order}


def _every_text(every: int) -> str:
    return "every step" if every == 1 else f"every {every} steps"


def _step_axis(ax: Any) -> None:
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)


def step_curves(records: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Loss and metrics per step (module docstring); None when the run has no metric yet."""
    epochs = [r for r in _of(records, "epoch") if r["step"] > 0 or r.get("epoch", 0) >= 1]
    steps = [r for r in _of(records, "step") if _number(r.get("loss"))]
    update_x = [r["step"] for r in _of(records, "update")]
    families = _families(epochs)
    if steps:
        families.setdefault("loss", [])
    if not families:
        return None
    panels = len(families) + 1
    cols = min(3, panels)
    fig, axes = figure(math.ceil(panels / cols), cols, 4.4, 3.2)
    flat = [ax for row in axes for ax in row]
    every = int(steps[1]["step"] - steps[0]["step"]) if len(steps) > 1 else 1
    for ax, (metric, keys) in zip(flat, families.items()):
        scale = 100.0 if metric == "accuracy" else 1.0
        values: list[float] = []
        if metric == "loss" and steps:
            ys = [r["loss"] for r in steps]
            values += ys
            ax.plot(
                [r["step"] for r in steps], ys, linewidth=0.8, alpha=0.8, label="train (" + _every_text(every) + ")"
            )
        for key in keys:
            if metric == "loss" and steps and key == "train_loss":
                continue  # the per-step line above is the same quantity at finer resolution
            pts = [(r["step"], scale * r[key]) for r in epochs if _number(r.get(key))]
            values += [p[1] for p in pts]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key.partition("_")[0])
        if metric == "ppl" and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        mark_updates(ax, update_x, label=True)
        ax.set_title(_NAMES.get(metric, metric.replace("_", " ")))
        _step_axis(ax)
        ax.legend(fontsize="small")
    ax = flat[len(families)]
    lr = [r for r in steps if _number(r.get("lr"))] or [r for r in epochs if _number(r.get("lr"))]
    ax.plot([r["step"] for r in lr], [r["lr"] for r in lr], linewidth=1.0)
    ax.set_title("learning rate" + (f" ({_every_text(every)})" if steps else " (end of each epoch)"))
    mark_updates(ax, update_x)
    _step_axis(ax)
    for extra in flat[panels:]:
        extra.set_axis_off()
    fig.suptitle(title)
    return save(fig, path)


def _update_matrix(updates: list[dict[str, Any]], names: list[str], value: Any) -> np.ndarray:
    out = np.full((len(names), len(updates)), np.nan)
    for j, u in enumerate(updates):
        for i, name in enumerate(names):
            got = value(name, (u.get("layers") or {}).get(name) or {})
            if _number(got):
                out[i, j] = float(got)
    return out


def step_topology(records: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Density, ANP and ITOP per step, and per-layer heatmaps per update (module docstring)."""
    epochs = [r for r in _of(records, "epoch") if r.get("layers")]
    updates = [r for r in _of(records, "update") if r.get("layers")]
    if not epochs:
        return None
    update_x = [u["step"] for u in updates]
    names = list(epochs[-1]["layers"])
    shapes = {n: epochs[-1]["layers"][n].get("shape") for n in names}
    rows = 2 if updates else 1
    ratios = [3.0] + ([max(2.6, 0.17 * len(names) + 1.3)] if updates else [])
    fig, axes = figure(rows, 3, 4.6, 0.0, height_ratios=ratios)
    steps, density = density_points(records)
    ax = axes[0][0]
    ax.plot(steps, density, drawstyle="steps-post", marker="." if len(steps) <= 60 else None)
    ax.set_ylim(0.0, 1.1 * max(density, default=1.0) or 1.0)
    ax.set_title("density (fraction of links kept) — network")
    for ax, key, name, source in (
        (axes[0][1], "active_neurons", "active neurons, ANP (%)", epochs),
        (axes[0][2], "itop", "ITOP rate (%)", sorted(epochs + updates, key=lambda r: r["step"])),
    ):
        pts = [(r["step"], 100.0 * r[key]) for r in source if _number(r.get(key))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) <= 60 else None)
        ax.set_ylim(0.0, 105.0)
        ax.set_title(name + " — network")
    for ax in axes[0]:
        mark_updates(ax, update_x)
        ax.ticklabel_format(axis="y", useOffset=False)
        _step_axis(ax)
    if updates:
        labels = [layer_label(n) for n in names]

        def layer_density(name: str, info: dict[str, Any]) -> float | None:
            shape = shapes.get(name)
            return info["links"] / (shape[0] * shape[1]) if shape and _number(info.get("links")) else None

        matrix = _update_matrix(updates, names, layer_density)
        vmax = max(float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 0.0, 1e-9)
        heatmap(
            fig,
            axes[1][0],
            matrix,
            update_x,
            labels,
            "density per layer",
            "density",
            cmap="viridis",
            vmin=0.0,
            vmax=vmax,
        )
        for ax, key, what in (
            (axes[1][1], "active_in", "active input neurons"),
            (axes[1][2], "active_out", "active output neurons"),
        ):
            matrix = 100.0 * _update_matrix(updates, names, lambda _, info, key=key: info.get(key))
            heatmap(fig, ax, matrix, update_x, labels, f"{what} per layer", "%", cmap="magma", vmin=0.0, vmax=100.0)
        for ax in axes[1]:
            ax.set_xlabel("optimizer step (one column per topology update)")
    fig.suptitle(title)
    return save(fig, path)
