"""Sparse weight initialisation (SWI) of CHT (Zhang et al., ICLR 2024; fan-in vs fan-out: docs/decisions.md):
Kaiming-normal scaled to the number of links a neuron actually has."""

from __future__ import annotations

import math

import torch

__all__ = ["swi_", "swi_std"]

_FANS = ("in", "out")


def swi_std(shape: tuple[int, int], density: float, fan: str = "in") -> float:
    """SWI standard deviation ``sqrt(2 / (density · fan))`` for a ``(n_out, n_in)`` weight.

    ``fan="in"``: ``fan = n_in`` (the original CHT ``sparse_layer``: expected links per output neuron);
    ``fan="out"``: ``fan = n_out`` (what the official MLP/Transformer code's DSTScheduler computes, ``(1−S)·N /
    in_features``).
    The two agree on square layers. Returns 0.0 for density 0.
    """
    if fan not in _FANS:
        raise ValueError(f"fan must be 'in' or 'out', got {fan!r}")
    n_out, n_in = shape
    if density <= 0.0:
        return 0.0
    return math.sqrt(2.0 / (density * (n_in if fan == "in" else n_out)))


@torch.no_grad()
def swi_(
    weight: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    fan: str = "in",
) -> torch.Tensor:
    """Fill ``weight`` ``(n_out, n_in)`` in place with SWI values on ``mask`` and exact zeros elsewhere.

    Values are ``N(0, σ²)`` with ``σ = sqrt(2 / (density · fan))`` (:func:`swi_std`), ``density`` being
    the mask's fraction of ones. ``generator`` (a private ``torch.Generator``) is required; when its
    device differs from the weight's, the values are drawn there and copied. Returns ``weight``.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D (out_features, in_features) tensor")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask shape {got} must equal the weight's shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if fan not in _FANS:
        raise ValueError(f"fan must be 'in' or 'out', got {fan!r}")
    if generator is None:
        raise ValueError(
            "swi_ is random and needs generator=torch.Generator (e.g. chtorch.rng.make_generator(seed, 'swi', "
            "layer_index)); chtorch never uses the global RNG"
        )
    keep = mask.to(device=weight.device, dtype=torch.bool)
    density = float(keep.sum()) / max(1, keep.numel())
    std = swi_std((weight.shape[0], weight.shape[1]), density, fan)
    values = torch.randn(weight.shape, generator=generator, device=generator.device, dtype=torch.float32)
    values = values.to(device=weight.device, dtype=weight.dtype) * std
    weight.copy_(torch.where(keep, values, torch.zeros((), dtype=weight.dtype, device=weight.device)))
    return weight
