"""PNG plots of a run, drawn from its saved records only (``metrics.jsonl``, ``topology/*.npz``,
``config.yaml``), readable for a 3-layer MLP and a 32-layer Transformer alike:

- ``curves.png``: one metric per panel (loss, perplexity, BLEU, accuracy, ...; train/val/test
  lines in each) and the learning rate, per epoch, with the topology updates marked (step-unit runs,
  LM and translation, are drawn over optimizer steps instead: :mod:`chtorch.train.plots_steps`);
- ``topology.png``: density, active-neuron percentage (ANP) and ITOP rate of the whole network,
  then heatmaps (layers × epochs, with colour bars) of each sparse layer's density and active
  input/output neurons;
- ``updates.png``: links removed and regrown per topology update and the removed∩regrown overlap,
  for the network and as per-layer heatmaps;
- ``degrees.png``: each sparse layer's input- and output-neuron degree distributions, start vs end —
  histograms for up to :data:`HISTOGRAM_LAYERS` layers, beyond that one heatmap row per layer (every
  layer is drawn);
- ``adjacency_<layer>.png``, one per sparse layer: its adjacency matrix (rows = output neurons,
  columns = input neurons) at the start and the end — the BRF band and how training reshapes it
  (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Fig. 2).

Every figure is titled with the run, its method and sparsity. Layers are labelled by block and
role (:func:`chtorch.train.plot_kit.layer_label`). matplotlib is an optional extra
(``pip install chtorch[plot]``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from chtorch.train.metrics import load_topology, read_metrics
from chtorch.train.plot_kit import (
    epoch_axis,
    figure,
    heatmap,
    layer_label,
    legend_outside,
    mark_updates,
    run_title,
    safe_name,
    save,
)
from chtorch.train.plots_steps import step_curves, step_topology
from chtorch.train.run_series import uses_step_axis

__all__ = ["make_plots", "adjacency_image", "adjacency_files", "degree_matrix", "HISTOGRAM_LAYERS", "load_run_config"]

#: Up to this many sparse layers, degrees.png draws a histogram per layer; beyond, one heatmap row per layer.
HISTOGRAM_LAYERS = 8

_NAMES = {"ppl": "perplexity", "bleu": "BLEU", "accuracy": "accuracy (%)", "loss": "loss"}
_SPLITS = ("train", "val", "test")


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict ({} when absent, PyYAML is missing, or it is not a mapping);
    read with chtorch's capped loader (no aliases, at most 1 MiB)."""
    path = Path(run_dir) / "config.yaml"
    try:
        import yaml

        from chtorch.config.safe_yaml import safe_load_file
    except ImportError:  # pragma: no cover - the cli extra brings it
        return {}
    try:
        loaded = safe_load_file(path) if path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, OSError):
        return {}  # plots label what they can without it
    return loaded if isinstance(loaded, dict) else {}


def _steps_per_epoch(epochs: list[dict[str, Any]]) -> float | None:
    for r in epochs:
        if r.get("epoch", 0) >= 1 and r.get("step"):
            return r["step"] / r["epoch"]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _families(epochs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """metric -> record keys measuring it on each split (``loss`` -> [train_loss, val_loss])."""
    found: dict[str, list[str]] = {}
    for r in epochs:
        for key, value in r.items():
            split, _, metric = key.partition("_")
            if split in _SPLITS and metric and _is_number(value):
                found.setdefault(metric, [])
                if key not in found[metric]:
                    found[metric].append(key)
    order = sorted(found, key=lambda m: (m != "loss", m))
    return {m: sorted(found[m], key=lambda k: _SPLITS.index(k.partition("_")[0])) for m in order}


def _curves(
    epochs: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    update_x: list[float],
    spe: float | None,
    title: str,
    path: Path,
):
    families = _families(epochs)
    if not families:
        return None
    panels = len(families) + 1  # + the learning rate
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = figure(rows, cols, 4.4, 3.2)
    flat = [ax for row in axes for ax in row]
    for ax, (metric, keys) in zip(flat, families.items()):
        scale = 100.0 if metric == "accuracy" else 1.0
        values = []
        for key in keys:
            xs = [r["epoch"] for r in epochs if _is_number(r.get(key))]
            ys = [scale * r[key] for r in epochs if _is_number(r.get(key))]
            values += ys
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key.partition("_")[0])
        if metric == "ppl" and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        mark_updates(ax, update_x, label=True)
        ax.set_title(_NAMES.get(metric, metric.replace("_", " ")))
        epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax = flat[len(families)]
    if steps and spe:
        ax.plot([r["step"] / spe for r in steps], [r["lr"] for r in steps], linewidth=1.0)
        every = _every(steps)
        ax.set_title("learning rate (every step)" if every == 1 else f"learning rate (every {every} steps)")
    else:
        points = [(r["epoch"], r["lr"]) for r in epochs if r.get("epoch", 0) >= 1 and _is_number(r.get("lr"))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) <= 30 else None, markersize=3)
        ax.set_title("learning rate (last step of each epoch)")
    mark_updates(ax, update_x)
    epoch_axis(ax)
    ax.grid(alpha=0.3)
    for extra in flat[panels:]:
        extra.set_axis_off()
    fig.suptitle(title)
    return save(fig, path)


