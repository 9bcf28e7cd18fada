"""Command-line overrides: ``--set section.key=value``, applied to a raw (still untyped) config."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from chtorch._checks import closest
from chtorch.config.coercion import Text
from chtorch.config.errors import ConfigError
from chtorch.config.sections import SECTIONS

__all__ = ["parse_override", "apply_overrides"]


def parse_override(text: str) -> tuple[list[str], Text]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], "0.01")."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (for example optim.lr=0.01), got {text!r}")
    key, value = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set key {key!r} is not a dotted key like optim.lr")
    return parts, Text(value)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``section.key=value`` (values still text) set in place."""
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) < 2:
            raise ConfigError(
                f"--set {text!r}: name a key inside a section, e.g. {parts[0]}.<key>=value"
                if parts[0] in SECTIONS
                else f"--set {text!r}: unknown section {parts[0]!r}{closest(parts[0], SECTIONS)}; sections: {', '.join(SECTIONS)}",
                parts[0],
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, Mapping) or isinstance(child, Text):
                raise ConfigError(
                    f"--set {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section", ".".join(parts[: i + 1])
                )
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return out
