"""Described dataclass fields: one :func:`setting` declares a field with its help text and its bounds.

The model configs (:mod:`chtorch.models`) and the run configuration's sections (:mod:`chtorch.config`)
declare their fields with :func:`setting`; the config derives validation, the reference docs and
``chtorch config --explain`` from the metadata it writes. Part of the ground floor: imports nothing of
chtorch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["setting", "SETTING_KEYS"]

#: The metadata keys :func:`setting` writes (read by :mod:`chtorch.config` for validation and docs).
SETTING_KEYS = ("help", "min", "max", "min_open", "max_open", "choices")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | Any = dataclasses.MISSING,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A dataclass field whose metadata holds its ``help`` text and its allowed values: the closed
    (or, with ``min_open``/``max_open``, open) interval ``[min, max]``, or ``choices``. The same
    helper declares the fields of the model configs and of the run configuration's sections."""
    meta = {"help": help, "min": min, "max": max, "min_open": min_open, "max_open": max_open, "choices": choices}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
