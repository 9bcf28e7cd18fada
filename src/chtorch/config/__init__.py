"""Typed, validated run configurations for the ``chtorch`` command and :mod:`chtorch.train`.

A run is described by six sections — ``run``, ``model``, ``data``, ``optim``, ``sparsity``,
``train`` — each a dataclass whose fields carry a help text and their allowed range or choices
(the CLI/config reference in ``docs/`` is generated from the same metadata). A configuration comes
from the built-in defaults (the offline demo: a CHTs MLP on scikit-learn's digits), then a YAML file,
then ``--set section.key=value`` overrides, in that order.

Every mistake a user can make is a :class:`ConfigError` that names the key: unknown keys (with the
closest valid key suggested), wrong types, values out of range, unknown methods, datasets, models
or recipes (listing the known ones), and sparsity options that the engine would reject.

The ``model`` and ``data`` sections are polymorphic so that other tasks plug in: the ``data``
schema is chosen by ``run.recipe`` and the ``model`` schema by ``model.name`` (see
:func:`register_recipe_schema` and :func:`register_model_schema`). Defaults follow the paper's MLP
setting (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 4) where the demo does not need
otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from chtorch.dst.options import SparsityOptions, closest

__all__ = [
    "ConfigError",
    "Config",
    "RunConfig",
    "MLPModelConfig",
    "ImageDataConfig",
    "OptimConfig",
    "SparsityConfig",
    "TrainConfig",
    "SECTIONS",
    "DENSE",
    "load_config",
    "build_config",
    "parse_override",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "save_config",
    "register_recipe_schema",
    "register_model_schema",
    "recipe_names",
    "load_builtin_schemas",
    "model_names",
    "method_options_for",
    "resolve_sparsity_options",
    "config_reference",
]

#: The method name that means "no sparsification" (the fully connected baseline).
DENSE = "dense"


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range. ``key`` is its dotted path."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ------------------------------------------------------------------------------------------------
# Field metadata: help text, range, choices. One source for validation and the docs.


def _field(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    meta = {"help": help, "min": min, "max": max, "min_open": min_open, "max_open": max_open, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    """Identity and placement of a run."""

    name: str = _field("digits_chts", "run name; the run directory defaults to runs/<name>-<date>-<time>")
    dir: str | None = _field(None, "run directory (checkpoints, metrics, plots, report); `--out` sets it")
    seed: int = _field(0, "seed of the model initialisation, data order and every topology choice", min=0)
    device: str = _field("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    threads: int = _field(
        1,
        "CPU threads for PyTorch: 1 suits small models and shared machines (more threads "
        "contend badly when other jobs run); 0 = PyTorch's default (all cores)",
        min=0,
    )
    recipe: str = _field("image_classification", "the task: which data, model, loss and metrics to build")
    loggers: list[str] = _field(
        factory=lambda: ["jsonl", "csv"],
        help="where the run's scalars go: jsonl (metrics.jsonl, required), csv, tensorboard, wandb (WANDB_MODE=offline "
        "works without network); see chtorch.train.loggers",
    )
    paper_table: str | None = _field(
        None,
        "the paper's table whose cells `chtorch compare` prints beside its results (chtorch.train.paper_tables)",
        choices=("table7-mnist", "table7-fmnist", "table7-emnist"),
    )


@dataclass
class MLPModelConfig:
    """The paper's MLP: hidden Linear layers with an activation, then a dense classifier."""

    name: str = _field("mlp", "model family")
    hidden: list[int] = _field(
        factory=lambda: [256, 256, 256],
        help="hidden widths; the paper uses three of 1568 (3072 for CIFAR-10), i.e. 2x the input size",
    )
    activation: str = _field(
        "relu", "activation after each hidden layer", choices=("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu")
    )
    dropout: float = _field(0.0, "dropout after each hidden activation", min=0.0, max=1.0, max_open=True)
    bias: bool = _field(True, "biases in every Linear layer")


