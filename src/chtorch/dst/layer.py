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

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from chtorch import sparse
from chtorch.dst.book import LayerBook
from chtorch.dst.scope import is_transposed, layer_shape, layer_weight, logical_weight
from chtorch.masks import keep_bits, zero_off_mask, zero_off_mask_

if TYPE_CHECKING:
    from chtorch.sparse.linear import SparseLinear

__all__ = [
    "Layer",
    "MaskedLayer",
    "TrulySparseLayer",
    "Backend",
    "register_backend",
    "backend_names",
    "get_backend",
    "make_layer",
    "choose_backends",
    "auto_backend",
    "switch_backend",
    "refuse_sharded",
    "split",
    "BACKENDS",
]

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
    """One sparsified layer as the engine sees it: its module, its place (``name``, ``index``, head
    blocks ``groups``) and its book-keeping :class:`~chtorch.dst.book.LayerBook` (``book``; its fields
    read as attributes of the layer: ``layer.target``, ``layer.frozen``, ...). A backend subclasses
    it for how the weights are stored and updated."""

    backend = "?"
    _watch: _Handle | None  # the gradient hooks started by watch_gradients
    # The book's fields, read and written through the layer (properties set below the class).
    target: int
    frozen: bool
    ever_active: torch.Tensor
    history: torch.Tensor | None
    grad_sum: torch.Tensor | None
    grad_count: int
    last_overlap: float | None
    early_stop_flag: bool

    def __init__(
        self, name: str, index: int, module: nn.Module, target: int, groups: int = 1, book: LayerBook | None = None
    ) -> None:
        self.name = name
        self.index = index
        self.module = module
        self.groups = int(groups)
        # GPT-2's Conv1D stores its weight (in, out); its mask stays (out, in) like every engine
        # tensor, and only what touches the weight, its gradient and its optimizer state uses ``.T``.
        self.transposed = is_transposed(module)
        self.book = book if book is not None else LayerBook(target=int(target), ever_active=self.mask.clone())

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

    def capacity(self) -> int | None:
        """The size of the storage of a backend whose storage has one (saved beside the optimizer
        state that matches it), else None."""
        return None

    def set_capacity(self, capacity: int) -> None:
        """Restore a saved :meth:`capacity` (before the optimizer state saved with it is loaded)."""

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

    #: dtype of the recorded dense gradients (None: the weights'): option ``grad_accumulation_dtype``
    grad_dtype: torch.dtype | None = torch.float32
    _step_grad: torch.Tensor | None = None  # this optimizer step's dense gradient, summed over its backward passes

    def record_grad(self, dense: torch.Tensor) -> None:
        """Add the dense gradient of one backward pass, in the weight's own layout, to this optimizer
        step's gradient (kept ``(out, in)``). A backward pass that finds the weight's ``.grad`` unset
        starts a new optimizer step (``zero_grad`` ran): what an optimizer step that never ran (a
        ``GradScaler`` skip) recorded is dropped. :meth:`fold_grad` adds the step to the running sum."""
        dense = (dense.T if self.transposed else dense).detach()
        dense = dense.to(self.grad_dtype or dense.dtype, copy=True).contiguous()
        grad = self.parameter.grad
        if self._step_grad is None or grad is None or not bool(grad.any()):
            self._step_grad = dense
        else:
            self._step_grad += dense

    def has_step_grad(self) -> bool:
        return self._step_grad is not None

    def fold_grad(self, scale: float = 1.0) -> None:
        """Count the optimizer step that just ran: its dense gradient (divided by a ``GradScaler``'s
        ``scale``, by which the backward pass saw it multiplied) joins the running sum."""
        step, self._step_grad = self._step_grad, None
        if step is None:
            return
        if scale != 1.0:
            step = step / scale
        self.grad_sum = step if self.grad_sum is None else self.grad_sum + step
        self.grad_count += 1


def _book_field(name: str) -> property:
    return property(lambda self: getattr(self.book, name), lambda self, value: setattr(self.book, name, value))


for _field in dataclasses.fields(LayerBook):
    setattr(Layer, _field.name, _book_field(_field.name))


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

    def capacity(self) -> int | None:
        return int(self.module.values.numel())

    def set_capacity(self, capacity: int) -> None:
        self.module.set_capacity(int(capacity))

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


