"""``chtorch.sparsify``: one call from a plain PyTorch loop to dynamic sparse training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from chtorch.dst.engine import DynamicSparsity, LayerSelector
from chtorch.dst.methods import get_method

__all__ = ["sparsify"]


def sparsify(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: str = "chts",
    sparsity: float = 0.9,
    total_steps: int | None = None,
    seed: int = 0,
    update_interval: int | None = None,
    layers: LayerSelector = None,
    exclude: str | Sequence[str] | None = None,
    backend: str = "masked",
    **options: Any,
) -> DynamicSparsity:
    """Sparsify ``model``'s Linear layers with a named method and return the engine.

    Example::

        sp = chtorch.sparsify(model, optimizer, method="chts", sparsity=0.99, total_steps=len(loader) * epochs)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()
            sp.step()             # topology update when due
            optimizer.zero_grad()

    ``options`` override any part of the preset (see :class:`chtorch.dst.options.SparsityOptions`),
    e.g. ``zeta=0.1``, ``regrowth_selection="topk"``, ``ch_variant="CH3"``.

    ``backend``: ``"masked"`` (dense weights times a mask; works with every method), ``"sparse"``
    (selected layers become :class:`chtorch.sparse.SparseLinear`: weights stored as values plus
    indices, sparse forward and backward, optimizer state only for existing links; refused for
    methods that read dense gradients, RigL and GraNet), or ``"auto"`` (sparse where the method allows
    it and a layer's density averaged over the run is at most 10%, masked elsewhere; the choice is logged and kept
    in ``sp.backends``).
    """
    if total_steps is None:
        raise ValueError("total_steps is required: the number of optimizer steps of the whole run (it sets T_end and density decays)")
    preset = get_method(method)
    if update_interval is not None:
        options["update_interval"] = update_interval
    opts = preset.build_options(**options)
    return DynamicSparsity(
        model,
        optimizer,
        sparsity=sparsity,
        total_steps=total_steps,
        options=opts,
        seed=seed,
        layers=layers,
        exclude=exclude,
        method=preset.name,
        backend=backend,
    )
