"""Swap a model's ``nn.Linear`` layers for :class:`SparseLinear` and back, optimizer included.

``to_sparse`` replaces each named layer in its parent module and, when an optimizer is given,
replaces the dense ``weight`` Parameter by the new ``values`` Parameter *at the same position of the
same param group* (so learning rate, weight decay and any other group option apply unchanged) and
moves its state: every state tensor shaped like the weight is read at the links (``state[mask]``,
row-major order = the order of ``values``); other entries (Adam's ``step``) are copied as they are.
``to_dense`` is the exact inverse (state scattered back with zeros off the links).

Hooks registered on the replaced modules or on the old Parameter do not move with them; a caller
that keeps references to layers or Parameters (a sparsity engine) must refresh them from the
returned mapping. Masked-backend semantics and the zero-state rule for absent links follow
Zhang et al., NeurIPS 2025 (arXiv:2501.19107), docs/decisions.md ("regrown weights").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from chtorch.sparse.linear import SparseLinear

__all__ = ["to_sparse", "to_dense", "replace_parameter", "align_optimizer_state"]


def _split_name(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise ValueError("cannot replace the root module itself; pass the names of its Linear sub-modules")
    parent_name, child = _split_name(name)
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_parameter(
    optimizer: torch.optim.Optimizer,
    old: torch.Tensor,
    new: torch.Tensor,
    convert: Callable[[torch.Tensor], torch.Tensor],
) -> bool:
    """Put ``new`` where ``old`` stands in ``optimizer.param_groups`` and move ``old``'s state to
    ``new``, converting every state tensor shaped like ``old`` with ``convert`` (other entries are
    kept). Returns ``False`` (and changes nothing) when ``old`` is not in the optimizer."""
    found = False
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
                found = True
    if not found:
        return False
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {
            key: convert(value) if isinstance(value, torch.Tensor) and value.shape == old.shape else value
            for key, value in state.items()
        }
    return True


def to_sparse(
    model: nn.Module,
    names: Iterable[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    impl: str = "auto",
) -> dict[str, SparseLinear]:
    """Replace the ``nn.Linear`` layers ``names`` of ``model`` by :class:`SparseLinear`, in place.

    Args:
        names: qualified module names (``model.named_modules()``); default: every ``nn.Linear`` that
            carries a ``weight_mask`` buffer (the layers the masked backend selected).
        masks: ``{name: bool (out, in)}``; a layer without an entry uses its ``weight_mask`` buffer.
        optimizer: when given, its dense ``weight`` entries are replaced by the ``values`` Parameters
            and their state is read at the links (see the module docstring). The bias Parameter is
            shared, so it stays as it is.
        impl: kernel implementation for the new layers (``"auto"``, ``"native"``, ``"csr"``, ``"gather"``).

    Returns ``{name: new SparseLinear}``.
    """
    masks = dict(masks or {})
    if names is None:
        names = [n for n, m in model.named_modules() if type(m) is nn.Linear and hasattr(m, "weight_mask")]
        if not names:
            raise ValueError("no nn.Linear with a `weight_mask` buffer found; pass names=[...] and masks={...}")
    names = list(names)
    unknown = set(masks) - set(names)
    if unknown:
        raise ValueError(f"masks given for layers not in names: {sorted(unknown)}")
    replaced: dict[str, SparseLinear] = {}
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"layer {name!r} is a {type(linear).__name__}, not an nn.Linear")
        sparse = SparseLinear.from_linear(linear, masks.get(name), impl=impl)
        sparse.train(linear.training)
        if optimizer is not None:
            mask = sparse.weight_mask

            def gather(t: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                return t[mask].clone()

            replace_parameter(optimizer, linear.weight, sparse.values, gather)
        _set_submodule(model, name, sparse)
        replaced[name] = sparse
    return replaced


def to_dense(
    model: nn.Module,
    names: Iterable[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    keep_mask: bool = True,
) -> dict[str, nn.Linear]:
    """Replace :class:`SparseLinear` layers by plain ``nn.Linear`` (weight zero off the links), in
    place: the inverse of :func:`to_sparse`.

    Args:
        names: qualified names; default: every ``SparseLinear`` in ``model``.
        optimizer: when given, each ``values`` Parameter is replaced by the dense ``weight`` and its
            state tensors are scattered to ``(out, in)`` with zeros off the links.
        keep_mask: register the mask as a persistent ``weight_mask`` buffer on the new layer (what the
            masked backend expects); with ``False`` the layer is a plain dense ``nn.Linear``.

    Returns ``{name: new nn.Linear}``.
    """
    if names is None:
        names = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    replaced: dict[str, nn.Linear] = {}
    for name in list(names):
        sparse = model.get_submodule(name)
        if not isinstance(sparse, SparseLinear):
            raise TypeError(f"layer {name!r} is a {type(sparse).__name__}, not a SparseLinear")
        values = sparse.values
        linear = nn.Linear(sparse.in_features, sparse.out_features, bias=False, device="meta", dtype=values.dtype)
        linear.weight = nn.Parameter(sparse.dense_weight().detach(), requires_grad=values.requires_grad)
        linear.bias = sparse.bias  # the same Parameter: it stays in the optimizer
        if keep_mask:
            linear.register_buffer("weight_mask", sparse.weight_mask.clone(), persistent=True)
        linear.train(sparse.training)
        if optimizer is not None:
            rows, cols = sparse.indices()
            shape = (sparse.out_features, sparse.in_features)

            def scatter(t: torch.Tensor, rows=rows, cols=cols, shape=shape) -> torch.Tensor:
                return t.new_zeros(shape).index_put_((rows, cols), t[: rows.numel()])

            replace_parameter(optimizer, values, linear.weight, scatter)
        _set_submodule(model, name, linear)
        replaced[name] = linear
    return replaced


def align_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Make optimizer state written by the *other* backend fit this model's layers, in place.

    ``optimizer.load_state_dict`` matches parameters by position and never checks shapes, so a
    checkpoint of the masked backend leaves ``(out, in)`` moments on a ``SparseLinear``'s ``values``
    (and a sparse checkpoint leaves ``(nnz,)`` moments on a masked ``weight``). Call this right after
    ``optimizer.load_state_dict``: dense state tensors of a ``SparseLinear`` are read at its links, and
    ``(nnz,)`` state tensors of an ``nn.Linear`` with a ``weight_mask`` are scattered to the dense
    shape. The model must already hold the checkpoint's masks (load the model state first).
    Returns the number of state tensors converted.
    """
    converted = 0
    param: torch.Tensor
    for module in model.modules():
        if isinstance(module, SparseLinear):
            param, mask = module.values, module.weight_mask
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    state[key] = value.to(param.device)[mask].clone()
                    converted += 1
        elif isinstance(module, nn.Linear) and hasattr(module, "weight_mask"):
            weight_mask = module.weight_mask
            assert isinstance(weight_mask, torch.Tensor), "weight_mask is the masked backend's bool buffer"
            param, mask = module.weight, weight_mask.bool()
            nnz = int(mask.sum())
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == nnz and param.dim() == 2:
                    state[key] = value.new_zeros(param.shape).index_put_(
                        mask.nonzero(as_tuple=True), value.to(param.device)
                    )
                    converted += 1
    return converted
