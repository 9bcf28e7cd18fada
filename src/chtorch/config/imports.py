"""``run.imports`` / ``chtorch --import``: load a user's modules before a config is checked.

A module that registers parts (:func:`chtorch.register_part`), methods, recipes
(:func:`chtorch.config.register_recipe`), sparse kernels (:func:`chtorch.register_kernel`) or
backends (:func:`chtorch.register_backend`) runs its registrations when imported, so the config
that names them must import it first. An entry is a module name (``mylab.parts``, importable from
``sys.path``) or the path of a ``.py`` file (imported under its file name). Importing is idempotent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from chtorch.config.errors import ConfigError

__all__ = ["import_modules"]


def _from_file(path: Path) -> ModuleType:
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_modules(entries: Iterable[str], key: str = "run.imports") -> list[ModuleType]:
    """Import every entry (a module name or a ``.py`` file path); a failure is a :class:`ConfigError`
    naming ``key``, the entry and the reason."""
    modules = []
    for entry in entries:
        try:
            if entry.endswith(".py") or "/" in entry or "\\" in entry:
                path = Path(entry).expanduser()
                if not path.is_file():
                    raise ImportError(f"no such file: {path}")
                modules.append(_from_file(path))
            else:
                modules.append(importlib.import_module(entry))
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported the same way
            raise ConfigError(
                f"{key}: cannot import {entry!r} ({type(exc).__name__}: {exc}); give a module importable from "
                "sys.path (e.g. set PYTHONPATH) or the path of a .py file",
                key,
            ) from exc
    return modules
