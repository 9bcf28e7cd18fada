"""A run's records as series over optimizer steps, for the plots: the x axis a run is drawn on, the
network density at every record, the links each sparse layer holds, and the training FLOPs they cost.

Every record of ``metrics.jsonl`` carries the optimizer ``step`` it was written at: an ``epoch`` record
at the end of each epoch (and step 0 before training), an ``update`` record at each topology update, a
``step`` record every ``train.log_every`` steps. Step-unit recipes (LM, translation: topology updates
every ΔT steps, ``sparsity.update_unit: step``) have few, arbitrary epochs and many updates, so their
plots use the step axis; epoch-unit recipes (the MLPs) keep the epoch axis.

**FLOP model** (training cost of the sparse layers, per row — one example of an MLP batch, one token
of a language model or a translation batch): a linear layer holding ``L`` links costs ``2L`` FLOPs
forward (a multiply and an add per link), ``2L`` for the gradient of its input and ``2L`` for the
gradient of its weights, so ``6L`` per row and per step (the backward pass costing twice the forward,
the usual count in dynamic sparse training since RigL, Evci et al., ICML 2020). The links
held change only at topology updates, so between two records the cost is ``6 · Σ_layers L`` per step;
:func:`training_flops` sums it over the steps. A dense layer ``(n_out, n_in)`` costs
``6 · n_out · n_in``. Counted: the layers chtorch sparsifies, as stored (a masked dense backend executes
dense; this is the cost of the links, what a sparse kernel pays). Not counted: layers left dense
(embeddings, the output head, normalisation), attention's score and value products, the topology
updates themselves (removal and CH link prediction), and the optimizer; all of these are the same or
nearly the same for every method on one architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "FLOPS_PER_LINK",
    "uses_step_axis",
    "density_points",
    "held_links",
    "layer_shapes",
    "training_flops",
    "dense_flops_per_step",
]

#: Training FLOPs per link per row and step: forward 2, input gradient 2, weight gradient 2.
FLOPS_PER_LINK = 6


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def uses_step_axis(config: Mapping[str, Any]) -> bool:
    """Whether the run's plots are drawn over optimizer steps: its topology updates are counted in
    steps (``sparsity.update_unit: step``, the LM and translation recipes)."""
    return (config.get("sparsity") or {}).get("update_unit") == "step"


def _timeline(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Epoch and (applied) update records in step order; at equal steps, in the order written."""
    kept = [
        r for r in records if r.get("kind") in ("epoch", "update") and not r.get("skipped") and _number(r.get("step"))
    ]
    return sorted(kept, key=lambda r: r["step"])  # stable: the file's order breaks ties


def density_points(records: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[float]]:
    """(steps, network density) at every epoch and topology-update record: the density decay of
    CHTss/GMP/GraNet update by update, not only at epoch ends. One point per step (the last written)."""
    points: dict[int, float] = {}
    for r in _timeline(records):
        if _number(r.get("density")):
            points[int(r["step"])] = float(r["density"])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def layer_shapes(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{layer: (n_out, n_in)}`` of the sparse layers, from the epoch records."""
    shapes: dict[str, tuple[int, int]] = {}
    for r in records:
        if r.get("kind") == "epoch":
            for name, info in (r.get("layers") or {}).items():
                shape = info.get("shape")
                if isinstance(shape, (list, tuple)) and len(shape) == 2:
                    shapes[name] = (int(shape[0]), int(shape[1]))
    return shapes


def held_links(records: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    """(steps, links held by all sparse layers together) at every record that lists the layers' links,
    one point per step (the last written). A dense run has no sparse layers: ([], [])."""
    points: dict[int, int] = {}
    for r in _timeline(records):
        layers = r.get("layers") or {}
        counts = [info.get("links") for info in layers.values()]
        if counts and all(_number(c) for c in counts):
            points[int(r["step"])] = int(sum(counts))  # type: ignore[arg-type]
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def training_flops(steps: Sequence[int], links: Sequence[int]) -> list[float]:
    """Cumulative training FLOPs per row of the sparse layers at each of ``steps``, the links held
    after the record at ``steps[j]`` being paid for steps ``steps[j] + 1 … steps[j + 1]``
    (module docstring: ``6`` FLOPs per link, row and step). Starts at 0.

    >>> training_flops([0, 10, 20], [100, 50, 50])
    [0.0, 6000.0, 9000.0]
    """
    total, out = 0.0, []
    for j, step in enumerate(steps):
        if j:
            total += FLOPS_PER_LINK * links[j - 1] * (step - steps[j - 1])
        out.append(total)
    return out


def dense_flops_per_step(shapes: Mapping[str, tuple[int, int]]) -> float:
    """Training FLOPs per row and step of the same layers dense: ``6 · Σ n_out · n_in``."""
    return float(FLOPS_PER_LINK * sum(n_out * n_in for n_out, n_in in shapes.values()))
