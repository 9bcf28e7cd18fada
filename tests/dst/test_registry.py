"""Registered parts, their declarations, composed presets, the dense baseline, and the API default."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from torch import nn

import chtorch
from chtorch.dst import registry
from chtorch.dst.methods import get_method, is_dense, merge_overrides, register_method, resolve_options
from chtorch.dst.options import OptionError, SparsityOptions


def make_mlp(sizes: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train(model: nn.Module, sp, optimizer, steps: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    reports = []
    for _ in range(steps):
        x = torch.randn(16, model[0].in_features, generator=g)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report = sp.step()
        if report is not None:
            reports.append(report)
    return reports


@pytest.fixture
def scratch_registry():
    """Remove what a test registers, so other tests see the built-in parts only."""
    added: list[tuple[object, str]] = []
    yield added
    for reg, name in added:
        reg._parts.pop(name, None)


def test_a_user_removal_score_trains_through_sparsify(scratch_registry) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    @chtorch.register_part("removal", "reversed_magnitude", summary="keep the smallest weights (a test score)")
    def reversed_magnitude(weight, mask, *, grad=None):
        seen.append((weight.detach().clone(), mask.clone()))
        return (1.0 / (weight.abs() + 1e-6)) * mask

    scratch_registry.append((registry.REMOVALS, "reversed_magnitude"))
    assert "reversed_magnitude" in chtorch.part_names("removal")
    assert SparsityOptions(removal="reversed_magnitude").removal == "reversed_magnitude"  # validation accepts it

    model = make_mlp([6, 12, 12, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = chtorch.sparsify(
        model, opt, method="set", sparsity=0.8, total_steps=40, update_interval=10, removal="reversed_magnitude"
    )
    budgets = {k: int(v.sum()) for k, v in sp.masks.items()}
    reports = train(model, sp, opt, 10)
    assert len(reports) == 1 and len(seen) == 2  # one update, one call per layer
    for (weight, mask), name in zip(seen, sp.layer_names):
        new_mask = sp.masks[name]
        assert int(new_mask.sum()) == budgets[name]  # exact budget
        n_active = int(mask.sum())
        n_keep = n_active - int(0.3 * n_active)
        active = torch.nonzero(mask.flatten()).flatten()
        smallest = active[torch.argsort(weight.flatten()[active].abs())[:n_keep]]
        assert bool(new_mask.flatten()[smallest].all())  # the user's score decided what was kept
        assert reports[0].layers[name].removed == n_active - n_keep


def test_part_declarations_drive_needs_and_backend(scratch_registry) -> None:
    @chtorch.register_part("regrowth", "grad_times_two", needs=("dense_gradient",))
    def grad_times_two(keep, *, grad=None):
        return 2 * grad.abs()

    scratch_registry.append((registry.REGROWTHS, "grad_times_two"))
    opts = SparsityOptions(regrowth="grad_times_two")
    assert opts.needs_dense_gradient and opts.needs() == {"dense_gradient": ["regrowth"]}
    model = make_mlp([6, 12, 12, 3])
    # a part that reads the dense gradient runs on the sparse backend too: the layer forms dy^T x before updates
    sp = chtorch.sparsify(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method="set",
        total_steps=10,
        backend="sparse",
        regrowth="grad_times_two",
    )
    assert sp.options.needs_dense_gradient and set(sp.backends.values()) == {"sparse"}
    # MEST's score needs the gradient only while its lambda is positive; removal only runs with zeta > 0
    assert SparsityOptions(removal="mest", mest_lambda=0.01).needs_dense_gradient
    assert not SparsityOptions(removal="mest", mest_lambda=0.0).needs_dense_gradient
    assert not SparsityOptions(removal="mest", zeta=0.0).needs_dense_gradient
    assert SparsityOptions(regrown_init="history").needs_weight_history and not SparsityOptions().needs_weight_history


def test_unknown_part_names_list_the_registered_ones() -> None:
    with pytest.raises(OptionError, match=r"removal='magnitud' is not one of .*did you mean 'magnitude'"):
        SparsityOptions(removal="magnitud")
    with pytest.raises(OptionError, match="init='ws'"):
        SparsityOptions(init="ws")
    with pytest.raises(OptionError, match="prune_score='set' is a rule"):
        SparsityOptions(prune_score="set")
    with pytest.raises(ValueError, match="unknown kind of part"):
        registry.registry("regrow")


def test_presets_compose() -> None:
    chts, chtss = get_method("chts"), get_method("chtss")
    assert chtss.based_on == "chts"
    assert set(chtss.differences()) == {
        "density_schedule",
        "initial_sparsity",
        "sigmoid_k",
        "prune_score",
        "decay_end_fraction",
        "final_update",  # through T_end, as the LLaMA code (the only code with a density decay)
    }
    base = chts.build_options()
    derived = chtss.build_options()
    for name in SparsityOptions.field_names():
        if name not in chtss.differences():
            assert getattr(derived, name) == getattr(base, name), name
    try:
        preset = register_method(
            "chts_topk", "CHTs with top-k regrowth", "test", based_on="chts", regrowth_selection="topk"
        )
        assert preset.build_options().init_options == {"r": 0.25, "degree": "uniform"}
        assert preset.build_options().regrowth_selection == "topk" and preset.build_options().percolation
    finally:
        from chtorch.dst import methods as m

        m._REGISTRY.pop("chts_topk", None)


def test_overrides_merge_in_one_place() -> None:
    merged = merge_overrides({"zeta": 0.2, "init_options": {"r": 0.5}}, {"init_options": {"degree": "fixed"}}, None)
    assert merged == {"zeta": 0.2, "init_options": {"r": 0.5, "degree": "fixed"}}
    opts = resolve_options("chts", {"init_options": {"r": 0.5}})
    assert opts.init_options == {"r": 0.5, "degree": "uniform"}
    assert resolve_options("chts", {"init": "bsw"}).init_options == {}  # BRF's options do not apply to BSW


def test_dense_is_one_registered_preset_that_does_not_sparsify() -> None:
    assert is_dense("dense") and is_dense("DENSE") and not is_dense("chts")
    assert "dense" not in chtorch.methods() and chtorch.all_methods()[0] == "dense"
    model = make_mlp([4, 8, 2])
    with pytest.raises(OptionError, match="dense"):
        chtorch.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), method="dense", total_steps=10)
    assert not hasattr(model[0], "weight_mask")


def test_methods_verbose_lists_presets_and_parts() -> None:
    from chtorch.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["methods", "-v"]) == 0
    text = out.getvalue()
    assert "chtss" in text and "parts: chts plus density_schedule='sigmoid'" in text
    for kind in registry.KINDS:
        assert f"  {kind}:" in text
    assert "gradient" in text and "[needs: dense_gradient]" in text and "[needs: live_neurons]" in text


def test_engine_built_from_saved_masks_keeps_weights_and_moments() -> None:
    model = make_mlp([6, 12, 12, 3])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.7, total_steps=30, update_interval=5)
    train(model, sp, opt, 12)
    masks = {k: v.clone() for k, v in sp.masks.items()}
    # a checkpoint is a copy (optimizer.load_state_dict would share the live moment tensors)
    model_state, opt_state, engine_state = copy.deepcopy((model.state_dict(), opt.state_dict(), sp.state_dict()))

    # a resumed process: a fresh model and optimizer loaded from the "checkpoint", then sparsify
    model2 = make_mlp([6, 12, 12, 3], seed=1)
    model2.load_state_dict({k: v for k, v in model_state.items() if not k.endswith("weight_mask")})
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(opt_state)
    weights = {k: v.clone() for k, v in model2.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt2.state.items()}
    sp2 = chtorch.sparsify(model2, opt2, method="chts", sparsity=0.7, total_steps=30, update_interval=5, masks=masks)
    sp2.load_state_dict(engine_state)
    assert all(torch.equal(sp2.masks[k], masks[k]) for k in masks)
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in weights.items())  # no SWI redraw, nothing lost
    for p, state in opt2.state.items():
        assert all(torch.equal(v, moments[id(p)][k]) for k, v in state.items())
    # and it continues exactly like the uninterrupted run
    train(model, sp, opt, 10, seed=5)
    train(model2, sp2, opt2, 10, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    with pytest.raises(ValueError, match="masks are given for layers"):
        model3 = make_mlp([6, 12, 12, 3])
        chtorch.sparsify(
            model3, torch.optim.SGD(model3.parameters(), lr=0.1), method="chts", total_steps=30, masks={"0": masks["0"]}
        )


def test_the_api_default_trains_a_sparse_mlp_on_digits(one_thread) -> None:
    """The default: sparsify(model, opt, method="chts", sparsity=0.99) on a plain 64-512-512-512-10 MLP
    trained with SGD must learn (with the model's masked Kaiming init it stays at chance)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    train_idx, test_idx = order[:1400], order[1400:]
    model = make_mlp([64, 512, 512, 512, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs, batch = 3, 32
    sp = chtorch.sparsify(
        model, opt, method="chts", sparsity=0.99, total_steps=epochs * ((len(train_idx) + batch - 1) // batch)
    )
    assert sp.options.weight_init == "swi"
    for _ in range(epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
    with torch.no_grad():
        accuracy = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    assert accuracy > 0.7, accuracy  # chance is 0.1; measured 0.92 here


def test_part_option_bags_reach_the_chosen_part_and_are_checked() -> None:
    """A registered removal reads its parameter from ``removal_options``; an unknown key, or a key an
    option already sets, is refused naming the part and the valid keys."""
    import torch
    from torch import nn

    from chtorch.dst import OptionError, SparsityOptions, register_part
    from chtorch.dst.registry import REMOVALS

    seen = []

    @register_part("removal", "test_scaled_magnitude", summary="|W|^power")
    def scaled(weight, mask, *, grad=None, power: float = 1.0):
        seen.append(power)
        return (weight.abs() ** power) * mask

    try:
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = chtorch.sparsify(
            model,
            opt,
            method="set",
            sparsity=0.5,
            total_steps=10,
            update_interval=1,
            removal="test_scaled_magnitude",
            removal_options={"power": 2.0},
        )
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        sp.step()
        assert seen and set(seen) == {2.0}
        with pytest.raises(OptionError, match="removal_options key 'pow' is not a parameter of removal="):
            SparsityOptions(removal="test_scaled_magnitude", removal_options={"pow": 2}).validate()
        with pytest.raises(OptionError, match="reads it from option 'ch_variant'"):
            SparsityOptions(regrowth="ch", regrowth_options={"variant": "CH3"}).validate()
        # overriding the part drops the preset's bag; a bag override merges key by key
        from chtorch.dst import resolve_options

        opts = resolve_options("set", {"removal": "test_scaled_magnitude", "removal_options": {"power": 3.0}})
        assert opts.removal_options == {"power": 3.0}
        assert resolve_options("set", {}).removal_options == {}
    finally:
        REMOVALS._parts.pop("test_scaled_magnitude", None)
