"""Truly sparse execution: layers that store, compute and train only their links.

* :class:`SparseLinear` - values ``(nnz,)`` + index buffers, sparse forward/backward, ``set_mask``
  for topology updates, masked-backend-compatible ``state_dict``.
* :func:`to_sparse` / :func:`to_dense` - swap ``nn.Linear`` <-> ``SparseLinear`` in a model and its
  optimizer.
* :func:`sparse_linear` - the functional form (custom autograd function, ``"csr"`` / ``"gather"``).
* :class:`SparseInferenceLinear` - frozen CSR layer for export.
* :func:`register_kernel` / :class:`SparseLinearKernel` - the kernel registry (``impl`` names).

Never imports :mod:`chtorch.dst`: the engine builds on this wing, not the other way round.

Reference: Zhang et al., NeurIPS 2025, arXiv:2501.19107 (CHT-family regrowth needs no dense gradient,
so training can be truly sparse).
"""

from chtorch.sparse.convert import align_optimizer_state, replace_parameter, to_dense, to_sparse
from chtorch.sparse.functional import IMPLEMENTATIONS, resolve_impl, sparse_linear
from chtorch.sparse.inference import SparseInferenceLinear
from chtorch.sparse.kernels import (
    SPARSE_LINEAR_KERNELS,
    KernelRegistry,
    SparseLinearKernel,
    get_kernel,
    kernel_names,
    register_kernel,
    resolve_kernel,
)
from chtorch.sparse.layout import SparseLayout, build_layout
from chtorch.sparse.linear import SparseLinear, TopologyChange

__all__ = [
    # layers
    "SparseLinear",
    "TopologyChange",
    "SparseInferenceLinear",
    # layout and the functional form
    "SparseLayout",
    "build_layout",
    "sparse_linear",
    # kernels
    "SparseLinearKernel",
    "KernelRegistry",
    "SPARSE_LINEAR_KERNELS",
    "register_kernel",
    "get_kernel",
    "kernel_names",
    "resolve_kernel",
    "resolve_impl",
    "IMPLEMENTATIONS",
    # conversion of a model and its optimizer
    "to_sparse",
    "to_dense",
    "replace_parameter",
    "align_optimizer_state",
]
