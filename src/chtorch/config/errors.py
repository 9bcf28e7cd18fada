"""The one error type of the run configuration."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range. ``key`` is its dotted path
    (``optim.lr``), or None when the mistake is not one key's (a file that is not YAML)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
