"""``dualpath stress``: faults injected into live runs under a CPU hog, nothing lost.

Two faults run here (the scheduler service killed and restarted; a node stopped
past the liveness timeout, then fenced); CI runs every fault with ``dualpath
stress``.
"""

from __future__ import annotations

import json

import pytest

from experiments.cli import main
from experiments.live.stress import FAULTS, StressConfig, parse_faults


def test_faults_under_load_lose_and_duplicate_nothing(capsys):
    # A lost or duplicated request makes the command exit 1 (SystemExit fails the test).
    assert main(["stress", "--faults", "kill-scheduler,stop-10s", "--agents", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 2 and out["faults"] == {"kill-scheduler": 1, "stop-10s": 1}
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["failed_runs"] == 0
    assert out["admitted"] == out["completed"] > 0
    by_fault = {r["fault"]: r for r in out["results"]}
    assert by_fault["stop-10s"]["live"]["fenced"] == 1
    assert by_fault["kill-scheduler"]["live"]["service_restarts"] == 1
    assert all(r["injected"] and r["completed"] == r["expected"] for r in out["results"])


@pytest.mark.parametrize("kwargs, needle", [
    ({"count": 0}, "--count"), ({"agents": 0}, "--agents"), ({"faults": ("nope",)}, "nope"),
])
def test_bad_arguments_are_refused_clearly(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        StressConfig(**kwargs)


def test_fault_lists():
    assert parse_faults(None) == FAULTS
    assert parse_faults("stop-2s, link-rate") == ("stop-2s", "link-rate")
