"""A config value against its field's declared bounds or choices, with chtorch's one number check.

Every range or choice check of a config value goes through :func:`chtorch._checks.check_number` or
:func:`chtorch._checks.check_choice` (a field's declared bounds via :func:`check_field`, and the
cross-field checks in :mod:`chtorch.config.build`), with :func:`config_error` turning the message into
a :class:`ConfigError` that names the key, so an out-of-range value always reads
``key must be a number in [lo, hi), got value``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chtorch._checks import check_choice, check_number
from chtorch.config.errors import ConfigError

__all__ = ["span", "config_error", "check_field"]


def span(min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False) -> str:
    """The interval ``[min, max]`` as text, ``(``/``)`` for open ends and ``-inf``/``inf`` for none."""
    left, right = ("(" if min_open else "["), (")" if max_open else "]")
    return f"{left}{'-inf' if min is None else min}, {'inf' if max is None else max}{right}"


def config_error(key: str, shown: Any = None) -> Callable[[str], ConfigError]:
    """The ``error`` argument of the checks for config key ``key``: a :class:`ConfigError` naming it.
    ``shown`` is the whole setting when the checked value is one item of a list (named in the message)."""

    def error(message: str) -> ConfigError:
        return ConfigError(message + (f" (in {key}={shown!r})" if shown is not None else ""), key)

    return error


def check_field(value: Any, meta: Mapping[str, Any], key: str) -> None:
    """Check ``value`` against a field's declared ``choices`` or bounds (each item of a list)."""
    if value is None:
        return
    if meta.get("choices") is not None:
        check_choice(key, value, meta["choices"], error=config_error(key))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            check_number(
                key,
                item,
                lo,
                hi,
                low_open=meta.get("min_open", False),
                high_open=meta.get("max_open", False),
                error=config_error(key, value if items is value else None),
            )
