"""The last differences from the official codes: which steps update (option final_update), the
weight init of SET and RigL in the MLP configs, and the LLaMA paper config (docs/decisions.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import chtorch
import chtorch.recipes.builtin  # noqa: F401  (the built-in recipes' schemas)
from chtorch.config import load_config, sparsity_options_for
from chtorch.dst.methods import get_method, resolve_options
from chtorch.dst.options import OptionError
from chtorch.recipes.lm import LLAMA_CODE_DEFAULTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MLP_CONFIGS = sorted(CONFIGS.glob("mlp_*.yaml"))


def _mlp(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _update_steps(sp, total: int) -> list[int]:
    return [s for s in range(1, total + 1) if sp.is_update_step(s)]


def test_set_does_not_update_after_its_last_step():
    # the MLP code: SET's T_end is the whole run and it updates while step < T_end, so the last
    # measurement sees the topology the network was trained on
    model, opt = _mlp()
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.9, total_steps=50, update_interval=10)
    assert sp.options.final_update == "before_t_end"
    assert _update_steps(sp, 50) == [10, 20, 30, 40]
    model, opt = _mlp()
    sp = chtorch.sparsify(
        model, opt, method="set", sparsity=0.9, total_steps=50, update_interval=10, final_update="at_t_end"
    )
    assert _update_steps(sp, 50) == [10, 20, 30, 40, 50]


def test_final_update_is_read_where_updates_and_gradient_windows_are_decided():
    # RigL records the dense gradient only before updates that run: none before T_end = 30 itself
    model, opt = _mlp()
    sp = chtorch.sparsify(model, opt, method="rigl", sparsity=0.9, total_steps=40, update_interval=10)
    assert sp.t_end == 30 and _update_steps(sp, 40) == [10, 20]
    assert sp._grad_window(20) and not sp._grad_window(30)
    model, opt = _mlp()
    sp = chtorch.sparsify(
        model, opt, method="rigl", sparsity=0.9, total_steps=40, update_interval=10, final_update="at_t_end"
    )
    assert _update_steps(sp, 40) == [10, 20, 30] and sp._grad_window(30)


@pytest.mark.parametrize("name", ["chtss", "gmp", "granet"])
def test_density_decay_presets_update_at_t_end_and_reach_the_target(name):
    assert get_method(name).options["final_update"] == "at_t_end"
    model, opt = _mlp()
    sp = chtorch.sparsify(model, opt, method=name, sparsity=0.9, total_steps=40, update_interval=10)
    assert _update_steps(sp, 40)[-1] == 30 == sp.t_end
    assert sp.scheduled_sparsity(30) == pytest.approx(0.9)


def test_a_decay_that_would_miss_its_last_event_is_refused():
    model, opt = _mlp()
    with pytest.raises(OptionError, match="final_update='at_t_end'"):
        chtorch.sparsify(
            model, opt, method="chtss", sparsity=0.9, total_steps=40, update_interval=10, final_update="before_t_end"
        )
    # a decay that ends before T_end is fine under either rule
    model, opt = _mlp()
    chtorch.sparsify(
        model,
        opt,
        method="chtss",
        sparsity=0.9,
        total_steps=40,
        update_interval=10,
        final_update="before_t_end",
        decay_end_fraction=0.5,
    )


def test_every_fixed_density_preset_stops_before_t_end():
    for name in ("static", "set", "rigl", "mest", "cht", "chts", "chts_mlp", "chtsn_mlp"):
        assert resolve_options(name, {}).final_update == "before_t_end", name
    with pytest.raises(OptionError, match="final_update"):
        resolve_options("set", {"final_update": "after_t_end"})


def test_lm_recipe_updates_at_t_end_as_the_llama_code():
    assert LLAMA_CODE_DEFAULTS["final_update"] == "at_t_end"
    config = load_config(CONFIGS / "lm_llama60m_paper.yaml")
    for method in ("set", "rigl", "mest", "cht", "chts", "chtss"):
        opts = sparsity_options_for(config, method)
        assert opts.final_update == "at_t_end", method
        assert opts.t_end_fraction == 0.75, method  # T_end = 0.75 of the steps for every method
    assert sparsity_options_for(config, "chtss").decay_end_fraction == 0.8
    assert config.optim.rewarmup_steps == 20 and config.optim.rewarmup_until == "end"


def test_llama_paper_chtss_stops_short_of_the_target_as_the_code():
    # --pruning_T_end 8000 with T_end 7500: the official code's last decay event is 75 of 80
    model, opt = _mlp()
    options = {**LLAMA_CODE_DEFAULTS, "decay_end_fraction": 0.8}
    sp = chtorch.sparsify(model, opt, method="chtss", sparsity=0.9, total_steps=10_000, update_interval=100, **options)
    assert _update_steps(sp, 10_000)[-1] == 7500
    assert sp.scheduled_sparsity(7500) == pytest.approx(0.898896, abs=1e-6)


@pytest.mark.parametrize("path", MLP_CONFIGS, ids=[p.stem for p in MLP_CONFIGS])
def test_mlp_configs_init_as_the_mlp_code(path):
    config = load_config(path)
    init = {m: sparsity_options_for(config, m).weight_init for m in ("set", "rigl", "cht")}
    assert init == {"set": "kaiming", "rigl": "kaiming", "cht": "swi_out"}
    for method in ("set", "rigl", "cht", "chts_mlp"):
        assert sparsity_options_for(config, method).final_update == "before_t_end"


def test_kaiming_init_is_dense_kaiming_masked():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.9, total_steps=10, weight_init="kaiming")
    weight, mask = model[0].weight.detach(), sp.masks["0"]
    assert torch.all(weight[~mask] == 0)
    # σ = sqrt(2 / fan_in) = sqrt(2/400) ≈ 0.0707, not SWI's sqrt(2 / (0.1·400)) ≈ 0.224
    assert weight[mask].std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)
