"""Mask helpers and invariant checks.

Layout convention (one place for it): a mask has the weight's shape ``(out_features, in_features)``;
rows are output neurons, columns are input neurons. ``out_degree`` counts a row's links (links of an
output neuron to the layer's inputs); ``in_degree`` counts a column's links (links of an input neuron
to the layer's outputs).
"""

from __future__ import annotations

import torch

__all__ = [
    "link_budget",
    "out_degree",
    "in_degree",
    "active_outputs",
    "active_inputs",
    "density",
    "check_mask",
]


def link_budget(n_out: int, n_in: int, sparsity: float) -> int:
    """Exact number of links of an ``(n_out, n_in)`` layer at ``sparsity`` (fraction of zeros):
    ``round((1 - sparsity) * n_out * n_in)``, clipped to ``[0, n_out * n_in]``."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    total = int(n_out) * int(n_in)
    return max(0, min(total, int(round((1.0 - float(sparsity)) * total))))


def out_degree(mask: torch.Tensor) -> torch.Tensor:
    """Links per output neuron (row sums), shape ``(n_out,)``, int64."""
    return mask.sum(dim=1, dtype=torch.int64)


def in_degree(mask: torch.Tensor) -> torch.Tensor:
    """Links per input neuron (column sums), shape ``(n_in,)``, int64."""
    return mask.sum(dim=0, dtype=torch.int64)


def active_outputs(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``(n_out,)``: output neurons that keep at least one link."""
    return out_degree(mask) > 0


def active_inputs(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``(n_in,)``: input neurons that keep at least one link."""
    return in_degree(mask) > 0


def density(mask: torch.Tensor) -> float:
    """Fraction of ones."""
    return int(torch.count_nonzero(mask)) / max(1, mask.numel())


def check_mask(mask: torch.Tensor, shape: tuple[int, int], n_links: int | None = None) -> None:
    """Raise ``ValueError`` unless ``mask`` is a bool tensor of ``shape`` holding exactly ``n_links``
    ones (when given)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != expected {tuple(shape)} (out_features, in_features)")
    if n_links is not None and int(torch.count_nonzero(mask)) != int(n_links):
        raise ValueError(f"mask holds {int(torch.count_nonzero(mask))} links, expected exactly {n_links}")
