"""Type coercion: a value from YAML or from ``--set key=value`` converted to its field's type.

Values given on the command line stay text (:class:`Text`) until a field's type parses them, so
``--set model.hidden=64,64`` and ``hidden: [64, 64]`` in YAML give the same list of ints; every
mismatch is a :class:`~chtorch.config.errors.ConfigError` that names the key and the expected type.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from chtorch.config.errors import ConfigError

__all__ = ["Text", "coerce", "type_name", "yaml_scalar"]


class Text(str):
    """A value given on the command line (``--set key=value``): still text, to be parsed by the
    field's type."""


NULLS = {"null", "none", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# PyYAML follows YAML 1.1, which reads "5e-4" (no dot) as a *string*; accept such numbers for float
# fields, since configs copied from papers write learning rates that way.
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT_RE = re.compile(r"^[+-]?\d+$")


def type_name(tp: Any) -> str:
    """How a field's type reads in messages and docs (``an integer``, ``a list of a number``)."""
    if tp is Any:
        return "any value"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def yaml_scalar(text: str) -> Any:
    """Parse a command-line value whose field accepts anything, the way YAML would (plus 5e-4)."""
    import yaml

    from chtorch.config.safe_yaml import safe_load

    stripped = text.strip()
    if _FLOAT_RE.match(stripped) and not _INT_RE.match(stripped):
        return float(stripped)
    try:
        return safe_load(stripped) if stripped else None
    except yaml.YAMLError:
        return text


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to type ``tp`` or a :class:`ConfigError` naming ``key``."""
    text = isinstance(value, Text)
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong() -> ConfigError:
        shown = str(value) if text else f"{type(value).__name__} {value!r}"
        return ConfigError(f"{key} must be {type_name(tp)}, got {shown}", key)

    if tp is Any:
        return yaml_scalar(value) if text else value
    if isinstance(value, Mapping) and tp is not dict and origin is not dict and dict not in args:
        raise ConfigError(
            f"{key} is a value, not a section (got keys {', '.join(map(str, value))}); set {key}=<value>", key
        )
    if origin in (Union, types.UnionType):
        if value is None or (text and value.strip().lower() in NULLS):
            if type(None) in args:
                return None
            raise wrong()
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, key)
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
        return _coerce_list(value, args, key, text, wrong)
    if origin is dict or tp is dict:
        if text:
            value = yaml_scalar(value)
            if value is None:
                value = {}
        if not isinstance(value, Mapping):
            raise wrong()
        vtype = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vtype, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # a bug in a schema, not user input


def _coerce_list(value: Any, args: tuple[Any, ...], key: str, text: bool, wrong: Any) -> list[Any]:
    if text:
        stripped = value.strip()
        if stripped.startswith("["):
            value = yaml_scalar(stripped)
        elif stripped.lower() in NULLS:
            value = []
        else:
            value = [Text(part.strip()) for part in stripped.split(",")]
    if not isinstance(value, (list, tuple)):
        raise wrong()
    item = args[0] if args else Any
    return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
