"""Selection of ``k`` entries from a score vector: deterministic top-k, or soft sampling without
replacement with probability proportional to ``score ** temperature``.

Soft sampling uses the Gumbel-top-k trick: ``topk(log p + Gumbel noise)`` draws ``k`` items without
replacement from the same (Plackett–Luce / successive-sampling) distribution as
``torch.multinomial(p, k, replacement=False)``, but it has no 2**24 category limit, runs in one
``topk`` on any device, and takes an explicit ``torch.Generator`` (Zhang et al., NeurIPS 2025,
arXiv:2501.19107, §3.1: soft removal samples the kept links, soft regrowth samples new links).
"""

from __future__ import annotations

import torch

from chtorch.dst.registry import SELECTIONS

__all__ = ["select_topk", "select_soft", "select"]


@SELECTIONS.register("topk", summary="the k best scores (ties broken at random)")
def select_topk(scores: torch.Tensor, k: int, generator: torch.Generator | None = None, **_: float) -> torch.Tensor:
    """Indices of the ``k`` largest ``scores`` (1-D). Ties are broken at random when a generator is
    given, so equal scores (for example all-zero random regrowth candidates) are not biased towards
    low indices."""
    k = int(k)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if k >= scores.numel():
        return torch.arange(scores.numel(), device=scores.device)
    keys = scores.to(torch.float64)
    if generator is not None:
        # A tiny random offset far below any real score difference only reorders exact ties.
        noise = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float64)
        scale = keys.abs().max().clamp_min(1e-300) * 1e-12
        keys = keys + noise * scale
    return torch.topk(keys, k, sorted=False).indices


@SELECTIONS.register("soft", summary="k draws without replacement, p ∝ score^T (Gumbel-top-k)")
def select_soft(
    scores: torch.Tensor,
    k: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    floor: float = 0.0,
) -> torch.Tensor:
    """Sample ``k`` distinct indices with p ∝ ``scores ** temperature`` (successive sampling).

    Entries with zero probability are never drawn while enough positive entries exist; when fewer
    than ``k`` entries are positive, ``floor`` is added to every score first (the paper's 1e-5
    fallback for regrowth), and if that still leaves too few, the remaining picks are uniform among
    the zero-probability entries, so exactly ``k`` indices always come back.
    """
    k = int(k)
    n = scores.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if k >= n:
        return torch.arange(n, device=scores.device)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    weights = scores.to(torch.float64).clamp_min(0.0)
    if int(torch.count_nonzero(weights > 0)) < k and floor > 0:
        weights = weights + floor
    positive = weights > 0
    log_w = torch.full_like(weights, float("-inf"))
    log_w[positive] = float(temperature) * torch.log(weights[positive])
    uniform = torch.rand(weights.shape, generator=generator, device=weights.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    keys = log_w + gumbel
    n_positive = int(torch.count_nonzero(positive))
    if n_positive < k:
        # Every positive entry is taken; the rest are uniform among the zero-probability entries.
        zero_idx = torch.nonzero(~positive).flatten()
        extra = zero_idx[torch.topk(gumbel[zero_idx], k - n_positive, sorted=False).indices]
        return torch.cat([torch.nonzero(positive).flatten(), extra])
    return torch.topk(keys, k, sorted=False).indices


def select(
    scores: torch.Tensor,
    k: int,
    selection: str,
    generator: torch.Generator,
    temperature: float = 1.0,
    floor: float = 0.0,
) -> torch.Tensor:
    """The registered selection rule ``selection`` ("topk", "soft", or one a user registered)."""
    return SELECTIONS.part(selection).fn(scores, k, generator, temperature=temperature, floor=floor)
