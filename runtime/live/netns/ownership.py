"""Which process owns which namespaces: run records under a lock, and the sweep of
those whose owner died."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.errors import require
from runtime.live.netns.commands import delete_netns, kill_netns_pids, list_netns, list_root_links
from runtime.live.netns.links import ROOT_RE, NetnsError

# ---------------------------------------------------------------- ownership


def state_dir() -> Path:
    """Where run records and the build lock live (``/run`` when writable)."""
    for base in (Path("/run"), Path(tempfile.gettempdir())):
        path = base / "dualpath-netns"
        try:
            path.mkdir(mode=0o755, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise NetnsError("no writable directory for the namespace state (/run or the tempdir)")


@contextlib.contextmanager
def state_lock() -> Iterator[None]:
    """Serialise sweeping and picking names/subnets across processes."""
    fd = os.open(state_dir() / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _owner_alive(pid: int, run: str) -> bool:
    """Whether the run's owner still lives; a recorded start time catches pid reuse."""
    started = start_time(pid)
    if started is None:
        return False
    recorded = _read_record(run).get("start")
    return recorded is None or recorded == started


def _read_record(run: str) -> dict[str, Any]:
    try:
        record = json.loads((state_dir() / f"{run}.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _name_re(root: str) -> re.Pattern[str]:
    return re.compile(rf"(?P<run>{re.escape(root)}(?P<pid>\d+)-[0-9a-z]{{3}})(?:-[0-9a-z]+)?")


def check_root(root: str) -> None:
    require(ROOT_RE.fullmatch(root) is not None, "prefix",
            f"must be 1-4 lowercase letters (names also carry the pid), got {root!r}")


def sweep_stale(prefix_root: str = "dp") -> list[str]:
    """Remove namespaces and root links of runs whose owner process is dead.

    Works from names alone (``{prefix_root}{pid}-{sid}...``), helped by the run
    records where they survive. Processes still inside a dead run's namespaces
    are killed. Returns the names of the links and namespaces removed.
    """
    check_root(prefix_root)
    with state_lock():
        return sweep_root(prefix_root)


def sweep_root(root: str) -> list[str]:
    pattern = _name_re(root)
    runs: dict[str, tuple[int, set[str], set[str]]] = {}

    def note(name: str, *, link: bool) -> None:
        match = pattern.fullmatch(name)
        if match is None or (link and match.group("run") != name):
            return
        _, namespaces, links = runs.setdefault(match.group("run"),
                                               (int(match.group("pid")), set(), set()))
        (links if link else namespaces).add(name)

    for ns in list_netns():
        note(ns, link=False)
    for link in list_root_links():
        note(link, link=True)
    state = state_dir()
    for path in state.glob("*.json"):
        match = pattern.fullmatch(path.stem)
        if match and match.group("run") == path.stem:
            runs.setdefault(path.stem, (int(match.group("pid")), set(), set()))

    removed: list[str] = []
    for run, (pid, namespaces, links) in sorted(runs.items()):
        if _owner_alive(pid, run):
            continue
        kill_netns_pids(sorted(namespaces))
        delete_netns(sorted(namespaces), sorted(links))
        (state / f"{run}.json").unlink(missing_ok=True)
        removed += sorted(links) + sorted(namespaces)
    return removed


