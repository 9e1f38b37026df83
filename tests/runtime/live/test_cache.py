"""Live cache tiers: the model's caches in the node processes, real bytes from every tier,
the router's block index against what the caches really held.

Runs are short (a quarter of model time); the figures against the simulator come
from ``dualpath fidelity`` and the closing benchmarks, not from here.
"""

from __future__ import annotations

import pytest

from agents import resolve_policy
from runtime.execution.metrics import SOURCES
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.router import Faults
from runtime.placement.order import order_of
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

FAST = LiveOptions(time_scale=0.25)


def _run(overrides: tuple[str, ...], policy: str, agents: int, faults: Faults | None = None,
         routers: list | None = None):
    spec = load_preset("tiny", ("block_tokens=1024", *overrides))
    chosen = resolve_policy(policy, spec).policy
    metrics = LiveCluster(spec, FAST).run(AgenticWorkload(agents, "32k", 0),
                                          local_decider(chosen), faults, order=order_of(chosen),
                                          router_hook=routers.append if routers is not None
                                          else None)
    sim = Simulator(spec, AgenticWorkload(agents, "32k", 0)).run(
        resolve_policy(policy, spec).policy).metrics
    return metrics, sim


def _sources_add_up(metrics) -> None:
    by_source = metrics["hit_bytes_by_source"]
    assert set(by_source) == set(SOURCES)
    assert sum(by_source.values()) == pytest.approx(metrics["hit_bytes"])


def test_dram_caches_serve_local_and_peer_hits_with_every_block_checked():
    # Three prefill nodes: an agent's next turn often lands on another node, whose DRAM
    # lacks its prefix while its last prefill node (or the decode node) holds it.
    metrics, sim = _run(("prefill_nodes=3", "node.dram_cache_gb=0.05"), "pe_only", agents=6)
    live = metrics["live"]
    assert metrics["requests"] == sim["requests"] and metrics["lost"] == 0
    assert live.get("checksum_failures", 0) == 0 and live["blocks_verified"] > 100
    _sources_add_up(metrics)
    by_source = metrics["hit_bytes_by_source"]
    assert by_source["dram_local"] > 0 and by_source["dram_peer"] > 0
    assert live["peer_blocks_sent"] > 0
    assert live["cache_evicted_blocks"] > 0  # the caches were full: evictions happened
    # The router decided on its index, built from the nodes' events alone.
    assert metrics["index"]["decisions"] == metrics["requests"]
    assert metrics["index"]["exact_share"] >= 0.9


def test_hbm_cache_hits_need_no_transfer_and_are_still_checked():
    metrics, sim = _run(("node.hbm_cache_gb=0.1", "node.dram_cache_gb=0.1"), "dualpath_cache",
                        agents=3)
    assert metrics["requests"] == sim["requests"]
    assert metrics["live"].get("checksum_failures", 0) == 0
    _sources_add_up(metrics)
    assert metrics["hit_bytes_by_source"]["hbm"] > 0


def test_a_prefill_node_lost_with_its_cache_loses_no_request():
    # Round robin keeps naming the dead node's engines: the router asks again at once
    # (it used to wait for capacity to free, which never came for the last request).
    metrics, _ = _run(("prefill_nodes=3", "node.dram_cache_gb=0.05"), "pe_only", agents=6,
                      faults=Faults(kill_node=1, kill_at_s=3.0))
    assert metrics["live"]["node_lost"] == 1
    assert metrics["lost"] == 0 and metrics["duplicated"] == 0
    assert metrics["completed"] == metrics["admitted"]
    assert metrics["live"].get("checksum_failures", 0) == 0


def test_the_live_router_asks_in_the_policys_queue_order():
    routers: list = []
    metrics, sim = _run(("node.dram_cache_gb=0.05",), "dualpath_cache:order=short", agents=4,
                        routers=routers)
    assert metrics["requests"] == sim["requests"] and metrics["lost"] == 0
    assert routers[0].waiting.ordered  # shortest prompt first, not arrival order