@dataclass
class ImageDataConfig:
    """An image classification dataset read from its standard files (see chtorch.data)."""

    name: str = _field("digits", "dataset: digits (built in, offline), mnist, fashion_mnist, emnist_balanced, cifar10")
    dir: str | None = _field(None, "data root holding the dataset's files (default: $CHTORCH_DATA, then ~/.cache/chtorch)")
    batch_size: int = _field(32, "training batch size (the paper: 32)", min=1)
    eval_batch_size: int = _field(1000, "evaluation batch size", min=1)
    normalize: bool = _field(True, "standardise pixels with the dataset's mean and std")
    augment: bool = _field(False, "random crop (padding 4) and horizontal flip, as the paper's CIFAR-10 code")
    train_limit: int | None = _field(None, "use only the first N training images (CPU-sized runs)", min=1)
    test_limit: int | None = _field(None, "evaluate on only the first N test images", min=1)
    download: bool = _field(False, "download missing files from the canonical sources (checksum-verified)")
    verify: bool = _field(True, "verify file checksums before reading")
    csti_samples: int = _field(10000, "training images used to estimate the input correlation for CSTI", min=2)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = _field("sgd", "optimizer", choices=("sgd", "adamw", "adam"))
    lr: float = _field(0.025, "peak learning rate (for noam: the scale factor)", min=0.0, min_open=True)
    momentum: float = _field(0.9, "SGD momentum", min=0.0, max=1.0, max_open=True)
    nesterov: bool = _field(False, "Nesterov momentum (SGD)")
    weight_decay: float = _field(5e-4, "weight decay (SGD: L2; AdamW: decoupled)", min=0.0)
    betas: list[float] = _field(factory=lambda: [0.9, 0.999], help="Adam/AdamW betas")
    eps: float = _field(1e-8, "Adam/AdamW epsilon", min=0.0, min_open=True)
    schedule: str = _field(
        "linear",
        "LR schedule: constant, linear (lr -> final_lr), cosine (-> final_lr), noam",
        choices=("constant", "linear", "cosine", "noam"),
    )
    final_lr: float = _field(2.5e-4, "LR at the end of a linear or cosine schedule (the paper: 0.025 -> 2.5e-4)", min=0.0)
    warmup_steps: int = _field(0, "global warm-up steps (noam: its warm-up, required)", min=0)
    d_model: int | None = _field(None, "model width for noam (default: the model's)", min=1)
    rewarmup_steps: int = _field(
        0,
        "iterative re-warm-up: after each topology update the LR ramps up again over this many steps (paper: 20)",
        min=0,
    )
    grad_clip: float = _field(0.0, "clip the gradient norm to this value (0 = off)", min=0.0)


@dataclass
class SparsityConfig:
    """Which dynamic sparse training method, at which sparsity, with which parts."""

    method: str = _field("chts", "a registered method (`chtorch methods`) or 'dense' for no sparsification")
    sparsity: float = _field(0.9, "final fraction of zeros in each sparse layer (0.99 keeps 1% of links)", min=0.0, max=1.0, max_open=True)
    update_interval: int = _field(1, "topology update interval, in update_unit (the paper's MLPs: 1 epoch)", min=1)
    update_unit: str = _field("epoch", "unit of update_interval", choices=("epoch", "step"))
    layers: list[str] | None = _field(None, "layer names or glob patterns to sparsify (default: every Linear but the last)")
    exclude: list[str] | None = _field(None, "layer names or glob patterns to keep dense")
    backend: str = _field(
        "masked",
        "execution of the sparse layers: masked (dense weight x mask, every method), "
        "sparse (truly sparse kernels; not for rigl/granet) or auto (sparse where it pays off)",
        choices=("masked", "sparse", "auto"),
    )
    options: dict[str, Any] = _field(
        factory=dict,
        help="overrides of the method's parts for every method (see SparsityOptions), merged over the recipe's "
        "defaults (image classification: {weight_init: swi}, the paper's sparse weight init for MLPs)",
    )
    method_options: dict[str, dict[str, Any]] = _field(
        factory=dict,
        help="extra overrides per method, applied when that method runs, e.g. {chts: {init: csti, weight_init: swi}}",
    )


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = _field(30, "training epochs", min=1)
    eval_every: int = _field(1, "evaluate every N epochs (and always after the last)", min=1)
    checkpoint: bool = _field(True, "write a checkpoint (atomically) after every epoch")
    plots: bool = _field(True, "write PNG plots at the end (needs matplotlib)")
    report: bool = _field(True, "write report.md at the end")
    progress: str = _field(
        "auto", "auto (bar on a terminal, else one line per epoch), bar, lines or off", choices=("auto", "bar", "lines", "off")
    )
    log_every: int = _field(0, "also log the training loss every N steps (0 = per epoch only)", min=0)
    snapshot_every: int = _field(0, "save the masks every N epochs for plots (0 = start and end only)", min=0)
    tensorboard: bool = _field(True, "also log to TensorBoard when it is installed")
    max_nonfinite: int = _field(10, "stop after this many steps with a NaN/inf loss (each is skipped)", min=0)


