"""The configs shipped with chtorch: found by name, listed with a line each, copied out to edit.

The configs are written in the repository's ``configs/`` folder; a built wheel carries the same files
as ``chtorch/configs/`` (``setup.py`` copies them), so an installed chtorch has them too. Where both
could exist the package's copy wins; a source checkout (``pip install -e .`` or ``PYTHONPATH=src``)
reads ``configs/`` beside ``src/``.

A config argument resolves, in order: an existing file; a bare shipped name (``mlp_mnist_cpu`` or
``mlp_mnist_cpu.yaml``); and ``configs/NAME.yaml``, the documented path, when that file is not there
(the README's commands then work outside the clone as well).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from chtorch.config.errors import ConfigError

__all__ = ["shipped_dir", "shipped_configs", "describe_config", "resolve_config_path", "copy_config"]


def shipped_dir() -> Path | None:
    """The folder holding the shipped ``*.yaml``: the package's ``configs/`` (an installed wheel), else
    the source tree's ``configs/`` (a checkout), else ``None``."""
    package = Path(__file__).resolve().parents[1]  # .../chtorch
    if (package / "configs").is_dir():
        return package / "configs"
    root = package.parents[1]  # src/chtorch -> the checkout
    if (root / "configs").is_dir() and (root / "pyproject.toml").is_file():
        return root / "configs"
    return None


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of every shipped config, by name (the file name without ``.yaml``)."""
    folder = shipped_dir()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def describe_config(path: Path, width: int = 90) -> str:
    """The config's one-line description: the first sentence of its leading comment block, shortened to
    ``width`` characters."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        lines.append(text.lstrip("#").strip())
    block = " ".join(line for line in lines if line)
    sentence = re.split(r"(?<!\bal)\.\s", block, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip(" ,;") + "..."


def _shipped_name(text: str) -> str | None:
    """The shipped name ``text`` stands for, if it names one: ``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml``."""
    path = Path(text)
    parts = path.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        name = path.stem if path.suffix in (".yaml", ".yml") else path.name
        if name in shipped_configs():
            return name
    return None


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """The file a config argument means: ``path`` itself when it exists, else the shipped config it
    names (see the module's docstring), else ``path`` unchanged (the reader reports it missing)."""
    given = Path(path)
    if given.is_file():
        return given
    name = _shipped_name(str(path))
    return shipped_configs()[name] if name is not None else given


def shipped_hint() -> str:
    """A hint for a missing config file: the shipped names."""
    names = list(shipped_configs())
    return f"; shipped configs (give the name alone): {', '.join(names)}" if names else ""


def copy_config(name: str, dest: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Write shipped config ``name`` to ``dest`` (a file, or a folder to hold ``NAME.yaml``; default:
    ``NAME.yaml`` here) to edit. An existing file is never replaced unless ``force``."""
    configs = shipped_configs()
    key = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    if key not in configs:
        raise ConfigError(f"no shipped config named {name!r}{shipped_hint()} (`chtorch configs` lists them)")
    target = Path(dest) if dest is not None else Path(f"{key}.yaml")
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", os.sep))):
        target = target / f"{key}.yaml"
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; choose another destination or add --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(configs[key].read_text(encoding="utf-8"), encoding="utf-8")
    return target