@dataclass(frozen=True)
class Backend:
    """How a backend holds a layer. ``layer``: the :class:`Layer` subclass the engine talks to.
    ``adopt(model, names, optimizer, kernel)``: replace the masked ``nn.Linear`` layers ``names`` (each
    with its ``weight_mask``) by this backend's modules, carrying weights and optimizer state, and
    return name → new module; ``None`` keeps the masked module. ``release(model, names, optimizer)``:
    the inverse (back to masked ``nn.Linear``); ``None`` when ``adopt`` is."""

    name: str
    layer: type[Layer]
    adopt: Callable[..., dict[str, nn.Module]] | None = None
    release: Callable[..., dict[str, nn.Module]] | None = None
    summary: str = ""


#: Registered backends by name (``"auto"`` is a policy over them, not a backend).
BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    layer: type[Layer],
    adopt: Callable[..., dict[str, nn.Module]] | None = None,
    release: Callable[..., dict[str, nn.Module]] | None = None,
    summary: str = "",
) -> Backend:
    """Register a backend (see :class:`Backend`); ``sparsify(..., backend=name)`` and the config's
    ``sparsity.backend`` then accept it. Registering a name again replaces it."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name must be a non-empty string other than 'auto', got {name!r}")
    if not (isinstance(layer, type) and issubclass(layer, Layer)):
        raise TypeError(f"backend {name!r}: layer must be a subclass of chtorch.dst.layer.Layer, got {layer!r}")
    if (adopt is None) != (release is None):
        raise ValueError(f"backend {name!r}: give both adopt and release, or neither (the module stays masked)")
    BACKENDS[name] = Backend(name, layer, adopt, release, summary)
    return BACKENDS[name]


def backend_names() -> tuple[str, ...]:
    """Every name ``backend=`` accepts: ``"auto"`` and the registered backends."""
    return ("auto", *BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")
    return BACKENDS[name]


def make_layer(
    backend: str, name: str, index: int, module: nn.Module, target: int, groups: int = 1, book: LayerBook | None = None
) -> Layer:
    """The layer object for a registered ``backend``."""
    return get_backend(backend).layer(name, index, module, target, groups, book)


def _to_sparse(model: nn.Module, names: list[str], optimizer: torch.optim.Optimizer, kernel: str = "auto") -> dict:
    return dict(sparse.to_sparse(model, names, optimizer=optimizer, impl=kernel))


def _to_dense(model: nn.Module, names: list[str], optimizer: torch.optim.Optimizer) -> dict:
    return dict(sparse.to_dense(model, names, optimizer=optimizer))


register_backend("masked", MaskedLayer, summary="dense weight times a bool mask (dense kernels; every method)")
register_backend(
    "sparse", TrulySparseLayer, _to_sparse, _to_dense, summary="chtorch.sparse.SparseLinear: values at the links only"
)


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


def switch_backend(
    layer: Layer, backend: str, model: nn.Module, optimizer: torch.optim.Optimizer, kernel: str = "auto"
) -> Layer:
    """Move ``layer`` to a registered ``backend`` in ``model`` and ``optimizer``: the module is swapped
    (the old backend's ``release`` back to a masked ``nn.Linear``, then the new one's ``adopt``), its
    weights and every optimizer state tensor are carried exactly (the Parameter keeps its place in its
    param group), and the engine's book-keeping (:class:`~chtorch.dst.book.LayerBook`) moves whole.
    The old layer's gradient hooks are removed; the caller hooks the new one (the engine's
    ``_watch_layer``). Call it between steps (after ``optimizer.step()``), as the engine does at an
    update. ``kernel``: the sparse kernel of a backend that computes with one. Returns the new layer."""
    if backend == layer.backend:
        return layer
    new_backend, old_backend = get_backend(backend), get_backend(layer.backend)
    layer.unwatch()
    module = layer.module
    if old_backend.release is not None:
        module = old_backend.release(model, [layer.name], optimizer)[layer.name]
    if new_backend.adopt is not None:
        module = new_backend.adopt(model, [layer.name], optimizer, kernel)[layer.name]
    new = make_layer(backend, layer.name, layer.index, module, layer.target, layer.groups, layer.book)
    logger.info(
        "chtorch backend: layer %r moved to %s at density %.4g",
        layer.name,
        backend,
        layer.target / max(1, layer.mask.numel()),
    )
    return new
