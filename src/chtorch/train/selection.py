"""Which epoch of a run is reported: the one chosen on validation, among the epochs at the target density.

A decay method (CHTss, GMP, GraNet) starts at a higher density (0.5 in the paper) and reaches its target
only when the decay ends; an epoch before that is a different, denser network, so it may not be
selected. The rule (docs/decisions.md, "model selection"):

1. *eligible* epochs: the overall density of the sparse layers (the record's ``density``) is at most
   ``(1 + DENSITY_TOLERANCE)`` times the run's target density, ``max(1 − sparsity, last epoch's
   density)`` (the maximum absorbs per-layer rounding of tiny layers; MEST's EM&S extra density, which
   ends at T_end, is also above it);
2. among them, the epochs that carry the validation metric (``val_accuracy`` for images): the best
   value; a tie goes to the lower tie-break metric (``val_loss``), then to the later epoch;
3. the reported value is the test metric of that same epoch record.

A run without a validation split (the paper configs, which train on the whole training set as the
paper did) has no selected epoch. The paper's own protocol — the best *test* epoch once the topology is
final — stays available as a labelled comparator (:func:`chtorch.train.paper_tables.best_after_final_topology`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DENSITY_TOLERANCE", "selection_rule", "at_target_density", "select_epoch", "selected_summary"]

#: Relative excess over the target density that still counts as "at the target" (0.1%: 25 links of a
#: 1568×1568 layer at 1% density, far below any step of a density decay that starts at 50%).
DENSITY_TOLERANCE = 1e-3


def selection_rule(selection: Sequence[Any] | None) -> dict[str, Any] | None:
    """The ``summary.json`` form of a recipe's :meth:`~chtorch.recipes.base.Recipe.selection`."""
    if selection is None:
        return None
    metric, higher_is_better, tie_break = selection
    return {"metric": str(metric), "higher_is_better": bool(higher_is_better), "tie_break": tie_break}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_target_density(
    epochs: Sequence[Mapping[str, Any]], sparsity: float | None = None, tolerance: float = DENSITY_TOLERANCE
) -> list[Mapping[str, Any]]:
    """The epoch records of ``epochs`` (in order) whose ``density`` has reached the target:
    ``density <= (1 + tolerance) · max(1 − sparsity, last record's density)``. A record without a density
    (a dense run's) counts as at the target. E.g. densities 0.5, 0.2, 0.1, 0.1 with sparsity 0.9: the
    last two."""
    densities = [float(r["density"]) for r in epochs if _number(r.get("density"))]
    if not densities:
        return list(epochs)
    target = densities[-1] if sparsity is None else max(1.0 - float(sparsity), densities[-1])
    limit = target * (1.0 + tolerance)
    return [r for r in epochs if not _number(r.get("density")) or float(r["density"]) <= limit]


def select_epoch(
    epochs: Sequence[Mapping[str, Any]], rule: Mapping[str, Any] | None, sparsity: float | None = None
) -> Mapping[str, Any] | None:
    """The epoch record chosen by ``rule`` (:func:`selection_rule`) among :func:`at_target_density`'s
    records, or None (no rule, or no eligible record carries the validation metric)."""
    if not rule:
        return None
    metric, tie_break = str(rule["metric"]), rule.get("tie_break")
    sign = 1.0 if rule.get("higher_is_better", True) else -1.0
    scored = [r for r in at_target_density(epochs, sparsity) if _number(r.get(metric))]
    if not scored:
        return None

    def key(record: Mapping[str, Any]) -> tuple[float, float, int]:
        tie = record.get(tie_break) if tie_break else None
        lower_tie = -float(tie) if tie is not None and _number(tie) else 0.0
        return (sign * float(record[metric]), lower_tie, int(record.get("epoch", 0)))

    return max(scored, key=key)


def selected_summary(
    epochs: Sequence[Mapping[str, Any]], rule: Mapping[str, Any] | None, metric: str, sparsity: float | None = None
) -> dict[str, Any] | None:
    """``{"epoch", <validation metric>, <metric>, "density"}`` of :func:`select_epoch`'s record (``metric``:
    the test metric reported), or None."""
    record = select_epoch(epochs, rule, sparsity)
    if record is None or rule is None:
        return None
    out = {"epoch": int(record["epoch"]), rule["metric"]: float(record[rule["metric"]])}
    if _number(record.get(metric)):
        out[metric] = float(record[metric])
    if _number(record.get("density")):
        out["density"] = float(record["density"])
    return out
