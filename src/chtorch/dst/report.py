"""What a topology update did, per layer, and the engine's summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from chtorch.dst.percolation import active_neuron_fraction

__all__ = ["LayerUpdate", "UpdateReport", "format_table", "summary_table"]


@dataclass
class LayerUpdate:
    """One layer's part of a topology update.

    ``pruned``: links cut by the density schedule; ``removed``: links dropped by the removal rule;
    ``percolated``: links of dead neurons dropped by percolation; ``regrown``: new links;
    ``overlap``: links that were dropped (for any reason) and regrown in the same update;
    ``active_in`` / ``active_out``: fractions of input / output neurons that keep a link;
    ``itop``: fraction of the layer's positions ever active so far (in-time over-parameterisation).
    """

    name: str
    n_links: int
    target: int
    pruned: int = 0
    removed: int = 0
    percolated: int = 0
    regrown: int = 0
    overlap: int = 0
    active_in: float = 1.0
    active_out: float = 1.0
    itop: float = 0.0
    frozen: bool = False
    seconds: float = 0.0

    @property
    def overlap_rate(self) -> float:
        """|removed ∩ regrown| / |regrown| — the epitopological overlap (CHT's early-stop signal)."""
        return self.overlap / self.regrown if self.regrown else 0.0


@dataclass
class UpdateReport:
    """Returned by ``DynamicSparsity.step()`` when a topology update was due."""

    step: int
    update_index: int
    sparsity: float
    zeta: float
    temperature: float
    layers: dict[str, LayerUpdate] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None
    itop_rate: float = 0.0

    @property
    def overlap_rate(self) -> float:
        regrown = sum(l.regrown for l in self.layers.values())
        return sum(l.overlap for l in self.layers.values()) / regrown if regrown else 0.0

    @property
    def removed(self) -> int:
        return sum(l.pruned + l.removed + l.percolated for l in self.layers.values())

    @property
    def regrown(self) -> int:
        return sum(l.regrown for l in self.layers.values())

    def __str__(self) -> str:
        if self.skipped:
            return f"topology update {self.update_index} at step {self.step} skipped: {self.skipped}"
        head = (
            f"topology update {self.update_index} at step {self.step}: sparsity {self.sparsity:.4f}, "
            f"zeta {self.zeta:.3f}, T {self.temperature:.2f}, removed {self.removed}, regrown {self.regrown}, "
            f"overlap {self.overlap_rate:.1%}, ITOP {self.itop_rate:.1%}, {self.seconds * 1000:.1f} ms"
        )
        rows = [
            [
                l.name,
                l.n_links,
                l.pruned,
                l.removed,
                l.percolated,
                l.regrown,
                f"{l.overlap_rate:.1%}",
                f"{l.active_in:.1%}",
                f"{l.active_out:.1%}",
                "yes" if l.frozen else "",
                f"{l.seconds * 1000:.1f}",
            ]
            for l in self.layers.values()
        ]
        table = format_table(
            ["layer", "links", "pruned", "removed", "percolated", "regrown", "overlap", "in", "out", "frozen", "ms"],
            rows,
        )
        return head + "\n" + table


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, aligned text table (no third-party dependency in the core)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(engine: Any) -> str:
    """``DynamicSparsity.summary()``: a per-layer table (shape, target and actual density, active
    neurons, ITOP, overlap, frozen, backend) under a one-line header."""
    rows = []
    for layer in engine.layers:
        n = layer.mask.numel()
        a_in, a_out = active_neuron_fraction(layer.mask)
        rows.append(
            [
                layer.name,
                f"{layer.shape[0]}x{layer.shape[1]}",
                layer.target,
                int(torch.count_nonzero(layer.mask)),
                f"{layer.target / n:.4f}",
                f"{int(torch.count_nonzero(layer.mask)) / n:.4f}",
                f"{a_in:.1%}",
                f"{a_out:.1%}",
                f"{torch.count_nonzero(layer.ever_active).item() / layer.ever_active.numel():.1%}",
                "-" if layer.last_overlap is None else f"{layer.last_overlap:.1%}",
                "yes" if layer.frozen else "",
                layer.backend,
            ]
        )
    head = (
        f"chtorch {engine.method or 'custom'}: sparsity {engine.sparsity}, "
        f"step {engine.step_count}/{engine.total_steps}, "
        f"{engine.update_count} updates (every {engine.options.update_interval} steps until {engine.t_end}), "
        f"density {engine.density():.4f}, ITOP {engine.itop_rate():.1%}"
    )
    table = format_table(
        [
            "layer",
            "shape",
            "target",
            "links",
            "target dens.",
            "density",
            "in",
            "out",
            "ITOP",
            "overlap",
            "frozen",
            "backend",
        ],
        rows,
    )
    return head + "\n" + table
