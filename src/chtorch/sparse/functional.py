"""Sparse x dense products of a linear layer whose weight exists only at its links.

``sparse_linear(x, values, bias, layout)`` computes ``x @ W^T + bias`` for the sparse weight ``W``
described by ``layout`` (see :mod:`chtorch.sparse.layout`) and ``values`` ``(nnz,)``, with a custom
autograd function whose backward is truly sparse as well:

* input gradient  ``dx = dy @ W``, computed as the sparse x dense product ``W^T dy^T``;
* weight gradient only at the links: ``dvalues[k] = sum_n dy[n, rows[k]] * x[n, cols[k]]`` (a sampled
  dense-dense product, SDDMM); the dense ``dy^T x`` is never formed;
* bias gradient ``dy.sum(0)``;
* the dense weight gradient ``dy^T x`` ``(out, in)`` only when a :class:`DenseGradWatch` asks for it
  (the steps before a RigL/GraNet/MEST update, whose regrowth or removal reads it): one dense GEMM
  on those steps, none otherwise.

Three registered kernels (:mod:`chtorch.sparse.kernels`) give the same numbers (tests check each against the
others, and every kernel a user registers against them):

``"native"`` C++/OpenMP kernels (:mod:`chtorch.sparse.native`, built at first use) on feature-major
             panels of the activations (64 batch entries each): the forward and the input gradient
             are CSR row sweeps over a panel whose inner loop is four vectors of the batch, the
             weight gradient a dot product per link and panel. CPU,
             float32/float64; ``"auto"`` picks it there when it could be built.
``"csr"``    ``torch.sparse`` CSR kernels (MKL on CPU, cuSPARSE on CUDA): ``torch.sparse.mm`` for both
             products and ``torch.sparse.sampled_addmm`` for the weight gradient (float32/float64; the
             ``"auto"`` choice on CUDA and on a CPU without a C++ toolchain); measured in
             ``benchmarks/sparse_training.py``.
``"gather"`` plain dense tensor ops (row gathers, ``index_add_``, chunked multiply-and-sum): any dtype
             and device, memory ``O(chunk)``; the fallback for half precision and other backends.

Under ``torch.autocast`` the product runs in the weight's dtype (float32) and returns it.

Reference: the CHT family regrows links from the topology alone, so no dense gradient is ever needed
(Zhang et al., NeurIPS 2025, arXiv:2501.19107, §3); this module is what makes that a real speed-up.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from chtorch.sparse import native
from chtorch.sparse.kernels import SparseLinearKernel, get_kernel, kernel_names, register_kernel, resolve_kernel
from chtorch.sparse.layout import SparseLayout

__all__ = ["sparse_linear", "resolve_impl", "IMPLEMENTATIONS", "DenseGradWatch"]

#: The built-in kernels (``kernel_names()`` adds the ones a user registers).
IMPLEMENTATIONS = ("auto", "native", "csr", "gather")

# Elements of the (chunk, batch) temporaries of the gather implementation: 2**22 floats = 16 MiB.
_GATHER_CHUNK_ELEMENTS = 1 << 22


def resolve_impl(impl: str, dtype: torch.dtype, device: torch.device) -> str:
    """The registered kernel (:mod:`chtorch.sparse.kernels`) that ``impl`` stands for. ``"auto"``:
    ``"native"`` for float32/float64 on CPU when the native kernels can be built here, else ``"csr"``
    for float32/float64 on CPU and CUDA (torch.sparse CSR kernels exist there), else ``"gather"``. A
    named kernel that cannot run here raises ``RuntimeError`` naming the reason."""
    if impl not in kernel_names():
        raise ValueError(f"impl must be one of {kernel_names()}, got {impl!r}")
    return resolve_kernel(impl, dtype, device).name


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 has no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # The layout is built by chtorch itself, so torch's O(nnz) invariant check is skipped (it would
    # cost as much as a small product).
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _consume_beta_warning() -> None:
    """torch warns once per process that CSR support is "in beta"; trigger that warning here with
    it filtered, so that users of SparseLinear never see it (the filter itself is not kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _csr(torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(1), (1, 1))


_consume_beta_warning()


# --- implementation "csr": torch.sparse kernels -------------------------------------------------


def _csr_forward(
    x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout, batch: int
) -> torch.Tensor:
    weight = _csr(layout.crow, layout.cols, values, layout.shape)
    if bias is None:
        out_t = torch.sparse.mm(weight, x.t())
    else:
        out_t = torch.addmm(bias.unsqueeze(1), weight, x.t())
    return out_t.t()  # (batch, out): a transposed view; the next layer's x.t() is then contiguous


def _csr_grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: SparseLayout, batch: int) -> torch.Tensor:
    weight_t = _csr(layout.crow_t, layout.col_t, values[layout.perm], (layout.in_features, layout.out_features))
    return torch.sparse.mm(weight_t, grad_out.t()).t()


