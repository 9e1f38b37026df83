"""The code's shape, checked on every run rather than measured once.

- no function over 60 lines and no module over 450 lines in the five packages
  (a longer module only with its reason in ``tests/shape_allowlist.txt``);
- no module imports another module's private name;
- every ``type: ignore`` names the error it silences, and mypy's configuration
  covers every package with nothing switched off;
- the import-linter contracts (layers, ``experiments.cli`` on top, no cycles) hold.

Generated code (``policy_service/proto``) and tests are excluded. Complexity is
ruff's rule (C901 at 10, in ``pyproject.toml``), run by CI's lint stage.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "env", "agents", "policy_service", "experiments")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
ALLOWLIST = ROOT / "tests" / "shape_allowlist.txt"
IGNORE = re.compile(r"#\s*type:\s*ignore(?!\[[a-z-]+(,\s*[a-z-]+)*\])")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if "proto" not in p.relative_to(ROOT).parts)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _allowlist() -> dict[str, str]:
    """``path  reason`` per line; ``#`` starts a comment."""
    entries = {}
    for line in ALLOWLIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            path, _, reason = line.partition(" ")
            entries[path] = reason.strip()
    return entries


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (N lines)`` for each function or method of ``source`` over ``limit`` lines."""
    return [f"{node.name} at line {node.lineno} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > limit]


def private_imports(source: str) -> list[str]:
    """``module.name`` for each private name ``source`` imports from one of our modules."""
    return [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module
            and node.module.split(".")[0] in PACKAGES
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")]


def uncoded_ignores(source: str) -> list[int]:
    """Line numbers of ``type: ignore`` comments that name no error code."""
    return [n for n, line in enumerate(source.splitlines(), 1) if IGNORE.search(line)]


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_module_shape(path: Path) -> None:
    source = path.read_text()
    assert not long_functions(source), f"{_name(path)}: {long_functions(source)}"
    assert not private_imports(source), f"{_name(path)} imports {private_imports(source)}"
    assert not uncoded_ignores(source), f"{_name(path)}: type: ignore without an error " \
                                        f"code at lines {uncoded_ignores(source)}"
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        assert _name(path) in _allowlist(), (
            f"{_name(path)} has {lines} lines (> {MAX_MODULE_LINES}): split it, or name it "
            f"with its reason in {ALLOWLIST.name}")


def test_allowlist_names_only_long_modules_with_reasons() -> None:
    for path, reason in _allowlist().items():
        assert reason, f"{ALLOWLIST.name}: {path} has no reason"
        file = ROOT / path
        assert file.is_file(), f"{ALLOWLIST.name}: {path} does not exist"
        lines = len(file.read_text().splitlines())
        assert lines > MAX_MODULE_LINES, (
            f"{ALLOWLIST.name}: {path} has {lines} lines now; drop it from the list")


def test_the_checks_find_what_they_forbid() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n") == ["f at line 1 (61 lines)"]
    assert long_functions("def g():\n    return 1\n") == []
    assert private_imports("from runtime.sim import _x, y\nfrom os import _exit\n") == \
        ["runtime.sim._x"]
    assert uncoded_ignores("a = 1  # type: ignore\nb = 2  # type: ignore[attr-defined]\n") == [1]


def test_mypy_covers_every_package_with_nothing_switched_off() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert sorted(config["files"]) == sorted(PACKAGES)
    assert "ignore_errors" not in (ROOT / "pyproject.toml").read_text()


def test_import_contracts_hold() -> None:
    """Layers, ``experiments.cli`` above the rest of ``experiments``, no import cycle."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "lint-imports (import-linter, a dev dependency) is not installed"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
