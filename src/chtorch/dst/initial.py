"""A layer's starting point: its initial topology and the values of its initial weights.

The topology comes from a registered initialiser (:data:`chtorch.topology.INITIALIZERS`), drawn per
head block with an exact budget; the weights from a registered weight initialisation:

- ``keep``: the model's own weights, masked (what the official Transformer code does with its Glorot
  init and the LLaMA code with the model's default init).
- ``swi``: sparse weight initialisation, N(0, 2/(density·fan_in)) at the links (CHT, Zhang et al.,
  ICLR 2024; the official MLP code), the default of the CH presets: a masked dense init shrinks the
  signal by √density per layer, so a 99%-sparse MLP with ``keep`` barely trains. The fan choice is a
  row of docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from chtorch import topology
from chtorch.dst.layer import split
from chtorch.dst.registry import WEIGHT_INITS
from chtorch.dst.scope import layer_shape
from chtorch.masks import check_mask
from chtorch.rng import make_generator

__all__ = ["initial_mask", "given_masks", "keep_weights", "sparse_weight_init"]


@WEIGHT_INITS.register("keep", summary="the model's own weights, masked")
def keep_weights(weight: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
    """Leave ``weight`` as it is (the engine masks it)."""


@WEIGHT_INITS.register("swi", summary="sparse weight init N(0, 2/(density·fan_in)) at the links (CHT; the MLP code)")
def sparse_weight_init(weight: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
    """SWI in place (:func:`chtorch.topology.swi_`)."""
    topology.swi_(weight, mask, generator=generator)


@WEIGHT_INITS.register(
    "swi_out",
    summary="SWI with density·fan_out: N(0, 2/(density·out_features)), as the official MLP code's DSTScheduler",
)
def sparse_weight_init_fan_out(weight: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
    """SWI in place with ``fan="out"`` (:func:`chtorch.topology.swi_`; docs/decisions.md, SWI fan)."""
    topology.swi_(weight, mask, generator=generator, fan="out")


@WEIGHT_INITS.register(
    "kaiming",
    summary="dense Kaiming normal N(0, 2/fan_in), then masked: the official MLP code's --init_mode kaiming (SET, RigL)",
)
def kaiming_weight_init(weight: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
    """Kaiming normal over the whole ``(n_out, n_in)`` weight, ``σ = sqrt(2/n_in)`` (not corrected for the
    density, unlike SWI); the engine then zeroes the non-links. The official MLP code's DSTScheduler
    draws this for ``--init_mode kaiming`` (``stdv = sqrt(2 / w.shape[1])``), the default of its
    ``run.py`` and the README's SET command (docs/decisions.md, "initial weights")."""
    topology.swi_(weight, torch.ones_like(mask, dtype=torch.bool), generator=generator)  # density 1: plain Kaiming


def initial_mask(
    init: str,
    init_options: Mapping[str, Any],
    shape: tuple[int, int],
    target: int,
    groups: int,
    seed: int,
    layer_index: int,
    device: torch.device,
) -> torch.Tensor:
    """Bool ``(n_out, n_in)`` mask with exactly ``target`` links: the initialiser ``init`` drawn on
    each of the ``groups`` row blocks (attention heads) with its share of the budget, from the
    generator of ``(seed, "init", layer_index)``."""
    n_out, n_in = shape
    initializer = topology.get_initializer(init)
    generator = make_generator(seed, "init", layer_index)
    blocks = [
        initializer(n_out // groups, n_in, n_links=n, generator=generator, **dict(init_options))
        for n in split(target, groups)
    ]
    mask = torch.cat(blocks).to(device=device, dtype=torch.bool)
    check_mask(mask, shape, target)
    return mask


def given_masks(
    masks: Mapping[str, torch.Tensor] | None, names: list[str], modules: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The starting topologies given to ``sparsify(..., masks=...)``: one bool ``(out_features,
    in_features)`` mask per selected layer, checked and copied onto the weight's device."""
    if masks is None:
        return {}
    if not isinstance(masks, Mapping) or not all(torch.is_tensor(m) for m in masks.values()):
        raise ValueError(
            f"masks must map layer names to bool tensors (out_features, in_features), got {type(masks).__name__}"
        )
    if sorted(masks) != sorted(names):
        raise ValueError(f"masks are given for layers {sorted(masks)}, but the selected layers are {sorted(names)}")
    out = {}
    for name in names:
        weight = modules[name].weight
        mask = masks[name].to(device=weight.device)
        check_mask(mask, layer_shape(modules[name]))
        out[name] = mask.clone()
    return out