@dataclass
class Config:
    """A whole run: six sections. ``model`` and ``data`` are the schemas of the chosen model and
    recipe (the MLP and image classification by default)."""

    run: RunConfig = field(default_factory=RunConfig)
    model: Any = field(default_factory=MLPModelConfig)
    data: Any = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "model": MLPModelConfig,
    "data": ImageDataConfig,
    "optim": OptimConfig,
    "sparsity": SparsityConfig,
    "train": TrainConfig,
}

# ------------------------------------------------------------------------------------------------
# Schema registries: a new task registers its data schema; a new model family its model schema.

_RECIPE_SCHEMAS: dict[str, tuple[type, tuple[str, ...]]] = {}
_RECIPE_SPARSITY_DEFAULTS: dict[str, dict[str, Any]] = {}
_MODEL_SCHEMAS: dict[str, type] = {}
# Modules that register the built-in recipes' schemas on import (loaded on first need, because
# they import this module).
_BUILTIN_RECIPE_MODULES = ("chtorch.recipes.image", "chtorch.recipes.translation", "chtorch.recipes.lm")
_builtins_loaded = False


def register_recipe_schema(
    name: str,
    data_schema: type,
    models: Sequence[str],
    sparsity_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Declare a recipe's ``data`` section dataclass and the model families it can train.

    ``sparsity_defaults`` are sparsity options the task uses unless the config says otherwise
    (merged under ``sparsity.options``), e.g. ``{"weight_init": "swi"}`` for MLPs.
    Example (a translation recipe): ``register_recipe_schema("translation", TranslationDataConfig,
    ["transformer"])``. The recipe's behaviour is registered separately in :mod:`chtorch.train`."""
    if not dataclasses.is_dataclass(data_schema):
        raise TypeError("data_schema must be a dataclass")
    _RECIPE_SCHEMAS[name] = (data_schema, tuple(models))
    _RECIPE_SPARSITY_DEFAULTS[name] = dict(sparsity_defaults or {})


def load_builtin_schemas() -> None:
    """Import the built-in recipe modules so that their schemas are registered (idempotent)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    import importlib
    import importlib.util

    for module in _BUILTIN_RECIPE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _builtins_loaded = True


def register_model_schema(name: str, schema: type) -> None:
    """Declare the ``model`` section dataclass of model family ``name`` (its ``name`` field must
    default to ``name``)."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError("schema must be a dataclass")
    _MODEL_SCHEMAS[name] = schema


def recipe_names() -> list[str]:
    load_builtin_schemas()
    return sorted(_RECIPE_SCHEMAS)


def model_names() -> list[str]:
    load_builtin_schemas()
    return sorted(_MODEL_SCHEMAS)


# SWI (Zhang et al., paper-notes §1.e: "MLP/CHT uses SWI"): masked Kaiming init shrinks the signal by
# sqrt(density) per layer, so a 90-99% sparse MLP barely trains without it — for every method alike.
register_recipe_schema("image_classification", ImageDataConfig, ["mlp"], sparsity_defaults={"weight_init": "swi"})
register_model_schema("mlp", MLPModelConfig)

# ------------------------------------------------------------------------------------------------
# Type coercion


class _Text(str):
    """A value given on the command line (``--set key=value``): still text, to be parsed by the
    field's type."""


_NULLS = {"null", "none", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# PyYAML follows YAML 1.1, which reads "5e-4" (no dot) as a *string*; accept such numbers for float
# fields, since configs copied from papers write learning rates that way.
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT_RE = re.compile(r"^[+-]?\d+$")


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _yaml_scalar(text: str) -> Any:
    """Parse a command-line value whose field accepts anything, the way YAML would (plus 5e-4)."""
    import yaml

    stripped = text.strip()
    if _FLOAT_RE.match(stripped) and not _INT_RE.match(stripped):
        return float(stripped)
    try:
        return yaml.safe_load(stripped) if stripped else None
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to type ``tp`` or a :class:`ConfigError` naming ``key``."""
    text = isinstance(value, _Text)
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong() -> ConfigError:
        shown = str(value) if text else f"{type(value).__name__} {value!r}"
        return ConfigError(f"{key} must be {_type_name(tp)}, got {shown}", key)

    if tp is Any:
        return _yaml_scalar(value) if text else value
    if isinstance(value, Mapping) and tp is not dict and origin is not dict and dict not in args:
        raise ConfigError(f"{key} is a value, not a section (got keys {', '.join(map(str, value))}); set {key}=<value>", key)
    if origin in (Union, types.UnionType):
        if value is None or (text and value.strip().lower() in _NULLS):
            if type(None) in args:
                return None
            raise wrong()
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise wrong()
    if value is None:
        raise wrong()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE and text:
            return value.strip().lower() in _TRUE
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            return int(value.strip())
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str) and (_FLOAT_RE.match(value.strip()) or value.strip().lower() in ("inf", "+inf")):
            out = float(value.strip())
        else:
            raise wrong()
        if math.isnan(out):
            raise wrong()
        return out
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise wrong()
    if origin in (list, tuple) or tp in (list, tuple):
        if text:
            stripped = value.strip()
            if stripped.startswith("["):
                value = _yaml_scalar(stripped)
            elif stripped.lower() in _NULLS:
                value = []
            else:
                value = [_Text(part.strip()) for part in stripped.split(",")]
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if text:
            value = _yaml_scalar(value)
            if value is None:
                value = {}
        if not isinstance(value, Mapping):
            raise wrong()
        vtype = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vtype, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # a bug in a schema, not user input


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}{closest(value, choices)}", key)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        low_bad = lo is not None and (v <= lo if meta.get("min_open") else v < lo)
        high_bad = hi is not None and (v >= hi if meta.get("max_open") else v > hi)
        if low_bad or high_bad:
            left = "(" if meta.get("min_open") else "["
            right = ")" if meta.get("max_open") else "]"
            span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise ConfigError(f"{key}={value!r} is out of range: must be in {span}", key)


# ------------------------------------------------------------------------------------------------
# Building typed configs from nested mappings


def _all_keys() -> dict[str, list[str]]:
    """leaf name -> dotted keys that end with it, over every known schema (for cross-section hints)."""
    out: dict[str, list[str]] = {}
    schemas = [(name, cls) for name, cls in SECTIONS.items() if name not in ("model", "data")]
    schemas += [("model", cls) for cls in _MODEL_SCHEMAS.values()]
    schemas += [("data", cls) for cls, _ in _RECIPE_SCHEMAS.values()]
    for section, cls in schemas:
        for f in dataclasses.fields(cls):
            dotted = f"{section}.{f.name}"
            if dotted not in out.setdefault(f.name, []):
                out[f.name].append(dotted)
    return out


def _unknown_key(section: str, key: str, names: Sequence[str]) -> ConfigError:
    dotted = f"{section}.{key}" if section else key
    # The same key in another section is the likeliest mistake (optim.epochs -> train.epochs).
    elsewhere = [k for k in _all_keys().get(key, []) if not k.startswith(section + ".")] if section else []
    if elsewhere:
        hint = f" (did you mean {elsewhere[0]!r}?)"
    elif section == "sparsity" and key in SparsityOptions.field_names():
        hint = f" (it is a method part: set 'sparsity.options.{key}')"
    else:
        match = closest(key, names)
        hint = match.replace("'", f"'{section}.", 1) if match and section else match
    where = f"section {section!r}" if section else "the top level"
    return ConfigError(f"unknown config key {dotted!r}{hint}; valid keys in {where}: {', '.join(names)}", dotted)


def _build_section(cls: type, raw: Any, section: str) -> Any:
    if raw is None:
        raw = {}
    if isinstance(raw, _Text) or not isinstance(raw, Mapping):
        raise ConfigError(f"{section} must be a mapping of keys (a section), got {raw!r}; set {section}.<key>=value", section)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise _unknown_key(section, str(key), list(fields))
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{section}.{name}"
        value = _coerce(raw[name], hints[name], key)
        _check_range(value, f.metadata, key)
        values[name] = value
    return cls(**values)


def _schema_for(section: str, raw: Mapping[str, Any], recipe: str) -> type:
    if section == "data":
        if recipe not in _RECIPE_SCHEMAS:
            import chtorch.recipes.base  # noqa: F401  (registers the built-in recipes and their schemas)
        if recipe not in _RECIPE_SCHEMAS:
            raise ConfigError(
                f"unknown recipe {recipe!r}{closest(recipe, _RECIPE_SCHEMAS)}; known recipes: {', '.join(recipe_names())}", "run.recipe"
            )
        return _RECIPE_SCHEMAS[recipe][0]
    name = raw.get("name", "mlp") if isinstance(raw, Mapping) else "mlp"
    name = str(name).strip()
    if name not in _MODEL_SCHEMAS:
        raise ConfigError(f"unknown model {name!r}{closest(name, _MODEL_SCHEMAS)}; known models: {', '.join(model_names())}", "model.name")
    return _MODEL_SCHEMAS[name]


def build_config(raw: Mapping[str, Any] | None = None) -> Config:
    """A validated :class:`Config` from a nested mapping (missing keys take their defaults)."""
    load_builtin_schemas()
    raw = dict(raw or {})
    for key in raw:
        if key not in SECTIONS:
            raise _unknown_key("", str(key), list(SECTIONS))
    run = _build_section(RunConfig, raw.get("run"), "run")
    sections: dict[str, Any] = {"run": run}
    for name in ("model", "data"):
        section_raw = raw.get(name) or {}
        if isinstance(section_raw, Mapping):
            section_raw = dict(section_raw)
        sections[name] = _build_section(_schema_for(name, section_raw, run.recipe), section_raw, name)
    for name in ("optim", "sparsity", "train"):
        sections[name] = _build_section(SECTIONS[name], raw.get(name), name)
    config = Config(**sections)
    _validate(config)
    return config


def method_options_for(config: Config, method: str | None = None) -> dict[str, Any]:
    """The sparsity option overrides of ``method`` (default: the configured one): ``options``
    updated with ``method_options[method]``."""
    method = (method or config.sparsity.method).lower()
    merged = dict(config.sparsity.options)
    extra = dict(config.sparsity.method_options.get(method, {}))
    if "init_options" in merged and "init_options" in extra:
        extra["init_options"] = {**merged["init_options"], **extra["init_options"]}
    merged.update(extra)
    return merged


def resolve_sparsity_options(method: str, overrides: Mapping[str, Any]) -> SparsityOptions:
    """The :class:`SparsityOptions` of ``method``'s preset with ``overrides`` applied (overriding
    ``init`` drops the preset's initializer options, see ``MethodPreset.build_options``)."""
    from chtorch.dst.methods import get_method

    return get_method(method).build_options(**dict(overrides))


def _coerce_options(options: Mapping[str, Any], key: str) -> dict[str, Any]:
    hints = typing.get_type_hints(SparsityOptions)
    names = SparsityOptions.field_names()
    out = {}
    for name, value in options.items():
        if name not in names:
            raise ConfigError(
                f"unknown sparsity option {key}.{name}{closest(name, names)}; valid options: {', '.join(names)}", f"{key}.{name}"
            )
        if name == "update_interval":
            raise ConfigError(f"{key}.update_interval: set sparsity.update_interval (with sparsity.update_unit) instead", f"{key}.{name}")
        if name == "couplings":
            raise ConfigError(f"{key}.couplings cannot be set in a config; the recipe provides the percolation couplings", f"{key}.{name}")
        tp = dict if name == "init_options" else hints[name]
        out[name] = _coerce(value, tp, f"{key}.{name}")
    return out


def _validate(config: Config) -> None:
    """Checks that span sections or need other modules (methods, datasets, models)."""
    from chtorch.dst.methods import methods
    from chtorch.dst.options import OptionError

    recipe = config.run.recipe
    allowed_models = _RECIPE_SCHEMAS[recipe][1]
    if config.model.name not in allowed_models:
        raise ConfigError(
            f"model {config.model.name!r} cannot be trained by recipe {recipe!r}; it trains: {', '.join(allowed_models)}", "model.name"
        )

    sp = config.sparsity
    sp.method = sp.method.lower()
    known = [DENSE, *methods()]
    if sp.method not in known:
        raise ConfigError(f"unknown method {sp.method!r}{closest(sp.method, known)}; known methods: {', '.join(known)}", "sparsity.method")
    sp.options = {**_RECIPE_SPARSITY_DEFAULTS.get(recipe, {}), **_coerce_options(sp.options, "sparsity.options")}
    method_options = {}
    for name, opts in sp.method_options.items():
        key = name.lower()
        if key not in known:
            raise ConfigError(
                f"sparsity.method_options names unknown method {name!r}{closest(key, known)}; known methods: {', '.join(known)}",
                f"sparsity.method_options.{name}",
            )
        method_options[key] = _coerce_options(opts, f"sparsity.method_options.{key}")
    sp.method_options = method_options
    # Validate the options against every method they will be used with.
    for method in {sp.method, *method_options} - {DENSE}:
        try:
            resolve_sparsity_options(method, method_options_for(config, method))
        except OptionError as exc:
            raise ConfigError(f"sparsity options for method {method!r}: {exc}", "sparsity.options") from None
    if sp.method != DENSE:
        opts = resolve_sparsity_options(sp.method, method_options_for(config, sp.method))
        if opts.density_schedule != "constant" and opts.initial_sparsity > sp.sparsity:
            raise ConfigError(
                f"method {sp.method!r} decays density from initial_sparsity={opts.initial_sparsity} to sparsity.sparsity={sp.sparsity}; "
                "the target must be at least as sparse: raise sparsity.sparsity or set sparsity.options.initial_sparsity",
                "sparsity.sparsity",
            )

    if recipe == "image_classification":
        from chtorch.data import dataset_names
        from chtorch.data.vision import dataset_info

        try:
            config.data.name = dataset_info(config.data.name).name
        except ValueError:
            names = dataset_names()
            raise ConfigError(
                f"unknown dataset {config.data.name!r}{closest(config.data.name, names)}; known datasets: {', '.join(names)}", "data.name"
            ) from None
    if config.optim.name in ("adam", "adamw") and len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas must hold two numbers, got {config.optim.betas}", "optim.betas")
    for i, b in enumerate(config.optim.betas):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"optim.betas[{i}]={b} is out of range: must be in [0, 1)", "optim.betas")
    if config.optim.schedule == "noam" and config.optim.warmup_steps == 0:
        raise ConfigError("optim.schedule=noam needs optim.warmup_steps > 0 (e.g. 4000)", "optim.warmup_steps")
    if config.optim.final_lr > config.optim.lr and config.optim.schedule in ("linear", "cosine"):
        raise ConfigError(
            f"optim.final_lr={config.optim.final_lr} is above optim.lr={config.optim.lr}: the schedule decays", "optim.final_lr"
        )
    device = config.run.device
    if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", device):
        raise ConfigError(f"run.device={device!r} is not one of auto, cpu, cuda, cuda:N, mps", "run.device")


# ------------------------------------------------------------------------------------------------
# Overrides and files


def parse_override(text: str) -> tuple[list[str], _Text]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], "0.01")."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (for example optim.lr=0.01), got {text!r}")
    key, value = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set key {key!r} is not a dotted key like optim.lr")
    return parts, _Text(value)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``section.key=value`` (values still text) set in place."""
    import copy

    out = copy.deepcopy(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) < 2:
            raise ConfigError(
                f"--set {text!r}: name a key inside a section, e.g. {parts[0]}.<key>=value"
                if parts[0] in SECTIONS
                else f"--set {text!r}: unknown section {parts[0]!r}{closest(parts[0], SECTIONS)}; sections: {', '.join(SECTIONS)}",
                parts[0],
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, Mapping) or isinstance(child, _Text):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section", ".".join(parts[: i + 1]))
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        hint = ""
        if not path.suffix:
            candidates = sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
            hint = f"; configs here: {', '.join(candidates)}" if candidates else ""
        raise ConfigError(f"config file {str(path)!r} not found{hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: a config must be a mapping of sections (run, model, data, optim, sparsity, train), got {type(raw).__name__}"
        )
    return dict(raw)


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (``section.key=value``)."""
    raw = _read_yaml(path) if path is not None else {}
    try:
        return build_config(apply_overrides(raw, overrides))
    except ConfigError as exc:
        if path is not None and not str(exc).startswith(str(path)):
            raise ConfigError(f"{path}: {exc}", exc.key) from None
        raise


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (lists, no tuples) of ``config``; :func:`build_config` reads it back."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {name: plain(dataclasses.asdict(getattr(config, name))) for name in SECTIONS}


