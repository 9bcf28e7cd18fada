"""Argument checks shared by every layer of chtorch: one wording for a bad number or a bad name.

Every range check and every choice check of chtorch, in the library and in the run configuration,
goes through :func:`check_number` and :func:`check_choice`. They raise ``ValueError``, or what the
caller's ``error`` builds from the message (an ``OptionError``, a ``ConfigError`` that also names
the config key), with a message that names the argument, what it must be and the value it got:
``zeta must be a number in [0, 1], got 1.5``; ``ems_mode='x' is not one of a, b (did you mean 'a'?)``.
Part of the ground floor: imports nothing of chtorch.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["check_number", "check_choice", "closest"]


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_bound(high)}"
    return ""


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
    error: Callable[[str], Exception] = ValueError,
    hint: str = "",
) -> Any:
    """Return ``value`` (an ``int`` when ``integer``, else a ``float``; ``None`` when ``allow_none``
    and it is ``None``) or raise ``error`` naming ``name``, the allowed range and the value.

    ``low``/``high`` bound the value (``None`` = unbounded), each closed unless ``low_open`` /
    ``high_open``. Booleans are never numbers (``True`` for a size is always a caller's mistake), and
    NaN or infinity never pass. ``hint`` is appended to the message (say what the number means).

    >>> check_number("zeta", 0.3, 0, 1)
    0.3
    >>> check_number("update_interval", 0, 1, integer=True)
    Traceback (most recent call last):
    ValueError: update_interval must be an integer >= 1, got 0
    """
    if value is None and allow_none:
        return None
    what = "an integer" if integer else "a number"
    span = _range_text(low, high, low_open, high_open)
    expected = f"{what} {span}".rstrip() + (" or None" if allow_none else "") + (f" ({hint})" if hint else "")
    kind_ok = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not kind_ok or not math.isfinite(float(value)):
        raise error(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    number = int(value) if integer else float(value)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise error(f"{name} must be {expected}, got {value!r}")
    return number


def closest(name: Any, candidates: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` when a candidate is close to ``name``, else ``""``."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(
    name: str, value: Any, choices: Iterable[Any], *, error: Callable[[str], Exception] = ValueError
) -> Any:
    """Return ``value`` when it is one of ``choices``, else raise ``error`` listing them (with the
    closest one suggested).

    >>> check_choice("ems_mode", "tripple", ("off", "triple"))
    Traceback (most recent call last):
    ValueError: ems_mode='tripple' is not one of off, triple (did you mean 'triple'?)
    """
    allowed = tuple(choices)
    if value not in allowed:
        raise error(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}{closest(value, allowed)}")
    return value
