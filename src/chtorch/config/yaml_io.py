"""Config files: read YAML (defaults, then the file, then ``--set`` overrides) and write it back."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chtorch._io import atomic_write_text
from chtorch.config.build import build_config
from chtorch.config.errors import ConfigError
from chtorch.config.overrides import apply_overrides
from chtorch.config.sections import Config, config_to_dict
from chtorch.config.shipped import resolve_config_path, shipped_hint

__all__ = ["read_yaml", "load_config", "config_to_yaml", "save_config"]


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (or the shipped config it names: :mod:`chtorch.config.shipped`),
    or a :class:`ConfigError` that says what is wrong with it."""
    import yaml

    given = path
    path = resolve_config_path(path)
    if not path.is_file():
        hint = shipped_hint()
        if not path.suffix and Path("configs").is_dir():
            candidates = sorted(p.name for p in Path("configs").glob("*.yaml"))
            hint = f"; configs here: {', '.join(candidates)}" if candidates else hint
        raise ConfigError(f"config file {str(given)!r} not found{hint}")
    from chtorch.config.safe_yaml import safe_load_file

    try:
        raw = safe_load_file(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: a config must be a mapping of sections (run, model, "
            f"data, optim, sparsity, train), got {type(raw).__name__}"
        )
    return dict(raw)


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (``section.key=value``).
    The recipes a config may name must be registered (``import chtorch.recipes.builtin``, which
    :mod:`chtorch.train` does, registers the built-in ones)."""
    raw = read_yaml(path) if path is not None else {}
    try:
        return build_config(apply_overrides(raw, overrides))
    except ConfigError as exc:
        if path is not None and not str(exc).startswith(str(path)):
            raise ConfigError(f"{path}: {exc}", exc.key) from None
        raise


def config_to_yaml(config: Config) -> str:
    """Block-style YAML with short lists of scalars inline (``hidden: [256, 256, 256]``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
        flow = all(not isinstance(v, (list, dict)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, represent_list)
    return yaml.dump(config_to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def save_config(config: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically)."""
    text = "# Resolved chtorch configuration (defaults + file + --set overrides)\n" + config_to_yaml(config)
    return atomic_write_text(path, text)
