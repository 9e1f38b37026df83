"""The ``ip``/``tc`` commands the fabric runs, and listing and deleting what it made."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Sequence

from runtime.live.netns.links import NetnsError

# ---------------------------------------------------------------- commands


def run_cmd(argv: Sequence[str], *, input: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; unless ``check`` is false, raise NetnsError if it fails."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"could not run: {exc}", " ".join(argv)) from exc
    if check and done.returncode != 0:
        raise NetnsError(f"command failed (exit {done.returncode})", " ".join(argv),
                         done.stderr)
    return done


def run_batch(argv: Sequence[str], lines: Sequence[str]) -> None:
    """Run ``lines`` through ``ip``/``tc`` ``-batch``; name the failing line on error."""
    if not lines:
        return
    done = run_cmd([*argv, "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    if done.returncode == 0:
        return
    failed = re.search(r"Command failed -:(\d+)", done.stderr)
    line = lines[int(failed.group(1)) - 1] if failed else "-batch -"
    raise NetnsError(f"command failed (exit {done.returncode})",
                     " ".join([*argv, line]), done.stderr)


def list_netns() -> list[str]:
    done = run_cmd(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def list_root_links() -> list[str]:
    done = run_cmd(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def kill_netns_pids(namespaces: Sequence[str]) -> None:
    """SIGKILL every process still inside ``namespaces`` (they would keep them alive)."""
    for ns in namespaces:
        done = run_cmd(["ip", "netns", "pids", ns], check=False)
        for token in done.stdout.split():
            if token.isdigit() and int(token) != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(token), signal.SIGKILL)


def delete_netns(namespaces: Sequence[str], links: Sequence[str]) -> None:
    """Delete root-namespace links, then namespaces; what is already gone is skipped."""
    present_links = set(list_root_links())
    for link in links:
        if link in present_links:
            run_cmd(["ip", "link", "del", "dev", link], check=False)
    present = set(list_netns())
    run_batch(["ip", "-force"], [f"netns del {ns}" for ns in namespaces if ns in present])


