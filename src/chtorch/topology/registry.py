"""Initial-topology registry: name -> initialiser (every one returns an exact-count bool mask
``(n_out, n_in)`` and takes ``(n_out, n_in, sparsity=None, *, n_links=None, ...)``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from chtorch.topology.brf import brf
from chtorch.topology.bsf import bsf
from chtorch.topology.bsw import bsw
from chtorch.topology.csti import csti
from chtorch.topology.erdos_renyi import erdos_renyi

__all__ = ["INITIALIZERS", "get_initializer"]

Initializer = Callable[..., torch.Tensor]

INITIALIZERS: dict[str, Initializer] = {
    "erdos_renyi": erdos_renyi,
    "er": erdos_renyi,
    "random": erdos_renyi,
    "bsw": bsw,
    "brf": brf,
    "bsf": bsf,
    "csti": csti,
}


def get_initializer(name: str) -> Initializer:
    """The initialiser registered as ``name`` (case-insensitive, ``-`` read as ``_``)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    try:
        return INITIALIZERS[key]
    except (KeyError, TypeError):
        known = ", ".join(sorted(INITIALIZERS))
        raise ValueError(f"unknown topology initialiser {name!r}; known names: {known}") from None