def _every(steps: list[dict[str, Any]]) -> int:
    return int(steps[1]["step"] - steps[0]["step"]) if len(steps) > 1 else 1


def _layer_matrix(records: list[dict[str, Any]], names: list[str], key: str, scale: float = 1.0) -> np.ndarray:
    out = np.full((len(names), len(records)), np.nan)
    for j, r in enumerate(records):
        layers = r.get("layers") or {}
        for i, name in enumerate(names):
            value = (layers.get(name) or {}).get(key)
            if _is_number(value):
                out[i, j] = scale * float(value)  # type: ignore[arg-type]
    return out


def _topology(epochs: list[dict[str, Any]], update_x: list[float], title: str, path: Path):
    layered = [r for r in epochs if r.get("layers")]
    if not layered:
        return None
    names = list(layered[-1]["layers"])
    labels = [layer_label(n) for n in names]
    xs = [r["epoch"] for r in layered]
    fig, axes = figure(2, 3, 4.6, 0.0, height_ratios=[3.0, max(2.6, 0.17 * len(names) + 1.3)])
    for ax, key, name, scale in (
        (axes[0][0], "density", "density (fraction of links kept)", 1.0),
        (axes[0][1], "active_neurons", "active neurons, ANP (%)", 100.0),
        (axes[0][2], "itop", "ITOP rate (%)", 100.0),
    ):
        pts = [(r["epoch"], scale * r[key]) for r in layered if _is_number(r.get(key))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) <= 30 else None, markersize=3)
        top = max((p[1] for p in pts), default=1.0)
        ax.set_ylim(0.0, 105.0 if scale == 100.0 else 1.1 * top or 1.0)  # absolute scales: a flat line stays flat
        ax.ticklabel_format(axis="y", useOffset=False)
        mark_updates(ax, update_x)
        ax.set_title(name + " — network")
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    density = _layer_matrix(layered, names, "density")
    heatmap(
        fig,
        axes[1][0],
        density,
        xs,
        labels,
        "density per layer",
        "density",
        cmap="viridis",
        vmin=0.0,
        vmax=max(np.nanmax(density), 1e-9),
    )
    for ax, key, what in (
        (axes[1][1], "active_in", "active input neurons"),
        (axes[1][2], "active_out", "active output neurons"),
    ):
        heatmap(
            fig,
            ax,
            _layer_matrix(layered, names, key, 100.0),
            xs,
            labels,
            f"{what} per layer",
            "%",
            cmap="magma",
            vmin=0.0,
            vmax=100.0,
        )
    for ax in axes[1]:
        epoch_axis(ax)
    fig.suptitle(title)
    return save(fig, path)


