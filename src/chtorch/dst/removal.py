"""Link removal: which active links a layer keeps at a topology update.

Scores (higher = more important, kept first), for an active link (i, j) of a weight ``W`` of shape
``(n_out, n_in)``:

- ``magnitude``: |W_ij|  (SET/RigL as used in the paper's code; "WM").
- ``ri``: relative importance |W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik| (the RIA score the paper uses
  for CHTss pruning, Zhang et al. NeurIPS 2025, arXiv:2501.19107, §3.1 Eq. 1; ε = 1e-5 guards the sums).
- ``mest``: |W_ij| + λ·|∇W_ij| (Yuan et al., "MEST", NeurIPS 2021).
- ``set``: not a score but a rule (Mocanu et al., Nat. Commun. 2018): the removed links are the
  smallest positive weights and the largest negative ones, each sign handled separately.

Selection: ``topk`` keeps the ``n_keep`` best; ``soft`` samples the kept set without replacement with
p ∝ score^T (the CHTs soft rule, §3.1), where scores are clamped at 1e-12 so every active link can be
kept.
"""

from __future__ import annotations

import torch

from chtorch.dst.registry import REMOVALS
from chtorch.dst.sampling import select

__all__ = ["removal_scores", "keep_links"]

_RI_EPS = 1e-5


@REMOVALS.register("magnitude", summary="|W| (SET/RigL as the paper's code uses them; WM)")
def magnitude_score(weight: torch.Tensor, mask: torch.Tensor, *, grad: torch.Tensor | None = None) -> torch.Tensor:
    return (weight.detach().float() * mask).abs()


@REMOVALS.register("ri", summary="relative importance |W|/Σ_col|W| + |W|/Σ_row|W| (CHTss pruning, §3.1 Eq. 1)")
def relative_importance_score(
    weight: torch.Tensor, mask: torch.Tensor, *, grad: torch.Tensor | None = None
) -> torch.Tensor:
    magnitude = magnitude_score(weight, mask)
    column_sum = magnitude.sum(dim=0, keepdim=True)  # (1, n_in): total |W| into each input neuron
    row_sum = magnitude.sum(dim=1, keepdim=True)  # (n_out, 1): total |W| of each output neuron
    return magnitude / (column_sum + _RI_EPS) + magnitude / (row_sum + _RI_EPS)


def _mest_needs(options: object) -> frozenset[str]:
    return frozenset({"dense_gradient"}) if getattr(options, "mest_lambda", 0.0) > 0 else frozenset()


@REMOVALS.register(
    "mest",
    summary="|W| + λ|∇W| (MEST; needs the dense gradient when λ > 0)",
    needs=_mest_needs,
    params={"mest_lambda": "mest_lambda"},
)
def mest_score(
    weight: torch.Tensor, mask: torch.Tensor, *, grad: torch.Tensor | None = None, mest_lambda: float = 0.01
) -> torch.Tensor:
    magnitude = magnitude_score(weight, mask)
    if grad is None:
        if mest_lambda > 0:
            raise ValueError("MEST removal needs the dense gradient; none was recorded before this update")
        return magnitude
    return magnitude + mest_lambda * grad.float().abs() * mask


def removal_scores(
    weight: torch.Tensor,
    mask: torch.Tensor,
    criterion: str,
    grad: torch.Tensor | None = None,
    mest_lambda: float = 0.01,
) -> torch.Tensor:
    """Dense ``(n_out, n_in)`` float32 importance scores (meaningful at active links only) of the
    registered removal score ``criterion``; ``mest_lambda`` reaches the parts that read it."""
    part = REMOVALS.part(criterion)
    if "rule" in part.flags:
        raise ValueError(
            f"removal {part.name!r} is a rule that picks the kept links itself, not a score; use keep_links"
        )
    params = {"mest_lambda": mest_lambda} if "mest_lambda" in part.params else {}
    return part.fn(weight, mask, grad=grad, **params)


@REMOVALS.register(
    "set",
    summary="smallest positive and largest negative weights, each sign separately (SET's rule)",
    flags=("rule", "deterministic"),
)
def _keep_set_rule(weight: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """SET: remove the smallest positive and the largest negative weights, sharing the removals
    between the two signs in proportion to their counts (zeros count as positive)."""
    values = weight.detach().flatten().float()
    active = torch.nonzero(mask.flatten()).flatten()
    n_remove = active.numel() - n_keep
    vals = values[active]
    positive = active[vals >= 0]
    negative = active[vals < 0]
    remove_pos = int(round(n_remove * positive.numel() / max(1, active.numel())))
    remove_pos = min(max(remove_pos, n_remove - negative.numel()), positive.numel(), n_remove)
    remove_neg = n_remove - remove_pos
    # Keep the largest positives and the most negative negatives.
    keep_pos = positive[torch.argsort(values[positive], descending=True, stable=True)[: positive.numel() - remove_pos]]
    keep_neg = negative[torch.argsort(values[negative], stable=True)[: negative.numel() - remove_neg]]
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    keep[keep_pos] = True
    keep[keep_neg] = True
    return keep.view_as(mask)


def keep_links(
    weight: torch.Tensor,
    mask: torch.Tensor,
    n_keep: int,
    criterion: str,
    selection: str,
    generator: torch.Generator,
    temperature: float = 1.0,
    grad: torch.Tensor | None = None,
    mest_lambda: float = 0.01,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask of the ``n_keep`` links kept out of the active links of ``mask`` (exact count).

    ``scores`` may be given precomputed (dense, same shape); otherwise they come from
    :func:`removal_scores` with ``criterion``.
    """
    n_active = int(torch.count_nonzero(mask))
    if not 0 <= n_keep <= n_active:
        raise ValueError(f"n_keep={n_keep} must lie in [0, {n_active}] (the number of active links)")
    if n_keep == n_active:
        return mask.clone()
    part = REMOVALS.part(criterion) if scores is None else None
    if part is not None and "rule" in part.flags:
        if selection != "topk":
            raise ValueError(f"removal {part.name!r} is deterministic: use selection='topk'")
        return part.fn(weight, mask, n_keep)
    active = torch.nonzero(mask.flatten()).flatten()
    if part is not None and part.fn is magnitude_score:
        # the common case: read only the active entries instead of scoring the dense layer
        active_scores = weight.detach().flatten()[active].float().abs()
    else:
        if scores is None:
            scores = removal_scores(weight, mask, criterion, grad=grad, mest_lambda=mest_lambda)
        active_scores = scores.flatten()[active]
    if selection == "soft":
        active_scores = active_scores.clamp_min(1e-12)
    chosen = select(active_scores, n_keep, selection, generator, temperature=temperature)
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    keep[active[chosen]] = True
    return keep.view_as(mask)
