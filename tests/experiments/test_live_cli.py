"""The live runtime's commands: ``cluster``, ``doctor``, ``bench transport``, bad input."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cluster_prints_the_simulators_metrics_and_the_live_counters(capsys):
    out = _json(capsys, ["cluster", "--preset", "tiny-live", "--agents", "1",
                         "--time-scale", "0.25", "--corrupt", "1", "--json"])
    sim = _json(capsys, ["simulate", "--preset", "tiny", "--set", "block_tokens=1024",
                         "--agents", "1", "--mal", "32k", "--json"])
    assert out["requests"] == sim["requests"]
    assert set(sim) - {"sim_requests_per_s"} <= set(out)
    assert out["live"]["checksum_failures"] == out["live"]["blocks_reread"] == 1
    assert out["transport"] == "shm" and out["time_scale"] == 0.25
    assert out["admitted"] == out["completed"] == out["requests"]
    assert out["lost"] == 0 and out["duplicated"] == 0


def test_doctor_answers_for_every_transport(capsys):
    out = _json(capsys, ["doctor", "--json"])
    assert set(out["transports"]) == {"shm", "tcp", "nixl", "pyverbs"}
    assert out["transports"]["shm"]["works"] is True


def test_bench_transport_json(capsys):
    out = _json(capsys, ["bench", "transport", "--size-mib", "4", "--repeats", "1", "--json"])
    rates = out["gib_per_s"]
    assert rates["memcpy"] > 0 and rates["shm"] > 0
    for name, rate in rates.items():
        assert rate is not None or name in out["unavailable"]


@pytest.mark.parametrize("argv, needle", [
    (["cluster", "--preset", "no-such-preset"], "no-such-preset"),
    (["cluster", "--kill-node", "2"], "NODE@SECONDS"),
    (["cluster", "--bytes-scale", "7"], "bytes_scale 7"),
    (["cluster", "--time-scale", "0"], "time_scale must be > 0"),
])
def test_bad_input_is_a_clear_error(capsys, argv, needle):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
