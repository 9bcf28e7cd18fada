"""The DynamicSparsity engine: invariants over every preset, determinism, resume, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import chtorch
from chtorch.dst import schedules
from chtorch.dst.options import OptionError
from chtorch.masks import link_budget
from helpers import linear_stack as make_model
from helpers import optimizer_of_kind as make_optimizer

METHODS = chtorch.methods()


def batch(step: int, n_in: int, n_classes: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(size, n_in, generator=g)
    y = torch.randint(0, n_classes, (size,), generator=g)
    return x, y


def check_invariants(sp: chtorch.DynamicSparsity, opt: torch.optim.Optimizer) -> None:
    for name, module, mask in sp.iter_layers():
        assert mask.dtype == torch.bool and mask.shape == module.weight.shape
        assert bool((module.weight[~mask] == 0).all()), f"{name}: off-mask weight"
        if module.weight.grad is not None:
            assert bool((module.weight.grad[~mask] == 0).all()), f"{name}: off-mask gradient"
        for key, value in opt.state.get(module.weight, {}).items():
            if torch.is_tensor(value) and value.shape == module.weight.shape:
                assert bool((value[~mask] == 0).all()), f"{name}: off-mask optimizer state {key}"


def train(sp, model, opt, steps: int, n_in: int, n_classes: int, start: int = 0, check: bool = True):
    reports = []
    for t in range(start, start + steps):
        x, y = batch(t, n_in, n_classes)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if check:
            for name, module, mask in sp.iter_layers():
                assert bool((module.weight.grad[~mask] == 0).all()), f"{name}: gradient hook did not mask"
        opt.step()
        report = sp.step()
        if check:
            check_invariants(sp, opt)
        if report is not None:
            reports.append(report)
            if check:
                targets = sp.targets(report.step)
                official_ems = sp.options.ems and sp.options.ems_mode == "official"
                cores = sp.core_targets()
                for (name, info), target, core in zip(report.layers.items(), targets, cores):
                    if official_ems:
                        # the official EM&S grows exactly the extra density and does not compensate
                        # percolated links (docs/decisions.md, MEST EM&S)
                        assert info.regrown == target - core and info.n_links == int(sp.masks[name].sum()) <= target, (
                            name,
                            info,
                        )
                    else:
                        assert info.n_links == target == int(sp.masks[name].sum()), (name, info, target)
        opt.zero_grad()
    return reports


@pytest.mark.parametrize("method", METHODS)
@given(
    sparsity=st.sampled_from([0.5, 0.8, 0.95]),
    sizes=st.sampled_from([[12, 20, 16, 3], [9, 7, 30, 4], [16, 16, 16, 2]]),
    opt_kind=st.sampled_from(["sgd", "adam", "adamw"]),
    seed=st.integers(0, 100),
)
@settings(max_examples=4)
def test_every_preset_keeps_budgets_and_zero_off_mask(method, sparsity, sizes, opt_kind, seed):
    model = make_model(sizes, seed)
    opt = make_optimizer(model, opt_kind)
    sp = chtorch.sparsify(model, opt, method=method, sparsity=sparsity, total_steps=40, update_interval=5, seed=seed)
    check_invariants(sp, opt)
    for layer, target in zip(sp.layers, sp.targets(0)):
        assert int(layer.mask.sum()) == target
    reports = train(sp, model, opt, 40, sizes[0], sizes[-1])
    expected_updates = sum(sp.is_update_step(t) for t in range(1, 41))
    assert len(reports) == expected_updates
    for r in reports:
        assert r.skipped is None
        assert 0.0 <= r.itop_rate <= 1.0
        for info in r.layers.values():
            assert info.overlap <= info.regrown
            assert 0 <= info.active_in <= 1 and 0 <= info.active_out <= 1


@pytest.mark.parametrize("method", ["set", "rigl", "chts", "mest"])
def test_same_seed_same_masks_other_seed_other_masks(method):
    def run(seed):
        model = make_model([10, 24, 24, 3], 0)
        opt = make_optimizer(model, "adamw")
        sp = chtorch.sparsify(model, opt, method=method, sparsity=0.8, total_steps=30, update_interval=5, seed=seed)
        train(sp, model, opt, 30, 10, 3, check=False)
        return {k: v.clone() for k, v in sp.masks.items()}

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", ["set", "rigl", "chts", "chtss", "gmp", "granet", "mest"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_resume_equivalence(method, opt_kind):
    sizes, total, k = [10, 20, 20, 3], 40, 17

    def build():
        model = make_model(sizes, 0)
        opt = make_optimizer(model, opt_kind)
        sp = chtorch.sparsify(
            model,
            opt,
            method=method,
            sparsity=0.8,
            total_steps=total,
            update_interval=5,
            seed=3,
            option_defaults={"grad_accumulation": 3},
        )
        return model, opt, sp

    model, opt, sp = build()
    train(sp, model, opt, total, sizes[0], sizes[-1], check=False)
    reference = {k_: v.clone() for k_, v in model.state_dict().items()}

    model, opt, sp = build()
    train(sp, model, opt, k, sizes[0], sizes[-1], check=False)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    model2, opt2, sp2 = build()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sp2.load_state_dict(saved["sp"])
    train(sp2, model2, opt2, total - k, sizes[0], sizes[-1], start=k, check=False)
    resumed = model2.state_dict()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


def test_chtss_budget_follows_sigmoid_at_every_update():
    sizes = [16, 32, 32, 4]
    model = make_model(sizes)
    opt = make_optimizer(model, "sgd")
    total, interval = 100, 5
    sp = chtorch.sparsify(model, opt, method="chtss", sparsity=0.9, total_steps=total, update_interval=interval)
    # initial density from s_i = 0.5
    assert [int(l.mask.sum()) for l in sp.layers] == [link_budget(32, 16, 0.5), link_budget(32, 32, 0.5)]
    reports = train(sp, model, opt, total, sizes[0], sizes[-1], check=False)
    n = int(0.75 * total) // interval
    for r in reports:
        tau = min(r.step // interval, n)
        s = schedules.sigmoid_sparsity(tau, n, 0.5, 0.9, k=6.0)
        assert r.sparsity == pytest.approx(s)
        assert [l.n_links for l in r.layers.values()] == [link_budget(32, 16, s), link_budget(32, 32, s)]
    assert reports[-1].sparsity == pytest.approx(0.9)
    # the decay is sigmoid-shaped: slow start, fast middle
    first = reports[0].sparsity - 0.5
    middle = reports[n // 2].sparsity - reports[n // 2 - 1].sparsity
    assert middle > 3 * first


def test_density_schedules_start_dense_and_reach_target():
    for method in ("gmp", "granet"):  # both decay on the cubic schedule
        model = make_model([12, 24, 24, 3])
        opt = make_optimizer(model, "sgd")
        sp = chtorch.sparsify(model, opt, method=method, sparsity=0.9, total_steps=60, update_interval=5)
        assert sp.options.density_schedule == "cubic"
        assert sp.density() == pytest.approx(0.5, abs=0.01)
        train(sp, model, opt, 60, 12, 3, check=False)
        assert sp.density() == pytest.approx(0.1, abs=0.01)


def test_mest_ems_extra_density_stages():
    model = make_model([12, 24, 24, 3])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(model, opt, method="mest", sparsity=0.9, total_steps=200, update_interval=10)
    t_end = sp.t_end
    assert sp.scheduled_sparsity(0) == pytest.approx(0.85)
    assert sp.scheduled_sparsity(int(0.7 * t_end)) == pytest.approx(0.875)
    assert sp.scheduled_sparsity(t_end) == pytest.approx(0.9)


def test_gradient_regrowth_uses_dense_gradient_of_last_steps():
    # Force a huge gradient at one non-link (through a hook registered before chtorch's, so the
    # engine records it) and check that RigL grows exactly there.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    holder = {}

    def hook(grad):
        g = torch.zeros_like(grad)
        if "target" in holder:
            g[holder["target"]] = 1e6
        return g

    model[0].weight.register_hook(hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights only change by the engine
    sp = chtorch.sparsify(
        model, opt, method="rigl", sparsity=0.6, total_steps=10, update_interval=2, zeta=0.3, zeta_anneal="constant"
    )
    holder["target"] = tuple(torch.nonzero(~sp.masks["0"])[0].tolist())
    x = torch.randn(4, 6)
    for expected_update in (False, True):
        model(x).sum().backward()
        opt.step()
        report = sp.step()
        opt.zero_grad()
        assert (report is not None) == expected_update
    assert report.layers["0"].regrown == math.floor(0.3 * 12)
    assert bool(sp.masks["0"][holder["target"]])


def test_history_regrown_init_restores_last_value():
    model = make_model([8, 12, 12, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(
        model, opt, method="set", sparsity=0.5, total_steps=40, update_interval=5, regrown_init="history"
    )
    seen = {}
    for t in range(40):
        x, y = batch(t, 8, 2)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        before = {n: (m.weight.detach().clone(), mask.clone()) for n, m, mask in sp.iter_layers()}
        report = sp.step()
        opt.zero_grad()
        if report is None:
            continue
        for n, m, mask in sp.iter_layers():
            layer = next(l for l in sp.layers if l.name == n)
            w_before, m_before = before[n]
            new = mask & ~m_before
            assert torch.equal(m.weight.detach()[new], layer.history[new])
            seen[n] = seen.get(n, 0) + int((layer.history[new] != 0).sum())
    assert sum(seen.values()) > 0  # some regrown links did come back with a non-zero history value


def test_early_stop_freezes_a_layer():
    # lr = 0 and a dense gradient that is large exactly on the initial links: magnitude removal drops
    # links that gradient regrowth immediately grows back (overlap 100%), so the layer freezes.
    model = make_model([8, 10, 10, 2])
    holder = {}
    for i in (0, 2):
        model[i].weight.register_hook(lambda g, i=i: holder[i].float() * 1e3 if i in holder else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = chtorch.sparsify(
        model,
        opt,
        method="rigl",
        sparsity=0.5,
        total_steps=100,
        update_interval=2,
        early_stop=0.9,
        zeta_anneal="constant",
    )
    holder.update({0: sp.masks["0"].clone(), 2: sp.masks["2"].clone()})
    reports = train(sp, model, opt, 2, 8, 2, check=False)
    assert all(info.overlap_rate == 1.0 and info.frozen for info in reports[0].layers.values())
    masks_then = {k: v.clone() for k, v in sp.masks.items()}
    later = train(sp, model, opt, 10, 8, 2, start=2, check=False)
    assert later and all(info.removed == 0 and info.regrown == 0 for r in later for info in r.layers.values())
    assert all(torch.equal(sp.masks[k], masks_then[k]) for k in masks_then)


def test_non_finite_weights_skip_the_update():
    model = make_model([8, 10, 10, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10, update_interval=2)
    masks = {k: v.clone() for k, v in sp.masks.items()}
    with torch.no_grad():
        model[0].weight[sp.masks["0"]] = float("nan")
    opt.step()
    sp.step()
    opt.step()
    with pytest.warns(RuntimeWarning, match="skipped"):
        report = sp.step()
    assert report is not None and report.skipped and "non-finite" in report.skipped
    assert all(torch.equal(masks[k], sp.masks[k]) for k in masks)


def test_report_and_summary_are_readable():
    model = make_model([8, 10, 10, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.7, total_steps=10, update_interval=2)
    reports = train(sp, model, opt, 4, 8, 2)
    text = str(reports[-1])
    assert "topology update 2" in text and "overlap" in text
    summary = sp.summary()
    assert "chts" in summary and "ITOP" in summary and "overlap" in summary
    assert f"{reports[-1].layers['0'].overlap_rate:.1%}" in summary.splitlines()[3]


def test_chts_loss_decreases_on_a_small_mlp():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    w_true = torch.randn(20, 4, generator=g)
    y = (x @ w_true).argmax(1)
    model = make_model([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.9, total_steps=300, update_interval=30)
    losses = []
    for _t in range(300):
        idx = torch.randint(0, 512, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        report = sp.step()
        opt.zero_grad()
        losses.append(loss.item())
        if report is not None:
            assert all(l.n_links == l.target for l in report.layers.values())
    assert sum(losses[-30:]) / 30 < 0.6 * sum(losses[:30]) / 30


def test_head_groups_give_every_head_its_exact_budget():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(16, 16) for _ in range(4))
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            return self.out(self.o_proj(self.q_proj(x) * self.k_proj(x) + self.v_proj(x)))

    model = Attn()
    opt = make_optimizer(model, "adamw")
    heads = 4
    sp = chtorch.sparsify(
        model,
        opt,
        method="set",
        sparsity=0.7,
        total_steps=30,
        update_interval=5,
        layers="*_proj",
        head_groups={"[qkv]_proj": heads},
    )
    target = link_budget(16, 16, 0.7)
    per_head = [target // heads + (1 if i < target % heads else 0) for i in range(heads)]
    for t in range(30):
        x, y = batch(t, 16, 2)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
        opt.zero_grad()
        for name in ("q_proj", "k_proj", "v_proj"):
            counts = [int(b.sum()) for b in sp.masks[name].chunk(heads, dim=0)]
            assert counts == per_head, (name, counts)
        assert int(sp.masks["o_proj"].sum()) == target
    with pytest.raises(OptionError, match="divisible"):
        other = Attn()
        chtorch.sparsify(
            other,
            make_optimizer(other, "sgd"),
            method="set",
            sparsity=0.5,
            total_steps=5,
            layers="*_proj",
            head_groups={"q_proj": 3},
        )


def test_masks_loaded_through_the_model_state_dict_take_effect_at_once():
    model = make_model([6, 10, 10, 2])
    opt = make_optimizer(model, "adam")
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10)
    x, y = batch(0, 6, 2)
    nn.functional.cross_entropy(model(x), y).backward()  # fills the cached float mask
    opt.step()
    opt.zero_grad()
    state = model.state_dict()
    flipped = ~state["0.weight_mask"]
    state["0.weight_mask"] = flipped
    state["0.weight"] = torch.randn(10, 6) * flipped
    model.load_state_dict(state)
    nn.functional.cross_entropy(model(x), y).backward()
    assert bool((model[0].weight.grad[~flipped] == 0).all()) and bool(model[0].weight.grad[flipped].abs().sum() > 0)
    opt.step()
    check_invariants(sp, opt)
