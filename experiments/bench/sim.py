"""``dualpath bench sim``: simulated requests per second of the simulator on the paper's
cluster (ds660b-2p4d, 64K set, ``dualpath``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from experiments.evaluation.runner import DEFAULT_PRESET, RunConfig, run

BENCH = RunConfig(policy="dualpath", preset=DEFAULT_PRESET, agents=2048, mal="64k")


def bench_sim(agents: int = BENCH.agents, progress: bool = False) -> dict[str, Any]:
    """One run of :data:`BENCH` with ``agents`` agents: its size, wall time and rate."""
    cfg = replace(BENCH, agents=agents)
    result = run(cfg, progress=progress)
    payload = {k: result[k] for k in ("requests", "wall_s", "sim_requests_per_s", "jct_s")}
    payload.update(preset=cfg.preset, agents=cfg.agents, mal=cfg.mal, policy=cfg.policy)
    return payload


def render_bench_sim(payload: dict[str, Any]) -> str:
    return (f"simulated {payload['requests']:,} requests ({payload['preset']}, "
            f"{payload['mal']}, {payload['agents']} agents, {payload['policy']}) in "
            f"{payload['wall_s']:.1f} s wall: {payload['sim_requests_per_s']:,.0f} simulated "
            "requests/s")
