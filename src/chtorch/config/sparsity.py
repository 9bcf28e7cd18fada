"""The ``sparsity`` section's method options: coerced, merged per method and checked by the engine.

``sparsity.options`` overrides the method's parts for every method, ``sparsity.method_options``
adds overrides per method; :func:`method_options_for` merges them (in this one place) and
:func:`resolve_sparsity_options` turns them into the preset's :class:`SparsityOptions`, so a
combination the engine would refuse is a :class:`ConfigError` before any training starts.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from chtorch._checks import closest
from chtorch.config.coercion import coerce
from chtorch.config.errors import ConfigError
from chtorch.config.sections import Config
from chtorch.dst import (
    OptionError,
    SparsityOptions,
    all_methods,
    backend_names,
    is_dense,
    merge_overrides,
    resolve_options,
)
from chtorch.sparse import kernel_names

__all__ = ["method_options_for", "resolve_sparsity_options", "validate_sparsity"]


def method_options_for(config: Config, method: str | None = None) -> dict[str, Any]:
    """The sparsity option overrides of ``method`` (default: the configured one): ``options``
    updated with ``method_options[method]``."""
    method = (method or config.sparsity.method).lower()
    return merge_overrides(config.sparsity.options, config.sparsity.method_options.get(method, {}))


def resolve_sparsity_options(method: str, overrides: Mapping[str, Any]) -> SparsityOptions:
    """The :class:`SparsityOptions` of ``method``'s preset with ``overrides`` applied (overriding
    ``init`` drops the preset's initializer options, see ``MethodPreset.build_options``)."""
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
    sp.options = {**recipe_defaults, **_coerce_options(sp.options, "sparsity.options")}
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
        try:
            resolve_sparsity_options(method, method_options_for(config, method))
        except OptionError as exc:
            raise ConfigError(f"sparsity options for method {method!r}: {exc}", "sparsity.options") from None
    if not is_dense(sp.method):
        resolved = resolve_sparsity_options(sp.method, method_options_for(config, sp.method))
        if resolved.density_schedule != "constant" and resolved.initial_sparsity > sp.sparsity:
            raise ConfigError(
                f"method {sp.method!r} decays density from "
                f"initial_sparsity={resolved.initial_sparsity} to sparsity.sparsity={sp.sparsity}; "
                "the target must be at least as sparse: raise "
                "sparsity.sparsity or set sparsity.options.initial_sparsity",
                "sparsity.sparsity",
            )
