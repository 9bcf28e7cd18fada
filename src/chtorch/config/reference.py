"""The configuration reference (``chtorch config --reference``, ``docs/config.md``), generated
from the section schemas' field metadata."""

from __future__ import annotations

import dataclasses
import typing

from chtorch.config.checks import span
from chtorch.config.coercion import type_name
from chtorch.config.registry import model_schemas, recipe_schemas
from chtorch.config.sections import FIXED_SECTIONS

__all__ = ["config_reference"]


def _describe(cls: type, section: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    instance = cls()
    for f in dataclasses.fields(cls):
        meta = f.metadata
        allowed = ""
        if meta.get("choices"):
            allowed = ", ".join(meta["choices"])
        elif meta.get("min") is not None or meta.get("max") is not None:
            allowed = span(meta.get("min"), meta.get("max"), meta.get("min_open", False), meta.get("max_open", False))
        default = getattr(instance, f.name)
        rows.append(
            f"| `{section}.{f.name}` | {type_name(hints[f.name])} "
            f"| `{default!r}` | {allowed} | {meta.get('help', '')} |"
        )
    return rows


def config_reference() -> str:
    """Markdown tables of every config key of the registered recipes and model families: type,
    default, allowed values, meaning."""
    lines: list[str] = []
    order: list[tuple[str, type]] = [("run", FIXED_SECTIONS["run"])]
    order += [(f"model (name: {name})", cls) for name, cls in sorted(model_schemas().items())]
    order += [(f"data (recipe: {name})", spec.data) for name, spec in sorted(recipe_schemas().items())]
    order += [(name, FIXED_SECTIONS[name]) for name in ("optim", "sparsity", "train")]
    for title, cls in order:
        section = title.split(" ")[0]
        lines += [f"### `{title}`", "", (cls.__doc__ or "").strip().splitlines()[0], ""]
        lines += _describe(cls, section)
        lines.append("")
    return "\n".join(lines)
