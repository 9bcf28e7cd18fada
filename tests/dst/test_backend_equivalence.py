"""Every method on the truly sparse backend, and ``auto`` moving layers between backends.

* RigL, GraNet and MEST (λ > 0) read the dense gradient before an update: on the sparse backend the
  layer forms ``dy^T x`` only in the ``grad_accumulation`` steps before an update, and the run follows
  the masked backend (same masks, same weights).
* Density-decay methods (CHTss, GMP, GraNet, MEST EM&S) start masked under ``auto`` and move each
  layer to the sparse backend at the update where its density crosses the threshold, weights and
  optimizer state exactly; a state saved after such a switch resumes bit-identically.

float64 keeps the two backends' rounding far below any ranking decision, so masks compare equal.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import chtorch
from chtorch.dst import layer as layer_module
from chtorch.dst.layer import TrulySparseLayer, switch_backend
from chtorch.sparse import SparseLinear

STEPS, INTERVAL = 24, 4


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 3)).double()


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def build(backend: str, method: str, opt_kind: str = "sgd", sparsity: float = 0.8, **kw):
    model = make_model()
    opt = make_optimizer(model, opt_kind)
    sp = chtorch.sparsify(
        model,
        opt,
        method=method,
        sparsity=sparsity,
        total_steps=STEPS,
        update_interval=INTERVAL,
        seed=5,
        backend=backend,
        **kw,
    )
    return model, opt, sp


def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(t)
    return torch.randn(16, 20, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def train(model, opt, sp, start: int, stop: int, trace: list | None = None) -> None:
    for t in range(start, stop):
        x, y = batch(t)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
        opt.zero_grad()
        if trace is not None:
            trace.append(({n: m.clone() for n, m in sp.masks.items()}, dict(sp.backends)))


def assert_same_run(a_model, a_sp, b_model, b_sp, exact: bool = False) -> None:
    for name in a_sp.masks:
        assert torch.equal(a_sp.masks[name], b_sp.masks[name]), name
    a_state, b_state = a_model.state_dict(), b_model.state_dict()
    assert set(a_state) == set(b_state)
    for key in a_state:
        if exact:
            assert torch.equal(a_state[key], b_state[key]), key
        else:
            torch.testing.assert_close(a_state[key], b_state[key], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", ["rigl", "granet", "mest"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_dense_gradient_methods_on_the_sparse_backend_follow_the_masked_one(method, opt_kind):
    m_model, m_opt, m_sp = build("masked", method, opt_kind)
    s_model, s_opt, s_sp = build("sparse", method, opt_kind)
    assert s_sp.options.needs_dense_gradient
    assert all(isinstance(s_model[i], SparseLinear) for i in (0, 2))
    m_trace, s_trace = [], []
    train(m_model, m_opt, m_sp, 0, STEPS, m_trace)
    train(s_model, s_opt, s_sp, 0, STEPS, s_trace)
    for (m_masks, _), (s_masks, _) in zip(m_trace, s_trace):  # the same masks after every step
        assert all(torch.equal(m_masks[n], s_masks[n]) for n in m_masks)
    assert s_sp.update_count == m_sp.update_count > 0
    assert any(not torch.equal(m_trace[0][0][n], m_trace[-1][0][n]) for n in m_sp.masks)  # the updates moved links
    assert_same_run(m_model, m_sp, s_model, s_sp)


@pytest.mark.parametrize("accumulation", [1, 3])
def test_sparse_layer_forms_the_dense_gradient_only_before_an_update(monkeypatch, accumulation):
    recorded: list[tuple[int, str]] = []
    original = TrulySparseLayer.record_grad

    def counting(self, dense):
        assert dense.shape == self.shape
        recorded.append((sp.step_count + 1, self.name))
        original(self, dense)

    monkeypatch.setattr(TrulySparseLayer, "record_grad", counting)
    model, opt, sp = build("sparse", "rigl", grad_accumulation=accumulation)
    train(model, opt, sp, 0, STEPS)
    steps = sorted({step for step, _ in recorded})
    window = [
        s
        for s in range(1, STEPS + 1)
        if any(0 <= u - s < accumulation for u in range(INTERVAL, sp.t_end + 1, INTERVAL))
    ]
    assert steps == window
    assert len(recorded) == 2 * len(window)  # once per sparsified layer and step, never otherwise


def test_the_recorded_dense_gradient_is_the_masked_layers_gradient():
    m_model, m_opt, m_sp = build("masked", "rigl")
    s_model, s_opt, s_sp = build("sparse", "rigl")
    for model, opt, sp in ((m_model, m_opt, m_sp), (s_model, s_opt, s_sp)):
        sp.step_count = INTERVAL - 1  # the next backward pass is in the window
        x, y = batch(0)
        nn.functional.cross_entropy(model(x), y).backward()
        assert all(layer.grad_count == 0 for layer in sp.layers)  # it counts once the optimizer step runs
        opt.step()
    for a, b in zip(m_sp.layers, s_sp.layers):
        assert a.grad_count == b.grad_count == 1
        torch.testing.assert_close(a.grad_sum, b.grad_sum, rtol=1e-12, atol=1e-14)


@pytest.fixture
def small_layers_run_sparse(monkeypatch):
    """The test model's layers are below the size where auto goes sparse; let them qualify."""
    monkeypatch.setattr(layer_module, "AUTO_SPARSE_MIN_POSITIONS", 0)


DECAY = [("chtss", {}), ("gmp", {}), ("granet", {}), ("mest", {})]  # mest: EM&S, shrinking from a denser start


