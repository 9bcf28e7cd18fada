"""The contract every registered sparse linear kernel meets: the same products as the plain dense
formulas, on whatever dtype and device it says it supports; and the registry's errors."""

from __future__ import annotations

import pytest
import torch

from chtorch.sparse import (
    SPARSE_LINEAR_KERNELS,
    SparseLinear,
    SparseLinearKernel,
    build_layout,
    get_kernel,
    kernel_names,
    register_kernel,
    resolve_kernel,
)

CPU = torch.device("cpu")


def _problem(n_out: int = 7, n_in: int = 12, batch: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=g) < 0.4
    layout = build_layout(mask)
    values = torch.randn(layout.nnz, generator=g, dtype=torch.float64)
    dense = torch.zeros(n_out, n_in, dtype=torch.float64)
    dense[layout.rows, layout.cols] = values
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    dy = torch.randn(batch, n_out, generator=g, dtype=torch.float64)
    bias = torch.randn(n_out, generator=g, dtype=torch.float64)
    return layout, values, dense, x, dy, bias


@pytest.mark.parametrize("name", [n for n in kernel_names() if n != "auto"])
def test_every_registered_kernel_computes_the_dense_products(name: str) -> None:
    kernel = get_kernel(name)
    if kernel.unsupported(torch.float64, CPU) is not None:
        pytest.skip(f"{name}: {kernel.unsupported(torch.float64, CPU)}")
    layout, values, dense, x, dy, bias = _problem()
    batch = x.shape[0]
    x_op, dy_op = kernel.operand(x), kernel.operand(dy)
    torch.testing.assert_close(kernel.forward(x_op, values, bias, layout, batch), x @ dense.T + bias)
    torch.testing.assert_close(kernel.grad_input(dy_op, values, layout, batch), dy @ dense)
    full = dy.T @ x  # (out, in); the kernel gives it at the links only, in CSR order
    torch.testing.assert_close(kernel.grad_values(dy_op, x_op, values, layout), full[layout.rows, layout.cols])


def test_auto_picks_a_kernel_that_supports_the_tensors() -> None:
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        kernel = resolve_kernel("auto", dtype, CPU)
        assert kernel.auto and kernel.unsupported(dtype, CPU) is None
    assert resolve_kernel("auto", torch.bfloat16, CPU).name == "gather"


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown sparse linear kernel 'nope'"):
        get_kernel("nope")
    with pytest.raises(RuntimeError, match="cannot run here"):
        resolve_kernel("csr", torch.float16, CPU)
    with pytest.raises(TypeError, match="SparseLinearKernel"):
        register_kernel(("forward", "grad_input", "grad_values"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl must be one of"):
        SparseLinear(4, 3, torch.ones(3, 4, dtype=torch.bool), impl="nope")


def test_a_registered_kernel_serves_sparse_linear() -> None:
    calls = []
    gather = get_kernel("gather")

    def forward(*args):
        calls.append(1)
        return gather.forward(*args)

    name = "test_counting_gather"
    register_kernel(SparseLinearKernel(name, forward, gather.grad_input, gather.grad_values))
    try:
        layer = SparseLinear(6, 4, torch.rand(4, 6) < 0.5, impl=name)
        layer(torch.randn(3, 6)).sum().backward()
        assert calls and name in kernel_names()
    finally:
        SPARSE_LINEAR_KERNELS._kernels.pop(name)
