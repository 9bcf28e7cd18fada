"""One sparsified layer, behind one interface whatever runs it.

A :class:`MaskedLayer` keeps the ``nn.Linear`` and multiplies its dense weight, gradient and optimizer
state by the ``weight_mask`` buffer; a :class:`TrulySparseLayer` holds a
:class:`chtorch.sparse.SparseLinear` whose weights exist only at the links. The engine picks the
backend once per layer (:func:`make_layer`) and then talks to both through the same methods:
``mask``, ``parameter``, ``dense_weight()``, ``install(...)`` (a topology change),
``after_optimizer_step(...)`` and ``watch_gradients(...)`` (dense gradients recorded before an
update), so no other code asks which backend a layer has. With ``backend="auto"`` the engine may move
a layer between backends at an update (:func:`switch_backend`), weights and optimizer state exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from chtorch.dst.scope import is_transposed, layer_shape, layer_weight, logical_weight
from chtorch.masks import keep_bits, zero_off_mask, zero_off_mask_

if TYPE_CHECKING:
    from chtorch.sparse.linear import SparseLinear

__all__ = [
    "Layer",
    "MaskedLayer",
    "TrulySparseLayer",
    "make_layer",
    "choose_backends",
    "auto_backend",
    "switch_backend",
    "refuse_sharded",
    "split",
    "BACKENDS",
]

BACKENDS = ("auto", "masked", "sparse")
# "auto" runs a layer sparse at or below this density. What it chooses between is the masked layer
# (dense GEMMs plus re-masking), not a plain dense one. On CPU (MLP 784-1568³-10, native kernels) the
# sparse step is about 4× faster than the masked step at 10% density, 2-2.5× at 20% and still 1.2-1.5×
# at 35% (benchmarks/sparse_training.py; figures in benchmarks/results/). 20% leaves margin for machines
# whose dense GEMMs scale better with cores. GPUs (torch.sparse CSR / cuSPARSE) are not measured: set
# backend="masked" there if in doubt.
AUTO_SPARSE_MAX_DENSITY = 0.2
# Below this many positions a layer is too small for sparse kernels to pay off (launch overhead).
AUTO_SPARSE_MIN_POSITIONS = 128 * 128

logger = logging.getLogger("chtorch")

_DTensor: type | None
try:
    from torch.distributed.tensor import DTensor

    _DTensor = DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    _DTensor = None

_FSDP_MESSAGE = (
    "layer {name!r} has a sharded (DTensor) weight, as FSDP2's fully_shard makes: chtorch's masks, hooks and "
    "topology updates work on whole weights and do not support FSDP yet. Use DistributedDataParallel "
    "(every rank holds the whole model; chtorch keeps the masks identical across ranks), or sparsify a model "
    "that is not sharded."
)


def refuse_sharded(name: str, weight: torch.Tensor) -> None:
    """FSDP2 turns parameters into DTensors; refuse them with a clear error rather than failing
    deep inside an optimizer hook (decided by trying: masking a DTensor weight with a plain mask
    raises 'got mixed torch.Tensor and DTensor')."""
    if _DTensor is not None and isinstance(weight, _DTensor):
        raise NotImplementedError(_FSDP_MESSAGE.format(name=name))


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers as even as possible (the first ones get the remainder)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Layer:
    """Book-keeping shared by both backends: the target link count, the early-stop flag, the ITOP
    record (``ever_active``), removed weights (``history``), the dense-gradient sums recorded before
    an update, the head blocks (``groups``) and the last overlap rate."""

    backend = "?"
    _watch: _Handle | None  # the gradient hooks started by watch_gradients

    def __init__(self, name: str, index: int, module: nn.Module, target: int, groups: int = 1) -> None:
        self.name = name
        self.index = index
        self.module = module
        self.target = int(target)
        self.groups = int(groups)
        self.frozen = False
        # GPT-2's Conv1D stores its weight (in, out); its mask stays (out, in) like every engine
        # tensor, and only what touches the weight, its gradient and its optimizer state uses ``.T``.
        self.transposed = is_transposed(module)
        self.ever_active: torch.Tensor = self.mask.clone()
        self.history: torch.Tensor | None = None
        self.grad_sum: torch.Tensor | None = None
        self.grad_count = 0
        self.last_overlap: float | None = None  # |removed ∩ regrown| / |regrown| at the last update
        # overlap > early_stop seen at least once (the official network-wide early stop, docs/decisions.md)
        self.early_stop_flag = False

    @property
    def mask(self) -> torch.Tensor:
        """The live bool buffer ``weight_mask`` ``(out_features, in_features)`` (also for ``Conv1D``,
        whose ``(in, out)`` weight it masks as ``weight_mask.T``)."""
        mask = self.module.weight_mask
        assert isinstance(mask, torch.Tensor), "the engine registers weight_mask as a bool buffer"
        return mask

    @property
    def shape(self) -> tuple[int, int]:
        return layer_shape(self.module)

    def blocks(self) -> list[slice]:
        """Row blocks that are budgeted and updated separately (one per attention head, or the
        whole layer)."""
        size = self.shape[0] // self.groups
        return [slice(g * size, (g + 1) * size) for g in range(self.groups)]

    @property
    def parameter(self) -> torch.Tensor:
        """The Parameter that holds the layer's weights."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """Detached dense weight ``(out_features, in_features)``, zero off the links."""
        raise NotImplementedError

    def install(
        self, final: torch.Tensor, fresh: torch.Tensor, init: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """Make ``final`` the topology: links in ``fresh`` start at ``init`` with zero optimizer
        state, the others keep their weight and state; weights off ``final`` are zero."""
        raise NotImplementedError

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore "off-mask entries are exactly zero" after an optimizer step."""

    def watch_gradients(self, record: Callable[[], bool], dense_gradient: bool) -> Any:
        """Start the layer's gradient hooks; returns a handle with ``remove()`` (also kept on the layer
        and removed by :meth:`unwatch`). ``dense_gradient``: the method reads dense gradients, and
        ``record()`` says whether this backward pass must keep them (:meth:`record_grad`)."""
        self._watch = _NoWatch()
        return self._watch

    def unwatch(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.remove()
        self._watch = None

    def record_grad(self, dense: torch.Tensor) -> None:
        """Add a dense gradient in the weight's own layout to the running sum (kept ``(out, in)``)."""
        dense = (dense.T.contiguous() if self.transposed else dense).detach().float()
        self.grad_sum = dense.clone() if self.grad_sum is None else self.grad_sum + dense
        self.grad_count += 1


