"""Optional tools in tests: skipped where they are missing, except under ``CI=true``, where
a tool the repository installs (``scripts/bootstrap.sh``) must be there."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_module(name: str, reason: str = "") -> ModuleType:
    """The module ``name`` (``reason``: what it is needed for); the test skips without it,
    as ``pytest.importorskip`` does, or fails under ``CI=true``: the repository's bootstrap
    (``scripts/bootstrap.sh``) installs it there."""
    why = f" ({reason})" if reason else ""
    if not in_ci():
        module: ModuleType = pytest.importorskip(name, reason=f"{name} is not installed{why}")
        return module
    try:
        return importlib.import_module(name)
    except ImportError as err:
        pytest.fail(f"module {name!r} is missing under CI=true{why}, but the repository's "
                    f"bootstrap (scripts/bootstrap.sh) installs it: {err}", pytrace=False)


def require_tool(path: str | os.PathLike[str], reason: str) -> str:
    """The executable at ``path`` (``reason``: what it is needed for and who installs it);
    the test skips without it, or fails under ``CI=true``, where the repository's set-up
    installs it."""
    if os.access(path, os.X_OK):
        return str(path)
    message = f"{path} is missing ({reason})"
    if in_ci():
        pytest.fail(f"{message}, but CI installs it", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")
