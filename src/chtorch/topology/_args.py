"""Argument checks shared by the topology initialisers (one place for the error messages)."""

from __future__ import annotations

import numbers

import torch

from chtorch.masks import link_budget

__all__ = ["check_shape", "resolve_n_links", "require_generator", "check_unit_interval", "mask_device"]


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; a bool size is always a caller's mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_shape(n_out: int, n_in: int) -> tuple[int, int]:
    """Return ``(n_out, n_in)`` as ints, or raise ``ValueError`` unless both are positive integers."""
    for name, value in (("n_out", n_out), ("n_in", n_in)):
        if not _is_int(value) or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer (the layer's {name[2:]}_features), got {value!r}")
    return int(n_out), int(n_in)


def resolve_n_links(n_out: int, n_in: int, sparsity: float | None, n_links: int | None) -> int:
    """The exact number of links to place.

    ``n_links`` wins when given (the engine passes per-layer budgets from
    :func:`chtorch.topology.allocate_budgets`, which may differ from the global sparsity); otherwise
    ``chtorch.masks.link_budget(n_out, n_in, sparsity)``.
    """
    total = n_out * n_in
    if n_links is not None:
        if not _is_int(n_links):
            raise ValueError(f"n_links must be an integer, got {n_links!r}")
        if not 0 <= int(n_links) <= total:
            raise ValueError(f"n_links={n_links} is outside [0, {total}] for a ({n_out}, {n_in}) layer; pass at most n_out * n_in links")
        return int(n_links)
    if sparsity is None:
        raise ValueError("give the layer's sparsity (fraction of zeros, e.g. 0.99) or an exact n_links")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"sparsity must be a float in [0, 1], got {sparsity!r}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1] (fraction of zeros), got {sparsity}")
    return link_budget(n_out, n_in, float(sparsity))


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
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def mask_device(generator: torch.Generator | None) -> torch.device:
    """Masks are built on the generator's device (CPU when there is none), so a CUDA generator gives a
    CUDA mask without a host round trip."""
    return generator.device if generator is not None else torch.device("cpu")
