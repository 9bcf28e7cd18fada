"""The faithfulness options: where chtorch, the paper and the official code differ (docs/decisions.md).

Hand-worked values and invariants for the removal temperature, regrowth candidates, the official
MEST EM&S, CHT's early-stop scope, GMP's revived weights, SWI fan-out, the ANP count and the presets
that reproduce Table 7.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pytest import approx
from torch import nn

import chtorch
from chtorch.dst import schedules as S
from chtorch.dst.methods import get_method
from chtorch.dst.options import OptionError, SparsityOptions
from chtorch.dst.percolation import active_neuron_count, chain
from chtorch.dst.regrowth import grow_links
from chtorch.dst.update import flag_early_stop, network_stopped
from chtorch.rng import make_generator
from chtorch.train.paper_tables import paper_row

# ----------------------------------------------------------------------------- removal temperature


def test_linear_temperature_is_the_official_codes():
    # MLP/Transformer code: T = 1 + 2t/T_end; LLaMA code: start_T -> end_T (README 1 -> 9)
    assert S.temperature_linear(0, 1000) == approx(1.0)
    assert S.temperature_linear(500, 1000) == approx(2.0)
    assert S.temperature_linear(1000, 1000) == approx(3.0)
    assert S.temperature_linear(4000, 1000) == approx(3.0)  # held after T_end
    assert S.temperature_linear(250, 1000, start=1.0, end=9.0) == approx(3.0)
    assert S.temperature_linear(500, 1000, start=1.0, end=9.0) == approx(5.0)


def test_paper_temperature_is_one_over_one_minus_delta():
    assert S.temperature_paper(0, 1000, 0.5, 0.75) == approx(2.0)
    assert S.temperature_paper(500, 1000, 0.5, 0.75) == approx(1 / (1 - 0.625))
    assert S.temperature_paper(1000, 1000, 0.5, 0.75) == approx(4.0)
    assert S.temperature_paper(1000, 1000, 0.5, 0.9) == approx(10.0)
    assert S.temperature_paper(10, 10, 0.5, 1.0) == math.inf


def test_engine_temperature_follows_the_chosen_schedule():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {"linear": 2.0, "paper": 1 / (1 - 0.7), "delta": 0.7 / 0.3, "temperature": 5.0}
    for name, value in expected.items():
        sp = chtorch.sparsify(
            model,
            opt,
            method="chts",
            sparsity=0.5,
            total_steps=100,
            temperature_schedule=name,
            t_end=50,
            update_interval=5,
        )
        assert sp.temperature(25) == approx(value), name
        sp.remove()
        for m in model:
            if hasattr(m, "weight_mask"):
                del m._buffers["weight_mask"]
    assert get_method("chts").build_options().temperature_schedule == "linear"
    with pytest.raises(OptionError, match="temperature_end"):
        SparsityOptions(temperature_end=-1.0)


# ----------------------------------------------------------------------------- regrowth candidates


def _dead_neuron_keep() -> torch.Tensor:
    """8x8 keep mask whose output neuron 7 and input neuron 7 have no link (percolated)."""
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:7, :7] = torch.eye(7, dtype=torch.bool) | torch.eye(7, dtype=torch.bool).roll(1, dims=1)
    return keep


def test_all_candidates_let_a_dead_neuron_come_back_through_the_floor():
    keep = _dead_neuron_keep()
    scores = chtorch.linkpred.ch_l3n(keep, variant="CH2")
    n_positive = int(((scores > 0) & ~keep).sum())
    n_new = n_positive + 10  # more than the positive candidates: the 1e-5 floor fires
    revived = 0
    for seed in range(20):
        g = make_generator(seed, "test")
        new = grow_links(keep, n_new, "ch", "soft", g, scores=scores, candidates="all")
        assert int(new.sum()) == n_new and not bool((new & keep).any())
        assert bool(new[(scores > 0) & ~keep].all())  # every positive candidate is taken first
        revived += int(new[7].sum() + new[:, 7].sum())
        live = grow_links(keep, n_new, "ch", "soft", make_generator(seed, "test"), scores=scores, candidates="live")
        assert int(live.sum()) == n_new
        assert not bool(live[7].any()) and not bool(live[:, 7].any())  # live neurons only: the dead stay dead
    assert revived > 0


def test_candidates_must_be_known():
    with pytest.raises(ValueError, match="candidates"):
        grow_links(_dead_neuron_keep(), 1, "ch", "soft", make_generator(0), candidates="some")
    with pytest.raises(OptionError, match="regrowth_candidates"):
        SparsityOptions(regrowth_candidates="some")


# ----------------------------------------------------------------------------- ANP counting


def test_official_anp_counts_hidden_neurons_by_their_out_links():
    # a (3 out x 2 in) -> b (2 out x 3 in). Hidden neuron 0: links on both sides; hidden 1: an
    # out-link in b only (no in-link in a); hidden 2: an in-link in a only.
    a = torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    masks, chains = {"a": a, "b": b}, [chain("a", "b")]
    # inputs of a: 2 of 2; hidden: official {0, 1}, both sides {0}; outputs of b: 2 of 2
    assert active_neuron_count(masks, chains, count="official") == (2 + 2 + 2, 7)
    assert active_neuron_count(masks, chains, count="both_sides") == (2 + 1 + 2, 7)
    with pytest.raises(ValueError, match="count"):
        active_neuron_count(masks, chains, count="half")


# ----------------------------------------------------------------------------- MEST EM&S, official


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 4))


def _ems_run(zeta: float, steps: int, **overrides):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    options = dict(ems=True, ems_mode="official", removal="magnitude", regrowth="random", zeta=zeta, percolation=False)
    options.update(overrides)
    sp = chtorch.sparsify(
        model,
        opt,
        method="static",
        sparsity=0.8,
        total_steps=100,
        update_interval=10,
        seed=1,
        t_end_fraction=0.75,
        **options,
    )
    g = torch.Generator().manual_seed(0)
    reports = []
    for _ in range(steps):
        x = torch.randn(16, 20, generator=g)
        nn.functional.cross_entropy(model(x), torch.randint(0, 4, (16,), generator=g)).backward()
        before = {layer.name: (layer.mask.clone(), layer.dense_weight().clone()) for layer in sp.layers}
        opt.step()
        before = {layer.name: (before[layer.name][0], layer.dense_weight().clone()) for layer in sp.layers}
        report = sp.step()
        opt.zero_grad()
        if report is not None:
            reports.append((report, before))
    return sp, reports


def test_official_ems_keeps_the_top_magnitude_core_and_grows_the_extra():
    sp, reports = _ems_run(zeta=0.3, steps=75)
    cores = sp.core_targets()
    # t_end = 75, interval 10: extra 5% while step <= 45, 2.5% while step < 65, then 0
    extras = [0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.0]
    assert [r.step for r, _ in reports] == [10, 20, 30, 40, 50, 60, 70]
    for (report, before), extra in zip(reports, extras):
        assert report.sparsity == approx(0.8 - extra)
        for layer, core in zip(sp.layers, cores):
            info = report.layers[layer.name]
            old_mask, weight = before[layer.name]
            assert info.regrown == sp.targets(report.step)[layer.index] - core  # exactly the extra density
            assert info.removed == int(old_mask.sum()) - core  # ζ ignored: the drop is extra/(density+extra)
        # the kept links are the core's top-|W| ones (hard magnitude)
    last_report, last_before = reports[-1]
    for layer, core in zip(sp.layers, cores):
        old_mask, weight = last_before[layer.name]
        kept = layer.mask & old_mask
        assert int(layer.mask.sum()) == core and bool((layer.mask == kept).all())  # last stage: core only
        threshold = weight.abs()[kept].min()
        assert bool((weight.abs()[old_mask & ~kept] <= threshold).all())


def test_official_ems_ignores_zeta_and_schedule_mode_does_not():
    a, _ = _ems_run(zeta=0.3, steps=40)
    b, _ = _ems_run(zeta=0.1, steps=40)
    assert all(torch.equal(x, y) for x, y in zip(a.masks.values(), b.masks.values()))
    c, _ = _ems_run(zeta=0.3, steps=40, ems_mode="schedule")
    d, _ = _ems_run(zeta=0.1, steps=40, ems_mode="schedule")
    assert any(not torch.equal(x, y) for x, y in zip(c.masks.values(), d.masks.values()))


def test_official_ems_does_not_compensate_percolated_links():
    sp, reports = _ems_run(zeta=0.3, steps=75, percolation=True, regrowth="ch", regrowth_selection="soft")
    for report, _ in reports:
        for layer, core in zip(sp.layers, sp.core_targets()):
            info = report.layers[layer.name]
            assert info.n_links == core - info.percolated + info.regrown or info.n_links < core


# ----------------------------------------------------------------------------- CHT early stop


def test_early_stop_scope_layer_freezes_at_threshold_network_flags_strictly():
    layer = SimpleNamespace(frozen=False)
    flag_early_stop(layer, 0.9, 0.9, "layer")
    assert layer.frozen
    layer = SimpleNamespace(frozen=False)
    flag_early_stop(layer, 0.9, 0.9, "network")  # not > 0.9: no flag
    assert not layer.frozen and not getattr(layer, "early_stop_flag", False)
    flag_early_stop(layer, 0.95, 0.9, "network")
    assert layer.early_stop_flag and not layer.frozen  # flagged layers keep evolving


def test_network_early_stop_waits_for_every_layer_then_stops_all():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = chtorch.sparsify(
        model, opt, method="cht", init="erdos_renyi", sparsity=0.8, total_steps=100, update_interval=5, early_stop=0.0
    )
    # threshold 0: any update with overlap > 0 flags the layer; with 0.8 sparsity and ζ = 0.3 that is every layer
    sp.layers[0].early_stop_flag = True
    assert not network_stopped(sp.layers, sp.options)
    g = torch.Generator().manual_seed(0)
    frozen_at = None
    for _ in range(40):
        x = torch.randn(16, 20, generator=g)
        nn.functional.cross_entropy(model(x), torch.randint(0, 4, (16,), generator=g)).backward()
        opt.step()
        report = sp.step()
        opt.zero_grad()
        if report is not None and frozen_at is None and all(info.frozen for info in report.layers.values()):
            frozen_at = report.step
            masks = {k: v.clone() for k, v in sp.masks.items()}
    assert frozen_at is not None and network_stopped(sp.layers, sp.options)
    assert all(torch.equal(masks[k], v) for k, v in sp.masks.items())  # nothing changes after the stop
    state = sp.state_dict()
    assert all(entry["early_stop_flag"] for entry in state["layers"].values())


# ----------------------------------------------------------------------------- GMP revived weights


@pytest.mark.parametrize("revived_init", ["zero", "history"])
def test_gmp_revived_weight_restarts_at_zero_or_its_history(revived_init):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen weights: only the topology moves
    sp = chtorch.sparsify(
        model, opt, method="gmp", sparsity=0.9, total_steps=100, update_interval=5, revived_init=revived_init
    )
    layer = sp.layers[0]
    off = torch.nonzero(~layer.mask)[0]
    layer.history[off[0], off[1]] = 1e3  # a pruned weight with a huge last value wins the next pruning
    for _ in range(5):
        nn.functional.cross_entropy(model(torch.randn(4, 20)), torch.randint(0, 4, (4,))).backward()
        opt.step()
        report = sp.step()
        opt.zero_grad()
    assert report is not None and bool(layer.mask[off[0], off[1]])
    value = float(layer.dense_weight()[off[0], off[1]])
    assert value == (0.0 if revived_init == "zero" else 1e3)


# ----------------------------------------------------------------------------- SWI fan, presets


def test_swi_out_scales_by_the_output_fan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 100), nn.ReLU(), nn.Linear(100, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = chtorch.sparsify(model, opt, method="static", sparsity=0.5, total_steps=10, weight_init="swi_out")
    layer = sp.layers[0]
    std = float(layer.dense_weight()[layer.mask].std())
    assert std == approx(math.sqrt(2 / (0.5 * 100)), rel=0.05)  # fan-out 100, not fan-in 400 (σ would be half)


def test_table7_presets_and_paper_rows():
    mlp = get_method("chts_mlp").build_options()
    assert (mlp.ems, mlp.ems_mode, mlp.removal, mlp.removal_selection) == (True, "official", "magnitude", "topk")
    assert (mlp.regrowth, mlp.ch_predictor, mlp.ch_variant, mlp.regrowth_selection) == ("ch", "l3p", "CH3", "soft")
    assert (mlp.regrowth_candidates, mlp.percolation, mlp.weight_init, mlp.zeta_anneal) == (
        "all",
        True,
        "swi_out",
        "constant",
    )
    assert get_method("chtsn_mlp").build_options().ch_predictor == "l3n"
    assert paper_row("chts_mlp", mlp) == "CHTsp"
    assert paper_row("chtsn_mlp", get_method("chtsn_mlp").build_options()) == "CHTsn"
    assert paper_row("chts", get_method("chts").build_options()) == "CHTsn"
    assert get_method("set").build_options().removal == "magnitude"
    assert get_method("gmp").build_options().revived_init == "zero"
    assert get_method("cht").build_options().early_stop_scope == "network"


@pytest.mark.parametrize(
    "name", ["mlp_mnist_paper", "mlp_fmnist_paper", "mlp_emnist_paper", "mlp_cifar10_paper", "mlp_mnist_cpu"]
)
def test_mlp_configs_run_cht_without_the_network_stop_and_chtss_with_magnitude_pruning(name):
    import pathlib

    import chtorch.recipes.builtin  # noqa: F401  (registers the recipes the configs name)
    from chtorch.config import load_config
    from chtorch.config.sparsity import sparsity_options_for

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    config = load_config(str(path), ["sparsity.method=cht"])
    options = sparsity_options_for(config, "cht")
    assert options.early_stop is None and options.init == "csti" and options.readmitted == "keep"
    assert get_method("cht").build_options().early_stop == 0.9  # the official rule stays the preset's
    chtss = load_config(str(path), ["sparsity.method=chtss"])
    assert sparsity_options_for(chtss, "chtss").prune_score == "magnitude"
    assert (
        get_method("chtss").build_options().prune_score == "ri"
    )  # the paper's text and the LLaMA code stay the preset's


def test_llama_recipe_defaults_are_the_llama_codes():
    from chtorch.recipes.lm import LLAMA_CODE_DEFAULTS

    opts = get_method("chts").build_options(**LLAMA_CODE_DEFAULTS)
    assert (opts.regrowth_selection, opts.percolation, opts.temperature_end, opts.weight_init) == (
        "topk",
        False,
        9.0,
        "keep",
    )


def test_best_after_final_topology_ignores_epochs_before_the_last_update():
    from chtorch.train.paper_tables import best_after_final_topology

    epochs = [
        {"epoch": 0, "updates": 0, "acc": 0.5},
        {"epoch": 1, "updates": 1, "acc": 0.99},  # best overall, but the topology still moves
        {"epoch": 2, "updates": 2, "acc": 0.90},
        {"epoch": 3, "updates": 2, "acc": 0.93},
        {"epoch": 4, "updates": 2, "acc": 0.92},
    ]
    assert best_after_final_topology(epochs, "acc") == (0.93, 3)
    assert best_after_final_topology(epochs, "acc", higher_is_better=False) == (0.90, 2)
    assert best_after_final_topology([{"epoch": 0, "acc": 0.7}, {"epoch": 1, "acc": 0.8}], "acc") == (0.8, 1)  # dense
    assert best_after_final_topology([{"epoch": 0}], "acc") is None


def test_network_early_stop_flags_survive_a_resume():
    """The network-wide early stop flags a layer once and never resets it: a resume must carry the flag."""

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return chtorch.sparsify(
            model, opt, method="cht", sparsity=0.8, total_steps=20, update_interval=2, early_stop_scope="network"
        )

    first = build()
    first.layers[0].early_stop_flag = True
    state = first.state_dict()
    second = build()
    second.load_state_dict(state)
    assert [layer.early_stop_flag for layer in second.layers] == [True, False]
    bad = first.state_dict()
    bad["layers"][first.layers[0].name]["early_stop_flag"] = "yes"
    with pytest.raises(ValueError, match="early_stop_flag must be a bool"):
        build().load_state_dict(bad)
