"""End-to-end live runs: real processes, real bytes, every block checked.

Runs here are short: two agents, at a quarter of model time (``time_scale``
0.25), so each takes a few seconds. Fidelity against the simulator is measured
by ``dualpath fidelity`` (the configs there run at their presets' scales).
"""

from __future__ import annotations

import pytest

from agents import resolve_policy
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.router import Faults, RunFailed
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

FAST = LiveOptions(time_scale=0.25)


def _spec(*more: str):
    return load_preset("tiny", ("block_tokens=1024", *more))


def _run(spec, options=FAST, policy="dualpath", agents=2, faults=None):
    decider = local_decider(resolve_policy(policy, spec).policy)
    return LiveCluster(spec, options).run(AgenticWorkload(agents, "32k", 0), decider, faults)


def _sim_requests(spec, agents=2) -> int:
    sim = Simulator(spec, AgenticWorkload(agents, "32k", 0))
    return sim.run(resolve_policy("dualpath", spec).policy).metrics["requests"]


def test_every_request_completes_and_every_block_is_verified():
    spec = _spec()
    metrics = _run(spec)
    live = metrics["live"]
    assert metrics["requests"] == _sim_requests(spec)
    assert live["blocks_verified"] > 100
    assert live.get("checksum_failures", 0) == 0
    assert live["bytes_read"] > 0 and live["blocks_written"] > 0
    # Both paths carried hit blocks: the DE path is really used.
    assert metrics["read_bytes_de_side"] > 0


def test_tcp_transport_moves_the_same_work():
    spec = _spec()
    metrics = _run(spec, LiveOptions(time_scale=0.25, transport="tcp"))
    assert metrics["requests"] == _sim_requests(spec)
    assert metrics["live"].get("checksum_failures", 0) == 0


def test_a_corrupted_block_is_detected_and_recovered():
    spec = _spec()
    metrics = _run(spec, faults=Faults(corrupt_blocks=2))
    live = metrics["live"]
    assert live["blocks_corrupted"] == 2
    assert live["checksum_failures"] == live["blocks_corrupted"]
    assert live["blocks_reread"] == live["checksum_failures"]
    assert metrics["requests"] == _sim_requests(spec)


def test_killing_a_decode_node_reschedules_its_requests():
    spec = _spec("decode_nodes=2")
    metrics = _run(spec, agents=4, faults=Faults(kill_node=2, kill_at_s=4.0))
    live = metrics["live"]
    assert live["rescheduled"] >= 1
    # Every request completed exactly once (the router refuses duplicates and stale reports).
    assert metrics["requests"] == _sim_requests(spec, agents=4)


def test_killing_a_prefill_node_reschedules_its_requests():
    spec = _spec("prefill_nodes=2")
    metrics = _run(spec, agents=4, faults=Faults(kill_node=0, kill_at_s=4.0))
    assert metrics["live"]["rescheduled"] >= 1
    assert metrics["requests"] == _sim_requests(spec, agents=4)


def test_losing_the_last_decode_node_fails_clearly():
    spec = _spec()
    with pytest.raises(RunFailed, match="no decode node is left"):
        _run(spec, faults=Faults(kill_node=1, kill_at_s=2.0))


def test_namespaces_mode_runs_with_kernel_shaped_links():
    from runtime.live.netns import list_netns, netns_available

    reason = netns_available()
    if reason is not None:
        pytest.skip(f"network namespaces unusable here: {reason}")
    spec = _spec()
    before = set(list_netns())
    metrics = _run(spec, LiveOptions(time_scale=0.5, transport="tcp", netns=True))
    assert metrics["requests"] == _sim_requests(spec)
    assert metrics["live"]["blocks_verified"] > 100
    assert metrics["live"].get("checksum_failures", 0) == 0
    assert set(list_netns()) == before  # every namespace of the run is gone
