"""Bipartite scale-free (BSF) initial topology by bipartite preferential attachment
(Barabási–Albert style; Zhang et al., ICLR 2024 (CHT), App. D).

The official code builds a *monopartite* BA graph over ``n_in + n_out`` nodes, splits the nodes into
two layers and rewires intra-layer links across; that does not hit an exact link count. chtorch grows
the bipartite graph directly instead, which keeps the preferential-attachment mechanism (and its
heavy-tailed degrees on both sides) and places exactly ``n_links`` links.
"""

from __future__ import annotations

import torch

from chtorch.topology._args import layer_budget, mask_device, require_generator
from chtorch.topology._degrees import even_degrees
from chtorch.topology.registry import register_initializer

__all__ = ["bsf"]


@register_initializer("bsf", summary="bipartite scale-free by preferential attachment")
def bsf(
    n_out: int,
    n_in: int,
    sparsity: float | None = None,
    *,
    n_links: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bipartite scale-free bool mask ``(n_out, n_in)`` with exactly ``n_links`` ones.

    Growth: all ``n_out + n_in`` neurons arrive in a random order. An arriving neuron links to ``m_t``
    distinct neurons of the *other* side that arrived before it, chosen without replacement with
    probability ∝ ``degree + 1`` (preferential attachment; the ``+1`` lets isolated early neurons be
    found). ``m_t`` is ``n_links`` spread evenly over the arrivals, capped by how many partners have
    arrived; what early neurons cannot take goes to the latest arrivals. Every output–input pair is
    available to exactly one of its two neurons (the later one), so any ``n_links <= n_out · n_in``
    fits exactly. Cost: one small weighted draw per neuron (a Python loop over ``n_out + n_in``).
    """
    n_out, n_in, links = layer_budget(n_out, n_in, sparsity, n_links)
    total = n_out * n_in
    if links in (0, total):
        return torch.full((n_out, n_in), links == total, dtype=torch.bool, device=mask_device(generator))
    generator = require_generator(generator, "bsf")
    device = generator.device

    n_nodes = n_out + n_in
    order = torch.randperm(n_nodes, generator=generator, device=device)  # ids < n_out are outputs
    is_out = order < n_out
    # Partners available to arrival t: opposite-side neurons that arrived strictly before it.
    outs_before = torch.cumsum(is_out.to(torch.int64), 0) - is_out.to(torch.int64)
    ins_before = torch.arange(n_nodes, device=device) - outs_before
    capacity = torch.where(is_out, ins_before, outs_before)

    quota = torch.minimum(even_degrees(links, n_nodes, device), capacity)
    deficit = links - int(quota.sum())
    if deficit > 0:
        # Give the rest to the latest arrivals first (they have the most partners available).
        spare = (capacity - quota).flip(0)
        before = torch.cumsum(spare, 0) - spare
        quota += torch.minimum((deficit - before).clamp_min(0), spare).flip(0)

    mask = torch.zeros(n_out, n_in, dtype=torch.bool, device=device)
    degree_out = torch.zeros(n_out, dtype=torch.float64, device=device)
    degree_in = torch.zeros(n_in, dtype=torch.float64, device=device)
    out_arrivals = order[is_out]  # output ids in arrival order
    in_arrivals = order[~is_out] - n_out
    quota_list, cap_list, is_out_list, order_list = (quota.tolist(), capacity.tolist(), is_out.tolist(), order.tolist())
    for t in range(n_nodes):
        m = quota_list[t]
        if m == 0:
            continue
        available = cap_list[t]
        if is_out_list[t]:
            node = order_list[t]
            candidates = in_arrivals[:available]
            picked = candidates[_attach(degree_in[candidates], m, generator)]
            mask[node, picked] = True
            degree_in[picked] += 1.0
            degree_out[node] += m
        else:
            node = order_list[t] - n_out
            candidates = out_arrivals[:available]
            picked = candidates[_attach(degree_out[candidates], m, generator)]
            mask[picked, node] = True
            degree_out[picked] += 1.0
            degree_in[node] += m
    return mask


def _attach(degrees: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``m`` distinct candidates drawn without replacement (successive sampling) with
    p ∝ degree + 1, by the Gumbel-top-k trick: one O(n) pass instead of ``m`` multinomial rounds."""
    if m >= degrees.numel():
        return torch.arange(degrees.numel(), device=degrees.device)
    uniform = torch.rand(degrees.shape, generator=generator, device=degrees.device, dtype=torch.float64)
    keys = torch.log1p(degrees) - torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    return torch.topk(keys, m, sorted=False).indices
