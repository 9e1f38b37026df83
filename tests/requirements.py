"""Optional tools in tests: skipped where they are missing, except under ``CI=true``, where
a tool the repository installs (``scripts/bootstrap.sh``) must be there."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_module(name: str) -> ModuleType:
    """The module ``name``; the test skips without it, or fails under ``CI=true``."""
    try:
        return __import__(name)
    except ImportError as err:
        if in_ci():
            pytest.fail(f"{name} is missing, but scripts/bootstrap.sh installs it: {err}")
        pytest.skip(f"{name} is not installed: {err}", allow_module_level=True)
