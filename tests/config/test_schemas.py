"""Model sections derived from the models' own config dataclasses, and the recipe registry seen
from the configuration alone (which imports no recipe)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

import chtorch.recipes.builtin  # noqa: F401  (registers the built-in recipes' schemas)
from chtorch.config import ConfigError, build_config, model_schema, model_values, setting
from chtorch.models import LlamaConfig, MLPConfig, Seq2SeqConfig
from chtorch.recipes.image import MLPModelConfig
from chtorch.recipes.lm import LlamaModelConfig
from chtorch.recipes.translation import TransformerModelConfig


@pytest.mark.parametrize(
    "section,model,data_decided",
    [
        (MLPModelConfig, MLPConfig, {"in_features", "n_classes"}),
        (TransformerModelConfig, Seq2SeqConfig, {"src_vocab", "tgt_vocab", "pad_id", "layer_norm_eps"}),
        (
            LlamaModelConfig,
            LlamaConfig,
            {"vocab_size", "max_seq_len", "rms_norm_eps", "rope_theta", "initializer_range"},
        ),
    ],
)
def test_model_sections_carry_the_model_configs_fields(section: type, model: type, data_decided: set[str]) -> None:
    """One truth per field: name, help text and bounds come from the model's dataclass."""
    mine = {f.name: f for f in dataclasses.fields(section)}
    theirs = {f.name: f for f in dataclasses.fields(model)}
    assert set(theirs) - set(mine) == data_decided
    for name in set(theirs) - data_decided:
        assert (
            mine[name].metadata["help"] == theirs[name].metadata["help"] or "override" in mine[name].metadata["help"]
        ), name
        for key in ("min", "max", "choices"):
            assert mine[name].metadata.get(key) == theirs[name].metadata.get(key), (name, key)


def test_model_values_build_the_model_config() -> None:
    config = build_config({"model": {"hidden": [16, 8], "activation": "gelu", "dropout": 0.25}})
    assert MLPConfig(in_features=64, n_classes=10, **model_values(config.model)) == MLPConfig(
        64, 10, (16, 8), "gelu", 0.25, True
    )
    llama = build_config({"run": {"recipe": "lm"}, "model": {"size": "tiny", "n_layers": 3}}).model
    assert model_values(llama) == {
        "n_layers": 3,
        "tie_embeddings": False,
        "checkpointing": False,
    }  # unset overrides stay the preset's


def test_model_bounds_are_checked_by_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_heads must be a number >= 1, got 0") as info:
        build_config({"run": {"recipe": "translation"}, "model": {"n_heads": 0}})
    assert info.value.key == "model.n_heads"


def test_model_schema_rejects_unknown_fields_and_missing_defaults() -> None:
    with pytest.raises(TypeError, match="has no field 'width'"):
        model_schema("mlp", MLPConfig, doc="x", exclude=("width",))
    with pytest.raises(TypeError, match="in_features has no default"):
        model_schema("mlp", MLPConfig, doc="x")
    extra = model_schema(
        "mlp",
        MLPConfig,
        doc="An MLP.",
        exclude=("in_features", "n_classes"),
        extra=[("tag", str, setting("a", "a tag"))],
    )
    assert [f.name for f in dataclasses.fields(extra)][-1] == "tag" and extra.__doc__ == "An MLP."
    assert typing.get_type_hints(extra)["hidden"] == list[int]  # tuples in the model, lists in YAML


def test_config_alone_knows_no_recipe() -> None:
    """Without the recipes imported, a config naming one is refused with the fix in the message."""
    code = (
        "from chtorch.config import ConfigError, load_config\n"
        "try:\n    load_config(None, ['run.recipe=image_classification'])\n"
        "except ConfigError as e:\n    print(e)\n"
        "import sys; print(sorted(m for m in sys.modules if m.startswith(('chtorch.recipes', 'chtorch.train'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "unknown recipe 'image_classification'" in out and "import chtorch.recipes.builtin" in out
    assert out.strip().endswith("[]")  # importing and using chtorch.config loaded no recipe and no trainer
