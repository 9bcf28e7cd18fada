"""Typed, described fields, and ``model`` sections derived from the models' own config dataclasses.

A config field is a dataclass field whose metadata holds its help text and allowed values
(:func:`setting`, from the ground floor :mod:`chtorch._fields`; the model configs use it too). The
reference documentation, the validation and the error messages all read that metadata.

A model owns exactly one config dataclass (e.g. :class:`chtorch.models.MLPConfig`). A recipe's
``model`` section is *derived* from it with :func:`model_schema`: the same fields, types, help
texts and bounds, minus the ones the data decides (vocabulary sizes, input width), with the
recipe's defaults where they differ and optional ``None`` overrides where a named size preset
fills the rest. :func:`model_values` maps a section back to the model config's keyword arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from chtorch._fields import setting

__all__ = ["setting", "model_schema", "model_values"]


def _yaml_type(tp: Any) -> Any:
    """Tuples read from YAML are lists: ``tuple[int, ...]`` becomes ``list[int]``."""
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[args[0]] if args else list  # type: ignore[valid-type]
    return tp


def model_schema(
    family: str,
    model_config: type,
    *,
    doc: str,
    exclude: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    extra: Sequence[tuple[str, Any, Any]] = (),
    before: Sequence[tuple[str, Any, Any]] = (),
) -> type:
    """The ``model`` section dataclass of model family ``family``, derived from ``model_config``.

    Fields, in order: ``name`` (default ``family``), ``before`` (``(name, type, setting(...))``),
    every field of ``model_config`` except ``exclude`` (with ``defaults`` replacing the model's
    defaults), then ``extra``. A field named in ``overrides`` becomes ``type | None`` defaulting to
    None ("use the preset's value"), with help ``overrides[name]``.
    """
    defaults = dict(defaults or {})
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(model_config)
    spec: list[tuple[str, Any, Any]] = [("name", str, setting(family, "model family")), *before]
    known = {f.name for f in dataclasses.fields(model_config)}
    for name in [*exclude, *defaults, *overrides]:
        if name not in known:
            raise TypeError(f"{model_config.__name__} has no field {name!r}")  # a bug in a recipe, not user input
    for f in dataclasses.fields(model_config):
        if f.name in exclude:
            continue
        meta = dict(f.metadata)
        tp = _yaml_type(hints[f.name])
        if f.name in overrides:
            meta["help"] = overrides[f.name]
            spec.append((f.name, tp | None, dataclasses.field(default=None, metadata=meta)))
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            raise TypeError(f"{model_config.__name__}.{f.name} has no default: exclude it or give one")
        if isinstance(default, (list, tuple)):
            field = dataclasses.field(default_factory=functools.partial(list, default), metadata=meta)
        else:
            field = dataclasses.field(default=default, metadata=meta)
        spec.append((f.name, tp, field))
    spec.extend(extra)
    cls = dataclasses.make_dataclass(f"{model_config.__name__}Section", spec)
    cls.__doc__ = doc
    cls.model_config = model_config  # type: ignore[attr-defined]
    return cls


def model_values(section: Any) -> dict[str, Any]:
    """The keyword arguments of the model config a ``model`` section was derived from: its fields
    that the model config has, without the ``None`` of an unset override."""
    target = type(section).model_config
    names = {f.name for f in dataclasses.fields(target)}
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name in names and value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out
