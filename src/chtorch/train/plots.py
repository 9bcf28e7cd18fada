"""PNG plots of a run, drawn from its saved records only (``metrics.jsonl``, ``topology/*.npz``).

- ``curves.png``: training/evaluation loss and metrics per epoch;
- ``topology.png``: density, active neurons (inputs and outputs) per layer, ANP and ITOP over time;
- ``updates.png``: links removed/regrown and the removed∩regrown overlap per topology update;
- ``degrees.png``: degree distributions of each sparse layer's bipartite graph, start vs end;
- ``adjacency_<layer>.png``: the layer's adjacency matrix (rows = output neurons, columns = input
  neurons) at the start and the end — the BRF band and how training reshapes it (Zhang et al.,
  NeurIPS 2025, arXiv:2501.19107, Fig. 2).

matplotlib is an optional extra (``pip install chtorch[plot]``); only its object API is used (no
pyplot), so plotting never changes a global backend.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from chtorch.train.metrics import load_topology, read_metrics

__all__ = ["make_plots", "adjacency_image", "MAX_LAYERS"]

#: Layers drawn in degrees.png and as adjacency images (the first ones in model order).
MAX_LAYERS = 12


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.6) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or chtorch[plot])") from exc
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "layer"


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(r["epoch"])
            ys.append(value)
    return xs, ys


def _curves(records: list[dict[str, Any]], path: Path) -> Path | None:
    keys = sorted({k for r in records for k, v in r.items() if k.startswith(("train_", "test_", "val_")) and isinstance(v, (int, float))})
    if not keys:
        return None
    losses = [k for k in keys if k.endswith("loss")]
    others = [k for k in keys if k not in losses]
    panels = [p for p in (losses, others) if p]
    fig, axes = _figure(1, len(panels))
    for ax, group in zip(axes[0], panels):
        for key in group:
            xs, ys = _series(records, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title("loss" if group is losses else "metrics")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _topology(records: list[dict[str, Any]], path: Path) -> Path | None:
    layered = [r for r in records if r.get("layers")]
    if not layered:
        return None
    names = list(layered[-1]["layers"])
    fig, axes = _figure(1, 3)
    ax_density, ax_active, ax_overall = axes[0]
    for name in names:
        epochs = [r["epoch"] for r in layered if name in r["layers"]]
        ax_density.plot(epochs, [r["layers"][name]["density"] for r in layered if name in r["layers"]], label=name)
        line = ax_active.plot(epochs, [100 * r["layers"][name]["active_out"] for r in layered if name in r["layers"]], label=f"{name} out")[
            0
        ]
        ax_active.plot(
            epochs,
            [100 * r["layers"][name]["active_in"] for r in layered if name in r["layers"]],
            linestyle="--",
            color=line.get_color(),
            label=f"{name} in",
        )
    for key, label in (("active_neurons", "active neurons (ANP)"), ("itop", "ITOP rate")):
        xs, ys = _series(layered, key)
        if xs:
            ax_overall.plot(xs, [100 * y for y in ys], label=label)
    # Absolute scales: a fixed-density run is a flat line, not magnified rounding noise.
    ax_density.set_ylim(0.0, 1.1 * max((r.get("density", 0.0) for r in layered), default=1.0) or 1.0)
    for ax in (ax_density, ax_active, ax_overall):
        ax.ticklabel_format(axis="y", useOffset=False)
    ax_active.set_ylim(0.0, 105.0)
    ax_overall.set_ylim(0.0, 105.0)
    ax_density.set_title("density per layer")
    ax_active.set_title("active neurons per layer (%)")
    ax_overall.set_title("whole network (%)")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _updates(records: list[dict[str, Any]], path: Path) -> Path | None:
    updates = [r for r in records if r.get("kind") == "update" and not r.get("skipped")]
    if not updates:
        return None
    fig, axes = _figure(1, 2)
    steps = [u["step"] for u in updates]
    axes[0][0].plot(steps, [u["removed"] for u in updates], marker=".", label="removed (pruned + removed + percolated)")
    axes[0][0].plot(steps, [u["regrown"] for u in updates], marker=".", label="regrown")
    axes[0][0].set_title("links changed per update")
    names = list(updates[-1].get("layers", {}))
    for name in names:
        axes[0][1].plot(steps, [100 * u["layers"].get(name, {}).get("overlap", 0.0) for u in updates], marker=".", label=name)
    axes[0][1].set_title("removed ∩ regrown / regrown (%)")
    for ax in axes[0]:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _snapshots(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    init = run_dir / "topology" / "init.npz"
    final = run_dir / "topology" / "final.npz"
    start = load_topology(init)[0] if init.is_file() else None
    end = load_topology(final)[0] if final.is_file() else None
    return start, end


def _degrees(start: dict[str, Any], end: dict[str, Any] | None, path: Path) -> Path:
    names = list(start)[:MAX_LAYERS]
    fig, axes = _figure(len(names), 2, width=4.5, height=2.8)
    for row, name in enumerate(names):
        # Input neuron j's degree = links in column j; output neuron i's degree = links in row i.
        for col, side in enumerate(("input", "output")):
            ax = axes[row][col]
            for tag, snapshot, style in (("start", start, "step"), ("end", end, "stepfilled")):
                if snapshot is None or name not in snapshot:
                    continue
                rows, cols, (n_out, n_in) = snapshot[name]
                degree = np.bincount(cols, minlength=n_in) if side == "input" else np.bincount(rows, minlength=n_out)
                bins = np.arange(degree.max() + 2) - 0.5 if degree.max() < 60 else 40
                ax.hist(degree, bins=bins, histtype=style, alpha=0.45 if tag == "end" else 1.0, label=tag)
            ax.set_title(f"{name}: {side}-neuron degree", fontsize="small")
            ax.set_xlabel("degree")
            ax.set_ylabel("neurons")
            ax.legend(fontsize="small")
    return _save(fig, path)


def adjacency_image(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], max_pixels: int = 400) -> np.ndarray:
    """A float image of the adjacency matrix ``shape = (n_out, n_in)``: 1 at links, or, when a
    side exceeds ``max_pixels``, the link density of each ``f × f`` block (so a band stays visible)."""
    n_out, n_in = shape
    f = max(1, int(np.ceil(max(n_out, n_in) / max_pixels)))
    image = np.zeros((int(np.ceil(n_out / f)), int(np.ceil(n_in / f))), dtype=np.float64)
    np.add.at(image, (np.asarray(rows) // f, np.asarray(cols) // f), 1.0)
    return image / (f * f)


def _adjacency(name: str, start: dict[str, Any], end: dict[str, Any] | None, path: Path) -> Path:
    panels = [("start", start)] + ([("end", end)] if end is not None and name in end else [])
    fig, axes = _figure(1, len(panels), width=4.6, height=4.6)
    for ax, (tag, snapshot) in zip(axes[0], panels):
        rows, cols, shape = snapshot[name]
        image = adjacency_image(rows, cols, shape)
        ax.imshow(
            image,
            cmap="Greys" if image.max() <= 1 and image.shape == shape else "magma_r",
            interpolation="nearest",
            aspect="auto",
            vmin=0.0,
            extent=(0, shape[1], shape[0], 0),
        )
        ax.set_title(f"{name} {tag}: {len(rows) / (shape[0] * shape[1]):.2%} links", fontsize="small")
        ax.set_xlabel(f"input neuron (of {shape[1]})")
        ax.set_ylabel(f"output neuron (of {shape[0]})")
    return _save(fig, path)


def make_plots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every plot of the run in ``run_dir`` from its records; returns the files written.
    Raises ImportError (with the fix) when matplotlib is missing."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    epochs = [r for r in records if r.get("kind") == "epoch"]
    _figure(1, 1)  # fail early, with the install hint, when matplotlib is missing
    written: list[Path | None] = [
        _curves(epochs, run_dir / "curves.png"),
        _topology(epochs, run_dir / "topology.png"),
        _updates(records, run_dir / "updates.png"),
    ]
    start, end = _snapshots(run_dir)
    if start:
        written.append(_degrees(start, end, run_dir / "degrees.png"))
        for name in list(start)[:MAX_LAYERS]:
            written.append(_adjacency(name, start, end, run_dir / f"adjacency_{_safe(name)}.png"))
    return [p for p in written if p is not None]
