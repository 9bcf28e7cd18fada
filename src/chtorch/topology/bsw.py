"""Bipartite small-world (BSW) initial topology: a Watts–Strogatz ring lattice on a bipartite graph
with random rewiring (Zhang et al., ICLR 2024 (CHT); Zhang et al., NeurIPS 2025, arXiv:2501.19107,
App. D)."""

from __future__ import annotations

import torch

from chtorch.topology._args import check_unit_interval, layer_budget, mask_device, require_generator
from chtorch.topology._degrees import even_degrees
from chtorch.topology.registry import register_initializer

__all__ = ["bsw"]


@register_initializer("bsw", summary="bipartite small-world: a ring lattice rewired with probability beta (CHT)")
def bsw(
    n_out: int,
    n_in: int,
    sparsity: float | None = None,
    *,
    n_links: int | None = None,
    beta: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bipartite small-world bool mask ``(n_out, n_in)`` with exactly ``n_links`` ones.

    Lattice: every node of the **larger** side (rows when ``n_out >= n_in``, so rows for square
    layers) gets degree ``floor`` or ``ceil`` of ``n_links / larger`` (spread evenly) and links to a
    contiguous window of that many nodes of the smaller side, centred at ``j · small / large`` and
    wrapping around. The window is ``[floor(j·a/b + 1/2 − k/2), … + k)``: the official code omits the
    ``+1/2`` (its window sits half a slot to the left); centring it makes ``bsw(beta=0)`` equal to
    ``brf(r=0, degree="fixed")`` on square layers, as the paper states.

    Rewiring: each lattice link is removed independently with probability ``beta`` and the same number
    of links is added uniformly at random among all zeros of the thinned mask (a removed position may
    come back). So ``beta=1`` gives exactly the Erdős–Rényi distribution and ``beta=0`` the lattice
    (no generator needed). Rewiring does not conserve degrees (docs/decisions.md).
    """
    n_out, n_in, links = layer_budget(n_out, n_in, sparsity, n_links)
    beta = check_unit_interval("beta", beta)
    if beta > 0.0:
        generator = require_generator(generator, "bsw with beta > 0")
    device = mask_device(generator)
    rows_large = n_out >= n_in
    large, small = (n_out, n_in) if rows_large else (n_in, n_out)

    degrees = even_degrees(links, large, device)  # each <= small because links <= large * small
    j = torch.arange(large, dtype=torch.int64, device=device)
    # floor(j*small/large + 1/2 - k/2) in exact integer arithmetic
    start = torch.div(2 * j * small + large - degrees * large, 2 * large, rounding_mode="floor")
    columns = torch.arange(small, dtype=torch.int64, device=device)
    offset = torch.remainder(columns[None, :] - start[:, None], small)
    lattice = offset < degrees[:, None]

    if beta > 0.0 and 0 < links < n_out * n_in:
        flat = lattice.flatten()
        on = torch.nonzero(flat).flatten()
        drop = torch.rand(on.numel(), generator=generator, device=device) < beta
        flat[on[drop]] = False
        n_drop = int(drop.sum())
        zeros = torch.nonzero(~flat).flatten()
        flat[zeros[torch.randperm(zeros.numel(), generator=generator, device=device)[:n_drop]]] = True
        lattice = flat.view(large, small)
    return lattice if rows_large else lattice.t().contiguous()
