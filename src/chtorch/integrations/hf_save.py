"""Save a sparse Hugging Face model as a plain one, and get its masks back.

A sparsified model carries one bool ``weight_mask`` buffer per sparse layer. ``save_pretrained``
would write them into the weights file, and ``from_pretrained`` of the model class then reports them
as unexpected keys. :func:`save_pretrained_sparse` writes the weights without the buffers (the
weights are exactly zero off the links already) and the masks, bit-packed (1 bit per position, about
3% of a float32 weight), into ``chtorch_masks.safetensors`` beside them. :func:`restore_masks` gives
the masks back as ``{layer name: bool (out_features, in_features)}`` for
``chtorch.sparsify(model, optimizer, ..., masks=...)`` or ``ChtorchCallback(masks=...)``: exactly from
that file, or, without it, from the zero weights (a link whose weight is exactly 0 then reads as
absent, so the budget can come out a few links short).

Needs ``safetensors`` (in the ``[hf]`` extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chtorch._io import atomic_write
from chtorch.dst import SUPPORTED_LAYERS, is_sparsifiable, layer_shape, logical_weight
from chtorch.integrations.hf_layers import default_layers

__all__ = ["MASKS_NAME", "save_pretrained_sparse", "restore_masks"]

#: The mask file written beside the model's weights.
MASKS_NAME = "chtorch_masks.safetensors"
_SUFFIX = ".weight_mask"
_FORMAT = "chtorch-masks"


def _masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key[: -len(_SUFFIX)]: value for key, value in model.state_dict().items() if key.endswith(_SUFFIX)}


def save_pretrained_sparse(model: nn.Module, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
    """``model.save_pretrained(save_directory, **kwargs)`` without the ``weight_mask`` buffers, plus
    :data:`MASKS_NAME` with every mask bit-packed. Returns the mask file's path.

    Raises ``ValueError`` when the model has no ``weight_mask`` (it was never sparsified) or a weight
    is non-zero off its mask (the file would not describe the weights)."""
    from safetensors.torch import save as save_bytes

    save_pretrained = getattr(model, "save_pretrained", None)
    if save_pretrained is None:
        raise TypeError(f"save_pretrained_sparse needs a Hugging Face PreTrainedModel, got {type(model).__name__}")
    if "state_dict" in kwargs:
        raise TypeError(
            "save_pretrained_sparse builds the state_dict itself (the model's, less the weight_mask buffers)"
        )
    masks = _masks_of(model)
    if not masks:
        raise ValueError("the model has no weight_mask buffers: it is not sparsified (use model.save_pretrained)")
    modules = dict(model.named_modules())
    packed, shapes = {}, {}
    for name, mask in masks.items():
        weight = logical_weight(modules[name]).detach()
        if bool((weight[~mask.to(weight.device)] != 0).any()):
            raise ValueError(
                f"layer {name!r} has non-zero weights off its mask; save after an optimizer step of the sparse engine"
            )
        bits = np.packbits(mask.detach().cpu().numpy().astype(np.bool_).reshape(-1))
        packed[name] = torch.from_numpy(bits)
        shapes[name] = list(mask.shape)
    state = {key: value for key, value in model.state_dict().items() if not key.endswith(_SUFFIX)}
    save_pretrained(save_directory, state_dict=state, **kwargs)
    target = Path(save_directory) / MASKS_NAME
    with atomic_write(target) as (handle, _):
        handle.write(save_bytes(packed, metadata={"format": _FORMAT, "version": "1", "shapes": json.dumps(shapes)}))
    return target


def _read_mask_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a chtorch mask file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        out = {}
        for name, (n_out, n_in) in shapes.items():
            bits = f.get_tensor(name).numpy()
            if bits.size * 8 < n_out * n_in:
                raise ValueError(f"{path}: the mask of {name!r} is truncated")
            flat = np.unpackbits(bits)[: n_out * n_in].astype(np.bool_)
            out[name] = torch.from_numpy(flat.reshape(n_out, n_in).copy())
    return out


def restore_masks(
    model: nn.Module, save_directory: str | os.PathLike | None = None, *, layers: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """The masks of a model saved with :func:`save_pretrained_sparse`: layer name → bool
    ``(out_features, in_features)``, on the weights' devices.

    With ``save_directory`` holding :data:`MASKS_NAME` the masks are the saved ones (checked against
    the model: known layers, shapes, zeros off the links). Otherwise they are read from the zeros:
    ``weight != 0`` for ``layers`` (default: every supported layer but the output embedding that has
    at least one zero weight)."""
    modules = dict(model.named_modules())
    path = None if save_directory is None else Path(save_directory) / MASKS_NAME
    if path is not None and path.is_file():
        masks = _read_mask_file(path)
        for name, mask in masks.items():
            if name not in modules or not is_sparsifiable(modules[name]):
                raise ValueError(
                    f"{path} has a mask for {name!r}, which is not a layer of this model ({SUPPORTED_LAYERS})"
                )
            if tuple(mask.shape) != layer_shape(modules[name]):
                raise ValueError(
                    f"{path}: mask of {name!r} is {tuple(mask.shape)}, the layer is {layer_shape(modules[name])}"
                )
            weight = logical_weight(modules[name]).detach()
            masks[name] = mask.to(weight.device)
            if bool((weight[~masks[name]] != 0).any()):
                raise ValueError(
                    f"{path}: layer {name!r} has non-zero weights off the saved mask; were other weights loaded?"
                )
        return masks
    names = list(layers) if layers is not None else default_layers(model)
    masks = {}
    for name in names:
        if name not in modules or not is_sparsifiable(modules[name]):
            raise ValueError(f"{name!r} is not a layer of this model that chtorch can sparsify ({SUPPORTED_LAYERS})")
        support = logical_weight(modules[name]).detach() != 0
        if layers is not None or not bool(support.all()):
            masks[name] = support.clone()
    if not masks:
        raise ValueError("no layer has zero weights: the model does not look sparse (pass layers=... to choose them)")
    return masks
