"""``dualpath bench soak`` for real, briefly: a served process under load from two clients,
its policy swapped every 3 s; nothing may fail and the server's memory is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _soak(*args: str) -> subprocess.CompletedProcess[str]:
    # Through the command line, so the registration and the stdout contract are tested too.
    return subprocess.run([sys.executable, "-m", "experiments.cli", "bench", "soak", *args,
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_soak_runs_swaps_and_reports_memory():
    # 4 s per call: generous on a busy 2-core machine, where a call usually takes ~1 ms.
    done = _soak("--minutes", "0.25", "--clients", "2", "--swap-every", "3",
                 "--deadline-ms", "4000")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert payload["calls"] > 0
    assert payload["failed_calls"] == 0, payload["failures"]
    assert payload["swaps"] >= 2
    assert payload["failed_swaps"] == 0, payload["failures"]
    assert payload["failures"] == [] and payload["ok"] is True
    assert payload["rss_start_mib"] > 0 and payload["rss_end_mib"] > 0
    assert payload["minutes"] == 0.25 and payload["clients"] == 2
    assert payload["calls_per_s"] > 0
    # The swaps took effect: both policies decided some of the calls.
    assert set(payload["decisions_by_policy"]) == {"dualpath", "pretrained:paper-offline"}
    assert payload["server_exit_code"] == 0  # stopped by SIGTERM and drained
    assert "soak" in done.stderr  # progress goes to stderr


def test_calls_past_their_deadline_are_failures():
    # A 1 µs deadline: every call ends DEADLINE_EXCEEDED or answers too late (gRPC's deadline
    # timer is coarse), and the command fails (exit 1).
    done = _soak("--minutes", "0.05", "--clients", "1", "--swap-every", "60",
                 "--deadline-ms", "0.001")
    assert done.returncode == 1, done.stderr
    payload = json.loads(done.stdout)
    assert payload["failed_calls"] == payload["calls"] > 0
    assert payload["ok"] is False
    assert 0 < len(payload["failures"]) <= 5
    assert all("DEADLINE_EXCEEDED" in f or "past its" in f for f in payload["failures"])


@pytest.mark.parametrize(("argv", "needle"), [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--minutes", "-1"], "--minutes must be > 0"),
    (["--clients", "0"], "--clients must be >= 1"),
    (["--swap-every", "0"], "--swap-every must be > 0"),
    (["--deadline-ms", "0"], "--deadline-ms must be > 0"),
])
def test_bad_arguments_are_clear_errors(capsys, argv, needle):
    assert main(["bench", "soak", *argv]) == 2
    assert needle in capsys.readouterr().err
