"""Workloads: sources of requests for the simulator and the live runtime."""

from runtime.workload.agentic import (
    MAL_TOKENS,
    PAPER_STATS,
    SET_PARAMS,
    TRAJECTORIES_PER_SET,
    AgenticWorkload,
    SetParams,
    TrajectorySet,
    trajectory_set,
    trajectory_stats,
)
from runtime.workload.base import Workload
from runtime.workload.mooncake import BlockStore, MooncakeTrace, TraceLine, read_trace

__all__ = [
    "MAL_TOKENS", "PAPER_STATS", "SET_PARAMS", "TRAJECTORIES_PER_SET", "AgenticWorkload",
    "BlockStore", "MooncakeTrace", "SetParams", "TraceLine", "TrajectorySet", "Workload",
    "read_trace", "trajectory_set", "trajectory_stats",
]
