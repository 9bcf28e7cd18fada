"""Initial sparse topologies, per-layer link budgets and sparse weight initialisation.

Every initialiser returns a bool mask ``(n_out, n_in)`` (rows = output neurons, columns = input
neurons) holding **exactly** ``n_links`` ones, where ``n_links`` defaults to
``chtorch.masks.link_budget(n_out, n_in, sparsity)``. Random ones take a private ``torch.Generator``.

- :func:`erdos_renyi` — uniform random (SET, RigL, ...).
- :func:`bsw` — bipartite small-world (CHT).
- :func:`brf` — bipartite receptive field (CHTs/CHTss; Zhang et al., NeurIPS 2025, arXiv:2501.19107).
- :func:`bsf` — bipartite scale-free by preferential attachment.
- :func:`csti` — correlated sparse topological initialisation, from :func:`pearson_correlation`.
- :func:`allocate_budgets` — uniform or ERK per-layer link counts.
- :func:`swi_` — sparse weight initialisation.
"""

from chtorch.topology.brf import brf, brf_centres, brf_degree_side, brf_degrees
from chtorch.topology.bsf import bsf
from chtorch.topology.bsw import bsw
from chtorch.topology.budgets import BUDGET_DISTRIBUTIONS, allocate_budgets, erk_densities
from chtorch.topology.csti import csti, csti_scores, pearson_correlation
from chtorch.topology.erdos_renyi import erdos_renyi
from chtorch.topology.registry import INITIALIZERS, get_initializer, register_initializer
from chtorch.topology.swi import swi_, swi_std

__all__ = [
    "erdos_renyi",
    "bsw",
    "brf",
    "brf_degrees",
    "brf_degree_side",
    "brf_centres",
    "bsf",
    "csti",
    "csti_scores",
    "pearson_correlation",
    "INITIALIZERS",
    "get_initializer",
    "register_initializer",
    "allocate_budgets",
    "erk_densities",
    "BUDGET_DISTRIBUTIONS",
    "swi_",
    "swi_std",
]
