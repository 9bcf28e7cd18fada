"""Run records: the metrics file (JSONL; written by :class:`chtorch.train.loggers.MetricsLog`), active-neuron
counts, topology snapshots.

``metrics.jsonl`` is the source of truth: one JSON object per line with a ``kind`` —
``"epoch"`` (training and evaluation metrics, density, active neurons, per-layer state),
``"update"`` (what a topology update did, per layer) or ``"step"`` (the loss every
``train.log_every`` steps). ``metrics.csv``, ``updates.csv`` and ``steps.csv`` are flat tables re-derived
from it (the ``csv`` logger), and plots and the report are drawn from it, so ``chtorch report`` can rebuild them at any
time.

Topology snapshots (``topology/*.npz``) store each sparse layer's links as (row, column) index
arrays — about 8 bytes per link, 0.2 MB for a 1568×1568 layer at 99% sparsity — for the degree
distribution and adjacency plots.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chtorch._io import atomic_write, atomic_write_text
from chtorch.dst import active_neuron_count  # re-exported: it lives with percolation

__all__ = [
    "METRICS_NAME",
    "jsonable",
    "read_metrics",
    "write_csv",
    "active_neuron_count",
    "save_topology",
    "load_topology",
]

METRICS_NAME = "metrics.jsonl"


def jsonable(value: Any) -> Any:
    """``value`` with tensors, numpy scalars and non-finite floats turned into what JSON can hold."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (an unfinished last line is ignored)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a chtorch run directory?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return records


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def write_csv(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """A flat CSV of ``records`` (nested keys joined with ``/``), written atomically."""
    rows = [_flatten(r) for r in records]
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def save_topology(masks: Mapping[str, torch.Tensor], path: str | os.PathLike[str], **meta: Any) -> Path:
    """Save bool masks as (row, column) link indices in a compressed ``.npz`` (atomically);
    ``meta`` (epoch, step) is stored alongside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "names": np.array(list(masks), dtype=np.str_),
        "shapes": np.array([tuple(m.shape) for m in masks.values()], dtype=np.int64).reshape(-1, 2),
        "meta": np.array(json.dumps(jsonable(meta)), dtype=np.str_),
    }
    for i, mask in enumerate(masks.values()):
        idx = torch.nonzero(mask.detach().cpu()).to(torch.int32).numpy()
        arrays[f"rows{i}"] = idx[:, 0]
        arrays[f"cols{i}"] = idx[:, 1]
    with atomic_write(path) as (handle, _):
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as bool
    return path


def load_topology(
    path: str | os.PathLike[str],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]], dict[str, Any]]:
    """``({layer: (rows, cols, (n_out, n_in))}, meta)`` from :func:`save_topology`."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["names"]]
        shapes = data["shapes"]
        layers = {
            name: (data[f"rows{i}"], data[f"cols{i}"], (int(shapes[i][0]), int(shapes[i][1])))
            for i, name in enumerate(names)
        }
        meta = json.loads(str(data["meta"]))
    return layers, meta
