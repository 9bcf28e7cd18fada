"""What the compaction modules share: a linear-like layer's links, and replacing a submodule.

Links are the topology: a layer's ``weight_mask`` buffer (masked backend), a
:class:`~chtorch.sparse.SparseLinear`'s links, or ``weight != 0`` for a plain dense layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from chtorch.sparse import SparseInferenceLinear, SparseLinear

__all__ = ["Activation", "layer_links", "links_of", "has_topology", "set_submodule", "empty_linear"]

Activation = Callable[[torch.Tensor], torch.Tensor]


def layer_links(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(weight, mask, bias)`` of a linear-like module, weight dense ``(out, in)`` and zero off the
    bool mask; ``None`` for other modules. Handles ``nn.Linear`` (with or without ``weight_mask``),
    ``SparseLinear`` and ``SparseInferenceLinear``."""
    if isinstance(module, SparseLinear):
        return module.dense_weight().detach(), module.weight_mask, _maybe(module.bias)
    if isinstance(module, SparseInferenceLinear):
        weight = module.dense_weight()
        mask = torch.zeros_like(weight, dtype=torch.bool).index_put_(
            (module.row_indices, module.col_indices), torch.tensor(True)
        )
        return weight, mask, _maybe(module.bias)
    if isinstance(module, nn.Linear):
        weight = module.weight.detach()
        buffer = getattr(module, "weight_mask", None)
        if buffer is None:
            return weight, weight != 0, _maybe(module.bias)
        mask = buffer.to(device=weight.device, dtype=torch.bool)
        return weight * mask, mask, _maybe(module.bias)
    return None


def _maybe(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def links_of(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`layer_links` of the layer ``name`` of ``model``, which must be linear-like."""
    module = model.get_submodule(name)
    found = layer_links(module)
    if found is None:
        raise TypeError(f"layer {name!r} is a {type(module).__name__}, not a linear layer")
    return found


def has_topology(module: nn.Module) -> bool:
    """Whether ``module`` carries a topology (a ``weight_mask`` buffer or a sparse layer)."""
    return isinstance(module, (SparseLinear, SparseInferenceLinear)) or hasattr(module, "weight_mask")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``model`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def empty_linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` without storage, whose Parameters the caller replaces."""
    # Built on the meta device (no memory, no init work); its Parameters are replaced right after.
    # Silences torch's "zero-element tensor" warning when every hidden neuron of a layer died.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(n_in, n_out, bias=bias, device="meta", dtype=dtype)
