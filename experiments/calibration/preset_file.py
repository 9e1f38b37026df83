"""Fitted values written into preset files, each with its reason as the comment above it.

Only the value's line and the comment lines directly above it change; the rest of the
file (other keys, their comments, the order) is kept byte for byte. A key the file lacks
is added at the end of its table.
"""

from __future__ import annotations

import re
from pathlib import Path

from runtime.preset import load_preset


def set_value(text: str, key: str, value: str, reason: str) -> str:
    """``text`` (a preset's TOML) with ``key`` (``SECTION.KEY``, or ``KEY`` for a top-level
    key, before the first table) set to ``value`` (TOML) under the one-line comment
    ``# reason``."""
    section, _, leaf = key.rpartition(".")
    lines = text.splitlines()
    start = _table_start(lines, section, key) if section else -1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
               len(lines))
    at = next((i for i in range(start + 1, end)
               if re.match(rf"{re.escape(leaf)}\s*=", lines[i])), None)
    if at is None:
        at = end
        while at > start + 1 and not lines[at - 1].strip():
            at -= 1
        lines[at:at] = [f"# {reason}", f"{leaf} = {value}"]
    else:
        first = at
        while first > start + 1 and lines[first - 1].startswith("#"):
            first -= 1
        lines[first:at + 1] = [f"# {reason}", f"{leaf} = {value}"]
    return "\n".join(lines) + "\n"


def _table_start(lines: list[str], section: str, key: str) -> int:
    for i, line in enumerate(lines):
        if line.strip() == f"[{section}]":
            return i
    raise ValueError(f"{key}: the preset has no [{section}] table")


def write_values(path: Path, values: list[tuple[str, str, str]]) -> None:
    """Set each ``(key, value, reason)`` in the preset file at ``path``; the file is
    written only if the result still loads as a preset."""
    text = path.read_text()
    for key, value, reason in values:
        text = set_value(text, key, value, reason)
    write_checked(path, text)


def write_checked(path: Path, text: str) -> None:
    """Write the preset ``text`` to ``path`` only if it loads as a preset (else raise,
    leaving ``path`` as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.new.toml")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_preset(str(tmp))
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(path)
