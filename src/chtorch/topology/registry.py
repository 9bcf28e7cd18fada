"""Initial-topology registry: name -> initialiser. Every initialiser registers itself where it is
defined (``@INITIALIZERS.register("brf")``), returns an exact-count bool mask ``(n_out, n_in)`` and
takes ``(n_out, n_in, sparsity=None, *, n_links=None, generator=None, **options)``, starting with the
shared argument preamble :func:`chtorch.topology._args.layer_budget`.

Register your own the same way; it becomes a valid ``init=`` of :func:`chtorch.sparsify` at once::

    @chtorch.topology.INITIALIZERS.register("diagonal", summary="links on the diagonal band")
    def diagonal(n_out, n_in, sparsity=None, *, n_links=None, generator=None): ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chtorch._registry import Registry

__all__ = ["INITIALIZERS", "get_initializer", "register_initializer"]

Initializer = Callable[..., torch.Tensor]

#: name -> initialiser (the built-in ones register on ``import chtorch.topology``).
INITIALIZERS = Registry("topology", "topology initialiser")
register_initializer = INITIALIZERS.register


def get_initializer(name: str) -> Initializer:
    """The initialiser registered as ``name`` (case-insensitive, ``-`` read as ``_``)."""
    return INITIALIZERS.part(name).fn
