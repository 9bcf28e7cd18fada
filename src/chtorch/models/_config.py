"""What the model configs share: a strict dict round trip.

Each model owns one config dataclass (:class:`~chtorch.models.MLPConfig`,
:class:`~chtorch.models.Seq2SeqConfig`, :class:`~chtorch.models.LlamaConfig`). Its fields are declared
with :func:`chtorch._fields.setting`, which stores the help text and the allowed range or choices in the
field's metadata; the run configuration (:mod:`chtorch.config`) derives each recipe's ``model`` section
from that dataclass, so a field, its meaning and its bounds are written once.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["DictConfig"]

T = TypeVar("T", bound="DictConfig")


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