def _updates(updates: list[dict[str, Any]], title: str, path: Path, by_step: bool = False):
    if not updates:
        return None
    names = list(updates[-1].get("layers", {}))
    xs = [u["step"] for u in updates] if by_step else list(range(1, len(updates) + 1))
    x_label = "optimizer step of the topology update" if by_step else "topology update"
    few = len(xs) <= 30
    rows = 2 if names else 1
    ratios = [3.0] + ([max(2.6, 0.17 * len(names) + 1.3)] if names else [])
    fig, axes = figure(rows, 2, 5.2, 0.0, height_ratios=ratios)
    ax = axes[0][0]
    ax.plot(
        xs,
        [u["removed"] for u in updates],
        marker="." if few else None,
        label="removed (pruned + removed + percolated)",
    )
    ax.plot(xs, [u["regrown"] for u in updates], marker="." if few else None, label="regrown")
    ax.set_title("links changed per update — network")
    ax.legend(fontsize="small")
    ax = axes[0][1]
    pts = [(x, 100 * u["overlap"]) for x, u in zip(xs, updates) if _is_number(u.get("overlap"))]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if few else None)
    ax.set_ylim(0.0, 105.0)
    ax.set_title("removed ∩ regrown / regrown (%) — network")
    for ax in axes[0]:
        epoch_axis(ax, x_label)
        ax.grid(alpha=0.3)
    if names:
        labels = [layer_label(n) for n in names]
        heatmap(
            fig,
            axes[1][0],
            _layer_matrix(updates, names, "overlap", 100.0),
            xs,
            labels,
            "overlap per layer",
            "%",
            cmap="magma",
            vmin=0.0,
            vmax=100.0,
        )
        turnover = np.full((len(names), len(updates)), np.nan)
        for j, u in enumerate(updates):
            for i, name in enumerate(names):
                info = u["layers"].get(name) or {}
                if _is_number(info.get("regrown")) and info.get("links"):
                    turnover[i, j] = 100.0 * info["regrown"] / info["links"]
        heatmap(
            fig,
            axes[1][1],
            turnover,
            xs,
            labels,
            "links regrown per layer (% of its links)",
            "%",
            cmap="viridis",
            vmin=0.0,
        )
        for ax in axes[1]:
            epoch_axis(ax, x_label)
    fig.suptitle(title)
    return save(fig, path)


