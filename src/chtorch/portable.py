"""Masks that travel with the model: load a sparse model's ``state_dict`` into a fresh model, and
strip a sparse model down to a plain one.

A sparsified layer keeps its topology in the bool buffer ``weight_mask`` ``(out_features,
in_features)``, so ``model.state_dict()`` holds weights *and* masks; a freshly built model has no
such buffers, and ``model.load_state_dict`` refuses the saved ``weight_mask`` keys as unexpected.
:func:`load_sparse` registers them first; :func:`strip` folds them into the weights (as
``torch.ao.pruning``'s ``squash_mask``), leaving a model any PyTorch code can use.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from chtorch.dst import layer_shape, logical_weight
from chtorch.sparse import SparseLinear, to_dense

__all__ = ["load_sparse", "strip"]

MASK = "weight_mask"


def _masked_layers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{layer name: saved mask}`` for every ``weight_mask`` key of a model ``state_dict``."""
    out = {}
    for key, value in state.items():
        if key == MASK or key.endswith("." + MASK):
            out[key[: -len(MASK)].rstrip(".")] = value
    return out


def load_sparse(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> dict[str, torch.Tensor]:
    """Load a sparse model's ``state_dict`` (weights and ``weight_mask`` buffers, from either
    backend) into ``model``, a fresh instance of the same architecture, and return its masks.

    Each layer with a saved ``weight_mask`` gets the bool buffer back (what ``sparsify`` registers),
    so the loaded model computes exactly what the saved one did, before any engine is built; to
    continue dynamic sparse training, pass the returned masks on::

        masks = chtorch.load_sparse(model, saved["model"])
        sp = chtorch.sparsify(model, optimizer, ..., masks=masks)
        sp.load_state_dict(saved["sparsity"])
        optimizer.load_state_dict(saved["optimizer"])

    Args:
        model: the module to load into (a fresh one, or one already sparsified).
        state: ``model.state_dict()`` of the sparse model.
        strict: as :meth:`torch.nn.Module.load_state_dict`.

    Returns ``{layer name: bool (out_features, in_features) mask}`` (copies), for ``sparsify(masks=...)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(state, Mapping):
        raise ValueError(
            f"state must be a model state_dict (a mapping of names to tensors), got {type(state).__name__}"
        )
    saved = _masked_layers(state)
    modules = dict(model.named_modules())
    for name, mask in saved.items():
        module = modules.get(name)
        if module is None or not torch.is_tensor(getattr(module, "weight", None)):
            raise ValueError(
                f"the state has a weight_mask for layer {name!r}, but the model has no such layer with a weight: "
                "load the state into the architecture it was saved from"
            )
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            dtype = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"layer {name!r}: the saved weight_mask is {dtype}, not torch.bool; save the model's own")
        shape = layer_shape(module)
        if tuple(mask.shape) != shape:
            raise ValueError(
                f"layer {name!r}: the saved weight_mask has shape {tuple(mask.shape)}, the layer is {shape} "
                "(another model)"
            )
        if not torch.is_tensor(getattr(module, MASK, None)):
            module.register_buffer(MASK, torch.zeros(shape, dtype=torch.bool, device=module.weight.device))
    model.load_state_dict(dict(state), strict=strict)
    return {name: getattr(modules[name], MASK).detach().clone() for name in saved}


def strip(model: nn.Module) -> nn.Module:
    """A plain copy of a sparse ``model``: every mask folded into its weight (exact zeros off the
    links), no ``weight_mask`` buffers, no engine hooks, each ``SparseLinear`` back to a dense
    ``nn.Linear``. ``model`` itself is untouched (an engine may keep training it).

    The copy computes the same outputs as ``model``: exactly for the masked backend (its weights are
    already zero off the mask), to float rounding for the truly sparse one (its values are scattered
    to a dense ``(out, in)`` weight, which a dense matmul sums in another order). Its
    ``state_dict`` loads into a freshly built model with plain ``load_state_dict``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    plain = copy.deepcopy(model)  # new Parameters: the engine's tensor hooks stay on the original's
    if isinstance(plain, SparseLinear):
        return _plain_linear(plain)
    to_dense(plain, keep_mask=False)
    for module in plain.modules():
        mask = module._buffers.get(MASK)
        if mask is None:
            continue
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        module.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        with torch.no_grad():  # (out, in) view: a GPT-2 Conv1D's (in, out) weight is folded by mask.T
            folded = logical_weight(module)
            folded.mul_(mask.to(folded.dtype))
        del module._buffers[MASK]
        module._non_persistent_buffers_set.discard(MASK)
        _drop_engine_hooks(module)
    return plain


def _plain_linear(layer: SparseLinear) -> nn.Linear:
    holder = nn.Module()
    holder.add_module("layer", layer)
    to_dense(holder, keep_mask=False)
    out = holder.get_submodule("layer")
    assert isinstance(out, nn.Linear)
    return out


def _drop_engine_hooks(module: nn.Module) -> None:
    """Remove the ``load_state_dict`` pre-hooks chtorch's engine registered on ``module`` (the copy
    carries them over from the original); the user's own hooks stay."""
    hooks = module._load_state_dict_pre_hooks
    for key, wrapped in list(hooks.items()):
        hook = getattr(wrapped, "hook", wrapped)
        owner = getattr(hook, "__module__", None) or type(hook).__module__  # a copy holds the watch's no-op
        if str(owner).startswith("chtorch.dst."):
            del hooks[key]
