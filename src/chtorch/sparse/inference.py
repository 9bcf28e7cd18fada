"""``SparseInferenceLinear``: a frozen sparse linear layer for deployment.

It stores the weight as CSR arrays (``crow_indices``, ``col_indices``, ``values``) in buffers, has no
Parameters and no autograd path, and computes ``y = x W^T + b`` with one sparse x dense product
(``torch.addmm`` on a CSR tensor: MKL on CPU, cuSPARSE on CUDA; a gather/``index_add_`` fallback for
other dtypes). Produced by :func:`chtorch.compaction.to_sparse_inference`. Sparse export of a CHT-trained
network: Zhang et al., NeurIPS 2025, arXiv:2501.19107, §3 (ultra-sparse advantage).
"""

from __future__ import annotations

import torch
from torch import nn

from chtorch.sparse.functional import _csr, _gather_spmm, resolve_impl
from chtorch.sparse.layout import layout_from_indices

__all__ = ["SparseInferenceLinear"]


class SparseInferenceLinear(nn.Module):
    """Inference-only linear layer with a CSR weight ``(out_features, in_features)``.

    Buffers: ``crow_indices`` ``(out+1,)``, ``col_indices`` ``(nnz,)``, ``values`` ``(nnz,)``,
    ``bias`` ``(out,)`` or absent. Input ``(..., in_features)`` -> output ``(..., out_features)``.
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    row_indices: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> None:
        """``weight``: dense ``(out, in)``; ``mask``: bool links to keep (default ``weight != 0``)."""
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        weight = weight.detach()
        mask = (weight != 0) if mask is None else mask.to(device=weight.device, dtype=torch.bool)
        if mask.shape != weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        rows, cols = mask.nonzero(as_tuple=True)
        layout = layout_from_indices(rows, cols, self.out_features, self.in_features)
        self.register_buffer("crow_indices", layout.crow)
        self.register_buffer("col_indices", layout.cols)
        self.register_buffer("row_indices", layout.rows, persistent=False)  # for the gather fallback
        self.register_buffer("values", weight[rows, cols].clone())
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # The number of links of a checkpoint may differ from the freshly built layer's.
        for name in ("col_indices", "values"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "col_indices" in state_dict:
            counts = self.crow_indices.diff()
            self.row_indices = torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features in its last dim, the layer expects {self.in_features}")
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features).to(self.values.dtype)
        if resolve_impl("auto", self.values.dtype, self.values.device) == "csr":
            weight = _csr(self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features))
            if self.bias is None:
                out_t = torch.sparse.mm(weight, x2d.t())
            else:
                out_t = torch.addmm(self.bias.unsqueeze(1), weight, x2d.t())
        else:
            out_t = _gather_spmm(
                x2d.t().contiguous(), self.values, self.col_indices, self.row_indices, self.out_features
            )
            if self.bias is not None:
                out_t += self.bias.unsqueeze(1)
        return out_t.t().reshape(*lead, self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """Dense ``(out, in)`` weight, zeros off the links."""
        dense = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put_((self.row_indices, self.col_indices), self.values)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.nnz}, bias={self.bias is not None}"
        )
