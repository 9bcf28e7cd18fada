"""Config loading, ``--set`` coercion and validation errors (chtorch.config)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chtorch.recipes.builtin  # noqa: F401  (these tests use the built-in recipes' schemas)
from chtorch.config import (
    Config,
    ConfigError,
    OptimConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
    build_config,
    config_reference,
    config_to_dict,
    load_config,
    method_options_for,
    option_defaults_for,
    resolve_sparsity_options,
    save_config,
    sparsity_options_for,
)
from chtorch.recipes.image import ImageDataConfig, MLPModelConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def error(overrides: list[str], path: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


# ----------------------------------------------------------------------------- files and defaults


def test_defaults_are_the_demo_and_match_digits_chts_yaml() -> None:
    default = load_config()
    assert default.data.name == "digits" and default.sparsity.method == "chts" and default.model.name == "mlp"
    digits = load_config(CONFIGS / "digits_chts.yaml")
    # the file spells out the recipe's default weight_init (SWI, fan-out); the options run are the same
    assert digits.sparsity.options == {"weight_init": "swi_out"} and default.sparsity.options == {}
    assert sparsity_options_for(digits) == sparsity_options_for(default)
    digits.sparsity.options = {}
    assert config_to_dict(digits) == config_to_dict(default)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_serves_every_registered_method(path: Path) -> None:
    """`chtorch compare CONFIG --methods ...` may name any method: a shared option in a config must
    not make one of them invalid (a config-wide ``zeta`` must not break GMP, whose regrowth is 'none')."""
    from chtorch.dst.methods import all_methods

    for method in all_methods():
        config = load_config(path, [f"sparsity.method={method}"])
        assert config.sparsity.method == method


@pytest.mark.parametrize(
    "name,dataset,hidden",
    [
        ("mlp_mnist_paper", "mnist", 1568),
        ("mlp_fmnist_paper", "fashion_mnist", 1568),
        ("mlp_emnist_paper", "emnist_balanced", 1568),
        ("mlp_cifar10_paper", "cifar10", 3072),
    ],
)
def test_paper_configs_hold_table_4_settings(name: str, dataset: str, hidden: int) -> None:
    c = load_config(CONFIGS / f"{name}.yaml")
    assert c.data.name == dataset and c.model.hidden == [hidden] * 3
    assert (c.data.batch_size, c.train.epochs) == (32, 100)
    assert (c.optim.name, c.optim.lr, c.optim.final_lr, c.optim.momentum, c.optim.weight_decay) == (
        "sgd",
        0.025,
        2.5e-4,
        0.9,
        5e-4,
    )
    assert c.optim.schedule == "linear"
    assert (c.sparsity.sparsity, c.sparsity.update_interval, c.sparsity.update_unit) == (0.99, 1, "epoch")
    assert sparsity_options_for(c, "chts").init == "csti"
    assert sparsity_options_for(c, "set").init == "erdos_renyi"
    assert all(sparsity_options_for(c, m).zeta == 0.3 for m in ("chts", "set", "rigl"))  # the presets' ζ


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(
        None, ["optim.lr=0.01", "model.hidden=[32,16]", "sparsity.options.zeta=0.2", "data.train_limit=100"]
    )
    path = save_config(config, tmp_path / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(config)


def test_missing_invalid_and_non_mapping_files(tmp_path: Path) -> None:
    assert "not found" in str(error([], str(tmp_path / "nope.yaml")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    assert "not valid YAML" in str(error([], str(bad)))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "mapping of sections" in str(error([], str(listy)))


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    e = error([], str(path))
    assert str(path) in str(e) and "optim.momentun" in str(e) and "'optim.momentum'" in str(e)
    assert e.key == "optim.momentun"


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path: Path) -> None:
    # PyYAML reads "5e-4" (no dot) as a string; a float field must still accept it.
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 5e-4\n  final_lr: 1e-5\n")
    c = load_config(path)
    assert c.optim.weight_decay == 5e-4 and c.optim.final_lr == 1e-5


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_closest() -> None:
    e = error(["optim.lrr=0.1"])
    assert "unknown config key 'optim.lrr'" in str(e) and "did you mean 'optim.lr'" in str(e)
    assert e.key == "optim.lrr"


def test_unknown_key_that_lives_in_another_section() -> None:
    assert "did you mean 'train.epochs'" in str(error(["optim.epochs=3"]))


def test_unknown_section_and_section_set_to_value() -> None:
    assert "did you mean 'train'" in str(error(["trian.epochs=3"]))
    assert "name a key inside a section" in str(error(["train=3"]))
    assert "is a value, not a section" in str(error(["optim.lr.x=1"]))


def test_method_part_set_at_the_wrong_level_points_to_options() -> None:
    assert "sparsity.options.zeta" in str(error(["sparsity.zeta=0.1"]))


def test_unknown_sparsity_option_suggests_closest() -> None:
    e = error(["sparsity.options.zetta=0.1"])
    assert "did you mean 'zeta'" in str(e) and e.key == "sparsity.options.zetta"


def test_override_without_equals() -> None:
    assert "key=value" in str(error(["optim.lr"]))


# ----------------------------------------------------------------------------- types and ranges


@pytest.mark.parametrize(
    "override,key,words",
    [
        ("optim.lr=abc", "optim.lr", "must be a number"),
        ("train.epochs=2.5", "train.epochs", "must be an integer"),
        ("train.plots=maybe", "train.plots", "must be true/false"),
        ("model.hidden=[64,x]", "model.hidden[1]", "must be an integer"),
        ("data.train_limit=many", "data.train_limit", "must be an integer"),
        ("optim.lr=nan", "optim.lr", "must be a number"),
    ],
)
def test_wrong_types_name_the_key(override: str, key: str, words: str) -> None:
    e = error([override])
    assert words in str(e) and e.key == key


def test_wrong_type_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: ten\n")
    e = error([], str(path))
    assert "train.epochs must be an integer" in str(e)
    path.write_text("run:\n  name: [1, 2]\n")
    assert "run.name must be a string" in str(error([], str(path)))


@pytest.mark.parametrize(
    "override,key",
    [
        ("sparsity.sparsity=1.0", "sparsity.sparsity"),
        ("sparsity.sparsity=-0.1", "sparsity.sparsity"),
        ("optim.lr=0", "optim.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("optim.momentum=1", "optim.momentum"),
        ("model.dropout=1.0", "model.dropout"),
        ("optim.betas=[0.9,1.5]", "optim.betas"),
    ],
)
def test_out_of_range(override: str, key: str) -> None:
    e = error([override])
    # The message names the key, the allowed range ("in [lo, hi)", ">= lo", ...) and the value it got.
    assert e.key == key and re.match(rf"{re.escape(key)} must be a number (in [\[(]|[<>]=? )\S.*, got ", str(e)), str(e)


def test_choices() -> None:
    e = error(["optim.schedule=cosin"])
    assert "did you mean 'cosine'" in str(e) and "noam" in str(e)
    assert "not one of" in str(error(["train.progress=loud"]))


def test_engine_option_values_are_checked() -> None:
    e = error(["sparsity.options.zeta=2"])
    assert "zeta must be a number in [0, 1], got 2.0" in str(e)
    assert "removal" in str(error(["sparsity.options.removal=biggest"]))


def test_density_decay_needs_a_sparser_target() -> None:
    e = error(["sparsity.method=chtss", "sparsity.sparsity=0.3"])
    assert "initial_sparsity" in str(e) and e.key == "sparsity.sparsity"


def test_cross_field_checks() -> None:
    assert "warmup_steps" in str(error(["optim.schedule=noam"]))
    assert "final_lr" in str(error(["optim.final_lr=1.0"]))
    assert "run.device" in str(error(["run.device=gpu"]))


# ----------------------------------------------------------------------------- unknown names


def test_unknown_method_lists_known_ones() -> None:
    e = error(["sparsity.method=chtz"])
    assert "unknown method 'chtz'" in str(e) and "dense" in str(e) and "rigl" in str(e) and e.key == "sparsity.method"


def test_unknown_dataset_lists_known_ones() -> None:
    e = error(["data.name=mnsit"])
    assert "did you mean 'mnist'" in str(e) and "cifar10" in str(e) and e.key == "data.name"


def test_unknown_model_and_recipe() -> None:
    e = error(["model.name=resnet"])
    assert "unknown model 'resnet'" in str(e) and "mlp" in str(e)
    e = error(["run.recipe=segmentation"])
    assert "unknown recipe" in str(e) and "image_classification" in str(e)


def test_method_options_for_unknown_method() -> None:
    assert "unknown method" in str(error(["sparsity.method_options.chtx.zeta=0.1"]))


# ----------------------------------------------------------------------------- coercion


def test_set_coercion() -> None:
    c = load_config(
        None,
        [
            "optim.lr=5e-3",
            "optim.warmup_steps=+10",
            "train.plots=no",
            "train.checkpoint=On",
            "data.train_limit=null",
            "data.test_limit=100",
            "model.hidden=64,32",
            "sparsity.layers=[layers.0, layers.1]",
            "optim.betas=[0.8, 0.9]",
            "sparsity.options.zeta=0.25",
            "sparsity.options.early_stop=null",
            "sparsity.options.init_options={beta: 0.5}",
            "sparsity.options.init=bsw",
            "run.name=123",
        ],
    )
    assert c.optim.lr == 0.005 and isinstance(c.optim.lr, float)
    assert c.optim.warmup_steps == 10
    assert c.train.plots is False and c.train.checkpoint is True
    assert c.data.train_limit is None and c.data.test_limit == 100
    assert c.model.hidden == [64, 32]
    assert c.sparsity.layers == ["layers.0", "layers.1"]
    assert c.optim.betas == [0.8, 0.9]
    assert c.sparsity.options["zeta"] == 0.25 and c.sparsity.options["early_stop"] is None
    assert c.sparsity.options["init_options"] == {"beta": 0.5}
    assert c.run.name == "123"  # text on the command line stays text for a string field


def test_integer_accepted_for_float_field() -> None:
    c = load_config(None, ["optim.lr=1"])
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)


def test_recipe_default_options_merge_under_user_options() -> None:
    # sparsity.options holds what the user set; the recipe's defaults join when the options resolve
    assert load_config().sparsity.options == {}
    assert option_defaults_for(load_config()) == {"weight_init": "swi_out", "skip_step_on_update": True}
    resolved = sparsity_options_for(load_config(None, ["sparsity.options.zeta=0.1"]))
    assert (resolved.zeta, resolved.weight_init, resolved.skip_step_on_update) == (0.1, "swi_out", True)
    assert sparsity_options_for(load_config(None, ["sparsity.options.weight_init=keep"])).weight_init == "keep"


def test_overriding_init_drops_the_presets_init_options() -> None:
    # CHTs' preset passes BRF's r/degree; CSTI must not receive them.
    opts = resolve_sparsity_options("chts", {"init": "csti"})
    assert opts.init == "csti" and "r" not in opts.init_options
    assert resolve_sparsity_options("chts", {}).init_options == {"r": 0.25, "degree": "uniform"}
    assert resolve_sparsity_options("chts", {"init_options": {"r": 0.5}}).init_options["r"] == 0.5


def test_method_options_apply_only_to_their_method() -> None:
    c = load_config(
        None,
        [
            "sparsity.options.zeta=0.2",
            "sparsity.method_options.chts.zeta=0.1",
            "sparsity.method_options.chts.init=csti",
        ],
    )
    assert method_options_for(c, "chts")["zeta"] == 0.1 and method_options_for(c, "set")["zeta"] == 0.2
    assert "init" not in method_options_for(c, "set")


def test_reserved_option_keys() -> None:
    assert "sparsity.update_interval" in str(error(["sparsity.options.update_interval=5"]))
    assert "couplings" in str(error(["sparsity.options.couplings=x"]))


# ----------------------------------------------------------------------------- fuzzing


_KEYS = [
    "optim.lr",
    "train.epochs",
    "train.plots",
    "model.hidden",
    "sparsity.sparsity",
    "data.train_limit",
    "sparsity.options.zeta",
    "run.name",
    "optim.betas",
    "sparsity.method",
    "nope.key",
    "optim",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_KEYS), st.text(max_size=20))
def test_fuzz_any_override_gives_a_config_or_a_config_error(key: str, value: str) -> None:
    try:
        config = load_config(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=1e-8, max_value=10.0, allow_nan=False))
def test_fuzz_numbers_round_trip(epochs: int, lr: float) -> None:
    c = load_config(None, [f"train.epochs={epochs}", f"optim.lr={lr!r}", "optim.final_lr=0"])
    assert c.train.epochs == epochs and c.optim.lr == lr


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["run", "optim", "train", "bogus"]),
        st.dictionaries(
            st.sampled_from(["seed", "lr", "epochs", "name", "x"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
        ),
        max_size=3,
    )
)
def test_fuzz_raw_mappings(raw: dict) -> None:
    try:
        build_config(raw)
    except ConfigError as exc:
        assert exc.key is None or isinstance(exc.key, str)


# ----------------------------------------------------------------------------- reference


#: Each section and the dataclass behind it (the default recipe's data and model schemas).
SECTION_CLASSES = [
    ("run", RunConfig),
    ("model", MLPModelConfig),
    ("data", ImageDataConfig),
    ("optim", OptimConfig),
    ("sparsity", SparsityConfig),
    ("train", TrainConfig),
]


def test_reference_documents_every_key() -> None:
    text = config_reference()
    for section, cls in SECTION_CLASSES:
        for f in dataclasses.fields(cls):
            assert f"`{section}.{f.name}`" in text


def test_docs_config_reference_is_current() -> None:
    doc = ROOT / "docs" / "config.md"
    text = doc.read_text(encoding="utf-8")
    for section, cls in SECTION_CLASSES:
        for f in dataclasses.fields(cls):
            assert f"`{section}.{f.name}`" in text, (
                f"docs/config.md lacks {section}.{f.name}: regenerate it (see its header)"
            )