def _snapshots(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    init = run_dir / "topology" / "init.npz"
    final = run_dir / "topology" / "final.npz"
    start = load_topology(init)[0] if init.is_file() else None
    end = load_topology(final)[0] if final.is_file() else None
    return start, end


def _degree(snapshot: dict[str, Any], name: str, side: str) -> np.ndarray:
    # Input neuron j's degree = links in column j; output neuron i's degree = links in row i.
    rows, cols, (n_out, n_in) = snapshot[name]
    return np.bincount(cols, minlength=n_in) if side == "input" else np.bincount(rows, minlength=n_out)


def _degree_histograms(start: dict[str, Any], end: dict[str, Any] | None, title: str, path: Path) -> Path:
    """One row per layer (at most :data:`HISTOGRAM_LAYERS`): input and output degree histograms."""
    names = list(start)
    fig, axes = figure(len(names), 2, 4.3, 2.4)
    for row, name in enumerate(names):
        for col, side in enumerate(("input", "output")):
            ax = axes[row][col]
            for tag, snapshot, style in (("start", start, "step"), ("end", end, "stepfilled")):
                if snapshot is None or name not in snapshot:
                    continue
                degree = _degree(snapshot, name, side)
                bins = np.arange(degree.max() + 2) - 0.5 if degree.max() < 60 else 40
                ax.hist(degree, bins=bins, histtype=style, alpha=0.45 if tag == "end" else 1.0, label=tag)
            ax.set_title(f"{layer_label(name)}: {side}-neuron degree", fontsize="small")
            ax.set_ylabel("neurons", fontsize="small")
            if row == len(names) - 1:
                ax.set_xlabel("degree (links per neuron)")
            if row == 0 and col == 1:
                legend_outside(ax)
    fig.suptitle(f"{title}\ndegree distributions, start vs end")
    return save(fig, path)


def degree_matrix(degrees: list[np.ndarray], max_bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(layers × bins) share of each layer's neurons (%) per degree bin, and the bin edges: one
    bin per degree up to ``max_bins`` degrees, wider bins beyond."""
    top = max(int(d.max()) for d in degrees) if degrees else 0
    edges = np.arange(top + 2) - 0.5 if top < max_bins else np.linspace(-0.5, top + 0.5, max_bins + 1)
    out = np.stack([100.0 * np.histogram(d, bins=edges)[0] / max(1, d.size) for d in degrees])
    return out, edges


def _degree_heatmaps(start: dict[str, Any], end: dict[str, Any] | None, title: str, path: Path) -> Path:
    """Every layer as one row of a heatmap (share of its neurons per degree), for inputs and outputs
    at the start and the end: a 32-layer model on one page."""
    names = list(start)
    snapshots = [("start", start)] + ([("end", end)] if end is not None else [])
    height = max(2.6, 0.17 * len(names) + 1.3)
    fig, axes = figure(2, len(snapshots), 5.6, 0.0, height_ratios=[height, height])
    for col, (tag, snapshot) in enumerate(snapshots):
        for row, side in enumerate(("input", "output")):
            ax = axes[row][col]
            present = [n for n in names if n in snapshot]
            matrix, edges = degree_matrix([_degree(snapshot, n, side) for n in present])
            centres = 0.5 * (edges[:-1] + edges[1:])
            heatmap(
                fig,
                ax,
                matrix,
                centres,
                [layer_label(n) for n in present],
                f"{side}-neuron degree at the {tag}",
                "% of the layer's neurons",
                cmap="viridis",
                vmin=0.0,
            )
            ax.set_xlabel("degree (links per neuron)")
    fig.suptitle(f"{title}\ndegree distributions of all {len(names)} sparse layers, start vs end")
    return save(fig, path)


def adjacency_image(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], max_pixels: int = 400) -> np.ndarray:
    """A float image of the adjacency matrix ``shape = (n_out, n_in)``: 1 at links, or, when a
    side exceeds ``max_pixels``, the link density of each ``f × f`` block (so a band stays visible)."""
    n_out, n_in = shape
    f = max(1, int(np.ceil(max(n_out, n_in) / max_pixels)))
    image = np.zeros((int(np.ceil(n_out / f)), int(np.ceil(n_in / f))), dtype=np.float64)
    np.add.at(image, (np.asarray(rows) // f, np.asarray(cols) // f), 1.0)
    return image / (f * f)


def _adjacency(name: str, start: dict[str, Any], end: dict[str, Any] | None, title: str, path: Path) -> Path:
    panels = [("start", start)] + ([("end", end)] if end is not None and name in end else [])
    fig, axes = figure(1, len(panels), 4.4, 4.4, constrained=False)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.85, wspace=0.3)
    for ax, (tag, snapshot) in zip(axes[0], panels):
        rows, cols, shape = snapshot[name]
        image = adjacency_image(rows, cols, shape)
        binary = image.shape == shape
        shown = ax.imshow(
            image,
            cmap="Greys" if binary else "magma_r",
            interpolation="nearest",
            aspect="auto",
            vmin=0.0,
            vmax=1.0 if binary else max(image.max(), 1e-9),
            extent=(0, shape[1], shape[0], 0),
        )
        if not binary:
            f = int(np.ceil(shape[0] / image.shape[0]))
            fig.colorbar(shown, ax=ax, label=f"link density per {f}×{f} block", shrink=0.85)
        ax.set_title(
            f"{tag}: {len(rows) / (shape[0] * shape[1]):.2%} links" + (" (black = link)" if binary else ""),
            fontsize="small",
        )
        ax.set_xlabel(f"input neuron (of {shape[1]})")
        ax.set_ylabel(f"output neuron (of {shape[0]})")
    fig.suptitle(f"{title}\nadjacency of {name}", fontsize="medium")
    return save(fig, path)


def adjacency_files(names: list[str]) -> list[str]:
    """The adjacency PNG of each layer, in model order."""
    return [f"adjacency_{safe_name(n)}.png" for n in names]


def make_plots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every plot of the run in ``run_dir`` from its records; returns the files written.
    Raises ImportError (with the fix) when matplotlib is missing."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    figure(1, 1, 1, 1)  # fail early, with the install hint, when matplotlib is missing
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step" and _is_number(r.get("lr"))]
    updates = [r for r in records if r.get("kind") == "update" and not r.get("skipped")]
    spe = _steps_per_epoch(epochs)
    update_x = [u["step"] / spe for u in updates] if spe else []
    config = load_run_config(run_dir)
    title = run_title(config, run_dir.name)
    if uses_step_axis(config):  # LM, translation: a few arbitrary epochs, an update every ΔT steps
        written: list[Path | None] = [
            step_curves(records, title, run_dir / "curves.png"),
            step_topology(records, title, run_dir / "topology.png"),
            _updates(updates, title, run_dir / "updates.png", by_step=True),
        ]
    else:
        written = [
            _curves(epochs, steps, update_x, spe, title, run_dir / "curves.png"),
            _topology(epochs, update_x, title, run_dir / "topology.png"),
            _updates(updates, title, run_dir / "updates.png"),
        ]
    start, end = _snapshots(run_dir)
    if start:
        draw = _degree_histograms if len(start) <= HISTOGRAM_LAYERS else _degree_heatmaps
        written.append(draw(start, end, title, run_dir / "degrees.png"))
        for name, file in zip(start, adjacency_files(list(start))):
            written.append(_adjacency(name, start, end, title, run_dir / file))
    return [p for p in written if p is not None]
