"""SparseLinear beyond one product: a short training run, state dicts across backends, to_sparse /
to_dense and the CSR inference layer, each equal to the masked dense Linear it replaces."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from chtorch.sparse import (
    SparseInferenceLinear,
    SparseLinear,
    align_optimizer_state,
    native,
    to_dense,
    to_sparse,
)
from helpers import masked_linear as _masked_linear
from helpers import random_mask as _random_mask

IMPLS = ["csr", "gather"] + (["native"] if native.available() else [])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- a short training run: sparse backend == masked backend -----------------------------------


def _mask_state(opt: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> None:
    for value in opt.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.mul_(mask)


def _train_both(make_opt, impl: str, masks_over_time, steps_per_mask: int = 3):
    """Train a masked 2-layer MLP and its sparse twin side by side; return both models."""
    sizes = (10, 12, 9, 4)
    first = masks_over_time[0]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(sizes[0], sizes[1]),
        nn.ReLU(),
        nn.Linear(sizes[1], sizes[2]),
        nn.ReLU(),
        nn.Linear(sizes[2], sizes[3]),
    )
    names = ["0", "2"]
    for name, mask in zip(names, first):
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.mul_(mask)
        layer.register_buffer("weight_mask", mask.clone())
    twin = copy.deepcopy(model)
    opt_masked = make_opt(model.parameters())
    opt_sparse = make_opt(twin.parameters())
    to_sparse(twin, names, optimizer=opt_sparse, impl=impl)
    current = [m.clone() for m in first]
    hooks = [model.get_submodule(n).weight.register_hook(lambda g, i=i: g * current[i]) for i, n in enumerate(names)]
    data = torch.Generator().manual_seed(99)
    for phase, masks in enumerate(masks_over_time):
        if phase > 0:  # topology update: masked backend zeroes weights and state off the new mask
            for i, (name, mask) in enumerate(zip(names, masks)):
                current[i] = mask.clone()
                layer = model.get_submodule(name)
                with torch.no_grad():
                    layer.weight.mul_(mask)
                    layer.weight_mask.copy_(mask)
                _mask_state(opt_masked, layer.weight, mask)
                twin.get_submodule(name).set_mask(mask, opt_sparse)
        for _ in range(steps_per_mask):
            x = torch.randn(8, sizes[0], generator=data)
            y = torch.randint(0, sizes[3], (8,), generator=data)
            for net, opt in ((model, opt_masked), (twin, opt_sparse)):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
            for i, name in enumerate(names):  # masked backend hygiene after the step
                layer = model.get_submodule(name)
                with torch.no_grad():
                    layer.weight.mul_(current[i])
                _mask_state(opt_masked, layer.weight, current[i])
    for h in hooks:
        h.remove()
    return model, twin


def _mask_sequence(shrink: bool):
    shapes = [(12, 10), (9, 12)]
    seqs = []
    for phase in range(3):
        density = 0.5 - (0.15 * phase if shrink else 0.0)
        seqs.append([_random_mask(o, i, density, seed=100 + 10 * phase + k) for k, (o, i) in enumerate(shapes)])
    return seqs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
    ],
    ids=["sgd-momentum", "adamw"],
)
@pytest.mark.parametrize("shrink", [False, True], ids=["fixed-nnz", "shrinking-nnz"])
def test_training_run_matches_masked_backend(impl, make_opt, shrink):
    model, twin = _train_both(make_opt, impl, _mask_sequence(shrink))
    ref, got = model.state_dict(), twin.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    # the run really trained: weights moved away from their initial values
    untrained, _ = _train_both(make_opt, impl, _mask_sequence(shrink)[:1], steps_per_mask=0)
    assert not torch.allclose(ref["4.weight"], untrained.state_dict()["4.weight"])


# --- state_dict across backends ---------------------------------------------------------------


def test_state_dict_keys_and_values_match_masked_backend():
    mask = _random_mask(5, 6, 0.5, seed=15)
    dense = _masked_linear(6, 5, mask)
    sparse = SparseLinear.from_linear(dense)
    ref, got = dense.state_dict(), sparse.state_dict()
    assert list(got) == list(ref) == ["weight", "bias", "weight_mask"]
    for key in ref:
        assert torch.equal(got[key], ref[key])


def test_checkpoint_loads_masked_into_sparse_with_other_topology():
    src = _masked_linear(6, 5, _random_mask(5, 6, 0.6, seed=16), seed=1)
    dst = SparseLinear(6, 5, _random_mask(5, 6, 0.2, seed=17))
    param = dst.values
    result = dst.load_state_dict(src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert dst.values is param and dst.nnz == int(src.weight_mask.sum())
    assert torch.equal(dst.dense_weight(), src.weight.detach())
    x = torch.randn(3, 6)
    torch.testing.assert_close(dst(x), src(x))


def test_checkpoint_loads_sparse_into_masked():
    src = SparseLinear(6, 5, _random_mask(5, 6, 0.4, seed=18), generator=_gen(19))
    dst = _masked_linear(6, 5, _random_mask(5, 6, 0.4, seed=20))
    dst.load_state_dict(src.state_dict(), strict=True)
    assert torch.equal(dst.weight_mask, src.weight_mask)
    x = torch.randn(3, 6)
    torch.testing.assert_close(dst(x), src(x))


def test_model_checkpoint_round_trip_across_backends():
    masks = {"0": _random_mask(12, 10, 0.3, seed=21), "2": _random_mask(4, 12, 0.3, seed=22)}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 4))
    for name, mask in masks.items():
        with torch.no_grad():
            model.get_submodule(name).weight.mul_(mask)
        model.get_submodule(name).register_buffer("weight_mask", mask.clone())
    sparse_model = copy.deepcopy(model)
    to_sparse(sparse_model)
    back = copy.deepcopy(model)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    back.load_state_dict(sparse_model.state_dict(), strict=True)
    x = torch.randn(5, 10)
    torch.testing.assert_close(back(x), model(x))
    torch.testing.assert_close(sparse_model(x), model(x), rtol=1e-5, atol=1e-6)


def test_load_reports_missing_weight_and_size_mismatch():
    sparse = SparseLinear(6, 5, _random_mask(5, 6, 0.4, seed=23))
    result = sparse.load_state_dict({"weight_mask": sparse.weight_mask.clone()}, strict=False)
    assert "weight" in result.missing_keys and "values" not in result.missing_keys
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        sparse.load_state_dict({"weight": torch.zeros(4, 4), "bias": torch.zeros(5), "weight_mask": sparse.weight_mask})


def test_load_dense_checkpoint_without_mask_keeps_topology():
    mask = _random_mask(5, 6, 0.4, seed=24)
    sparse = SparseLinear(6, 5, mask)
    plain = nn.Linear(6, 5)
    result = sparse.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys == ["weight_mask"]
    assert torch.equal(sparse.weight_mask, mask)
    assert torch.equal(sparse.dense_weight(), plain.weight.detach() * mask)


# --- to_sparse / to_dense ----------------------------------------------------------------------


def test_to_sparse_moves_optimizer_entry_and_state_and_back():
    mask = _random_mask(6, 5, 0.5, seed=25)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.mul_(mask)
    opt = torch.optim.Adam([{"params": [model[0].weight, model[0].bias], "lr": 0.1}, {"params": model[2].parameters()}])
    model(torch.randn(3, 5)).sum().backward()
    opt.step()
    dense_weight = model[0].weight
    exp_avg = opt.state[dense_weight]["exp_avg"].clone()
    replaced = to_sparse(model, ["0"], {"0": mask}, opt)
    sparse = replaced["0"]
    assert model[0] is sparse and isinstance(sparse, SparseLinear)
    assert opt.param_groups[0]["params"][0] is sparse.values
    assert opt.param_groups[0]["params"][1] is sparse.bias
    assert dense_weight not in opt.state
    assert torch.equal(opt.state[sparse.values]["exp_avg"], exp_avg[mask])
    assert opt.state[sparse.values]["step"] == opt.state[sparse.bias]["step"]

    back = to_dense(model, optimizer=opt)["0"]
    assert type(back) is nn.Linear and torch.equal(back.weight_mask, mask)
    assert opt.param_groups[0]["params"][0] is back.weight
    assert torch.equal(opt.state[back.weight]["exp_avg"], exp_avg * mask)
    assert torch.equal(back.weight.detach(), dense_weight.detach() * mask)  # off-link entries are dropped


@pytest.mark.parametrize("direction", ["masked->sparse", "sparse->masked"])
def test_resume_across_backends_with_optimizer_state(direction):
    """Checkpoint (model + optimizer) from one backend resumes the other; training then agrees."""
    masks = {"0": _random_mask(12, 10, 0.4, seed=29)}

    def make_opt(params):
        return torch.optim.Adam(params, lr=0.01)

    def build(sparse: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
        _ = model[0].register_buffer("weight_mask", masks["0"].clone())
        with torch.no_grad():
            model[0].weight.mul_(masks["0"])
        opt = make_opt(model.parameters())
        if sparse:
            to_sparse(model, optimizer=opt)
        return model, opt

    def train(model, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        hook = None
        if not isinstance(model[0], SparseLinear):
            hook = model[0].weight.register_hook(lambda grad: grad * model[0].weight_mask)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(6, 10, generator=g)).square().mean().backward()
            opt.step()
        if hook is not None:
            hook.remove()

    src_sparse = direction == "sparse->masked"
    src, src_opt = build(src_sparse)
    train(src, src_opt, 3, seed=1)
    dst, dst_opt = build(not src_sparse)
    # deep copies, as a checkpoint file gives: torch shares Adam's `step` tensors on an in-memory load
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    dst_opt.load_state_dict(copy.deepcopy(src_opt.state_dict()))
    assert align_optimizer_state(dst_opt, dst) == 2  # exp_avg and exp_avg_sq of the sparse layer
    train(src, src_opt, 3, seed=2)
    train(dst, dst_opt, 3, seed=2)
    for key, value in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_to_sparse_errors():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError, match="weight_mask"):
        to_sparse(model)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        to_sparse(model, ["1"], {"1": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not in names"):
        to_sparse(model, ["0"], {"x": torch.ones(3, 3, dtype=torch.bool)})


# --- inference layer --------------------------------------------------------------------------


def test_sparse_inference_linear_matches_and_round_trips():
    mask = _random_mask(7, 9, 0.3, seed=26)
    dense = _masked_linear(9, 7, mask)
    layer = SparseInferenceLinear(dense.weight, dense.bias, mask)
    x = torch.randn(2, 3, 9)
    torch.testing.assert_close(layer(x), dense(x).detach(), rtol=1e-5, atol=1e-6)
    assert layer.nnz == int(mask.sum()) and not list(layer.parameters())
    other = SparseInferenceLinear(torch.randn(7, 9), torch.zeros(7))
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), layer(x))
    assert torch.equal(other.dense_weight(), dense.weight.detach())
