"""Options a method does not read are errors: hand-worked cases, every entry point, and properties
over every registered method x every option (consistent with the parts' declarations, and sound: an
option called unread changes nothing in a run)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chtorch
from chtorch.config import ConfigError, sparsity_options_for
from chtorch.dst import OptionError, UnreadOptionError, get_method, is_dense, method_names, options_read
from chtorch.dst.methods import resolve_options
from chtorch.dst.options import PART_OPTIONS, SparsityOptions
from chtorch.dst.reads import ALWAYS_READ, ENGINE_READS, NEED_READS
from chtorch.dst.registry import registry
from chtorch.dst.timeline import Timeline
from chtorch.recipes.lm import LLAMA_CODE_DEFAULTS
from chtorch.train import load_config
from helpers import batch_stream, tiny_config, tiny_mlp, train_steps

SPARSE_METHODS = method_names()
FIELDS = SparsityOptions.field_names()


# -- hand-worked cases --------------------------------------------------------------------------------
def test_delta_under_the_default_temperature_schedule_is_an_error():
    with pytest.raises(OptionError) as info:
        resolve_options("chts", {"delta_start": 0.6})
    text = str(info.value)
    assert "delta_start" in text and "temperature_schedule='linear'" in text
    assert "'paper' / 'delta' / 'temperature'" in text and "drop delta_start" in text
    assert info.value.options == ("delta_start",)


def test_delta_under_a_delta_schedule_is_read_and_changes_the_temperature():
    opts = resolve_options("chts", {"temperature_schedule": "delta", "delta_start": 0.6, "delta_end": 0.8})
    timeline = Timeline(opts, 0.9, 1000)  # T_end 750
    # T = δ/(1−δ), δ linear 0.6 → 0.8: 1.5 at step 0, 4 at T_end
    assert timeline.temperature(0) == pytest.approx(0.6 / 0.4)
    assert timeline.temperature(750) == pytest.approx(4.0)
    other = Timeline(resolve_options("chts", {"temperature_schedule": "delta"}), 0.9, 1000)
    assert other.temperature(0) == pytest.approx(1.0)  # the preset's δ 0.5


def test_the_linear_schedule_reads_its_own_end_points():
    opts = resolve_options("chts", {"temperature_end": 9.0})
    assert Timeline(opts, 0.9, 1000).temperature(750) == pytest.approx(9.0)


def test_a_delta_schedule_under_a_hard_removal_names_both_settings():
    # SET removes by top-k: no temperature is read at all
    with pytest.raises(UnreadOptionError) as info:
        resolve_options("set", {"temperature_schedule": "delta", "delta_start": 0.6})
    assert info.value.options == ("temperature_schedule", "delta_start")
    assert "removal_selection='soft'" in str(info.value)
    resolve_options("set", {"removal_selection": "soft", "temperature_schedule": "delta", "delta_start": 0.6})


def test_an_option_of_a_part_that_is_not_used():
    with pytest.raises(OptionError, match=r"mest_lambda is read only by removal='mest' or prune_score='mest'"):
        resolve_options("chts", {"mest_lambda": 0.1})
    assert resolve_options("mest", {"mest_lambda": 0.1}).mest_lambda == 0.1
    # GMP removes nothing (ζ = 0): its removal part and bag do not run
    with pytest.raises(OptionError, match="removal_options.*zeta > 0"):
        resolve_options("gmp", {"removal_options": {}})
    with pytest.raises(OptionError, match=r"ch_variant is read only by regrowth='ch'"):
        resolve_options("rigl", {"ch_variant": "CH3"})
    with pytest.raises(OptionError, match=r"sigmoid_k is read only by density_schedule='sigmoid'"):
        resolve_options("gmp", {"sigmoid_k": 3.0})


def test_options_read_only_through_a_need():
    with pytest.raises(OptionError, match=r"grad_accumulation.*dense gradient.*regrowth='gradient'"):
        resolve_options("chts", {"grad_accumulation": 3})
    assert resolve_options("rigl", {"grad_accumulation": 3}).grad_accumulation == 3
    with pytest.raises(OptionError, match=r"regrowth_candidates.*live neurons.*regrowth='ch'"):
        resolve_options("set", {"regrowth_candidates": "live"})
    # MEST's score needs the dense gradient only with λ > 0
    resolve_options("mest", {"grad_accumulation": 2})
    with pytest.raises(OptionError, match="grad_accumulation"):
        resolve_options("mest", {"mest_lambda": 0.0, "grad_accumulation": 2})


def test_engine_structural_reads():
    cases = {
        "zeta_anneal": ("static", "cosine", "zeta > 0"),
        "early_stop_scope": ("chts", "layer", "early_stop"),
        "ems_mode": ("set", "schedule", "ems=True"),
        "initial_sparsity": ("rigl", 0.3, "density decay"),
        "revived_init": ("granet", "history", "prune_with_history=True"),
        "soft_floor": ("cht", 0.1, "regrowth_selection"),
    }
    for option, (method, value, words) in cases.items():
        with pytest.raises(OptionError, match=words):
            resolve_options(method, {option: value})
    with pytest.raises(OptionError, match="t_end overrides it"):
        resolve_options("set", {"t_end": 10, "t_end_fraction": 0.5})
    assert resolve_options("set", {"t_end": 10}).t_end == 10


def test_a_presets_own_values_and_defaults_never_error():
    for method in SPARSE_METHODS:
        resolve_options(method)  # chts_mlp keeps chts's temperature with a hard removal: the preset's own
        resolve_options(method, defaults=LLAMA_CODE_DEFAULTS)
    with pytest.raises(OptionError, match="temperature_start"):
        resolve_options("set", LLAMA_CODE_DEFAULTS)


# -- every entry point --------------------------------------------------------------------------------
def test_sparsify_refuses_an_unread_option_and_takes_defaults():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(OptionError, match="delta_end"):
        chtorch.sparsify(model, opt, method="chts", total_steps=10, delta_end=0.8)
    sp = chtorch.sparsify(model, opt, method="set", total_steps=10, option_defaults=LLAMA_CODE_DEFAULTS)
    assert sp.options.final_update == "at_t_end" and sp.options.temperature_end == 9.0


def test_config_names_the_key_of_an_unread_option():
    with pytest.raises(ConfigError) as info:
        tiny_config("sparsity.method=chts", "sparsity.options.delta_start=0.6")
    assert info.value.key == "sparsity.options.delta_start" and "temperature_schedule" in str(info.value)
    tiny_config(
        "sparsity.method=chts", "sparsity.options.temperature_schedule=paper", "sparsity.options.delta_start=0.6"
    )


def test_method_options_of_one_method_set_an_option_another_part_reads():
    # temperature_end is read by CHTs' soft removal, not by SET's top-k removal
    config = tiny_config("sparsity.method=chts", "sparsity.method_options.chts.temperature_end=9")
    assert sparsity_options_for(config, "chts").temperature_end == 9.0
    with pytest.raises(ConfigError) as info:
        tiny_config("sparsity.method=chts", "sparsity.method_options.set.temperature_end=9")
    assert info.value.key == "sparsity.method_options.set.temperature_end"
    assert "method 'set'" in str(info.value) and "removal_selection='soft'" in str(info.value)
    # the same option for every method: an error for the one that ignores it, naming method_options
    with pytest.raises(ConfigError, match="sparsity.method_options.<method>"):
        tiny_config(
            "sparsity.method=chts", "sparsity.options.temperature_end=9", "sparsity.method_options.set.zeta=0.2"
        )


def test_recipe_defaults_are_not_user_options():
    config = load_config(None, ["run.recipe=lm", "sparsity.method=set"])
    assert config.sparsity.options == {}
    opts = sparsity_options_for(config, "set")
    assert opts.temperature_end == 9.0 and opts.final_update == "at_t_end"  # the LLaMA code's, unread by SET


def test_hf_callback_checks_its_options():
    pytest.importorskip("transformers")
    from chtorch.integrations.hf import ChtorchCallback

    with pytest.raises(OptionError, match="delta_start"):
        ChtorchCallback("chts", 0.9, delta_start=0.6)
    ChtorchCallback("set", 0.9, option_defaults=LLAMA_CODE_DEFAULTS)
    ChtorchCallback("chts", 0.9, temperature_schedule="paper", delta_start=0.6)


# -- properties over every method x every option ------------------------------------------------------
def _declared_readers(opts: SparsityOptions, option: str) -> bool:
    """Whether ``option`` is read under ``opts`` by the declarations alone, computed independently of
    :func:`options_read`'s code path: engine-wide, a structural rule, a need, or a part in use."""
    if option in ALWAYS_READ:
        return True
    for rule in ENGINE_READS:
        if option in rule.options:
            return rule.reads(opts)
    for need, names in NEED_READS.items():
        if option in names:
            return need in opts.needs()
    readers = [
        (naming, part.name)
        for naming, kind in PART_OPTIONS.items()
        for part in registry(kind).parts()
        if option in part.params.values()
    ]
    in_use = opts.parts_in_use()
    if not readers:
        return True
    return any(naming in in_use and in_use[naming][1] == name for naming, name in readers)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(SPARSE_METHODS), option=st.sampled_from(FIELDS))