def _csr_grad_values(
    grad_out: torch.Tensor, x: torch.Tensor, values: torch.Tensor, layout: SparseLayout
) -> torch.Tensor:
    pattern = _csr(layout.crow, layout.cols, torch.zeros_like(values), layout.shape)
    return torch.sparse.sampled_addmm(pattern, grad_out.t(), x, beta=0.0).values()


# --- implementation "gather": dense tensor ops only ----------------------------------------------


def _chunks(nnz: int, batch: int):
    step = max(1, _GATHER_CHUNK_ELEMENTS // max(1, batch))
    for start in range(0, nnz, step):
        yield start, min(nnz, start + step)


def _gather_spmm(
    src_t: torch.Tensor, values: torch.Tensor, gather_index: torch.Tensor, scatter_index: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """``out_t[scatter[k]] += values[k] * src_t[gather[k]]`` for all links ``k``; ``src_t`` is
    ``(features, batch)`` contiguous so that every gathered row is one contiguous block."""
    out_t = torch.zeros(n_rows, src_t.shape[1], dtype=src_t.dtype, device=src_t.device)
    for start, stop in _chunks(values.numel(), src_t.shape[1]):
        contrib = src_t[gather_index[start:stop]] * values[start:stop].unsqueeze(1)
        out_t.index_add_(0, scatter_index[start:stop], contrib)
    return out_t


def _gather_forward(
    x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout, batch: int
) -> torch.Tensor:
    out_t = _gather_spmm(x.t().contiguous(), values, layout.cols, layout.rows, layout.out_features)
    out = out_t.t()
    return out if bias is None else out + bias


def _gather_grad_input(grad_out: torch.Tensor, values: torch.Tensor, layout: SparseLayout, batch: int) -> torch.Tensor:
    return _gather_spmm(grad_out.t().contiguous(), values, layout.rows, layout.cols, layout.in_features).t()


def _gather_grad_values(
    grad_out: torch.Tensor, x: torch.Tensor, values: torch.Tensor, layout: SparseLayout
) -> torch.Tensor:
    grad_t, x_t = grad_out.t().contiguous(), x.t().contiguous()
    grad_values = torch.empty_like(values)
    for start, stop in _chunks(values.numel(), x_t.shape[1]):
        picked = grad_t[layout.rows[start:stop]] * x_t[layout.cols[start:stop]]
        torch.sum(picked, dim=1, out=grad_values[start:stop])
    return grad_values


# --- implementation "native": C++/OpenMP kernels on feature-major panels ----------------------
# The kernels read operands in a feature-major panel layout: the batch cut into panels of 256 bytes of
# entries (64 floats), each a contiguous (features, width) matrix, so that one panel of an activation
# stays in L2 while every row of W reads it (a plain (features, batch) matrix, rows a power-of-two
# stride apart, made the caches thrash at large batches). Up to 64 entries it is the plain transpose.
# Results are ordinary batch-major tensors: a transposed view would be free for a following sparse
# layer but slows the dense torch ops that usually follow (a dense classifier, a residual add, the
# ReLU backward against a contiguous gradient) 5-30x, far more than the one conversion per operand.

PANEL_BYTES = 256  # the kernels' panel: 4 vectors of 64 bytes (AVX-512 registers), their register tile


def _panels(t: torch.Tensor) -> torch.Tensor:
    """The panel layout ``(n_panels, features, width)`` of a ``(batch, features)`` matrix: free when
    the batch fits one panel and ``t`` is a transposed view of a feature-major matrix, else one native
    blocked transpose. (Layers that read one input, like q, k and v, each convert it: remembering the
    last conversion would go stale when a tensor is changed through ``.data``, which gradcheck and
    older code do without bumping its version counter.)"""
    if t.shape[0] <= PANEL_BYTES // t.element_size() and t.t().is_contiguous():
        return t.t().unsqueeze(0)
    return native.load().to_panels(t.contiguous())


def _native_forward(
    x_op: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout, batch: int
) -> torch.Tensor:
    ops = native.load()
    bias = None if bias is None else bias.detach().contiguous()
    return ops.spmm(
        layout.crow, layout.cols, None, values.detach().contiguous(), x_op, bias, layout.out_features, batch
    )


def _native_grad_input(grad_op: torch.Tensor, values: torch.Tensor, layout: SparseLayout, batch: int) -> torch.Tensor:
    ops = native.load()
    return ops.spmm(
        layout.crow_t, layout.col_t, layout.perm, values.contiguous(), grad_op, None, layout.in_features, batch
    )


def _native_grad_values(
    grad_op: torch.Tensor, x_op: torch.Tensor, values: torch.Tensor, layout: SparseLayout
) -> torch.Tensor:
    return native.load().sddmm(layout.crow, layout.cols, grad_op, x_op)


def _floating(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64)


def _native_supports(dtype: torch.dtype, device: torch.device) -> str | None:
    if device.type != "cpu" or not _floating(dtype):
        return f"the native kernels run float32/float64 on CPU only, got {dtype} on {device.type}"
    if not native.available():
        return f"the native kernels are unavailable here: {native.reason_unavailable()}"
    return None


def _csr_supports(dtype: torch.dtype, device: torch.device) -> str | None:
    if device.type not in ("cpu", "cuda") or not _floating(dtype):
        return f"torch.sparse CSR kernels run float32/float64 on CPU and CUDA, got {dtype} on {device.type}"
    return None


# Registration order is the order "auto" tries them in. The forward and input-gradient kernels take
# the batch size: the native panel operand is padded to whole panels, so its shape does not tell it.
register_kernel(
    SparseLinearKernel(
        "native",
        _native_forward,
        _native_grad_input,
        _native_grad_values,
        operand=_panels,
        supports=_native_supports,
        auto=True,
        summary="C++/OpenMP CSR sweeps on feature-major panels (CPU)",
    )
)
register_kernel(
    SparseLinearKernel(
        "csr",
        _csr_forward,
        _csr_grad_input,
        _csr_grad_values,
        supports=_csr_supports,
        auto=True,
        summary="torch.sparse CSR: MKL on CPU, cuSPARSE on CUDA",
    )
)
register_kernel(
    SparseLinearKernel(
        "gather",
        _gather_forward,
        _gather_grad_input,
        _gather_grad_values,
        auto=True,
        summary="dense tensor ops (gathers and index_add_): any dtype and device",
    )
)


class DenseGradWatch:
    """Asks a sparse layer's backward pass for the dense weight gradient ``dy^T x`` ``(out, in)``.

    ``wanted()`` is called once per backward pass (cheap; e.g. "is this step in the accumulation
    window before a topology update?"); only when it returns True is the dense product formed and
    handed to ``receive(grad)``. Installed with :meth:`chtorch.sparse.SparseLinear.watch_dense_grad`.
    """

    __slots__ = ("wanted", "receive", "active")

    def __init__(self, wanted: Callable[[], bool], receive: Callable[[torch.Tensor], None]) -> None:
        self.wanted, self.receive, self.active = wanted, receive, True

    def __call__(self, grad_out: torch.Tensor, x: torch.Tensor) -> None:
        if self.active and self.wanted():
            self.receive(grad_out.t() @ x)

    # A copy of the layer (copy.deepcopy, pickling with torch.save(model)) is not watched: the
    # callbacks belong to the engine that installed them, which must not be copied along.
    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self):
        return (_no_watch, ())


def _no_watch() -> None:
    return None


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W^T + b`` with ``W`` given by ``(values, layout)``; ``x`` is 2-D ``(batch, in)``."""

    @staticmethod
    def forward(ctx, x, values, bias, layout, impl, watch=None):  # type: ignore[override]
        kernel = get_kernel(impl)
        ctx.layout, ctx.impl, ctx.has_bias, ctx.watch, ctx.batch = layout, impl, bias is not None, watch, x.shape[0]
        x_op = kernel.operand(x)
        # A watch reads the batch-major input (a reference: no copy); the kernels read the operand.
        ctx.save_for_backward(x_op, values, x if watch is not None and x_op is not x else None)
        # The kernels run in the weight's dtype: autocast must not recast their operands. Entering
        # a disabled autocast context costs as much as a small sparse product, so only when needed.
        if _autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return kernel.forward(x_op, values, bias, layout, ctx.batch)
        return kernel.forward(x_op, values, bias, layout, ctx.batch)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if _autocast_enabled(grad_out.device.type):
            with torch.autocast(device_type=grad_out.device.type, enabled=False):
                return _SparseLinearFunction._backward(ctx, grad_out)
        return _SparseLinearFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        x_op, values, x = ctx.saved_tensors
        kernel = get_kernel(ctx.impl)
        grad_x = grad_values = grad_bias = None
        grad_out = grad_out.to(values.dtype)
        grad = kernel.operand(grad_out)
        needs = ctx.needs_input_grad
        if needs[0]:
            grad_x = kernel.grad_input(grad, values, ctx.layout, ctx.batch)
        if needs[1]:
            grad_values = kernel.grad_values(grad, x_op, values, ctx.layout)
        if ctx.has_bias and needs[2]:
            grad_bias = grad_out.sum(0)
        if ctx.watch is not None:
            ctx.watch(grad_out, x_op if x is None else x)
        return grad_x, grad_values, grad_bias, None, None, None


def sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    layout: SparseLayout,
    impl: str = "auto",
    watch: DenseGradWatch | None = None,
) -> torch.Tensor:
    """``x @ W^T + bias`` with the sparse weight ``W`` ``(out, in)`` given by ``values`` ``(nnz,)`` in
    the CSR order of ``layout``.

    ``x``: ``(..., in_features)`` (any leading dims, or 1-D); returns ``(..., out_features)``.
    Differentiable in ``x``, ``values`` and ``bias``; gradients are computed only where needed.
    ``watch``: optional :class:`DenseGradWatch` that may ask the backward pass for ``dy^T x``.
    """
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"input has {x.shape[-1]} features in its last dim, the layer expects {layout.in_features}")
    if values.shape != (layout.nnz,):
        raise ValueError(f"values must have shape ({layout.nnz},) to match the layout, got {tuple(values.shape)}")
    if x.dtype != values.dtype:
        if not _autocast_enabled(x.device.type):
            raise TypeError(f"input dtype {x.dtype} differs from the weight dtype {values.dtype}; cast one of them")
        # Under autocast the sparse product runs in the weight's precision (sparse kernels for
        # float16/bfloat16 are not available everywhere) and returns that dtype, as autocast's
        # float32-list ops do; the gradient flows back to x in x's dtype.
        x = x.to(values.dtype)
    impl = resolve_impl(impl, values.dtype, values.device)
    if x.dim() == 2:  # the common case: no reshape nodes in the autograd graph
        return _SparseLinearFunction.apply(x, values, bias, layout, impl, watch)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, layout.in_features)
    out = _SparseLinearFunction.apply(x2d, values, bias, layout, impl, watch)
    return out.reshape(*lead, layout.out_features)
