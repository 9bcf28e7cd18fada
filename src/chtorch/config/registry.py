"""Schema registries: a recipe registers its ``data`` schema, a model family its ``model`` schema.

The run configuration knows no recipe by name. Each recipe module (``chtorch.recipes.image``,
``translation``, ``lm``, or a user's) calls :func:`register_recipe_schema` and
:func:`register_model_schema` when it is imported; the built-in ones are imported together by
:mod:`chtorch.recipes.builtin`, which the trainer and the command line import before they read a
config. This module imports no recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chtorch._checks import closest
from chtorch.config.errors import ConfigError

__all__ = [
    "RecipeSchema",
    "register_recipe_schema",
    "register_model_schema",
    "recipe_schema",
    "model_schema_of",
    "recipe_names",
    "model_names",
    "default_recipe",
    "recipe_schemas",
    "model_schemas",
]


@dataclass(frozen=True)
class RecipeSchema:
    """What the configuration knows of a recipe: its ``data`` section dataclass, the model families
    it trains (the first is its default), sparsity options it uses unless the config says otherwise,
    and a ``validate(config)`` hook for checks only the recipe can make (e.g. a dataset name)."""

    name: str
    data: type
    models: tuple[str, ...]
    sparsity_defaults: Mapping[str, Any]
    validate: Callable[[Any], None] | None = None


_RECIPE_SCHEMAS: dict[str, RecipeSchema] = {}
_MODEL_SCHEMAS: dict[str, type] = {}
_DEFAULT: list[str] = []


def register_recipe_schema(
    name: str,
    data_schema: type,
    models: Sequence[str],
    sparsity_defaults: Mapping[str, Any] | None = None,
    *,
    validate: Callable[[Any], None] | None = None,
    default: bool = False,
) -> None:
    """Declare recipe ``name``: its ``data`` section dataclass and the model families it can train.

    ``sparsity_defaults`` are sparsity options the task uses unless the config says otherwise
    (merged under the config's options when a method's options are resolved, and used only where the
    method reads them: :func:`chtorch.config.sparsity_options_for`), e.g. ``{"weight_init": "swi"}``
    for MLPs. ``validate`` is called with the built :class:`~chtorch.config.Config` and raises
    :class:`~chtorch.config.ConfigError` for what the schema cannot check. ``default=True`` makes
    it the recipe of a config that names none. The recipe's behaviour is registered separately
    (:func:`chtorch.recipes.base.register_recipe`)."""
    if not dataclasses.is_dataclass(data_schema):
        raise TypeError("data_schema must be a dataclass")
    if not models:
        raise TypeError(f"recipe {name!r} must train at least one model family")
    _RECIPE_SCHEMAS[name] = RecipeSchema(name, data_schema, tuple(models), dict(sparsity_defaults or {}), validate)
    if default:
        _DEFAULT[:] = [name]


def register_model_schema(name: str, schema: type) -> None:
    """Declare the ``model`` section dataclass of model family ``name`` (its ``name`` field must
    default to ``name``; see :func:`chtorch.config.fields.model_schema` to derive it from the model's
    own config dataclass)."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError("schema must be a dataclass")
    _MODEL_SCHEMAS[name] = schema


def _none_registered() -> str:
    return (
        ""
        if _RECIPE_SCHEMAS
        else " (no recipe is registered: `import chtorch.recipes.builtin` registers the built-in ones)"
    )


def default_recipe() -> str:
    """The recipe of a config whose ``run.recipe`` is not set."""
    if not _DEFAULT:
        raise ConfigError(
            f"run.recipe is not set and no recipe is registered as the default{_none_registered()}", "run.recipe"
        )
    return _DEFAULT[0]


def recipe_schema(name: str) -> RecipeSchema:
    """The registered schema of recipe ``name``, or a :class:`ConfigError` listing the known ones."""
    if name not in _RECIPE_SCHEMAS:
        known = ", ".join(recipe_names()) or "none"
        raise ConfigError(
            f"unknown recipe {name!r}{closest(name, _RECIPE_SCHEMAS)}; known recipes: {known}{_none_registered()}",
            "run.recipe",
        )
    return _RECIPE_SCHEMAS[name]


def model_schema_of(name: str) -> type:
    """The ``model`` section dataclass of family ``name``, or a :class:`ConfigError`."""
    if name not in _MODEL_SCHEMAS:
        known = ", ".join(model_names()) or "none"
        raise ConfigError(f"unknown model {name!r}{closest(name, _MODEL_SCHEMAS)}; known models: {known}", "model.name")
    return _MODEL_SCHEMAS[name]


def recipe_names() -> list[str]:
    return sorted(_RECIPE_SCHEMAS)


def model_names() -> list[str]:
    return sorted(_MODEL_SCHEMAS)


def recipe_schemas() -> dict[str, RecipeSchema]:
    """Every registered recipe schema, by name (a copy)."""
    return dict(_RECIPE_SCHEMAS)


def model_schemas() -> dict[str, type]:
    """Every registered model section dataclass, by family (a copy)."""
    return dict(_MODEL_SCHEMAS)