class MaskedLayer(Layer):
    """An ``nn.Linear`` times its mask (dense kernels; serves every method)."""

    backend = "masked"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._multiplier: torch.Tensor | None = None
        self._multiplier_key: tuple | None = None

    def multiplier(self, like: torch.Tensor) -> torch.Tensor:
        """The mask as :func:`chtorch.masks.keep_bits` for ``like``'s dtype and device (all bits set at
        the links), cached until the mask changes.

        :func:`chtorch.masks.zero_off_mask_` with it zeroes off-mask entries exactly even when they
        are NaN/Inf (a 0/1 float multiplier leaves ``NaN × 0 = NaN``) at the cost of a multiplication,
        and it runs on every backward and optimizer step. The cache is keyed on the mask's version
        counter, which every in-place write bumps (a topology update, ``model.load_state_dict``)."""
        mask = self.mask
        key = (mask._version, id(mask), like.dtype, like.device)
        if self._multiplier is None or self._multiplier_key != key:
            # in the weight's own layout: it masks the weight, its gradient and optimizer moments
            self._multiplier = keep_bits(mask.T if self.transposed else mask, like)
            self._multiplier_key = key
        return self._multiplier

    @property
    def parameter(self) -> torch.Tensor:
        return layer_weight(self.module)

    def dense_weight(self) -> torch.Tensor:
        weight = logical_weight(self.module).detach()
        return weight.contiguous() if self.transposed else weight

    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer, reset: torch.Tensor | None = None) -> None:
        """Zero every optimizer state tensor shaped like the weight off the mask, and at ``reset``
        (``(out, in)``)."""
        weight = layer_weight(self.module)
        state = optimizer.state.get(weight)
        if not state:
            return
        if reset is not None and self.transposed:
            reset = reset.T
        with torch.no_grad():
            for value in state.values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    zero_off_mask_(value, self.multiplier(value))
                    if reset is not None:
                        value.masked_fill_(reset, 0)

    @torch.no_grad()
    def install(
        self, final: torch.Tensor, fresh: torch.Tensor, init: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        weight = logical_weight(self.module)  # (out, in), a view of a Conv1D's (in, out) weight
        weight.copy_(torch.where(final, torch.where(fresh, init, weight), 0))
        self.mask.copy_(final)
        grad = layer_weight(self.module).grad
        if grad is not None:
            (grad.T if self.transposed else grad).masked_fill_(~final, 0)
        self.mask_optimizer_state(optimizer, fresh)

    @torch.no_grad()
    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        weight = layer_weight(self.module)
        refuse_sharded(self.name, weight)  # fully_shard applied after sparsify
        zero_off_mask_(weight, self.multiplier(weight))
        self.mask_optimizer_state(optimizer)

    def watch_gradients(self, record: Callable[[], bool], dense_gradient: bool) -> Any:
        """A tensor hook on the weight: masks its gradient, and records it (unmasked) when asked."""

        def hook(grad: torch.Tensor) -> torch.Tensor:
            refuse_sharded(self.name, grad)
            if dense_gradient and record():
                self.record_grad(grad)
            return zero_off_mask(grad, self.multiplier(grad))

        self._watch = layer_weight(self.module).register_hook(hook)
        return self._watch


class TrulySparseLayer(Layer):
    """A :class:`chtorch.sparse.SparseLinear`: values at the links only, sparse kernels, optimizer
    state only for existing links. A method that reads dense gradients (RigL, GraNet, MEST with
    λ > 0) gets ``dy^T x`` from the layer's backward pass only in the ``grad_accumulation`` steps
    before an update; every other step stays truly sparse."""

    backend = "sparse"
    module: SparseLinear

    def watch_gradients(self, record: Callable[[], bool], dense_gradient: bool) -> Any:
        if not dense_gradient:
            return super().watch_gradients(record, dense_gradient)
        module = self.module
        module.watch_dense_grad(record, self.record_grad)
        self._watch = _SparseWatch(module)
        return self._watch

    @property
    def parameter(self) -> torch.Tensor:
        return self.module.values

    def dense_weight(self) -> torch.Tensor:
        return self.module.dense_weight().detach()

    @torch.no_grad()
    def install(
        self, final: torch.Tensor, fresh: torch.Tensor, init: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        # SparseLinear.set_mask carries kept values and their optimizer state, and starts new links
        # (and reset ones) at ``init`` with zero state.
        self.module.set_mask(final, optimizer, new_values=init, reset=fresh)


class _Handle(Protocol):
    def remove(self) -> None: ...


class _NoWatch:
    def remove(self) -> None:
        pass


class _SparseWatch:
    """Handle of a :meth:`SparseLinear.watch_dense_grad` (``remove()`` is idempotent, as torch's hook handles)."""

    def __init__(self, module: SparseLinear) -> None:
        self.module: SparseLinear | None = module

    def remove(self) -> None:
        if self.module is not None:
            self.module.unwatch_dense_grad()
            self.module = None


def make_layer(backend: str, name: str, index: int, module: nn.Module, target: int, groups: int = 1) -> Layer:
    """The layer object for ``backend`` ("masked" or "sparse")."""
    cls = {"masked": MaskedLayer, "sparse": TrulySparseLayer}[backend]
    return cls(name, index, module, target, groups)


def auto_backend(density: float, positions: int) -> str:
    """The backend ``auto`` gives a layer of ``positions`` weights at ``density``: "sparse" at or
    below :data:`AUTO_SPARSE_MAX_DENSITY` when the layer has at least
    :data:`AUTO_SPARSE_MIN_POSITIONS` positions, else "masked". (The kernels are device-agnostic, so
    the device does not change the rule; it was measured on CPU.)"""
    return "sparse" if density <= AUTO_SPARSE_MAX_DENSITY and positions >= AUTO_SPARSE_MIN_POSITIONS else "masked"


def choose_backends(
    request: str,
    names: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    densities: Sequence[float],
) -> tuple[dict[str, str], str]:
    """(layer name → "masked" or "sparse", the reason) at the start of a run. ``auto`` applies
    :func:`auto_backend` to each layer's starting density (``densities``) and logs what it chose; the
    engine applies the same rule again after every topology update, so a density decay (CHTss, GMP,
    GraNet, MEST EM&S) moves a layer to the sparse backend at the update where it crosses the
    threshold. Every method runs on either backend: a sparse layer computes the dense gradient only
    before an update of a method that reads it."""
    if request != "auto":
        return dict.fromkeys(names, request), "requested"
    choice = {name: auto_backend(d, a * b) for name, (a, b), d in zip(names, shapes, densities)}
    reason = (
        f"layers at density <= {AUTO_SPARSE_MAX_DENSITY} with at "
        f"least {AUTO_SPARSE_MIN_POSITIONS} positions run sparse, "
        "re-decided at every update"
    )
    n_sparse = sum(v == "sparse" for v in choice.values())
    logger.info(
        "chtorch backend auto: %d of %d layers sparse, %d masked (%s)",
        n_sparse,
        len(choice),
        len(choice) - n_sparse,
        reason,
    )
    return choice, reason


_CARRIED = ("frozen", "ever_active", "history", "grad_sum", "grad_count", "last_overlap", "early_stop_flag")


def switch_backend(layer: Layer, backend: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> Layer:
    """Move ``layer`` to ``backend`` ("masked" or "sparse") in ``model`` and ``optimizer``: the module
    is swapped (:func:`chtorch.sparse.to_sparse` / :func:`~chtorch.sparse.to_dense`), its weights and
    every optimizer state tensor are carried exactly (read at the links / scattered with zeros off
    them; the Parameter keeps its place in its param group), and so is the engine's book-keeping
    (ITOP record, history, recorded gradients, early-stop flag). The old layer's gradient hooks are
    removed; the caller hooks the new one (the engine's ``_watch_layer``). Call it
    between steps (after ``optimizer.step()``), as the engine does at an update. Returns the new layer."""
    if backend == layer.backend:
        return layer
    from chtorch.sparse import to_dense, to_sparse

    layer.unwatch()
    module: nn.Module
    if backend == "sparse":
        module = to_sparse(model, [layer.name], optimizer=optimizer)[layer.name]
    elif backend == "masked":
        module = to_dense(model, [layer.name], optimizer=optimizer)[layer.name]
    else:
        raise ValueError(f"backend must be 'masked' or 'sparse', got {backend!r}")
    new = make_layer(backend, layer.name, layer.index, module, layer.target, layer.groups)
    for name in _CARRIED:
        setattr(new, name, getattr(layer, name))
    logger.info(
        "chtorch backend: layer %r moved to %s at density %.4g",
        layer.name,
        backend,
        layer.target / max(1, layer.mask.numel()),
    )
    return new
