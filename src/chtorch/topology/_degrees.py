"""Integer degree sequences with an exact total (used by BSW, BRF and BSF)."""

from __future__ import annotations

import torch

__all__ = ["even_degrees", "uniform_degrees"]

# Random integers are drawn in chunks of this many so that a dense, very large layer does not
# allocate one int64 per link at once.
_CHUNK = 1 << 22


def even_degrees(total: int, n_nodes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n_nodes`` degrees, each ``floor(total/n)`` or ``ceil(total/n)``, summing exactly to ``total``.

    The ceil-degree nodes are spread evenly (node ``i`` gets ``floor((i+1)·total/n) − floor(i·total/n)``),
    which is deterministic, so a fixed-degree topology needs no randomness for its degree sequence.
    Returns int64 ``(n_nodes,)``.
    """
    index = torch.arange(n_nodes + 1, dtype=torch.int64, device=device)
    cumulative = (index * int(total)) // int(n_nodes)
    return cumulative[1:] - cumulative[:-1]


def uniform_degrees(total: int, n_nodes: int, cap: int, generator: torch.Generator) -> torch.Tensor:
    """BRFu degrees: every node starts at 1, the other ``total − n_nodes`` links go to uniformly random
    nodes (a multinomial), as the official BRF code does (Zhang et al., NeurIPS 2025, App. D). Two cases the code does
    not handle are made exact here:

    - a node may hold at most ``cap`` links (the size of the other side); overflow is re-dealt uniformly
      among nodes that still have room, until none is left;
    - when ``total < n_nodes`` not every node can get one link: ``total`` distinct random nodes get 1.

    Returns int64 ``(n_nodes,)`` summing exactly to ``total``; requires ``total <= n_nodes * cap``.
    """
    device = generator.device
    if total > n_nodes * cap:
        raise ValueError(f"cannot place {total} links on {n_nodes} nodes of capacity {cap}")
    if total < n_nodes:
        degrees = torch.zeros(n_nodes, dtype=torch.int64, device=device)
        chosen = torch.randperm(n_nodes, generator=generator, device=device)[:total]
        degrees[chosen] = 1
        return degrees
    degrees = torch.ones(n_nodes, dtype=torch.int64, device=device)
    remaining = total - n_nodes
    while remaining > 0:
        room = degrees < cap
        candidates = torch.nonzero(room).flatten()
        dealt = 0
        while dealt < remaining:
            size = min(_CHUNK, remaining - dealt)
            picks = torch.randint(0, candidates.numel(), (size,), generator=generator, device=device)
            degrees.index_add_(0, candidates[picks], torch.ones(size, dtype=torch.int64, device=device))
            dealt += size
        overflow = (degrees - cap).clamp_min(0)
        remaining = int(overflow.sum())
        degrees -= overflow
    return degrees
