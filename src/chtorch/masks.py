"""Mask helpers and invariant checks.

Layout convention (one place for it): a mask has the weight's shape ``(out_features, in_features)``;
rows are output neurons, columns are input neurons. ``out_degree`` counts a row's links (links of an
output neuron to the layer's inputs); ``in_degree`` counts a column's links (links of an input neuron
to the layer's outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "link_budget",
    "out_degree",
    "in_degree",
    "density",
    "check_mask",
    "keep_bits",
    "zero_off_mask",
    "zero_off_mask_",
]

# Floating dtype -> the integer dtype of the same width, whose bitwise AND zeroes an entry exactly.
_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


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


def keep_bits(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The operand :func:`zero_off_mask_` takes for ``mask`` and tensors of ``like``'s dtype and device:
    an integer tensor of ``like``'s width, all bits set at the links and 0 elsewhere (a bool mask for
    dtypes without a same-width integer). Build it once per mask and reuse it (the engine caches it)."""
    int_dtype = _SAME_WIDTH_INT.get(like.dtype)
    mask = mask.to(device=like.device, dtype=torch.bool)
    if int_dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=int_dtype, device=like.device).masked_fill_(mask, -1)


def zero_off_mask_(tensor: Tensor, keep: Tensor) -> Tensor:
    """Set ``tensor`` to exactly ``+0`` off the mask, in place, leaving the links bit for bit —
    NaN and Inf included, where a multiplication by a 0/1 mask would leave ``NaN × 0 = NaN`` off
    the mask. ``keep`` is :func:`keep_bits` of the mask: a bitwise AND on the same-width integer
    view costs what the multiplication costs (measured: 1024x1024 float32 on CPU, one thread, 89 µs
    for both, where ``masked_fill_`` with a bool mask takes 1480 µs)."""
    if keep.dtype == torch.bool:
        return tensor.masked_fill_(~keep, 0)
    tensor.view(keep.dtype).bitwise_and_(keep)
    return tensor


def zero_off_mask(tensor: Tensor, keep: Tensor) -> Tensor:
    """Out-of-place :func:`zero_off_mask_` (a gradient hook returns a new tensor)."""
    if keep.dtype == torch.bool:
        return tensor.masked_fill(~keep, 0)
    return tensor.view(keep.dtype).bitwise_and(keep).view(tensor.dtype)
