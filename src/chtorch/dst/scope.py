"""Which modules of a model to sparsify: every linear layer but the last by default, or a chosen set.

The paper sparsifies every Linear layer except the classifier / ``lm_head`` and keeps embeddings,
norms and biases dense (Zhang et al., NeurIPS 2025, arXiv:2501.19107, §4.1).

Supported layer types (:data:`SUPPORTED_LAYERS`): ``torch.nn.Linear`` (weight ``(out, in)``) and the
GPT-2 family's ``transformers.pytorch_utils.Conv1D`` (weight ``(in, out)``: ``y = x @ W + b``).
Whatever the weight's layout, masks (the ``weight_mask`` buffer included), scores and budgets use
the ``(out_features, in_features)`` layout (:func:`layer_shape`, :func:`logical_weight`): a ``Conv1D``
weight is masked by ``weight_mask.T``. One layout keeps every topology, link-prediction and
percolation routine unaware of the layer type.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from chtorch._checks import closest
from chtorch.dst.options import OptionError

__all__ = [
    "LayerSelector",
    "LayerSelectionError",
    "SUPPORTED_LAYERS",
    "is_transposed",
    "is_sparsifiable",
    "layer_shape",
    "layer_weight",
    "logical_weight",
    "select_layers",
    "check_owned",
    "check_structure",
    "check_budgets",
    "head_groups",
]

#: What the error messages and the docs name as sparsifiable.
SUPPORTED_LAYERS = "torch.nn.Linear and transformers' GPT-2 Conv1D (transformers.pytorch_utils.Conv1D)"


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is a GPT-2-style ``Conv1D`` (``weight`` of shape ``(nx, nf)`` = ``(in, out)``).

    Recognised by its class name and attributes, so the core needs no ``transformers`` import."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(getattr(module, "nx", None), int)
        and isinstance(weight, nn.Parameter)
        and tuple(weight.shape) == (module.nx, module.nf)
    )


def is_sparsifiable(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a GPT-2 ``Conv1D`` (:data:`SUPPORTED_LAYERS`)."""
    return isinstance(module, nn.Linear) or is_transposed(module)


def _int_attr(module: nn.Module, name: str) -> int:
    # A plain int attribute (nn.Module.__getattr__ is typed as returning a Tensor or a Module).
    return int(getattr(module, name))


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a supported layer, whatever its weight layout."""
    if is_transposed(module):
        return (_int_attr(module, "nf"), _int_attr(module, "nx"))
    return (_int_attr(module, "out_features"), _int_attr(module, "in_features"))


def layer_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` of a supported layer in its own layout (``(out, in)`` for ``nn.Linear``,
    ``(in, out)`` for ``Conv1D``): the Parameter itself, typed as a tensor."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__}.weight is a {type(weight).__name__}"
    return weight


def logical_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an ``(out_features, in_features)`` view (``weight.T`` for ``Conv1D``; in-place
    writes to the view reach the parameter)."""
    weight = layer_weight(module)
    return weight.T if is_transposed(module) else weight


LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


class LayerSelectionError(ValueError):
    """``layers`` / ``exclude`` select no layer, or name a module that is not there."""


def select_layers(
    model: nn.Module, layers: LayerSelector = None, exclude: str | Sequence[str] | None = None
) -> list[str]:
    """Names of the modules to sparsify.

    ``layers``: ``None`` = every supported layer (:data:`SUPPORTED_LAYERS`) except the model's last
    ``nn.Linear`` (the classifier or ``lm_head``, which the paper keeps dense); a glob pattern or exact name, or a list
    of them; or a
    callable ``(name, module) -> bool``. ``exclude``: patterns removed from the selection. Raises
    ``ValueError`` when a pattern selects nothing, a selected module is not a supported layer, or
    nothing is left.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    linear_names = [n for n, m in named if is_sparsifiable(m)]
    if layers is None:
        plain = [n for n, m in named if isinstance(m, nn.Linear)]
        chosen = [n for n in linear_names if not plain or n != plain[-1]]
        if not chosen:
            raise LayerSelectionError(
                f"the model has {len(linear_names)} sparsifiable layer(s) ({SUPPORTED_LAYERS}); by default the last "
                "nn.Linear stays dense, so nothing would be sparsified: pass layers=... to choose layers explicitly"
            )
    elif callable(layers):
        chosen = [n for n, m in named if layers(n, m)]
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise LayerSelectionError(
                    "layers must be layer names or glob patterns (str) or "
                    f"a callable, got {type(pattern).__name__} {pattern!r}"
                )
        chosen = []
        all_names = [n for n, _ in named]
        for pattern in patterns:
            hits = [n for n in all_names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise LayerSelectionError(
                    f"layer pattern {pattern!r} selects no module{closest(pattern, all_names)}; "
                    f"Linear modules: {', '.join(linear_names[:20])}{' ...' if len(linear_names) > 20 else ''}"
                )
            chosen.extend(h for h in hits if h not in chosen)
        # keep model order
        order = {n: i for i, n in enumerate(all_names)}
        chosen.sort(key=order.__getitem__)
    if exclude is not None:
        ex = [exclude] if isinstance(exclude, str) else list(exclude)
        all_names = [n for n, _ in named]
        for pattern in ex:
            if not isinstance(pattern, str):
                raise LayerSelectionError(
                    f"exclude must be layer names or glob patterns (str), got {type(pattern).__name__} {pattern!r}"
                )
            if not any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in all_names):
                raise LayerSelectionError(
                    f"exclude pattern {pattern!r} matches no module{closest(pattern, all_names)}; "
                    f"Linear modules: {', '.join(linear_names[:20])}{' ...' if len(linear_names) > 20 else ''}"
                )
        chosen = [n for n in chosen if not any(n == p or fnmatch.fnmatchcase(n, p) for p in ex)]
    modules = dict(named)
    for name in chosen:
        if not is_sparsifiable(modules[name]):
            raise LayerSelectionError(
                f"selected module {name!r} is a {type(modules[name]).__name__}, not an nn.Linear or a GPT-2 Conv1D "
                f"(chtorch sparsifies {SUPPORTED_LAYERS}): "
                "narrow the layer patterns (for example 'layers.*' → 'layers.*.fc') or use exclude="
            )
    if not chosen:
        raise LayerSelectionError("the layer selection is empty after exclusions: nothing to sparsify")
    return chosen


def check_owned(
    modules: Mapping[str, nn.Module],
    names: Sequence[str],
    optimizer: torch.optim.Optimizer,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Refuse a selected layer whose weight the optimizer does not update, or that is already sparsified
    (a ``weight_mask`` restored by ``chtorch.load_sparse`` passes when ``masks`` gives that very mask)."""
    params_in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name in names:
        if id(modules[name].weight) not in params_in_optimizer:
            raise ValueError(
                f"the weight of layer {name!r} is not in the optimizer's parameter groups; build the optimizer "
                "from model.parameters() before calling sparsify, or exclude the layer"
            )
        existing = getattr(modules[name], "weight_mask", None)
        if existing is not None and not _same_mask(existing, (masks or {}).get(name)):
            raise ValueError(
                f"layer {name!r} already has a weight_mask: the model is already sparsified (to continue from "
                "masks loaded with chtorch.load_sparse, pass them: sparsify(..., masks=masks))"
            )


