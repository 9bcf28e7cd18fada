"""Index layout of a truly sparse ``(out_features, in_features)`` weight.

A layer's links are stored once, in row-major (CSR) order: link ``k`` joins output neuron ``rows[k]``
to input neuron ``cols[k]`` and its weight is ``values[k]``. Two compressed index sets are derived
from that order so that both products of a training step run as sparse x dense kernels:

* ``crow`` / ``cols``        - CSR of ``W``     (forward ``y^T = W x^T`` and the weight gradient), and
* ``crow_t`` / ``col_t``     - CSR of ``W^T``   (input gradient ``dx^T = W^T dy^T``), whose values
  are ``values[perm]``: a gather, so the transposed copy of the weights is never stored.

Truly sparse training (Zhang et al., NeurIPS 2025, arXiv:2501.19107, §3 and App. F; the CHT family
needs only the topology for regrowth) is only useful if these indices are cheap to rebuild at a
topology update: :func:`build_layout` costs one ``nonzero`` and one stable sort of ``nnz`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SparseLayout", "build_layout", "layout_from_indices", "link_keys"]


@dataclass(frozen=True)
class SparseLayout:
    """Index tensors of one sparse weight (all int64, on the weight's device).

    Shapes: ``rows``, ``cols``, ``col_t``, ``perm``: ``(nnz,)``; ``crow``: ``(out_features + 1,)``;
    ``crow_t``: ``(in_features + 1,)``.
    """

    out_features: int
    in_features: int
    rows: torch.Tensor
    cols: torch.Tensor
    crow: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def to(self, device: torch.device | str) -> SparseLayout:
        move = {name: getattr(self, name).to(device) for name in ("rows", "cols", "crow", "crow_t", "col_t", "perm")}
        return SparseLayout(self.out_features, self.in_features, **move)


def link_keys(rows: torch.Tensor, cols: torch.Tensor, in_features: int) -> torch.Tensor:
    """Row-major linear index ``rows * in_features + cols`` (int64): sorted exactly when the links
    are in CSR order, so two topologies can be matched with ``searchsorted``."""
    return rows.to(torch.int64) * int(in_features) + cols.to(torch.int64)


def _compress(index: torch.Tensor, length: int) -> torch.Tensor:
    """Compressed pointer array ``(length + 1,)`` of a sorted index vector."""
    counts = torch.bincount(index, minlength=length)
    pointer = torch.zeros(length + 1, dtype=torch.int64, device=index.device)
    torch.cumsum(counts, dim=0, out=pointer[1:])
    return pointer


def layout_from_indices(rows: torch.Tensor, cols: torch.Tensor, out_features: int, in_features: int) -> SparseLayout:
    """Layout from link indices already in row-major order (as ``mask.nonzero()`` returns them)."""
    rows = rows.to(torch.int64).contiguous()
    cols = cols.to(torch.int64).contiguous()
    crow = _compress(rows, out_features)
    # A stable sort by column keeps rows ascending inside each column, i.e. CSR order of W^T.
    perm = torch.sort(cols, stable=True).indices
    col_t = rows[perm].contiguous()
    crow_t = _compress(cols, in_features)
    return SparseLayout(out_features, in_features, rows, cols, crow, crow_t, col_t, perm)


def build_layout(mask: torch.Tensor) -> SparseLayout:
    """Layout of the links of a bool ``mask`` of shape ``(out_features, in_features)``."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(
            f"mask must be a 2-D torch.bool tensor (out_features, in_features), got {mask.dtype} "
            f"of shape {tuple(mask.shape)}; pass e.g. `weight != 0` or the layer's `weight_mask`"
        )
    rows, cols = mask.nonzero(as_tuple=True)
    return layout_from_indices(rows, cols, mask.shape[0], mask.shape[1])
