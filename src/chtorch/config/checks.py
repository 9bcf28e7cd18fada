"""The number and choice checks of the run configuration: one helper each, one message format.

Every range check of a config value goes through :func:`check_number` (a field's declared bounds
via :func:`check_field`, and the cross-field checks in :mod:`chtorch.config.build`), so an
out-of-range value always reads ``key must be a number in [lo, hi), got value``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chtorch._checks import check_number as _check_number
from chtorch._checks import closest
from chtorch.config.errors import ConfigError

__all__ = ["span", "check_number", "check_choice", "check_field"]


def span(min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False) -> str:
    """The interval ``[min, max]`` as text, ``(``/``)`` for open ends and ``-inf``/``inf`` for none."""
    left, right = ("(" if min_open else "["), (")" if max_open else "]")
    return f"{left}{'-inf' if min is None else min}, {'inf' if max is None else max}{right}"


def check_number(
    value: float,
    key: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    shown: Any = None,
    why: str = "",
) -> float:
    """``value`` if it is a finite real number inside the interval, else a :class:`ConfigError` naming
    ``key``. The check and its wording are chtorch's one number check (:func:`chtorch._checks.check_number`);
    ``shown`` names the whole setting when ``value`` is one item of a list, ``why`` says what the bound means."""

    def error(message: str) -> ConfigError:
        context = f" (in {key}={shown!r})" if shown is not None and shown is not value else ""
        return ConfigError(message + context, key)

    _check_number(key, value, min, max, low_open=min_open, high_open=max_open, error=error, hint=why.strip(" ()"))
    return value


def check_choice(value: Any, choices: Sequence[Any], key: str) -> Any:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}{closest(value, choices)}", key)
    return value


def check_field(value: Any, meta: Mapping[str, Any], key: str) -> None:
    """Check ``value`` against a field's declared ``choices`` or bounds (each item of a list)."""
    if value is None:
        return
    if meta.get("choices") is not None:
        check_choice(value, meta["choices"], key)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            check_number(
                item,
                key,
                min=lo,
                max=hi,
                min_open=meta.get("min_open", False),
                max_open=meta.get("max_open", False),
                shown=value,
            )
