"""Argument checks shared by the topology initialisers (one place for the error messages)."""

from __future__ import annotations

from typing import Literal, overload

import torch

from chtorch._checks import check_number
from chtorch.masks import link_budget

__all__ = ["layer_budget", "check_shape", "resolve_n_links", "require_generator", "check_unit_interval", "mask_device"]


@overload
def layer_budget(
    n_out: int, n_in: int, sparsity: float | None, n_links: int | None, *, required: Literal[True] = True
) -> tuple[int, int, int]: ...


@overload
def layer_budget(
    n_out: int, n_in: int, sparsity: float | None, n_links: int | None, *, required: bool
) -> tuple[int, int, int | None]: ...


def layer_budget(
    n_out: int, n_in: int, sparsity: float | None, n_links: int | None, *, required: bool = True
) -> tuple[int, int, int | None]:
    """The preamble every initialiser starts with: ``(n_out, n_in, links)`` checked, where ``links``
    is the exact number of links to place (:func:`resolve_n_links`). With ``required=False`` (an
    initialiser that can take its link count from elsewhere, such as BRF's explicit degree sequence)
    ``links`` is ``None`` when neither ``sparsity`` nor ``n_links`` is given."""
    n_out, n_in = check_shape(n_out, n_in)
    if not required and sparsity is None and n_links is None:
        return n_out, n_in, None
    return n_out, n_in, resolve_n_links(n_out, n_in, sparsity, n_links)


def check_shape(n_out: int, n_in: int) -> tuple[int, int]:
    """Return ``(n_out, n_in)`` as ints, or raise ``ValueError`` unless both are positive integers."""
    for name, value in (("n_out", n_out), ("n_in", n_in)):
        check_number(name, value, 1, integer=True, hint=f"the layer's {name[2:]}_features")
    return int(n_out), int(n_in)


def resolve_n_links(n_out: int, n_in: int, sparsity: float | None, n_links: int | None) -> int:
    """The exact number of links to place.

    ``n_links`` wins when given (the engine passes per-layer budgets from
    :func:`chtorch.topology.allocate_budgets`, which may differ from the global sparsity); otherwise
    ``chtorch.masks.link_budget(n_out, n_in, sparsity)``.
    """
    total = n_out * n_in
    if n_links is not None:
        return check_number(
            "n_links", n_links, 0, total, integer=True, hint=f"at most n_out * n_in for a ({n_out}, {n_in}) layer"
        )
    if sparsity is None:
        raise ValueError("give the layer's sparsity (fraction of zeros, e.g. 0.99) or an exact n_links")
    return link_budget(n_out, n_in, check_number("sparsity", sparsity, 0, 1, hint="the fraction of zeros"))


def require_generator(generator: torch.Generator | None, who: str) -> torch.Generator:
    """Raise a clear error when a random initialiser is called without a private generator."""
    if generator is None:
        raise ValueError(
            f"{who} is random and needs generator=torch.Generator "
            "(e.g. chtorch.rng.make_generator(seed, 'init', layer_index)); chtorch never uses the global RNG"
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def check_unit_interval(name: str, value: float) -> float:
    """Return ``float(value)`` or raise unless it lies in ``[0, 1]``."""
    return check_number(name, value, 0, 1)


def mask_device(generator: torch.Generator | None) -> torch.device:
    """Masks are built on the generator's device (CPU when there is none), so a CUDA generator gives a
    CUDA mask without a host round trip."""
    return generator.device if generator is not None else torch.device("cpu")
