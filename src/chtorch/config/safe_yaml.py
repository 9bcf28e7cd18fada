"""Loading YAML that a user (or anyone) wrote: plain data only, bounded time and memory.

``yaml.safe_load`` already refuses Python objects, but YAML anchors and aliases (``&a`` / ``*a``)
let a small file expand exponentially: six levels of ten-way aliases take 22 s and 607 MB to load,
eight would take tens of GB ("billion laughs"). chtorch's files (configs, ``config.yaml`` of a run)
never need them, so :func:`safe_load` refuses every anchor and alias, with the line and column, and
caps the text's size. Every YAML load in chtorch goes through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_YAML_BYTES", "UnsafeYAMLError", "safe_load", "safe_load_file"]

#: The largest YAML text chtorch reads (a config is a few kB).
MAX_YAML_BYTES = 1 << 20


class UnsafeYAMLError(yaml.YAMLError):
    """A YAML text uses a feature chtorch refuses (anchors, aliases) or is too large. A subclass
    of ``yaml.YAMLError``, so callers that report invalid YAML report this too."""


class _PlainDataLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases (see the module docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor is not None:
            mark = event.start_mark
            what = f"alias *{anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{anchor}"
            raise UnsafeYAMLError(
                f"{what} at line {mark.line + 1}, column {mark.column + 1}: anchors and aliases (&name, *name) are not "
                "allowed in chtorch files (they can expand a small file without bound); write the values out"
            )
        return super().compose_node(parent, index)


def safe_load(text: str | bytes) -> Any:
    """Parse ``text`` into plain data (dicts, lists, str, int, float, bool, None).

    Raises :class:`UnsafeYAMLError` (a ``yaml.YAMLError``) for anchors/aliases or a text over
    :data:`MAX_YAML_BYTES`, and ``yaml.YAMLError`` for invalid YAML."""
    size = len(text)
    if size > MAX_YAML_BYTES:
        raise UnsafeYAMLError(
            f"{size} bytes is more than chtorch reads as YAML ({MAX_YAML_BYTES} bytes); is this a config file?"
        )
    return yaml.load(text, Loader=_PlainDataLoader)  # noqa: S506 (a SafeLoader subclass)


def safe_load_file(path: str | os.PathLike[str]) -> Any:
    """:func:`safe_load` of a UTF-8 file; the size is checked before the file is read.

    Raises ``UnicodeDecodeError`` for a file that is not UTF-8, ``OSError`` when unreadable."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise UnsafeYAMLError(
            f"{size} bytes is more than chtorch reads as YAML ({MAX_YAML_BYTES} bytes); is this a config file?"
        )
    return safe_load(path.read_bytes().decode("utf-8"))
