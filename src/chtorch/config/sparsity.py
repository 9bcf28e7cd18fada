"""The ``sparsity`` section's method options: coerced, merged per method and checked by the engine.

``sparsity.options`` overrides the method's parts for every method, ``sparsity.method_options``
adds overrides per method; :func:`method_options_for` merges them (in this one place) and
:func:`sparsity_options_for` turns them, over the recipe's defaults, into the preset's
:class:`SparsityOptions`, so a combination the engine would refuse, or an option the method would
not read (:mod:`chtorch.dst.reads`), is a :class:`ConfigError` naming the key before any training
starts. ``sparsity.options`` holds the user's options only: the recipe's defaults
(:func:`option_defaults_for`) are merged under them when the options are resolved, and are never
an error where a method does not read them.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from chtorch._checks import closest
from chtorch.config.coercion import coerce
from chtorch.config.errors import ConfigError
from chtorch.config.registry import recipe_schema
from chtorch.config.sections import Config
from chtorch.dst import (
    OptionError,
    SparsityOptions,
    UnreadOptionError,
    all_methods,
    backend_names,
    is_dense,
    merge_overrides,
    resolve_options,
)
from chtorch.sparse import kernel_names

__all__ = [
    "method_options_for",
    "option_defaults_for",
    "sparsity_options_for",
    "resolve_sparsity_options",
    "validate_sparsity",
]


def method_options_for(config: Config, method: str | None = None) -> dict[str, Any]:
    """The sparsity option overrides the user set for ``method`` (default: the configured one):
    ``options`` updated with ``method_options[method]`` (the recipe's defaults are not included:
    :func:`option_defaults_for`)."""
    method = (method or config.sparsity.method).lower()
    return merge_overrides(config.sparsity.options, config.sparsity.method_options.get(method, {}))


def option_defaults_for(config: Config) -> dict[str, Any]:
    """The recipe's sparsity options, used unless the config says otherwise and where the method
    reads them (e.g. the image recipe's ``weight_init='swi_out'``, the LM recipe's LLaMA-code T 1 → 9)."""
    return dict(recipe_schema(config.run.recipe).sparsity_defaults)


def sparsity_options_for(config: Config, method: str | None = None) -> SparsityOptions:
    """The :class:`SparsityOptions` ``method`` (default: the configured one) runs with under
    ``config``: its preset, the recipe's defaults, then the user's options. An option the user set
    that the method does not read is a :class:`ConfigError` naming its key."""
    method = (method or config.sparsity.method).lower()
    sp = config.sparsity
    try:
        return resolve_options(method, sp.options, sp.method_options.get(method), defaults=option_defaults_for(config))
    except UnreadOptionError as exc:
        name = exc.options[0]
        own = sp.method_options.get(method, {})
        key = f"sparsity.method_options.{method}.{name}" if name in own else f"sparsity.options.{name}"
        hint = (
            ""
            if name in own
            else " (sparsity.options apply to every method: set it under sparsity.method_options.<method> "
            "of the methods that read it)"
        )
        raise ConfigError(f"{key}: {exc}{hint}", key) from None
    except OptionError as exc:
        raise ConfigError(f"sparsity options for method {method!r}: {exc}", "sparsity.options") from None


def resolve_sparsity_options(method: str, overrides: Mapping[str, Any]) -> SparsityOptions:
    """The :class:`SparsityOptions` of ``method``'s preset with ``overrides`` applied (overriding
    ``init`` drops the preset's initializer options, see ``MethodPreset.build_options``); every
    option of ``overrides`` must be read by the method (:func:`sparsity_options_for` adds a config's
    recipe defaults)."""
    return resolve_options(method, overrides)


def _coerce_options(options: Mapping[str, Any], key: str) -> dict[str, Any]:
    hints = typing.get_type_hints(SparsityOptions)
    names = SparsityOptions.field_names()
    out = {}
    for name, value in options.items():
        if name not in names:
            raise ConfigError(
                f"unknown sparsity option {key}.{name}{closest(name, names)}; valid options: {', '.join(names)}",
                f"{key}.{name}",
            )
        if name == "update_interval":
            raise ConfigError(
                f"{key}.update_interval: set sparsity.update_interval (with sparsity.update_unit) instead",
                f"{key}.{name}",
            )
        if name == "couplings":
            raise ConfigError(
                f"{key}.couplings cannot be set in a config; the recipe provides the percolation couplings",
                f"{key}.{name}",
            )
        tp = dict if name in ("init_options", "removal_options", "regrowth_options") else hints[name]
        out[name] = coerce(value, tp, f"{key}.{name}")
    return out


def validate_sparsity(config: Config, recipe_defaults: Mapping[str, Any]) -> None:
    """Normalise and check ``config.sparsity`` in place: known method names, coerced options over
    the recipe's ``recipe_defaults``, and options the engine accepts for every method they serve."""
    sp = config.sparsity
    for key, value, known_names in (
        ("backend", sp.backend, backend_names()),
        ("kernel", sp.kernel, kernel_names()),
    ):
        if value not in known_names:
            raise ConfigError(
                f"unknown sparsity.{key} {value!r}{closest(value, known_names)}; known: {', '.join(known_names)} "
                "(register your own in a module named in run.imports)",
                f"sparsity.{key}",
            )
    sp.method = sp.method.lower()
    known = all_methods()
    if sp.method not in known:
        raise ConfigError(
            f"unknown method {sp.method!r}{closest(sp.method, known)}; known methods: {', '.join(known)}",
            "sparsity.method",
        )
    sp.options = _coerce_options(sp.options, "sparsity.options")
    method_options = {}
    for name, opts in sp.method_options.items():
        key = name.lower()
        if key not in known:
            raise ConfigError(
                "sparsity.method_options names unknown method "
                f"{name!r}{closest(key, known)}; known methods: {', '.join(known)}",
                f"sparsity.method_options.{name}",
            )
        method_options[key] = _coerce_options(opts, f"sparsity.method_options.{key}")
    sp.method_options = method_options
    # Validate the options against every method they will be used with.
    for method in sorted(m for m in {sp.method, *method_options} if not is_dense(m)):
        sparsity_options_for(config, method)
    if not is_dense(sp.method):
        resolved = sparsity_options_for(config, sp.method)
        if resolved.density_schedule != "constant" and resolved.initial_sparsity > sp.sparsity:
            raise ConfigError(
                f"method {sp.method!r} decays density from "
                f"initial_sparsity={resolved.initial_sparsity} to sparsity.sparsity={sp.sparsity}; "
                "the target must be at least as sparse: raise "
                "sparsity.sparsity or set sparsity.options.initial_sparsity",
                "sparsity.sparsity",
            )
