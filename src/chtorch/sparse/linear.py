"""``SparseLinear``: a linear layer that stores and trains only its links.

The weight is a values Parameter ``(nnz,)`` in row-major (CSR) order plus index buffers; the bias
stays dense. Forward, input gradient and weight gradient are sparse products
(:mod:`chtorch.sparse.functional`), and an optimizer holds state only for the ``nnz`` values.

Compatibility with the masked backend of :func:`chtorch.sparsify` (dense ``weight`` plus a bool
``weight_mask`` buffer): the module's ``state_dict`` holds exactly the keys ``weight`` (dense, zeros
off the links), ``bias`` and ``weight_mask``, so a checkpoint written by either backend loads into
the other.

Topology updates go through :meth:`SparseLinear.set_mask`, which keeps the weights and every
optimizer state tensor of the kept links, starts new links at 0 with zero state (docs/decisions.md, "regrown weights":
"regrown links start at 0 with zero optimizer moments"; Zhang et al., NeurIPS 2025,
arXiv:2501.19107) and resizes the values Parameter in place so that the optimizer keeps referring
to the same object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from chtorch.sparse.functional import DenseGradWatch, resolve_impl, sparse_linear
from chtorch.sparse.kernels import kernel_names
from chtorch.sparse.layout import SparseLayout, build_layout, link_keys

__all__ = ["SparseLinear", "TopologyChange"]

_INDEX_BUFFERS = ("rows", "cols", "crow", "crow_t", "col_t", "perm")


class TopologyChange(NamedTuple):
    """Links kept, added and removed by one :meth:`SparseLinear.set_mask` call."""

    kept: int
    added: int
    removed: int


def _check_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(shape)} (out_features, in_features)")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}; pass e.g. `mask != 0`")
    return mask


class SparseLinear(nn.Module):
    """Linear layer ``y = x W^T + b`` whose weight ``W`` ``(out_features, in_features)`` exists only at
    the links of ``weight_mask``.

    Attributes:
        values: Parameter ``(nnz,)``, the weights of the links in row-major order of the mask.
        bias: Parameter ``(out_features,)`` or ``None`` (dense).
        weight_mask: bool buffer ``(out_features, in_features)`` (persistent, in the state_dict).
        rows, cols, crow, crow_t, col_t, perm: int64 index buffers (not persistent; rebuilt from
            the mask), see :class:`chtorch.sparse.layout.SparseLayout`.
        impl: ``"auto"``, ``"native"``, ``"csr"``, ``"gather"`` or a kernel you registered
            (:mod:`chtorch.sparse.kernels`).

    Build one from an existing layer with :meth:`from_linear`; the constructor makes a fresh layer
    with ``nn.Linear``'s default initialisation at the links (all links when ``mask`` is ``None``).
    There is no ``weight`` attribute: read the dense weight with :meth:`dense_weight`.
    """

    values: nn.Parameter
    weight_mask: torch.Tensor
    # Index buffers (_INDEX_BUFFERS), registered by _set_layout.
    rows: torch.Tensor
    cols: torch.Tensor
    crow: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm: torch.Tensor
    # Set by watch_dense_grad (a DST engine whose method reads dense gradients before an update).
    _dense_grad_watch: DenseGradWatch | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: torch.Tensor | None = None,
        bias: bool = True,
        *,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if impl not in kernel_names():
            raise ValueError(f"impl must be one of {kernel_names()}, got {impl!r}")
        self.in_features, self.out_features, self.impl = int(in_features), int(out_features), impl
        shape = (self.out_features, self.in_features)
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=device)
        mask = _check_mask(mask, shape).to(device=device)
        self.register_buffer("weight_mask", mask.clone(), persistent=True)
        self._set_layout(build_layout(self.weight_mask))
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        values = torch.empty(self.rows.numel(), device=mask.device, dtype=dtype)
        self.values = nn.Parameter(values.uniform_(-bound, bound, generator=generator))
        if bias:
            b = torch.empty(self.out_features, device=mask.device, dtype=dtype)
            self.bias = nn.Parameter(b.uniform_(-bound, bound, generator=generator))
        else:
            self.register_parameter("bias", None)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, *, impl: str = "auto") -> SparseLinear:
        """A ``SparseLinear`` holding ``linear.weight`` at the links of ``mask`` (default: the layer's
        ``weight_mask`` buffer, as the masked backend registers it).

        The bias is the *same* Parameter object as ``linear.bias`` (it stays in the optimizer); the
        values are a new Parameter (swap it into an optimizer with :func:`chtorch.sparse.to_sparse`).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        if impl not in kernel_names():
            raise ValueError(f"impl must be one of {kernel_names()}, got {impl!r}")
        if mask is None:
            mask = getattr(linear, "weight_mask", None)
            if mask is None:
                raise ValueError(
                    "no mask given and the layer has no `weight_mask` buffer; "
                    "pass mask=... (bool, shape (out_features, in_features))"
                )
        weight = linear.weight
        mask = _check_mask(mask, tuple(weight.shape)).to(weight.device)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features, module.impl = linear.in_features, linear.out_features, impl
        module.register_buffer("weight_mask", mask.clone(), persistent=True)
        module._set_layout(build_layout(module.weight_mask))
        values = weight.detach()[module.rows, module.cols].clone()
        module.values = nn.Parameter(values, requires_grad=weight.requires_grad)
        if linear.bias is not None:
            module.bias = linear.bias
        else:
            module.register_parameter("bias", None)
        return module

    def _set_layout(self, layout: SparseLayout) -> None:
        for name in _INDEX_BUFFERS:
            self.register_buffer(name, getattr(layout, name), persistent=False)
        self._refresh_layout()

    def _refresh_layout(self) -> None:
        # One tuple built per topology change (and device move), not per forward: reading six
        # buffers through nn.Module.__getattr__ on every call is measurable at batch 32.
        self._layout = SparseLayout(self.out_features, self.in_features, *(getattr(self, n) for n in _INDEX_BUFFERS))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        module = super()._apply(fn, recurse)
        self._refresh_layout()  # .to(device), .double(), ... replace the index buffers
        return module

    # --- views --------------------------------------------------------------------------------

    @property
    def layout(self) -> SparseLayout:
        """Current index layout (a view of the index buffers, rebuilt when they change)."""
        layout = self._layout
        if layout.rows is not self.rows:  # a buffer replaced behind our back (e.g. assigned directly)
            self._refresh_layout()
            layout = self._layout
        return layout

    @property
    def nnz(self) -> int:
        """Number of links."""
        return int(self.rows.numel())

    def active_values(self) -> torch.Tensor:
        """The ``(nnz,)`` link weights. ``values`` may be longer than ``nnz`` after a topology update
        that removed links (a density decay): the Parameter keeps its length (its *capacity*) so that
        autograd graphs still alive from the previous step, DDP buckets and optimizer state keep
        matching its shape; the tail beyond ``nnz`` is zero and receives zero gradient."""
        return self.values if self.values.numel() == self.nnz else self.values[: self.nnz]

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.out_features * self.in_features)

    def indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)`` of the links, each ``(nnz,)``, in the order of ``values``."""
        return self.rows, self.cols

    def dense_weight(self) -> torch.Tensor:
        """Dense weight ``(out_features, in_features)``, zeros off the links; differentiable with
        respect to ``values`` (a new tensor: writing to it does not change the layer)."""
        dense = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put((self.rows, self.cols), self.active_values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.active_values(), self.bias, self.layout, self.impl, self._dense_grad_watch)

    def watch_dense_grad(self, wanted: Callable[[], bool], receive: Callable[[torch.Tensor], None]) -> DenseGradWatch:
        """Let each backward pass hand the dense weight gradient ``dy^T x`` ``(out_features,
        in_features)`` to ``receive`` when ``wanted()`` says so (checked once per backward pass; the
        dense product is formed only then). What RigL/GraNet regrowth and MEST's λ|∇W| removal read
        in the ``grad_accumulation`` steps before an update (Evci et al. 2020; Zhang et al., NeurIPS
        2025, arXiv:2501.19107, App. baselines). Replaces any earlier watch; ``unwatch_dense_grad``
        (or the returned object's ``active = False``) stops it."""
        self._dense_grad_watch = DenseGradWatch(wanted, receive)
        return self._dense_grad_watch

    def unwatch_dense_grad(self) -> None:
        if self._dense_grad_watch is not None:
            self._dense_grad_watch.active = False
        self._dense_grad_watch = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"density={self.density:.4g}, bias={self.bias is not None}, "
            f"impl={self.impl!r}->{resolve_impl(self.impl, self.values.dtype, self.values.device)!r}"
        )

    # --- topology updates ---------------------------------------------------------------------

    @torch.no_grad()
    def set_mask(
        self,
        new_mask: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        new_values: float | torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> TopologyChange:
        """Move to the topology ``new_mask`` (bool ``(out_features, in_features)``; any number of links).

        * Kept links keep their value, gradient and every optimizer state tensor shaped like
          ``values`` (Adam ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, SGD ``momentum_buffer``,
          Adagrad ``sum``, ...). Scalar state (Adam's ``step``) is left alone.
        * New links start at ``new_values`` (default 0) with zero gradient and zero optimizer state.
          ``new_values`` may be a number, a dense ``(out_features, in_features)`` tensor (read at the
          new links) or a ``(n_added,)`` tensor in row-major order of the new links.
        * ``reset`` (bool ``(out_features, in_features)``, optional): links of ``new_mask`` to treat as
          new even if they existed before (a link removed and regrown in the same update), as the
          masked backend does for its ``fresh`` positions. A reset link counts as removed and added.
        * ``values`` keeps its length while the new topology fits in it (links removed: the tail is
          zero, see :meth:`active_values`); it grows in place (``param.data = ...``) only when the
          new topology has more links than it can hold, and the optimizer keeps the same object.
          Growing is safe between steps, not while an autograd graph of the old size is alive.

        The old topology is read from the index buffers, not from ``weight_mask``, so ``new_mask``
        may be ``self.weight_mask`` after an in-place edit. Returns the link counts.
        """
        new_mask = _check_mask(new_mask, (self.out_features, self.in_features)).to(self.weight_mask.device)
        old_nnz = self.nnz
        old_keys = link_keys(self.rows, self.cols, self.in_features)
        layout = build_layout(new_mask)
        new_keys = link_keys(layout.rows, layout.cols, self.in_features)
        # Both key vectors are sorted (row-major order), so one searchsorted matches them.
        pos = torch.searchsorted(old_keys, new_keys)
        if old_nnz > 0:
            kept = (pos < old_nnz) & (old_keys[pos.clamp(max=old_nnz - 1)] == new_keys)
        else:
            kept = torch.zeros_like(new_keys, dtype=torch.bool)
        if reset is not None:
            reset = _check_mask(reset, (self.out_features, self.in_features)).to(self.weight_mask.device)
            kept &= ~reset[layout.rows, layout.cols]
        source = pos[kept]
        n_kept = int(kept.sum())
        change = TopologyChange(kept=n_kept, added=layout.nnz - n_kept, removed=old_nnz - n_kept)

        size = max(int(self.values.numel()), layout.nnz)

        def remap(tensor: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((size,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
            out[: layout.nnz][kept] = tensor[source]
            return out

        param = self.values
        if optimizer is not None:
            state = optimizer.state.get(param)
            if state:
                for key, value in list(state.items()):
                    if isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() == 1:
                        state[key] = remap(value)
        new_data = remap(param.data)
        if new_values is not None and change.added > 0:
            new_data[: layout.nnz][~kept] = self._new_link_values(new_values, layout, ~kept, change.added).to(new_data)
        new_grad = None if param.grad is None else remap(param.grad)
        param.grad = None  # autograd checks the grad's shape against the data: resize in this order
        param.data = new_data
        param.grad = new_grad
        self._set_layout(layout)
        self.weight_mask.copy_(new_mask)
        return change

    @torch.no_grad()
    def set_capacity(self, capacity: int) -> None:
        """Make ``values`` exactly ``capacity`` long (at least ``nnz``): the link weights stay, the tail
        is zero, the gradient is dropped. Used on resume so that ``values`` has the length of the
        optimizer state saved beside it (see :meth:`active_values`); the Parameter object stays."""
        capacity = int(capacity)
        if capacity < self.nnz:
            raise ValueError(f"capacity {capacity} is below the layer's {self.nnz} links")
        if capacity == self.values.numel():
            return
        data = self.values.data.new_zeros(capacity)
        data[: self.nnz] = self.values.data[: self.nnz]
        self.values.grad = None
        self.values.data = data

    def _new_link_values(
        self, new_values: float | torch.Tensor, layout: SparseLayout, added: torch.Tensor, n_added: int
    ) -> torch.Tensor:
        if not isinstance(new_values, torch.Tensor):
            return torch.full((n_added,), float(new_values))
        new_values = new_values.detach().to(self.values.device)
        if new_values.dim() == 0:
            return new_values.expand(n_added)
        if tuple(new_values.shape) == (self.out_features, self.in_features):
            return new_values[layout.rows[added], layout.cols[added]]
        if tuple(new_values.shape) == (n_added,):
            return new_values
        raise ValueError(
            f"new_values must be a number, a ({self.out_features}, {self.in_features}) tensor or a "
            f"({n_added},) tensor (one value per new link, row-major order); got shape {tuple(new_values.shape)}"
        )

    # --- state_dict: the masked backend's keys (weight dense, bias, weight_mask) ----------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        destination[prefix + "weight"] = self.dense_weight().detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        destination[prefix + "weight_mask"] = self.weight_mask if keep_vars else self.weight_mask.detach()

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Accept ``weight`` (dense) + ``weight_mask`` and rebuild ``values`` and the indices from
        them (a missing ``weight_mask`` keeps the current topology). The optimizer is not touched:
        if the topology changes, load the optimizer's matching checkpoint afterwards."""
        weight_key, mask_key, values_key = prefix + "weight", prefix + "weight_mask", prefix + "values"
        translated = dict(state_dict)
        shape = (self.out_features, self.in_features)
        if weight_key in translated:
            weight = translated.pop(weight_key)
            mask = translated.get(mask_key, self.weight_mask)
            if tuple(weight.shape) != shape:
                error_msgs.append(
                    f"size mismatch for {weight_key}: copying a param with shape {tuple(weight.shape)} from "
                    f"checkpoint, the shape in current model is {shape}."
                )
                translated[values_key] = self.values.detach()  # keep the layer; the error says why
            elif tuple(mask.shape) != shape:
                pass  # the default loader reports the weight_mask size mismatch
            else:
                mask = mask.to(device=self.weight_mask.device, dtype=torch.bool)
                layout = build_layout(mask)
                with torch.no_grad():
                    # keep the capacity (the optimizer state saved with this checkpoint has its
                    # length); grow only when the checkpoint holds more links
                    capacity = max(int(self.values.numel()), layout.nnz)
                    if self.values.numel() != capacity:
                        self.values.data = self.values.data.new_empty(capacity)
                    if self.values.grad is not None:
                        self.values.grad = None
                    self._set_layout(layout)
                    self.weight_mask.copy_(mask)
                weight = weight.to(self.weight_mask.device)
                padded = weight.new_zeros(self.values.numel())
                padded[: layout.nnz] = weight[layout.rows, layout.cols]
                translated[values_key] = padded
        n_missing = len(missing_keys)
        super()._load_from_state_dict(
            translated, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Report the key the checkpoint format uses, not the internal parameter name.
        for i in range(n_missing, len(missing_keys)):
            if missing_keys[i] == values_key:
                missing_keys[i] = weight_key