def config_to_yaml(config: Config) -> str:
    """Block-style YAML with short lists of scalars inline (``hidden: [256, 256, 256]``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
        flow = all(not isinstance(v, (list, dict)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, represent_list)
    return yaml.dump(config_to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def save_config(config: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    text = "# Resolved chtorch configuration (defaults + file + --set overrides)\n" + config_to_yaml(config)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# Reference documentation, generated from the schemas


def config_reference() -> str:
    """Markdown tables of every config key: type, default, allowed values, meaning."""

    def describe(cls: type, section: str) -> list[str]:
        hints = typing.get_type_hints(cls)
        rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        instance = cls()
        for f in dataclasses.fields(cls):
            meta = f.metadata
            allowed = ""
            if meta.get("choices"):
                allowed = ", ".join(meta["choices"])
            elif meta.get("min") is not None or meta.get("max") is not None:
                left = "(" if meta.get("min_open") else "["
                right = ")" if meta.get("max_open") else "]"
                lo = "-inf" if meta.get("min") is None else meta["min"]
                hi = "inf" if meta.get("max") is None else meta["max"]
                allowed = f"{left}{lo}, {hi}{right}"
            default = getattr(instance, f.name)
            rows.append(f"| `{section}.{f.name}` | {_type_name(hints[f.name])} | `{default!r}` | {allowed} | {meta.get('help', '')} |")
        return rows

    load_builtin_schemas()
    lines: list[str] = []
    order = [("run", RunConfig)]
    order += [(f"model (name: {name})", cls) for name, cls in sorted(_MODEL_SCHEMAS.items())]
    order += [(f"data (recipe: {name})", spec[0]) for name, spec in sorted(_RECIPE_SCHEMAS.items())]
    order += [("optim", OptimConfig), ("sparsity", SparsityConfig), ("train", TrainConfig)]
    for title, cls in order:
        section = title.split(" ")[0]
        lines += [f"### `{title}`", "", (cls.__doc__ or "").strip().splitlines()[0], ""]
        lines += describe(cls, section)
        lines.append("")
    return "\n".join(lines)
