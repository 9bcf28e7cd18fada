"""What the model configs share: described fields and a strict dict round trip.

Each model owns one config dataclass (:class:`~chtorch.models.MLPConfig`,
:class:`~chtorch.models.Seq2SeqConfig`, :class:`~chtorch.models.LlamaConfig`). Its fields are declared
with :func:`setting`, which stores the help text and the allowed range or choices in the field's
metadata; the run configuration (:mod:`chtorch.config`) derives each recipe's ``model`` section from
that dataclass, so a field, its meaning and its bounds are written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["DictConfig", "setting", "SETTING_KEYS"]

T = TypeVar("T", bound="DictConfig")

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


class DictConfig:
    """Mixin for a dataclass config: ``to_dict()`` and a strict ``from_dict()`` that names unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)
