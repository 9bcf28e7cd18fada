"""Native (C++/OpenMP) SparseLinear kernels against the pure-PyTorch ones, and the fallback when
they cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chtorch.sparse import SparseLinear, native, resolve_impl
from helpers import torch_threads

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.reason_unavailable()}"
)
pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(n_in: int, n_out: int, density: float, seed: int, dtype: torch.dtype, impl: str) -> SparseLinear:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=g) < density
    layer = SparseLinear(n_in, n_out, mask, impl=impl, dtype=dtype, generator=g)
    return layer


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(1, 90),
    n_out=st.integers(1, 90),
    batch=st.sampled_from([1, 3, 16, 17, 32, 33, 64, 65, 130, 200]),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_native_forward_and_grads_match_gather(n_in, n_out, batch, density, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=g) < density
    ref = SparseLinear(n_in, n_out, mask, bias=bias, impl="gather", dtype=dtype, generator=g)
    fast = SparseLinear(n_in, n_out, mask, bias=bias, impl="native", dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, n_in, generator=g, dtype=dtype)
    grad_out = torch.randn(batch, n_out, generator=g, dtype=dtype)
    outs = []
    for layer in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(grad_out)
        outs.append((y.detach(), xi.grad, layer.values.grad, None if layer.bias is None else layer.bias.grad))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for expected, got in zip(outs[0], outs[1]):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, **tol)


@needs_native
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(0, 200),
    cols=st.integers(1, 50),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
)
def test_to_panels_layout(rows, cols, dtype, threads):
    """Panels of 256 bytes of batch entries (64 floats, 32 doubles), each the transpose of its rows,
    the last one zero-padded; one panel of width ``rows`` when the batch fits one."""
    full = 256 // torch.empty((), dtype=dtype).element_size()
    src = torch.randn(rows, cols, dtype=dtype)
    with torch_threads(threads):
        out = native.load().to_panels(src)
    n_panels = max(1, -(-rows // full))
    width = rows if rows <= full else full
    expected = torch.zeros(n_panels, cols, width, dtype=dtype)
    for p in range(n_panels):
        chunk = src[p * width : (p + 1) * width]
        expected[p, :, : chunk.shape[0]] = chunk.t()
    assert out.is_contiguous() and out.shape == expected.shape and torch.equal(out, expected)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [7 * 64, 8 * 64 - 5, 9 * 64 + 3])
def test_native_many_panels_match_gather(batch, threads, dtype):
    """Many panels (the kernels sweep them one at a time), ragged last panels and both thread counts
    (the weight gradient's rows split by links between the threads) give the gather kernels' numbers."""
    g = torch.Generator().manual_seed(batch)
    mask = torch.rand(70, 90, generator=g) < 0.1
    ref = SparseLinear(90, 70, mask, impl="gather", dtype=dtype, generator=g)
    fast = SparseLinear(90, 70, mask, impl="native", dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 90, generator=g, dtype=dtype)
    grad_out = torch.randn(batch, 70, generator=g, dtype=dtype)
    with torch_threads(threads):
        outs = []
        for layer in (ref, fast):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y.backward(grad_out)
            outs.append((y.detach(), xi.grad, layer.values.grad, layer.bias.grad))
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-11}
    for expected, got in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(got, expected, **tol)


@needs_native
@pytest.mark.parametrize("batch", [20, 150])
def test_watched_native_layer_hands_over_the_dense_gradient_of_its_input(batch):
    """A watch (RigL's regrowth score) gets dy^T x of the batch-major input, whatever the panel count."""
    layer = _layer(40, 30, 0.1, 3, torch.float64, "native")
    received = []
    layer.watch_dense_grad(lambda: True, received.append)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 40, generator=g, dtype=torch.float64)
    grad_out = torch.randn(batch, 30, generator=g, dtype=torch.float64)
    layer(x).backward(grad_out)
    assert len(received) == 1
    torch.testing.assert_close(received[0], grad_out.t() @ x, rtol=1e-12, atol=1e-12)


@needs_native
def test_spmm_refuses_panels_of_another_batch():
    layer = _layer(30, 20, 0.2, 0, torch.float32, "native")
    panels = native.load().to_panels(torch.randn(100, 30))
    lay = layer.layout
    with pytest.raises(RuntimeError, match="does not hold 40 entries in panels of 64"):
        native.load().spmm(lay.crow, lay.cols, None, layer.values.detach(), panels, None, 20, 40)


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_native_results_are_ordinary_batch_major_tensors(threads):
    """The output and the input gradient are contiguous (batch, features) tensors whatever the input
    layout (a transposed view slows the dense torch ops that follow 5-30x), with equal numbers from
    a contiguous and a transposed-view input; checked with one and two threads on a layer large
    enough for the parallel loops (8 x 8 tile edges included)."""
    torch.manual_seed(0)
    layer = _layer(300, 203, 0.05, 0, torch.float32, "native")
    x = torch.randn(70, 300)
    views = [x.clone(), x.t().contiguous().t()]
    with torch_threads(threads):
        results = []
        for xi in views:
            xi.requires_grad_(True)
            z = xi[:]  # a non-leaf: its hook sees the gradient exactly as the layer returns it
            seen = []
            z.register_hook(lambda grad, seen=seen: seen.append(grad.is_contiguous()))
            y = layer(z)
            y.backward(torch.ones_like(y))
            assert y.is_contiguous() and seen == [True]
            results.append((y.detach(), xi.grad, layer.values.grad.clone()))
            layer.values.grad = None
    reference = x @ layer.dense_weight().t() + layer.bias
    torch.testing.assert_close(results[0][0], reference.detach(), rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_native_training_matches_reference(optimizer):
    """Three layers, five optimizer steps (momentum / Adam moments on the values), a topology update
    in between: native and the pure-PyTorch kernels end with the same weights."""
    torch.manual_seed(0)  # nn.Linear's init draws from the global RNG; the test owns it
    base = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))
    g = torch.Generator().manual_seed(1)
    masks = {name: torch.rand(base[int(name)].weight.shape, generator=g) < 0.2 for name in ("0", "2")}
    finals = []
    for impl in ("gather", "native"):
        model = nn.Sequential(*[m for m in _copy(base)])
        for name, mask in masks.items():
            model[int(name)] = SparseLinear.from_linear(model[int(name)], mask, impl=impl)
        opt = (
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            if optimizer == "sgd"
            else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        )
        data = torch.Generator().manual_seed(2)
        for step in range(5):
            x = torch.randn(33, 40, generator=data)
            y = torch.randint(0, 5, (33,), generator=data)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if step == 2:
                layer = model[2]
                new_mask = layer.weight_mask.clone()
                new_mask[:, :10] = ~new_mask[:, :10]
                layer.set_mask(new_mask, opt)
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