def test_the_rule_follows_the_declarations(method, option):
    opts = get_method(method).build_options()
    assert (option in options_read(opts)) == _declared_readers(opts, option)
    value = getattr(opts, option)
    overrides = {option: value}
    if option == "couplings":
        return  # not a user option in configs; read always
    if option in options_read(opts):
        resolve_options(method, overrides)
    else:
        with pytest.raises(UnreadOptionError) as info:
            resolve_options(method, overrides)
        assert info.value.options == (option,) and option in str(info.value) and f"drop {option}" in str(info.value)


def test_every_option_is_classified():
    """Each option is engine-wide, structural, served by a need, or a declared part parameter (none
    falls through to "read" by default)."""
    structural = {n for rule in ENGINE_READS for n in rule.options}
    needs = {n for names in NEED_READS.values() for n in names}
    params = {o for kind in PART_OPTIONS.values() for p in registry(kind).parts() for o in p.params.values()}
    assert set(FIELDS) == ALWAYS_READ | structural | needs | params
    assert not ALWAYS_READ & structural and not structural & needs


def test_the_delta_schedules_declare_what_they_read():
    for name in ("paper", "delta", "temperature"):
        assert set(registry("temperature_schedule").part(name).params.values()) == {"delta_start", "delta_end"}
    assert "delta_start" not in registry("temperature_schedule").part("linear").params.values()


