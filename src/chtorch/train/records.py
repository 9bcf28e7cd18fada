"""What a run records: the rows of ``metrics.jsonl`` (epochs, topology updates), the CSV tables,
the topology snapshots, the end-of-run summary and the lines printed to the terminal.

Functions of the engine's public state (:class:`~chtorch.dst.engine.DynamicSparsity` or None for a
dense run) and of plain records, so the loop in :mod:`chtorch.train.trainer` only decides *when*.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import torch

from chtorch._io import atomic_write_text
from chtorch.train.lifecycle import SUMMARY_NAME, chtorch_version
from chtorch.train.metrics import active_neuron_count, read_metrics, save_topology
from chtorch.train.plots import make_plots
from chtorch.train.progress import format_duration
from chtorch.train.run_report import write_report
from chtorch.train.selection import selected_summary, selection_rule

__all__ = [
    "NullLog",
    "NullWriter",
    "layer_state",
    "topology_state",
    "update_record",
    "save_snapshot",
    "summary_line",
    "run_summary",
    "step_record",
    "write_outputs",
]


class NullWriter:
    """Where the output of ranks other than 0 goes."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class NullLog:
    """The metrics log of ranks other than 0: they write nothing."""

    offset = 0

    def write(self, record: Any) -> None:
        pass

    def truncate(self, offset: int) -> None:
        pass

    def close(self) -> None:
        pass


def layer_state(sparsity: Any) -> dict[str, dict[str, Any]]:
    """Per sparse layer: links, density, active input/output neurons and shape (empty when dense)."""
    if sparsity is None:
        return {}
    out = {}
    active = sparsity.active_neurons()
    for name, _module, mask in sparsity.iter_layers():
        a_in, a_out = active[name]
        links = int(mask.sum())
        out[name] = {
            "links": links,
            "density": links / mask.numel(),
            "active_in": a_in,
            "active_out": a_out,
            "shape": [int(mask.shape[0]), int(mask.shape[1])],
        }
    return out


def topology_state(sparsity: Any, chains: Any) -> dict[str, Any]:
    """Overall density, active-neuron fraction (the paper's ANP over ``chains``, counted as the
    official MLP code counts it; ``active_neurons_both_sides``: hidden neurons need a link on each
    side), ITOP rate and number of topology updates; a dense run is density 1 with every neuron active."""
    if sparsity is None:
        return {"density": 1.0, "active_neurons": 1.0, "active_neurons_both_sides": 1.0}
    active, total = active_neuron_count(sparsity.masks, chains, count="official")
    both, _ = active_neuron_count(sparsity.masks, chains, count="both_sides")
    return {
        "density": sparsity.density(),
        "active_neurons": active / max(1, total),
        "active_neurons_both_sides": both / max(1, total),
        "itop": sparsity.itop_rate(),
        "updates": sparsity.update_count,
    }


def update_record(report: Any, epoch: int, density: float) -> dict[str, Any]:
    """The ``"update"`` row of one topology update's :class:`~chtorch.dst.report.UpdateReport`
    (``epoch`` is 0-based, written 1-based)."""
    return {
        "kind": "update",
        "epoch": epoch + 1,
        "step": report.step,
        "update": report.update_index,
        "sparsity": report.sparsity,
        "zeta": report.zeta,
        "temperature": report.temperature,
        "removed": report.removed,
        "regrown": report.regrown,
        "overlap": report.overlap_rate if report.regrown else None,  # nothing regrown (zeta annealed to 0): none
        "itop": report.itop_rate,
        "skipped": report.skipped,
        "seconds": report.seconds,
        "density": density,
        "layers": {
            name: {
                "links": l.n_links,
                "pruned": l.pruned,
                "removed": l.removed,
                "percolated": l.percolated,
                "regrown": l.regrown,
                "overlap": l.overlap_rate if l.regrown else None,
                "active_in": l.active_in,
                "active_out": l.active_out,
                "frozen": l.frozen,
            }
            for name, l in report.layers.items()
        },
    }


def step_record(epoch: int, step: int, loss: float, lr: float) -> dict[str, Any]:
    """The ``"step"`` row logged every ``train.log_every`` steps (``epoch`` is 0-based)."""
    return {"kind": "step", "epoch": epoch + 1, "step": step, "loss": loss, "lr": lr}


def save_snapshot(sparsity: Any, run_dir: Path, name: str, epoch: int, step: int) -> None:
    """The masks now, as ``run_dir/topology/<name>.npz`` (for the plots)."""
    save_topology(sparsity.masks, run_dir / "topology" / f"{name}.npz", epoch=epoch, step=step)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def summary_line(name: str, method: str, record: dict[str, Any], metric: str, epochs: int, seconds: float) -> str:
    """The line printed when a run finishes: its primary metric, density and active neurons."""
    value = record.get(metric)
    shown = _percent(value) if "accuracy" in metric else ("-" if value is None else f"{value:.4f}")
    density = record.get("density", 1.0)
    return (
        f"chtorch: finished {name} ({method}): "
        f"{metric.replace('_', ' ')} {shown}, density {density:.4f} (sparsity {100 * (1 - density):.1f}%), "
        f"active neurons {100 * record.get('active_neurons', 1.0):.1f}% "
        f"[{epochs} epochs, {format_duration(seconds)}]"
    )


def run_summary(trainer: Any, record: dict[str, Any], finished: bool) -> dict[str, Any]:
    """``summary.json`` of a :class:`~chtorch.train.trainer.Trainer` whose last epoch row is ``record``."""
    cfg = trainer.config
    return {
        "name": cfg.run.name,
        "recipe": cfg.run.recipe,
        "method": cfg.sparsity.method,
        "seed": cfg.run.seed,
        "sparsity": 0.0 if trainer.sparsity is None else cfg.sparsity.sparsity,
        "finished": finished,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "seconds": trainer.elapsed,
        "primary_metric": trainer.recipe.primary_metric,
        "higher_is_better": trainer.recipe.higher_is_better,
        "selection": selection_rule(trainer.recipe.selection()),
        "final": {k: v for k, v in record.items() if k not in ("layers", "kind")},
        "layers": record.get("layers", {}),
        "data": trainer.recipe.describe(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "device": str(trainer.device),
        "versions": {"torch": str(torch.__version__), "chtorch": chtorch_version()},
    }


def write_outputs(run_dir: Path, summary: dict[str, Any], *, plots: bool, report: bool, out: TextIO) -> None:
    """The files of a finished run: ``summary.json`` (with ``selected``, the epoch chosen on validation:
    :mod:`chtorch.train.selection`), the plots (when matplotlib is installed) and ``report.md``."""
    epochs = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]
    summary["selected"] = selected_summary(
        epochs, summary.get("selection"), summary["primary_metric"], summary.get("sparsity")
    )
    atomic_write_text(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2, default=str))
    if plots:
        try:
            make_plots(run_dir)
        except ImportError as exc:
            print(f"chtorch: no plots ({exc})", file=out)
    if report:
        write_report(run_dir)
