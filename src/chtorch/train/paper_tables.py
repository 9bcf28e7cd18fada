"""The paper's result cells that ``chtorch compare`` prints beside its own (``run.paper_table``).

Zhang et al., "Brain network science modelling of sparse neural networks enables Transformers and
LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107), Table 7: MLPs
(784-1568-1568-1568-10; EMNIST 47 classes) at 99% sparsity, 100 epochs, 3 seeds, test accuracy
(%) ± standard error and the active-neuron percentage (ANP) at the end. The paper's ``CHTsp`` runs
CHTs with CH3-L3p, ``CHTsn`` and ``CHTssn`` CH2-L3n; FC is the dense network (no ANP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chtorch.dst import get_method

__all__ = [
    "PaperCell",
    "TABLES",
    "REPORTED",
    "PROTOCOLS",
    "paper_row",
    "paper_cell",
    "best_after_final_topology",
    "protocol_departures",
    "protocol_warning",
]

#: Which of a run's values the paper's MLP cells correspond to: the official MLP code keeps the best
#: epoch only once the topology is final ("Only save the best results after sparsity reached the preset
#: value", its run.py), so chtorch compares Table 7 with the best epoch after T_end (docs/decisions.md,
#: reported accuracy). The compare table shows the last and the best epoch beside it.
REPORTED = "best after T_end"


@dataclass(frozen=True)
class PaperCell:
    """One cell: accuracy (%) ± standard error, and ANP (%) where the paper gives it."""

    row: str
    accuracy: float
    stderr: float
    anp: float | None


# (accuracy, stderr, ANP) per row, per dataset — Table 7 as printed.
_TABLE7: dict[str, dict[str, tuple[float, float, float | None]]] = {
    "mnist": {
        "FC": (98.78, 0.02, None),
        "CHTsp": (98.81, 0.04, 20),
        "CHTsn": (98.76, 0.05, 27),
        "CHT": (98.48, 0.04, 29),
        "RigL": (98.61, 0.01, 29),
        "SET": (98.14, 0.02, 100),
        "CHTssn": (98.83, 0.02, 32),
        "GraNet": (98.81, 0.00, 35),
        "GMP": (98.62, 0.03, 58),
    },
    "fmnist": {
        "FC": (90.88, 0.02, None),
        "CHTsp": (90.93, 0.03, 89),
        "CHTsn": (90.67, 0.05, 73),
        "CHT": (88.70, 0.07, 30),
        "RigL": (89.91, 0.07, 55),
        "SET": (89.00, 0.09, 100),
        "CHTssn": (90.81, 0.11, 40),
        "GraNet": (89.98, 0.06, 53),
        "GMP": (90.29, 0.19, 69),
    },
    "emnist": {
        "FC": (87.13, 0.04, None),
        "CHTsp": (87.61, 0.07, 24),
        "CHTsn": (87.82, 0.04, 28),
        "CHT": (86.35, 0.08, 21),
        "RigL": (86.94, 0.08, 28),
        "SET": (86.31, 0.08, 100),
        "CHTssn": (87.52, 0.04, 35),
        "GraNet": (86.94, 0.03, 45),
        "GMP": (86.93, 0.09, 75),
    },
}

#: ``run.paper_table`` value -> {paper row: (accuracy, stderr, ANP)}.
TABLES: dict[str, dict[str, tuple[float, float, float | None]]] = {
    f"table7-{name}": rows for name, rows in _TABLE7.items()
}

#: The budget behind each table's cells (Table 7: Table 4's MLP settings), as config keys: a run that
#: departs from one of them is not the paper's protocol, and its numbers are not comparable with the cells.
#: ``None`` means the key is unset (the whole data set); ``sparsity.sparsity`` applies to sparse methods.
_TABLE7_PROTOCOL: dict[str, Any] = {
    "train.epochs": 100,
    "model.hidden": [1568, 1568, 1568],
    "data.batch_size": 32,
    "data.train_limit": None,
    "data.test_limit": None,
    "data.val_fraction": 0,
    "sparsity.sparsity": 0.99,
}
PROTOCOLS: dict[str, dict[str, Any]] = {table: _TABLE7_PROTOCOL for table in TABLES}

_FIXED_ROWS = {"dense": "FC", "cht": "CHT", "rigl": "RigL", "set": "SET", "granet": "GraNet", "gmp": "GMP"}


def _family(method: str) -> str:
    """The built-in preset ``method`` descends from (``chts_mlp`` -> ``chts``), via ``based_on``."""
    try:
        preset = get_method(method)
    except ValueError:
        return method
    while preset.based_on is not None and preset.name not in _FIXED_ROWS and preset.name not in ("chts", "chtss"):
        preset = get_method(preset.based_on)
    return preset.name


def paper_row(method: str, options: Mapping[str, Any] | Any | None = None) -> str | None:
    """The paper's row name for chtorch ``method`` with its resolved sparsity ``options`` (the
    link predictor decides between CHTsp and CHTsn; a preset ``based_on`` chts, such as
    ``chts_mlp``, is a CHTs row), or None where the paper has no such row (MEST, static, CHTss
    with CH3-L3p)."""
    method = _family(method.lower())
    if method in _FIXED_ROWS:
        return _FIXED_ROWS[method]
    if options is None:
        predictor = "l3n"
    else:
        predictor = (
            options.get("ch_predictor", "l3n")
            if isinstance(options, Mapping)
            else getattr(options, "ch_predictor", "l3n")
        )
    if method == "chts":
        return "CHTsp" if predictor == "l3p" else "CHTsn"
    if method == "chtss" and predictor == "l3n":
        return "CHTssn"
    return None


def paper_cell(table: str | None, row: str | None) -> PaperCell | None:
    """The cell of ``row`` in ``table`` (None when either is None or the table lacks the row)."""
    if table is None or row is None:
        return None
    if table not in TABLES:
        raise KeyError(f"unknown paper table {table!r}; known: {', '.join(TABLES)}")
    values = TABLES[table].get(row)
    if values is None:
        return None
    return PaperCell(row, *values)


def best_after_final_topology(
    epochs: list[dict[str, Any]], metric: str, higher_is_better: bool = True
) -> tuple[float, int] | None:
    """(best ``metric``, its epoch) over the epoch records evaluated once the topology is final:
    from the first epoch whose cumulative ``updates`` count equals the run's last (every epoch when
    no record counts updates: dense and static runs). None when no epoch has the metric.
    E.g. updates 0, 1, 2, 2, 2 over epochs 0…4: epochs 2, 3 and 4 compete."""
    scored = [r for r in epochs if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    counts = [int(r.get("updates", 0) or 0) for r in scored]
    final = max(counts)
    first = next(i for i, c in enumerate(counts) if c == final)
    window = [(float(r[metric]), int(r["epoch"])) for r in scored[first:]]
    return max(window) if higher_is_better else min(window, key=lambda t: (t[0], -t[1]))


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def protocol_departures(table: str | None, config: Mapping[str, Any]) -> list[str]:
    """How the resolved ``config`` (a nested mapping, as a run's ``config.yaml``) departs from the
    budget of the paper's ``table`` (:data:`PROTOCOLS`), one phrase each, e.g. ``"train.epochs 3 (the
    paper: 100)"``; [] when it follows it or ``table`` is None or unknown. A dense run is not checked
    for the sparsity."""
    protocol = PROTOCOLS.get(table) if table is not None else None
    if not protocol:
        return []
    dense = _get(config, "sparsity.method") == "dense"
    departures = []
    for key, expected in protocol.items():
        if key == "sparsity.sparsity" and dense:
            continue
        value = _get(config, key)
        same = value == expected or (
            isinstance(value, (int, float)) and isinstance(expected, (int, float)) and abs(value - expected) < 1e-9
        )
        if not same:
            shown = "the whole data set" if expected is None else expected
            departures.append(f"{key} {value} (the paper: {shown})")
    return departures


def protocol_warning(table: str | None, departures: list[str]) -> str:
    """One sentence warning that the runs beside ``table``'s cells are not the paper's protocol."""
    return (
        f"**Not the paper's protocol**: {'; '.join(departures)}. The paper's {table} cells are shown for "
        "orientation only; these numbers are not comparable with them."
    )