@needs_native
def test_auto_picks_native_on_cpu_float():
    assert resolve_impl("auto", torch.float32, torch.device("cpu")) == "native"
    assert resolve_impl("auto", torch.float64, torch.device("cpu")) == "native"
    assert resolve_impl("auto", torch.bfloat16, torch.device("cpu")) == "gather"


def test_fallback_when_unavailable(monkeypatch):
    """With no native kernels, "auto" falls back to torch.sparse CSR and an explicit "native" says why."""
    monkeypatch.setitem(native._state, "tried", True)
    monkeypatch.setitem(native._state, "ops", None)
    monkeypatch.setitem(native._state, "reason", "no C++ compiler (test)")
    assert resolve_impl("auto", torch.float32, torch.device("cpu")) == "csr"
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        resolve_impl("native", torch.float32, torch.device("cpu"))
    layer = _layer(12, 7, 0.3, 0, torch.float32, "auto")
    assert layer(torch.randn(4, 12)).shape == (4, 7)


@pytest.mark.parametrize(
    "env, reason",
    [({"CHTORCH_NATIVE": "0"}, "CHTORCH_NATIVE=0"), ({"CXX": "no-such-compiler-chtorch"}, "no C++ compiler")],
)
def test_build_failure_logs_and_falls_back(tmp_path, env, reason):
    """A fresh process without a usable toolchain logs one warning and trains with the PyTorch kernels."""
    code = (
        "import logging, torch; logging.basicConfig(level=logging.WARNING)\n"
        "from chtorch.sparse import SparseLinear, native\n"
        "layer = SparseLinear(6, 4, torch.rand(4, 6) < 0.5)\n"
        "layer(torch.randn(3, 6)).sum().backward()\n"
        "print('impl', layer.extra_repr().split('->')[-1], native.available())\n"
    )
    environ = {**os.environ, "CHTORCH_EXTENSION_DIR": str(tmp_path / "cache"), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "impl 'csr' False" in done.stdout
    assert "native kernels unavailable" in done.stderr and reason in done.stderr
    assert done.stderr.count("native kernels unavailable") == 1


@needs_native
def test_native_rejects_non_cpu_or_half():
    with pytest.raises(RuntimeError, match="CPU only"):
        resolve_impl("native", torch.float16, torch.device("cpu"))