def _same_mask(existing: object, given: object) -> bool:
    return (
        torch.is_tensor(existing)
        and torch.is_tensor(given)
        and existing.shape == given.shape
        and torch.equal(existing, given.to(existing.device))
    )


def check_structure(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse selected layers whose weight the engine cannot own alone.

    * A **tied** weight (one ``Parameter`` under several names, e.g. ``lm_head.weight`` tied to the
      input embedding, or two selected layers sharing one weight) would get a mask per layer on one
      tensor: each update would zero the other layer's links (a selected tied ``lm_head`` zeroes 90%
      of the embedding at 90% sparsity). chtorch keeps one mask per Parameter, so it refuses the tie
      and names it; exclude the layer (the paper keeps ``lm_head`` dense) or untie the weights.
    * A **frozen** weight (``requires_grad=False``) never moves, so links regrown at zero stay zero
      and the gradient-based parts read nothing: refuse it rather than train it silently dead.
    """
    owners: dict[int, list[str]] = {}
    for param_name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(param_name)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        tied = [n for n in owners.get(id(weight), []) if n != f"{name}.weight"]
        if tied:
            raise ValueError(
                f"layer {name!r} has a tied weight: {name}.weight is the same "
                f"Parameter as {', '.join(tied)}, and chtorch keeps one mask "
                "per Parameter (masking it for this layer would also zero the tied weights' entries). Exclude it "
                f"(exclude={name!r}; the paper keeps lm_head and embeddings "
                "dense) or untie the weights (e.g. tie_word_embeddings=False)"
            )
        if weight.is_meta:
            raise ValueError(
                f"layer {name!r}: its weight is on the meta device (no values yet), so no mask can be drawn from "
                "it; materialise the model first (model.to_empty(device=...) and initialise it, or load its weights)"
            )
        if not weight.requires_grad:
            raise ValueError(
                f"layer {name!r}: its weight does not require grad "
                "(frozen), so dynamic sparse training cannot update it; "
                f"exclude it (exclude={name!r}) or unfreeze it with weight.requires_grad_(True)"
            )


def check_budgets(
    names: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    groups: Mapping[str, int],
    given: Mapping[str, object],
    plan: Mapping[int, tuple[float, Sequence[int]]],
) -> None:
    """Refuse a sparsity that leaves a layer (or one of its head blocks) without a link at some step
    of the run. ``plan``: step -> (scheduled sparsity, each layer's link budget). A layer without
    links cuts the network in two and no update can regrow it, so this is an error, not a warning
    (docs/errors.md). Layers started from ``given`` masks keep their own link counts."""
    for step, (sparsity, targets) in plan.items():
        for name, (n_out, n_in), target in zip(names, shapes, targets):
            heads = groups[name]
            if name in given or target >= heads:
                continue
            blocks = f" ({heads} head blocks need a link each)" if heads > 1 else ""
            raise OptionError(
                f"sparsity {sparsity:g} leaves layer {name!r} ({n_out}x{n_in}, "
                f"{n_out * n_in} positions) with {target} link(s) "
                f"at step {step}{blocks}: a layer without links cuts the "
                "network; lower the sparsity (this layer keeps a link "
                f"up to about {1 - (heads + 0.5) / (n_out * n_in):.6g} with "
                f"a uniform distribution) or exclude it (exclude={name!r})"
            )


def head_groups(patterns: Mapping[str, int], names: Sequence[str], modules: Mapping[str, nn.Module]) -> dict[str, int]:
    """Layer name -> number of head blocks (1 unless a ``head_groups`` pattern matches it); every
    pattern must match a selected layer whose outputs split evenly into its heads."""
    groups = dict.fromkeys(names, 1)
    for pattern, heads in patterns.items():
        hits = [name for name in names if name == pattern or fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise OptionError(
                f"head_groups pattern {pattern!r} matches no sparsified layer; sparse layers: {list(names)}"
            )
        for name in hits:
            if layer_shape(modules[name])[0] % heads:
                raise OptionError(
                    f"layer {name!r} has {layer_shape(modules[name])[0]} outputs, not divisible into {heads} heads"
                )
            groups[name] = heads
    return groups
