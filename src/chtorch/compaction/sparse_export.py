"""Sparse storage for inference: masked linear layers as CSR :class:`~chtorch.sparse.SparseInferenceLinear`."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from chtorch.compaction._common import has_topology, layer_links, set_submodule
from chtorch.sparse import SparseInferenceLinear

__all__ = ["to_sparse_inference"]


def to_sparse_inference(
    model: nn.Module,
    names: Sequence[str] | None = None,
    *,
    max_density: float = 0.2,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse linear layers are stored as CSR
    :class:`~chtorch.sparse.SparseInferenceLinear` modules.

    Args:
        names: layers to convert; default every layer with a topology (a ``weight_mask`` buffer or a
            ``SparseLinear``) whose density is at most ``max_density``.
        max_density: above it a CSR product is slower than a dense one (``benchmarks/inference.py``
            measures the cross-over), so such layers stay dense unless named explicitly.
    """
    target = model if inplace else copy.deepcopy(model)
    if names is None:
        names = []
        for name, module in target.named_modules():
            if not has_topology(module) or isinstance(module, SparseInferenceLinear):
                continue
            found = layer_links(module)
            if found is None:
                continue
            _, mask, _ = found
            if float(mask.float().mean()) <= max_density:
                names.append(name)
    for name in names:
        module = target.get_submodule(name)
        found = layer_links(module)
        if found is None:
            raise TypeError(f"layer {name!r} is a {type(module).__name__}, not a linear layer")
        weight, mask, bias = found
        set_submodule(target, name, SparseInferenceLinear(weight, bias, mask))
    return target.eval()
