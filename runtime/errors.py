"""Validation helpers: every bad value is refused with the key (and file) that holds it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and, when known, the file."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")