# Values differing from every preset's for the soundness check (options with a plain value).
_OTHER = {
    "t_end_fraction": 0.5,
    "zeta_anneal": lambda v: "constant" if v == "cosine" else "cosine",
    "initial_sparsity": 0.3,
    "decay_end_fraction": 0.5,
    "sigmoid_k": 2.0,
    "prune_score": lambda v: "ri" if v == "magnitude" else "magnitude",
    "prune_with_history": lambda v: not v,
    "revived_init": lambda v: "history" if v == "zero" else "zero",
    "ems_mode": lambda v: "schedule" if v == "official" else "official",
    "removal": lambda v: "ri" if v == "magnitude" else "magnitude",
    "removal_selection": lambda v: "soft" if v == "topk" else "topk",
    "temperature_schedule": lambda v: "paper" if v == "linear" else "linear",
    "temperature_start": 0.5,
    "temperature_end": 6.0,
    "delta_start": 0.2,
    "delta_end": 0.6,
    "mest_lambda": 1.0,
    "ch_predictor": lambda v: "l3p" if v == "l3n" else "l3n",
    "ch_variant": lambda v: "CH3" if v == "CH2" else "CH2",
    "soft_floor": 0.5,
    "regrowth_candidates": lambda v: "live" if v == "all" else "all",
    "grad_accumulation": 3,
    "early_stop_scope": lambda v: "layer" if v == "network" else "network",
}


def _run(method: str, defaults: dict) -> dict[str, torch.Tensor]:
    model = tiny_mlp((12, 24, 24, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = chtorch.sparsify(
        model, opt, method=method, sparsity=0.8, total_steps=24, update_interval=4, seed=1, option_defaults=defaults
    )
    train_steps(model, opt, batch_stream(12, 3, seed=2), 24, sp)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_an_option_called_unread_changes_nothing(method):
    """Soundness on real runs: for every option the rule says this method does not read, a run with
    another value of it (passed as a default, so the rule does not refuse it) is the same run."""
    opts = get_method(method).build_options()
    read = options_read(opts)
    reference = _run(method, {})
    checked = 0
    for option, other in _OTHER.items():
        if option in read:
            continue
        value = other(getattr(opts, option)) if callable(other) else other
        try:
            get_method(method).build_options(**{option: value})
        except OptionError:
            continue  # a value this method cannot take at all (e.g. a soft selection of a deterministic rule)
        run = _run(method, {option: value})
        assert all(torch.equal(reference[k], run[k]) for k in reference), (method, option, value)
        checked += 1
    assert checked > 0 or is_dense(method)
