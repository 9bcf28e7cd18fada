"""Typed, validated run configurations for the ``chtorch`` command and :mod:`chtorch.train`.

The ground floor of the application: it imports no recipe and no trainer. A run is six sections —
``run``, ``model``, ``data``, ``optim``, ``sparsity``, ``train`` — each a dataclass whose fields
carry a help text and their allowed range or choices (the reference in ``docs/config.md`` is
generated from the same metadata). A configuration comes from the defaults, then a YAML file, then
``--set section.key=value`` overrides, in that order.

One job per module:

========================  =====================================================================
``errors``                :class:`ConfigError` (every mistake names its dotted key)
``fields``                :func:`setting` fields; ``model`` sections derived from the models' configs
``checks``                a value against its field's bounds; :func:`config_error` for the checks
``coercion``              YAML / command-line values converted to a field's type
``sections``              the shared sections (run, optim, sparsity, train) and :class:`Config`
``registry``              recipes register their ``data`` schemas, model families their ``model`` schemas
``sparsity``              method options merged per method and checked against the engine
``build``                 a validated :class:`Config` from a nested mapping
``overrides``             ``--set a.b=c``
``yaml_io``               read and write config files
``reference``             the Markdown reference of every key
========================  =====================================================================

The ``model`` and ``data`` sections are polymorphic so that tasks plug in: the ``data`` schema is
chosen by ``run.recipe`` and the ``model`` schema by ``model.name``; each recipe registers its own
(:func:`register_recipe_schema`, :func:`register_model_schema`). The built-in recipes register when
:mod:`chtorch.recipes.builtin` is imported (:mod:`chtorch.train` and the command line do).
"""

from __future__ import annotations

from chtorch.config.build import build_config, build_section
from chtorch.config.checks import check_field, config_error
from chtorch.config.coercion import Text, coerce
from chtorch.config.errors import ConfigError
from chtorch.config.fields import model_schema, model_values, setting
from chtorch.config.overrides import apply_overrides, parse_override
from chtorch.config.reference import config_reference
from chtorch.config.registry import (
    default_recipe,
    model_names,
    recipe_names,
    register_model_schema,
    register_recipe_schema,
)
from chtorch.config.sections import (
    SECTIONS,
    Config,
    OptimConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
    config_to_dict,
)
from chtorch.config.sparsity import (
    method_options_for,
    option_defaults_for,
    resolve_sparsity_options,
    sparsity_options_for,
)
from chtorch.config.yaml_io import config_to_yaml, load_config, read_yaml, save_config

__all__ = [
    "ConfigError",
    "Config",
    "RunConfig",
    "OptimConfig",
    "SparsityConfig",
    "TrainConfig",
    "SECTIONS",
    "Text",
    "setting",
    "model_schema",
    "model_values",
    "config_error",
    "check_field",
    "coerce",
    "load_config",
    "read_yaml",
    "build_config",
    "build_section",
    "parse_override",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "save_config",
    "register_recipe_schema",
    "register_model_schema",
    "recipe_names",
    "model_names",
    "default_recipe",
    "method_options_for",
    "option_defaults_for",
    "sparsity_options_for",
    "resolve_sparsity_options",
    "config_reference",
]
