"""``report.md``: a run's configuration, results, per-layer topology and plots, from saved records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chtorch._io import atomic_write_text
from chtorch.train.loggers import CsvLogger
from chtorch.train.metrics import load_topology, read_metrics
from chtorch.train.paper_tables import protocol_departures, protocol_warning
from chtorch.train.plots import adjacency_files, make_plots
from chtorch.train.selection import selected_summary

__all__ = ["write_report", "rebuild"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _load_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    from chtorch.config.safe_yaml import safe_load_file

    return safe_load_file(path) or {}


def _snapshot_layers(run_dir: Path) -> list[str]:
    init = run_dir / "topology" / "init.npz"
    return list(load_topology(init)[0]) if init.is_file() else []


def _shown(key: str, value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, float) and key.endswith("accuracy") else _fmt(value)


def _selection_lines(epochs: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """The epoch selected on validation beside the last one (:mod:`chtorch.train.selection`), when the
    run has a selection rule."""
    rule, metric = summary.get("selection"), summary.get("primary_metric")
    if not rule or not metric or not epochs:
        return []
    chosen = summary.get("selected") or selected_summary(epochs, rule, metric, summary.get("sparsity"))
    if not chosen:
        return [f"No epoch at the target density has `{rule['metric']}`: none is selected on validation.", ""]
    last = epochs[-1]
    return [
        f"Selected on validation (best `{rule['metric']}` among the epochs at the target density): epoch "
        f"{chosen['epoch']}, {metric} {_shown(metric, chosen.get(metric))} ({rule['metric']} "
        f"{_shown(rule['metric'], chosen[rule['metric']])}); last epoch {last.get('epoch')}: {metric} "
        f"{_shown(metric, last.get(metric))}.",
        "",
    ]


def schedule_text(optim: dict[str, Any], model: dict[str, Any]) -> str:
    """The learning rate as the schedule makes it: for noam ``optim.lr`` is a scale, not an LR, so the
    peak LR (at the end of the warm-up: scale · d_model^-0.5 · warmup^-0.5) is given beside it."""
    lr, schedule, warmup = optim.get("lr", "?"), optim.get("schedule", "?"), optim.get("warmup_steps") or 0
    if schedule == "noam":
        d_model = optim.get("d_model") or model.get("d_model")
        text = f"lr noam, scale {_fmt(lr)}, warm-up {warmup} steps"
        if isinstance(lr, (int, float)) and isinstance(d_model, int) and warmup:
            text += f", peak lr {lr * d_model**-0.5 * warmup**-0.5:.3g} (d_model {d_model})"
        return text
    text = f"lr {_fmt(lr)}"
    if warmup:
        text += f", warm-up {warmup} steps"
    if schedule in ("linear", "cosine"):
        text += f", {schedule} → {_fmt(optim.get('final_lr', '?'))}"
    elif schedule != "?":
        text += f", {schedule}"
    return text


def batch_text(data: dict[str, Any]) -> str:
    """The batch as the recipe sizes it: examples (``batch_size``) or tokens (``batch_tokens``)."""
    if data.get("batch_size"):
        return str(data["batch_size"])
    if data.get("batch_tokens"):
        return f"{data['batch_tokens']} tokens"
    return "?"


def budget_text(train: dict[str, Any], data: dict[str, Any]) -> str:
    """The training budget: epochs, and the steps they are when an epoch is a fixed number of steps."""
    epochs, per_epoch = train.get("epochs", "?"), data.get("steps_per_epoch")
    if isinstance(epochs, int) and isinstance(per_epoch, int) and per_epoch:
        return f"{epochs} epochs of {per_epoch} steps ({epochs * per_epoch} steps)"
    return f"{epochs} epochs"


def _update_lines(updates: list[dict[str, Any]]) -> list[str]:
    """The topology updates in one sentence. The overlap (|removed ∩ regrown| / |regrown|) is that of the
    last update that regrew links, as the engine's summary table shows it: an update after ζ annealed
    to 0 regrows nothing and has no overlap."""
    if not updates:
        return []
    last = updates[-1]
    text = f"{len(updates)} topology updates; the last at step {last['step']}"
    regrowing = [u for u in updates if u.get("regrown") and isinstance(u.get("overlap"), (int, float))]
    if regrowing and regrowing[-1] is last:
        text += f" (overlap of removed and regrown links {100 * last['overlap']:.1f}%)."
    elif regrowing:
        text += (
            f" regrew no links; the last that did, at step {regrowing[-1]['step']}, had an overlap of removed and "
            f"regrown links of {100 * regrowing[-1]['overlap']:.1f}%."
        )
    else:
        text += "; no update regrew links."
    return [text, ""]


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.md`` from ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and the
    PNG files present; returns its path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    epochs = [r for r in records if r.get("kind") == "epoch"]
    updates = [r for r in records if r.get("kind") == "update"]
    config = _load_config(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    run, sp, data, model, optim, train = (
        config.get(k, {}) for k in ("run", "sparsity", "data", "model", "optim", "train")
    )
    last = epochs[-1] if epochs else {}
    name = run.get("name", run_dir.name)

    lines = [f"# chtorch run `{name}`", ""]
    status = (
        "finished"
        if summary.get("finished")
        else f"not finished ({last.get('epoch', 0)}/{train.get('epochs', '?')} epochs)"
    )
    lines += [
        f"- **status**: {status}",
        f"- **task**: {run.get('recipe', '?')} — dataset `{data.get('name', '?')}`, model `{model.get('name', '?')}`"
        + (f" hidden {model.get('hidden')}" if model.get("hidden") else ""),
        f"- **method**: `{sp.get('method', '?')}` at sparsity {sp.get('sparsity', '?')}, topology update every "
        f"{sp.get('update_interval', '?')} {sp.get('update_unit', '')}(s)",
        f"- **optimizer**: {optim.get('name', '?')}, {schedule_text(optim, model)}, batch {batch_text(data)}, "
        f"{budget_text(train, data)}, seed {run.get('seed', '?')}",
    ]
    if summary:
        lines.append(
            f"- **time**: {summary.get('seconds', 0):.1f} s on {summary.get('device', '?')}; "
            f"torch {summary.get('versions', {}).get('torch', '?')}, "
            f"chtorch {summary.get('versions', {}).get('chtorch', '?')}"
        )
    lines.append("")
    departures = protocol_departures(run.get("paper_table"), config)
    if departures:
        lines += [protocol_warning(run["paper_table"], departures), ""]

    lines += ["## Result", "", "| metric | value |", "|---|---|"]
    for key, value in last.items():
        if key in ("kind", "layers", "lr", "seconds") or isinstance(value, (dict, list)):
            continue
        shown = (
            f"{100 * value:.2f}%"
            if isinstance(value, float) and (key.endswith("accuracy") or key in ("active_neurons", "itop"))
            else _fmt(value)
        )
        lines.append(f"| {key} | {shown} |")
    lines.append("")
    lines += _selection_lines(epochs, summary)
    lines += _update_lines(updates)

    layers = last.get("layers") or {}
    if layers:
        lines += [
            "## Sparse layers at the end",
            "",
            "| layer | shape (out × in) | links | density | active inputs | active outputs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for layer, info in layers.items():
            shape = info.get("shape", ["?", "?"])
            lines.append(
                f"| `{layer}` | {shape[0]} × {shape[1]} | {info['links']} | {info['density']:.4f} | "
                f"{100 * info['active_in']:.1f}% | {100 * info['active_out']:.1f}% |"
            )
        lines.append("")

    figures = [
        ("curves.png", "Loss, metrics and learning rate"),
        ("topology.png", "Density and active neurons"),
        ("updates.png", "Topology updates"),
        ("degrees.png", "Degree distributions (start vs end)"),
    ]
    present = [(f, t) for f, t in figures if (run_dir / f).is_file()]
    snapshot_layers = list(layers) or _snapshot_layers(run_dir)
    adjacency = [
        (file, layer)
        for layer, file in zip(snapshot_layers, adjacency_files(snapshot_layers))
        if (run_dir / file).is_file()
    ]
    if present or adjacency:
        lines += ["## Plots", ""]
        for file, title in present:
            lines += [f"### {title}", "", f"![{title}]({file})", ""]
        if adjacency:
            lines += [f"### Adjacency matrices (start, end) of the {len(adjacency)} sparse layers", ""]
            folded = len(adjacency) > 4  # a long model's 32 matrices stay out of the way until opened
            if folded:
                lines += ["<details><summary>show all</summary>", ""]
            for file, layer in adjacency:
                lines += [f"![adjacency of {layer}]({file})", ""]
            if folded:
                lines += ["</details>", ""]
    else:
        lines += [
            "## Plots",
            "",
            "No plots (matplotlib is not installed, or train.plots was "
            f"off): `pip install matplotlib` then `chtorch report {run_dir}`.",
            "",
        ]

    lines += [
        "## Reproduce",
        "",
        "```bash",
        f"chtorch train {run_dir / 'config.yaml'} --out <new run dir>   # the same run again",
        f"chtorch train --resume {run_dir}                              # continue this run (if unfinished)",
        f"chtorch report {run_dir}                                      # re-create these plots and this report",
        "```",
        "",
    ]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))


def rebuild(run_dir: str | os.PathLike[str]) -> tuple[list[Path], Path, str | None]:
    """Re-create the plots (when matplotlib is available) and ``report.md`` of ``run_dir``:
    ``(plots, report path, why plots were skipped or None)``."""
    run_dir = Path(run_dir)
    CsvLogger(run_dir).flush()
    plots: list[Path] = []
    skipped = None
    try:
        plots = make_plots(run_dir)
    except ImportError as exc:
        skipped = str(exc)
    return plots, write_report(run_dir), skipped