@pytest.mark.parametrize("method,kw", DECAY, ids=[m for m, _ in DECAY])
def test_auto_moves_a_decaying_layer_to_the_sparse_backend_exactly(small_layers_run_sparse, method, kw):
    sparsity = 0.95
    a_model, a_opt, a_sp = build("auto", method, "adamw", sparsity=sparsity, **kw)
    m_model, m_opt, m_sp = build("masked", method, "adamw", sparsity=sparsity, **kw)
    trace: list = []
    train(a_model, a_opt, a_sp, 0, STEPS, trace)
    train(m_model, m_opt, m_sp, 0, STEPS)
    first, last = trace[0][1], trace[-1][1]
    assert set(last.values()) == {"sparse"}, last
    if method != "mest":  # EM&S starts only a little denser than the target
        assert "masked" in set(first.values()), first
    # each switch happens at the update where the layer's budget crosses the threshold
    for step, (masks, backends) in enumerate(trace, start=1):
        for name, mask in masks.items():
            density = int(mask.sum()) / mask.numel()
            assert backends[name] == ("sparse" if density <= layer_module.AUTO_SPARSE_MAX_DENSITY else "masked"), (
                step,
                name,
            )
    assert all(isinstance(a_model[i], SparseLinear) for i in (0, 2))
    assert_same_run(m_model, m_sp, a_model, a_sp)
    for a, b in zip(m_sp.layers, a_sp.layers):
        assert torch.equal(a.ever_active, b.ever_active)


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_switching_there_and_back_carries_weights_and_optimizer_state_exactly(opt_kind):
    model, opt, sp = build("masked", "set", opt_kind)
    train(model, opt, sp, 0, 6)
    layer = sp.layers[1]
    weight, mask = layer.dense_weight().clone(), layer.mask.clone()
    dense_state = {k: v.clone() for k, v in opt.state[layer.parameter].items()}
    sparse = switch_backend(layer, "sparse", model, opt)
    assert isinstance(model[2], SparseLinear) and sparse.parameter is model[2].values
    assert torch.equal(sparse.dense_weight(), weight) and torch.equal(sparse.mask, mask)
    state = opt.state[sparse.parameter]
    for key, value in dense_state.items():
        assert torch.equal(state[key], value[mask] if value.dim() == 2 else value), key
    assert sparse.ever_active is layer.ever_active
    back = switch_backend(sparse, "masked", model, opt)
    assert type(model[2]) is nn.Linear and torch.equal(model[2].weight_mask, mask)
    assert torch.equal(back.dense_weight(), weight)
    for key, value in dense_state.items():
        assert torch.equal(opt.state[back.parameter][key], value), key
    positions = [i for g in opt.param_groups for i, p in enumerate(g["params"]) if p is back.parameter]
    assert positions == [2]  # the same place in its param group: group options apply unchanged


def test_a_layer_goes_back_to_masked_when_its_density_rises(small_layers_run_sparse, monkeypatch):
    model, opt, sp = build("auto", "set", sparsity=0.95)
    assert set(sp.backends.values()) == {"sparse"}
    monkeypatch.setattr(layer_module, "AUTO_SPARSE_MAX_DENSITY", 0.01)  # now above the threshold
    m_model, m_opt, m_sp = build("masked", "set", sparsity=0.95)
    train(model, opt, sp, 0, STEPS)
    train(m_model, m_opt, m_sp, 0, STEPS)
    assert set(sp.backends.values()) == {"masked"}
    assert all(type(model[i]) is nn.Linear for i in (0, 2))
    assert_same_run(m_model, m_sp, model, sp)


@pytest.mark.parametrize("method", ["chtss", "granet"])
@pytest.mark.parametrize("order", ["model-sparsity-optimizer", "model-optimizer-sparsity"])
def test_auto_resumes_exactly_across_a_switch(small_layers_run_sparse, method, order):
    sparsity = 0.95
    model, opt, sp = build("auto", method, "adamw", sparsity=sparsity)
    trace: list = []
    train(model, opt, sp, 0, STEPS, trace)
    switched = [i for i in range(1, STEPS) if trace[i][1] != trace[i - 1][1]]
    assert switched, "the run must switch a layer for this test to mean anything"
    k = switched[0] + 3  # the checkpoint is taken after the switch (values capacity > nnz later)
    reference = model.state_dict()

    model, opt, sp = build("auto", method, "adamw", sparsity=sparsity)
    train(model, opt, sp, 0, k)
    assert "sparse" in sp.backends.values()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    model, opt, sp = build("auto", method, "adamw", sparsity=sparsity)
    assert "masked" in sp.backends.values()  # a fresh run starts dense enough to be masked
    model.load_state_dict(saved["model"])
    if order == "model-sparsity-optimizer":  # the trainer's order
        sp.load_state_dict(saved["sp"])
        opt.load_state_dict(saved["opt"])
    else:
        opt.load_state_dict(saved["opt"])
        sp.load_state_dict(saved["sp"])
    for group in opt.param_groups:
        for p in group["params"]:
            for value in opt.state.get(p, {}).values():
                assert not torch.is_tensor(value) or value.dim() == 0 or value.shape == p.shape
    train(model, opt, sp, k, STEPS)
    for key, value in reference.items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_a_copy_of_a_watched_sparse_model_is_not_watched():
    import copy
    import pickle

    model, opt, sp = build("sparse", "rigl")
    assert model[0]._dense_grad_watch is not None
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone[0]._dense_grad_watch is None
        x, y = batch(0)
        nn.functional.cross_entropy(clone(x), y).backward()
        torch.testing.assert_close(clone(x), model(x))
    sp.remove()
    assert model[0]._dense_grad_watch is None
