"""``chtorch.sparsify``: one call from a plain PyTorch loop to dynamic sparse training.

It is the one road to the engine: the ``chtorch train`` trainer and the Hugging Face callback build
theirs with it too, so a method's options are merged in one place
(:func:`chtorch.dst.methods.resolve_options`) whoever asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from chtorch.dst import DynamicSparsity, LayerSelector, get_method, resolve_options

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
    masks: Mapping[str, torch.Tensor] | None = None,
    kernel: str = "auto",
    option_defaults: Mapping[str, Any] | None = None,
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
    e.g. ``zeta=0.1``, ``regrowth_selection="topk"``, ``ch_variant="CH3"``, or name a part you
    registered (``removal="my_score"``, see :func:`chtorch.register_part`). Every option you pass must
    be read by the method as resolved: ``delta_start`` under the preset's linear temperature schedule,
    or ``mest_lambda`` without the MEST score, raises :class:`chtorch.dst.OptionError` naming the parts
    that would read it (an option nothing reads would make a sweep over it give identical runs).

    ``option_defaults``: option values applied under ``options`` and used only where the method reads
    them, never an error (a recipe's or an official code's settings shared by several methods, e.g.
    ``option_defaults=chtorch.recipes.lm.LLAMA_CODE_DEFAULTS``).

    **Your initial weights.** Every selected layer gets its initial topology, and its weights are
    multiplied by it. With ``weight_init="swi"`` — the default of the Cannistraci-Hebb presets (cht,
    chts, chtss), as in the official MLP code — the weights at the links are then *redrawn* from
    N(0, 2/(density·fan_in)); with ``weight_init="keep"`` (the other presets' default) your weights
    stay, masked. Pass ``weight_init="keep"`` to sparsify a pretrained model without losing its
    weights; pass ``"swi"`` to any method on a plain MLP (a masked dense init shrinks the signal by
    √density per layer, so a 99%-sparse MLP barely trains without it). Biases are never touched.

    ``backend``: ``"masked"`` (dense weights times a mask; works with every method), ``"sparse"``
    (selected layers become :class:`chtorch.sparse.SparseLinear`: weights stored as values plus
    indices, sparse forward and backward, optimizer state only for existing links; a method that reads
    dense gradients, as RigL's and GraNet's regrowth and MEST's removal do, gets them from the layer's
    backward pass only in the ``grad_accumulation`` steps before an update), or ``"auto"`` (sparse where
    a layer's current density is at most 20%, masked elsewhere, re-decided at every update: a density
    decay moves a layer to the sparse backend, weights and optimizer state exactly, at the update where
    it crosses the threshold; the choice is logged and kept in ``sp.backends``).

    ``kernel``: the sparse kernel of the layers a backend runs truly sparse (``"auto"``, ``"native"``,
    ``"csr"``, ``"gather"`` or one registered with :func:`chtorch.sparse.register_kernel`).

    ``couplings`` (an option): the percolation couplings, or a coupling rule ``rule(model, layer_names)
    -> couplings | None`` called with the selected layers (a recipe's; None: inferred from the model).

    ``masks``: start from saved topologies (layer name → bool ``(out_features, in_features)``, e.g.
    from a checkpoint) instead of drawing new ones; the weights and optimizer state are kept as they
    are (no ``weight_init``), so resuming a fresh model is ``masks = chtorch.load_sparse(model,
    saved_model_state)``, ``sparsify(..., masks=masks)``, ``sp.load_state_dict(saved_engine_state)``,
    then ``optimizer.load_state_dict(saved_optimizer_state)`` (docs/integration.md).
    """
    if total_steps is None:
        raise ValueError(
            "total_steps is required: the number of optimizer steps of the whole run (it sets T_end and density decays)"
        )
    preset = get_method(method)
    if update_interval is not None:
        options["update_interval"] = update_interval
    opts = resolve_options(preset.name, options, defaults=option_defaults)
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
        masks=masks,
        kernel=kernel,
    )
