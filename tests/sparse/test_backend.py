"""The truly sparse backend inside the engine: same masks and weights as the masked backend."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

import chtorch
from chtorch.sparse import SparseLinear


def make(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 3))


def run(backend: str, method: str, opt_kind: str, steps: int = 24, **kw):
    model = make()
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        if opt_kind == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-2)
    )
    sp = chtorch.sparsify(
        model, opt, method=method, sparsity=0.8, total_steps=steps, update_interval=4, seed=5, backend=backend, **kw
    )
    outputs = []
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g)
        out = model(x)
        outputs.append(out.detach())
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        sp.step()
        opt.zero_grad()
    return model, sp, outputs


@pytest.mark.parametrize("method", ["set", "chts", "chtss", "static"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_sparse_backend_follows_the_masked_backend(method, opt_kind):
    m_model, m_sp, m_out = run("masked", method, opt_kind)
    s_model, s_sp, s_out = run("sparse", method, opt_kind)
    assert all(isinstance(s_model[i], SparseLinear) for i in (0, 2))
    assert isinstance(s_model[4], nn.Linear)
    for a, b in zip(m_out, s_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name in m_sp.masks:
        assert torch.equal(m_sp.masks[name], s_sp.masks[name]), name
    m_state, s_state = m_model.state_dict(), s_model.state_dict()
    assert set(m_state) == set(s_state)
    for key in m_state:
        torch.testing.assert_close(m_state[key].float(), s_state[key].float(), rtol=1e-4, atol=1e-5)


def test_sparse_backend_serves_dense_gradient_methods():
    # (equivalence with the masked backend: tests/dst/test_backend_equivalence.py)
    for method in ("rigl", "granet", "mest"):
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = chtorch.sparsify(model, opt, method=method, sparsity=0.9, total_steps=10, backend="sparse")
        assert sp.options.needs_dense_gradient and isinstance(model[0], SparseLinear)


def test_auto_backend_picks_by_method_density_and_size(caplog):
    def build(method, sparsity, width=256):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with caplog.at_level(logging.INFO, logger="chtorch"):
            return chtorch.sparsify(model, opt, method=method, sparsity=sparsity, total_steps=10, backend="auto")

    assert set(build("chts", 0.95).backends.values()) == {"sparse"}
    assert "sparse" in caplog.text
    assert set(build("rigl", 0.95).backends.values()) == {"sparse"}  # dense gradients only before an update
    assert set(build("chts", 0.5).backends.values()) == {"masked"}
    # CHTss starts at 50% density (decay to 5%): masked until an update crosses the threshold
    assert set(build("chtss", 0.95).backends.values()) == {"masked"}
    assert set(build("chts", 0.95, width=32).backends.values()) == {"masked"}
    assert "backend" in build("chts", 0.95).summary()


@pytest.mark.parametrize("method", ["chts", "chtss"])
def test_sparse_backend_resumes_exactly(method):
    total, k = 24, 10  # chtss: the checkpoint is taken after links were pruned (values capacity > nnz)

    def build():
        model = make()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sp = chtorch.sparsify(
            model, opt, method=method, sparsity=0.8, total_steps=total, update_interval=4, seed=5, backend="sparse"
        )
        return model, opt, sp

    def train(model, opt, sp, start, stop):
        for t in range(start, stop):
            g = torch.Generator().manual_seed(t)
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sp.step()
            opt.zero_grad()

    model, opt, sp = build()
    train(model, opt, sp, 0, total)
    reference = model.state_dict()
    model, opt, sp = build()
    train(model, opt, sp, 0, k)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model, opt, sp = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sp.load_state_dict(saved["sp"])
    train(model, opt, sp, k, total)
    for key, value in reference.items():
        assert torch.equal(value, model.state_dict()[key]), key


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_fused_optimizers_train_the_values_as_the_for_loop_ones(kind):
    # fused=True (one kernel over all of a group's tensors) measured faster for AdamW at batch 32;
    # topology updates must carry its state (tensor `step` included) as they do the default's
    def build(fused):
        model = make()
        cls = torch.optim.SGD if kind == "sgd" else torch.optim.AdamW
        extra = {"momentum": 0.9} if kind == "sgd" else {}
        opt = cls(model.parameters(), lr=1e-2, fused=fused, **extra)
        sp = chtorch.sparsify(
            model, opt, method="chtss", sparsity=0.8, total_steps=24, update_interval=4, seed=5, backend="sparse"
        )
        return model, opt, sp

    runs = []
    for fused in (False, True):
        model, opt, sp = build(fused)
        for t in range(24):
            g = torch.Generator().manual_seed(t)
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sp.step()
            opt.zero_grad()
        runs.append((model.state_dict(), sp))
    (a, a_sp), (b, b_sp) = runs
    for name in a_sp.masks:
        assert torch.equal(a_sp.masks[name], b_sp.masks[name])
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5)
