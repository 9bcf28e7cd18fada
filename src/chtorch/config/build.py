"""A typed, validated :class:`Config` from a nested mapping (defaults for what is missing).

Every mistake is a :class:`ConfigError` that names the key: unknown keys (with the closest valid
key, or the same key in another section, suggested), wrong types, values out of range, unknown
recipes and models (listing the known ones); then the cross-section checks (the recipe's own
``validate`` hook, the sparsity options against the engine, the optimizer settings).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from chtorch._checks import check_number, closest
from chtorch.config.checks import check_field, config_error
from chtorch.config.coercion import Text, coerce
from chtorch.config.errors import ConfigError
from chtorch.config.imports import import_modules
from chtorch.config.registry import default_recipe, model_schema_of, model_schemas, recipe_schema, recipe_schemas
from chtorch.config.sections import FIXED_SECTIONS, SECTIONS, Config, RunConfig
from chtorch.config.sparsity import validate_sparsity
from chtorch.dst import SparsityOptions

__all__ = ["build_config", "build_section"]


def _all_keys() -> dict[str, list[str]]:
    """leaf name -> dotted keys that end with it, over every known schema (for cross-section hints)."""
    out: dict[str, list[str]] = {}
    schemas = list(FIXED_SECTIONS.items())
    schemas += [("model", cls) for cls in model_schemas().values()]
    schemas += [("data", spec.data) for spec in recipe_schemas().values()]
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


def build_section(cls: type, raw: Any, section: str) -> Any:
    """An instance of section dataclass ``cls`` from mapping ``raw`` (coerced and range-checked)."""
    if raw is None:
        raw = {}
    if isinstance(raw, Text) or not isinstance(raw, Mapping):
        raise ConfigError(
            f"{section} must be a mapping of keys (a section), got {raw!r}; set {section}.<key>=value", section
        )
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
        value = coerce(raw[name], hints[name], key)
        check_field(value, f.metadata, key)
        values[name] = value
    return cls(**values)


def build_config(raw: Mapping[str, Any] | None = None) -> Config:
    """A validated :class:`Config` from a nested mapping (missing keys take their defaults). The
    recipe named by ``run.recipe`` (and its model families) must be registered."""
    raw = dict(raw or {})
    for key in raw:
        if key not in SECTIONS:
            raise _unknown_key("", str(key), list(SECTIONS))
    run: RunConfig = build_section(RunConfig, raw.get("run"), "run")
    import_modules(run.imports)  # the user's registrations come before anything names them
    if not run.recipe:
        run.recipe = default_recipe()
    recipe = recipe_schema(run.recipe)
    sections: dict[str, Any] = {"run": run}
    model_raw = raw.get("model") or {}
    model_raw = dict(model_raw) if isinstance(model_raw, Mapping) else model_raw
    family = str(
        model_raw.get("name", recipe.models[0]) if isinstance(model_raw, Mapping) else recipe.models[0]
    ).strip()
    sections["model"] = build_section(model_schema_of(family), model_raw, "model")
    sections["data"] = build_section(recipe.data, raw.get("data"), "data")
    for name in ("optim", "sparsity", "train"):
        sections[name] = build_section(FIXED_SECTIONS[name], raw.get(name), name)
    config = Config(**sections)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    """Checks that span sections or need other modules (methods, the recipe's own checks)."""
    recipe = recipe_schema(config.run.recipe)
    if config.model.name not in recipe.models:
        raise ConfigError(
            f"model {config.model.name!r} cannot be trained by recipe "
            f"{recipe.name!r}; it trains: {', '.join(recipe.models)}",
            "model.name",
        )
    validate_sparsity(config, recipe.sparsity_defaults)
    if recipe.validate is not None:
        recipe.validate(config)
    optim = config.optim
    if optim.name in ("adam", "adamw") and len(optim.betas) != 2:
        raise ConfigError(f"optim.betas must hold two numbers, got {optim.betas}", "optim.betas")
    if optim.schedule == "noam" and optim.warmup_steps == 0:
        raise ConfigError("optim.schedule=noam needs optim.warmup_steps > 0 (e.g. 4000)", "optim.warmup_steps")
    if optim.schedule in ("linear", "cosine"):
        key = "optim.final_lr"
        hint = f"at most optim.lr={optim.lr}: the schedule decays"
        check_number(key, optim.final_lr, None, optim.lr, error=config_error(key), hint=hint)
    name = config.run.name
    if not name or len(name) > 100 or name in (".", "..") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise ConfigError(
            f"run.name={name[:120]!r} must be a name, not a path: 1 to 100 printable characters without / or \\ "
            "and not . or .. (the run directory is runs/<name>-<time>; --out chooses another place)",
            "run.name",
        )
    device = config.run.device
    if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", device):
        raise ConfigError(f"run.device={device!r} is not one of auto, cpu, cuda, cuda:N, mps", "run.device")
