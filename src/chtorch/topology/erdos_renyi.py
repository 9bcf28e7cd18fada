"""Erdős–Rényi (uniform random) initial topology, used by SET, RigL, MEST, GMP and GraNet
(Mocanu et al., Nat. Commun. 2018; Zhang et al., NeurIPS 2025, arXiv:2501.19107, App. D)."""

from __future__ import annotations

import torch

from chtorch.topology._args import layer_budget, mask_device, require_generator
from chtorch.topology.registry import register_initializer

__all__ = ["erdos_renyi"]


@register_initializer("erdos_renyi", "er", "random", summary="uniformly random links (SET, RigL, MEST, GMP, GraNet)")
def erdos_renyi(
    n_out: int,
    n_in: int,
    sparsity: float | None = None,
    *,
    n_links: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A uniformly random bool mask ``(n_out, n_in)`` with exactly ``n_links`` ones.

    ``n_links`` defaults to ``chtorch.masks.link_budget(n_out, n_in, sparsity)``; every subset of that
    size is equally likely. Built on ``generator``'s device.
    """
    n_out, n_in, links = layer_budget(n_out, n_in, sparsity, n_links)
    total = n_out * n_in
    if links in (0, total):
        return torch.full((n_out, n_in), links == total, dtype=torch.bool, device=mask_device(generator))
    generator = require_generator(generator, "erdos_renyi")
    flat = torch.zeros(total, dtype=torch.bool, device=generator.device)
    flat[torch.randperm(total, generator=generator, device=generator.device)[:links]] = True
    return flat.view(n_out, n_in)
