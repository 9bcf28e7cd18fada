"""SparseLinear (truly sparse backend) against the masked dense Linear it replaces."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chtorch.sparse import (
    SparseLinear,
    TopologyChange,
    build_layout,
    native,
    sparse_linear,
)
from helpers import masked_linear as _masked_linear
from helpers import random_mask as _random_mask

IMPLS = ["csr", "gather"] + (["native"] if native.available() else [])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- layout ----------------------------------------------------------------------------------


def test_layout_hand_worked():
    mask = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    layout = build_layout(mask)
    assert layout.rows.tolist() == [0, 0, 2, 2]
    assert layout.cols.tolist() == [1, 2, 0, 2]
    assert layout.crow.tolist() == [0, 2, 2, 4]
    # W^T in CSR: column 0 -> row 2; column 1 -> row 0; column 2 -> rows 0, 2
    assert layout.crow_t.tolist() == [0, 1, 2, 4]
    assert layout.col_t.tolist() == [2, 0, 0, 2]
    assert layout.perm.tolist() == [2, 0, 1, 3]


def test_layout_rejects_non_bool():
    with pytest.raises(ValueError, match="bool"):
        build_layout(torch.ones(2, 3))


# --- forward / backward equivalence ----------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(7, 13), (4, 5, 13), (13,)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_match_masked_linear(impl, shape, bias):
    mask = _random_mask(11, 13, 0.3, seed=1)
    dense = _masked_linear(13, 11, mask, bias=bias)
    sparse = SparseLinear.from_linear(dense, impl=impl)
    x = torch.randn(*shape, generator=_gen(2), requires_grad=True)
    y_ref, y = dense(x), sparse(x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)

    grad_out = torch.randn(y.shape, generator=_gen(3))
    inputs_ref = [x, dense.weight] + ([dense.bias] if bias else [])
    inputs = [x, sparse.values] + ([sparse.bias] if bias else [])
    grads_ref = torch.autograd.grad(y_ref, inputs_ref, grad_out)
    grads = torch.autograd.grad(y, inputs, grad_out)
    torch.testing.assert_close(grads[0], grads_ref[0], rtol=1e-5, atol=1e-6)  # input
    torch.testing.assert_close(grads[1], grads_ref[1][mask], rtol=1e-5, atol=1e-6)  # weight at links
    if bias:
        torch.testing.assert_close(grads[2], grads_ref[2], rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n_out=st.integers(1, 9),
    n_in=st.integers(1, 9),
    batch=st.integers(1, 6),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    impl=st.sampled_from(IMPLS),
)
def test_property_matches_dense_product(n_out, n_in, batch, density, seed, impl):
    mask = _random_mask(n_out, n_in, density, seed)
    weight = torch.randn(n_out, n_in, generator=_gen(seed + 1)) * mask
    layout = build_layout(mask)
    values = weight[mask].requires_grad_(True)
    x = torch.randn(batch, n_in, generator=_gen(seed + 2), requires_grad=True)
    y = sparse_linear(x, values, None, layout, impl)
    torch.testing.assert_close(y, x @ weight.t(), rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(batch, n_out, generator=_gen(seed + 3))
    gx, gv = torch.autograd.grad(y, (x, values), grad_out)
    torch.testing.assert_close(gx, grad_out @ weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gv, (grad_out.t() @ x.detach())[mask], rtol=1e-5, atol=1e-5)


def test_gather_chunks_give_the_same_result(monkeypatch):
    import chtorch.sparse.functional as functional

    mask = _random_mask(9, 11, 0.5, seed=30)
    dense = _masked_linear(11, 9, mask)
    sparse = SparseLinear.from_linear(dense, impl="gather")
    x = torch.randn(6, 11, generator=_gen(31), requires_grad=True)
    monkeypatch.setattr(functional, "_GATHER_CHUNK_ELEMENTS", 13)  # 2 links of 6 samples per chunk
    y = sparse(x)
    torch.testing.assert_close(y, dense(x), rtol=1e-5, atol=1e-6)
    gx, gv = torch.autograd.grad(y.square().sum(), (x, sparse.values))
    gx_ref, gw_ref = torch.autograd.grad(dense(x).square().sum(), (x, dense.weight))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gv, gw_ref[mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_float64(impl):
    mask = _random_mask(4, 5, 0.5, seed=4)
    layout = build_layout(mask)
    values = torch.randn(layout.nnz, dtype=torch.float64, generator=_gen(5), requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=_gen(6), requires_grad=True)
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(7), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v, b: sparse_linear(a, v, b, layout, impl), (x, values, bias))


def test_input_without_grad_gets_no_input_gradient_work():
    mask = _random_mask(6, 8, 0.4, seed=8)
    sparse = SparseLinear.from_linear(_masked_linear(8, 6, mask))
    x = torch.randn(5, 8)  # data: needs no gradient, as the first layer's input
    sparse(x).sum().backward()
    assert sparse.values.grad.shape == (sparse.nnz,)
    assert x.grad is None


def test_output_supports_head_views():
    """Transformer code splits projections with .view(B, T, H, D); the (transposed) output allows it."""
    sparse = SparseLinear(8, 12, _random_mask(12, 8, 0.5, seed=9), impl="csr")
    y = sparse(torch.randn(2, 3, 8))
    assert y.view(2, 3, 4, 3).shape == (2, 3, 4, 3)


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_runs_in_weight_precision(impl):
    mask = _random_mask(6, 8, 0.5, seed=27)
    dense = _masked_linear(8, 6, mask)
    sparse = SparseLinear.from_linear(dense, impl=impl)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse(x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad is not None and sparse.values.grad is not None
    torch.testing.assert_close(y, dense(x.to(torch.bfloat16).float()), rtol=1e-5, atol=1e-5)


def test_zero_batch():
    sparse = SparseLinear(5, 4, _random_mask(4, 5, 0.5, seed=28))
    for impl in IMPLS:
        sparse.impl = impl
        y = sparse(torch.randn(0, 5))
        assert y.shape == (0, 4)
        y.sum().backward()
        assert torch.equal(sparse.values.grad, torch.zeros(sparse.nnz))
        sparse.values.grad = None


def test_empty_mask_gives_bias():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for impl in IMPLS:
        sparse = SparseLinear(4, 3, mask, impl=impl)
        x = torch.randn(2, 4, requires_grad=True)
        y = sparse(x)
        torch.testing.assert_close(y, sparse.bias.expand(2, 3))
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros(2, 4))
        assert sparse.values.grad.shape == (0,)


def test_double_and_deepcopy():
    mask = _random_mask(5, 6, 0.5, seed=10)
    dense = _masked_linear(6, 5, mask).double()
    sparse = copy.deepcopy(SparseLinear.from_linear(dense)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(sparse(x), dense(x))
    assert sparse.rows.dtype == torch.int64 and sparse.weight_mask.dtype == torch.bool


def test_errors_are_clear():
    with pytest.raises(ValueError, match="bool"):
        SparseLinear(4, 3, torch.ones(3, 4))
    with pytest.raises(ValueError, match="shape"):
        SparseLinear(4, 3, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="impl"):
        SparseLinear(4, 3, impl="fast")
    with pytest.raises(ValueError, match="weight_mask"):
        SparseLinear.from_linear(nn.Linear(4, 3))
    sparse = SparseLinear(4, 3)
    with pytest.raises(ValueError, match="features"):
        sparse(torch.randn(2, 5))
    with pytest.raises(TypeError, match="dtype"):
        sparse(torch.randn(2, 4, dtype=torch.float64))


def test_from_linear_shares_bias_and_reads_weight():
    mask = _random_mask(5, 7, 0.4, seed=11)
    dense = _masked_linear(7, 5, mask)
    sparse = SparseLinear.from_linear(dense)
    assert sparse.bias is dense.bias
    assert torch.equal(sparse.dense_weight(), dense.weight.detach())
    assert sparse.nnz == int(mask.sum())
    assert torch.equal(sparse.weight_mask, mask)


# --- set_mask --------------------------------------------------------------------------------


def test_set_mask_hand_worked_with_adam_state():
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    sparse = SparseLinear(3, 2, mask, bias=False)
    with torch.no_grad():
        sparse.values.copy_(torch.tensor([1.0, 2.0, 3.0]))  # links (0,0) (0,1) (1,1)
    opt = torch.optim.Adam(sparse.parameters(), lr=0.1)
    param = sparse.values
    opt.state[param]["exp_avg"] = torch.tensor([10.0, 20.0, 30.0])
    opt.state[param]["exp_avg_sq"] = torch.tensor([100.0, 200.0, 300.0])
    opt.state[param]["step"] = torch.tensor(7.0)
    param.grad = torch.tensor([0.1, 0.2, 0.3])

    new_mask = torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool)  # drop (0,0); add (0,2), (1,0)
    change = sparse.set_mask(new_mask, opt)
    assert change == TopologyChange(kept=2, added=2, removed=1)
    assert sparse.values is param  # same Parameter object, resized in place
    assert param.tolist() == [2.0, 0.0, 0.0, 3.0]  # links (0,1) (0,2) (1,0) (1,1)
    assert opt.state[param]["exp_avg"].tolist() == [20.0, 0.0, 0.0, 30.0]
    assert opt.state[param]["exp_avg_sq"].tolist() == [200.0, 0.0, 0.0, 300.0]
    assert opt.state[param]["step"].item() == 7.0
    assert torch.allclose(param.grad, torch.tensor([0.2, 0.0, 0.0, 0.3]))
    assert torch.equal(sparse.weight_mask, new_mask)
    assert torch.equal(sparse.dense_weight(), torch.tensor([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]]))


@pytest.mark.parametrize(
    "new_values, expected",
    [
        (0.5, [2.0, 0.5, 0.5, 3.0]),
        (torch.tensor([7.0, 8.0]), [2.0, 7.0, 8.0, 3.0]),
        (torch.arange(6.0).reshape(2, 3), [2.0, 2.0, 3.0, 3.0]),
    ],
)
def test_set_mask_new_values(new_values, expected):
    sparse = SparseLinear(3, 2, torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool), bias=False)
    with torch.no_grad():
        sparse.values.copy_(torch.tensor([1.0, 2.0, 3.0]))
    sparse.set_mask(torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool), new_values=new_values)
    assert sparse.values.tolist() == expected


def test_set_mask_reset_treats_existing_links_as_new():
    """A link removed and regrown in one update restarts at 0 with zero state (masked `fresh`)."""
    sparse = SparseLinear(3, 2, torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool), bias=False)
    with torch.no_grad():
        sparse.values.copy_(torch.tensor([1.0, 2.0, 3.0]))
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9)
    opt.state[sparse.values]["momentum_buffer"] = torch.tensor([4.0, 5.0, 6.0])
    reset = torch.zeros(2, 3, dtype=torch.bool)
    reset[0, 1] = True
    change = sparse.set_mask(sparse.weight_mask.clone(), opt, reset=reset)
    assert change == TopologyChange(kept=2, added=1, removed=1)
    assert sparse.values.tolist() == [1.0, 0.0, 3.0]
    assert opt.state[sparse.values]["momentum_buffer"].tolist() == [4.0, 0.0, 6.0]


def test_set_mask_rejects_bad_new_values():
    sparse = SparseLinear(3, 2, torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="new_values"):
        sparse.set_mask(torch.ones(2, 3, dtype=torch.bool), new_values=torch.ones(4))


def test_set_mask_accepts_edited_buffer_and_shrinks():
    """The engine may edit weight_mask in place and then call set_mask(module.weight_mask)."""
    mask = _random_mask(8, 9, 0.5, seed=12)
    sparse = SparseLinear(9, 8, mask)
    before = sparse.dense_weight().detach().clone()
    drop = mask & (torch.rand(8, 9, generator=_gen(13)) < 0.5)
    sparse.weight_mask[drop] = False
    change = sparse.set_mask(sparse.weight_mask)
    assert change.added == 0 and change.removed == int(drop.sum())
    assert sparse.nnz == int((mask & ~drop).sum())
    torch.testing.assert_close(sparse.dense_weight(), before * (mask & ~drop))


def test_set_mask_sgd_momentum_and_identity_in_optimizer():
    mask = _random_mask(6, 7, 0.4, seed=14)
    sparse = SparseLinear(7, 6, mask)
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9)
    sparse(torch.randn(4, 7)).sum().backward()
    opt.step()
    momentum = opt.state[sparse.values]["momentum_buffer"].clone()
    new_mask = mask.clone()
    new_mask[0] = ~new_mask[0]
    sparse.set_mask(new_mask, opt)
    buf = opt.state[sparse.values]["momentum_buffer"]
    assert buf.shape == sparse.values.shape
    old_dense = torch.zeros(6, 7).index_put_(mask.nonzero(as_tuple=True), momentum)
    torch.testing.assert_close(torch.zeros(6, 7).index_put_(new_mask.nonzero(as_tuple=True), buf), old_dense * new_mask)
    assert opt.param_groups[0]["params"][0] is sparse.values
    opt.zero_grad()
    sparse(torch.randn(4, 7)).sum().backward()  # shapes agree after the resize
    opt.step()
