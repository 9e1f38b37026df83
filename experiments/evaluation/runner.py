"""One simulated run from a plain config: build the cluster, workload and policy, run, report."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import policy_service  # noqa: F401 - teaches resolve_policy the grpc:// specs
from agents.running import policy_run
from experiments.evaluation.fanout import map_local
from runtime.cluster import ClusterSpec
from runtime.preset import load_preset
from runtime.sim import SimOptions, Simulator, write_timeline
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.base import Workload
from runtime.workload.mooncake import MooncakeTrace

DEFAULT_PRESET = "ds660b-2p4d"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run (and nothing that does not)."""

    policy: str = "dualpath"
    preset: str = DEFAULT_PRESET
    overrides: tuple[str, ...] = ()
    agents: int = 512
    mal: str = "64k"
    seed: int = 0
    layerwise: bool = True
    oracle: bool = False
    append_scale: float = 1.0
    gen_scale: float = 1.0
    tool_latency_s: float = 0.0
    think_time_s: float = 0.0
    online: bool = False
    aps: float | None = None
    duration_s: float | None = None
    trace: str | None = None
    storage_capacity_blocks: int | None = None
    timeline: str | None = None

    def __post_init__(self) -> None:
        if self.agents <= 0 and not self.online and self.trace is None:
            raise ValueError(f"--agents must be > 0, got {self.agents}")
        if self.online and (self.aps is None or self.duration_s is None):
            raise ValueError("--online needs --aps X and --duration S")
        if self.timeline is not None and not self.timeline.lower().endswith(
                (".csv", ".parquet")):
            raise ValueError(f"--timeline {self.timeline}: the file must end in .csv or .parquet")
        if self.trace is not None and not self.trace.startswith("mooncake:"):
            raise ValueError(f"--trace {self.trace}: expected mooncake:PATH")


def build_workload(cfg: RunConfig, spec: ClusterSpec) -> Workload:
    if cfg.trace is not None:
        return MooncakeTrace(cfg.trace.removeprefix("mooncake:"),
                             storage_capacity_blocks=cfg.storage_capacity_blocks)
    return AgenticWorkload(
        None if cfg.online else cfg.agents, cfg.mal, cfg.seed, online=cfg.online,
        aps=cfg.aps, duration_s=cfg.duration_s, append_scale=cfg.append_scale,
        gen_scale=cfg.gen_scale, tool_latency_s=cfg.tool_latency_s,
        think_time_s=cfg.think_time_s)


def _stderr_progress(label: str) -> Callable[[int, float], None]:
    def report(done: int, now: float) -> None:
        print(f"[{label}] {done:,} requests done, simulated t={now:,.0f} s",
              file=sys.stderr, flush=True)
    return report


def run(cfg: RunConfig, progress: bool = False) -> dict[str, Any]:
    """Run one config; returns its metrics plus the effective switches and names."""
    spec = load_preset(cfg.preset, cfg.overrides)
    with policy_run(cfg.policy, spec, layerwise=cfg.layerwise, oracle=cfg.oracle) as chosen:
        layerwise, oracle = chosen.layerwise, chosen.oracle
        options = SimOptions(layerwise=layerwise, oracle=oracle,
                             timeline=cfg.timeline is not None)
        sim = Simulator(spec, build_workload(cfg, spec), options)
        result = sim.run(chosen.policy, _stderr_progress(cfg.policy) if progress else None)
        fallbacks = chosen.counts()["policy_fallbacks"]
    if fallbacks:
        print(f"[{cfg.policy}] {fallbacks:,} decisions fell back to the local policy (the "
              "service did not answer in time)", file=sys.stderr, flush=True)
    if cfg.timeline is not None:
        write_timeline(result.timeline, cfg.timeline)
    return {"policy": cfg.policy, "preset": spec.name, "mal": cfg.mal, "agents": cfg.agents,
            "seed": cfg.seed, "layerwise": layerwise, "oracle": oracle, **result.metrics}


def run_many(configs: Sequence[RunConfig], jobs: int = 1,
             progress: bool = False) -> list[dict[str, Any]]:
    """Run configs, in parallel processes when ``jobs`` > 1; results in input order."""
    return map_local(partial(run, progress=progress), configs, jobs)
