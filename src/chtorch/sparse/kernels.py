"""Kernel registries: one registration per implementation of a sparse product or a link predictor.

A kernel is chosen by name (``"auto"`` picks the first registered one that supports the tensors'
dtype and device and is marked ``auto``). :class:`KernelRegistry` is shared by the two kernel
users: :data:`SPARSE_LINEAR_KERNELS` (the products of :func:`chtorch.sparse.sparse_linear`, a
:class:`SparseLinearKernel` each) and the CH-L3n evaluations of :mod:`chtorch.linkpred.l3n`. A new
kernel (a CUDA or Triton one, say) is one :func:`register_kernel` call in the user's own module::

    register_kernel(SparseLinearKernel("triton", forward=..., grad_input=..., grad_values=...,
                                       supports=lambda dtype, device: None if device.type == "cuda" else "CUDA only"))

after which ``SparseLinear(impl="triton")``, ``chtorch.sparsify(..., kernel="triton")`` and the
config's ``sparsity.kernel: triton`` use it, and the kernel contract tests
(``tests/sparse/test_kernel_registry.py``) check it against the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch

__all__ = [
    "KernelRegistry",
    "SparseLinearKernel",
    "SPARSE_LINEAR_KERNELS",
    "register_kernel",
    "kernel_names",
    "get_kernel",
    "resolve_kernel",
]


class _Kernel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def auto(self) -> bool: ...

    def unsupported(self, dtype: torch.dtype, device: torch.device) -> str | None: ...


K = TypeVar("K", bound=_Kernel)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _everywhere(dtype: torch.dtype, device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class SparseLinearKernel:
    """One implementation of the products of a sparse linear layer ``y = x Wᵀ + b``, ``W`` ``(out, in)``
    given by ``values`` ``(nnz,)`` in the CSR order of a :class:`~chtorch.sparse.SparseLayout`.

    ``forward(x_op, values, bias, layout, batch) -> (batch, out)``; ``grad_input(grad_op, values,
    layout, batch) -> (batch, in)``; ``grad_values(grad_op, x_op, values, layout) -> (nnz,)`` (only at
    the links). ``operand`` converts a batch-major ``(batch, features)`` input or output gradient into
    the layout the kernel reads (identity by default; converted once, shared by the passes).
    ``supports(dtype, device)`` returns None where the kernel runs, else the reason it does not.
    ``auto``: ``"auto"`` may choose it (in registration order)."""

    name: str
    forward: Callable[..., torch.Tensor]
    grad_input: Callable[..., torch.Tensor]
    grad_values: Callable[..., torch.Tensor]
    operand: Callable[[torch.Tensor], torch.Tensor] = _identity
    supports: Callable[[torch.dtype, torch.device], str | None] = _everywhere
    auto: bool = False
    summary: str = ""

    def unsupported(self, dtype: torch.dtype, device: torch.device) -> str | None:
        return self.supports(dtype, device)


class KernelRegistry(Generic[K]):
    """Name → kernel of one product, in registration order (``"auto"`` is reserved)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._kernels: dict[str, K] = {}

    def register(self, kernel: K) -> K:
        if not isinstance(kernel.name, str) or not kernel.name or kernel.name == "auto":
            raise ValueError(f"a {self.what} kernel name must be a non-empty string other than 'auto'")
        if kernel.name in self._kernels:
            warnings.warn(f"chtorch: {self.what} kernel {kernel.name!r} is registered again", stacklevel=3)
        self._kernels[kernel.name] = kernel
        return kernel

    def names(self) -> tuple[str, ...]:
        """``"auto"`` and every registered name."""
        return ("auto", *self._kernels)

    def get(self, name: str) -> K:
        if name not in self._kernels:
            raise ValueError(f"unknown {self.what} kernel {name!r}; known: {', '.join(self.names())}")
        return self._kernels[name]

    def resolve(self, name: str, dtype: torch.dtype, device: torch.device) -> K:
        """The kernel ``name`` stands for on ``dtype``/``device``: ``"auto"`` is the first ``auto``
        kernel that supports them; a named kernel that does not raises ``RuntimeError`` with why."""
        if name == "auto":
            for kernel in self._kernels.values():
                if kernel.auto and kernel.unsupported(dtype, device) is None:
                    return kernel
            raise RuntimeError(f"no registered {self.what} kernel runs {dtype} on {device.type}")
        kernel = self.get(name)
        reason = kernel.unsupported(dtype, device)
        if reason is not None:
            raise RuntimeError(f"{self.what} kernel {name!r} cannot run here ({reason}); use 'auto'")
        return kernel


SPARSE_LINEAR_KERNELS: KernelRegistry[SparseLinearKernel] = KernelRegistry("sparse linear")


def register_kernel(kernel: SparseLinearKernel) -> SparseLinearKernel:
    """Register a sparse linear kernel (see :class:`SparseLinearKernel`)."""
    if not isinstance(kernel, SparseLinearKernel):
        raise TypeError(f"register_kernel takes a chtorch.sparse.SparseLinearKernel, got {type(kernel).__name__}")
    return SPARSE_LINEAR_KERNELS.register(kernel)


def kernel_names() -> tuple[str, ...]:
    """Every name ``impl=`` / ``kernel=`` accepts: ``"auto"`` and the registered sparse linear kernels."""
    return SPARSE_LINEAR_KERNELS.names()


def get_kernel(name: str) -> SparseLinearKernel:
    return SPARSE_LINEAR_KERNELS.get(name)


def resolve_kernel(name: str, dtype: torch.dtype, device: torch.device) -> SparseLinearKernel:
    return SPARSE_LINEAR_KERNELS.resolve(name, dtype, device)
