"""Helpers that several recipes share: the run directory and the tokenizer cached in it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chtorch._io import atomic_write_text
from chtorch.config import setting
from chtorch.data import load_tokenizer

__all__ = ["run_dir", "cached_tokenizer", "PER_HEAD_SPARSITY"]

#: The model-section field both attention recipes add (name, type, setting).
PER_HEAD_SPARSITY = (
    "per_head_sparsity",
    bool,
    setting(
        False,
        "budget, remove and regrow q/k/v rows per attention head (sparsity option head_groups; "
        "the official code's --attn_qkv_per_head_dst)",
    ),
)


def run_dir(config: Any) -> Path | None:
    """The run directory of ``config`` (None when the recipe runs outside a training run)."""
    return Path(config.run.dir) if config.run.dir else None


def cached_tokenizer(
    run_dir: str | os.PathLike[str] | None,
    subdir: str,
    meta: dict[str, Any],
    build: Callable[[], Any],
    save: bool = True,
) -> Any:
    """The tokenizer saved in ``run_dir/subdir`` when its recorded ``meta`` (the settings it was
    built with) equals ``meta``; else ``build()``, saved there with ``meta`` when ``save`` (only
    the main process of a ``torchrun`` job writes; the trainer lets it set up first, so the others
    find its file). Without a run directory, just ``build()``. A resumed run therefore reuses the
    exact vocabulary it started with."""
    if run_dir is None:
        return build()
    folder = Path(run_dir) / subdir
    meta_path = folder / "chtorch_tokenizer.json"
    if meta_path.is_file():
        try:
            saved = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if saved == meta:
            return load_tokenizer(folder)
    tokenizer = build()
    if not save:
        return tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True))
    return tokenizer
