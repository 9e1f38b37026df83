"""Workloads: sources of requests for the simulator and the live runtime."""

from runtime.workload.agentic import (
    ARRIVALS,
    MAL_TOKENS,
    PAPER_STATS,
    SET_PARAMS,
    TRAJECTORIES_PER_SET,
    AgenticWorkload,
    BurstyArrivals,
    SetParams,
    TrajectorySet,
    trajectory_set,
    trajectory_stats,
)
from runtime.workload.base import Workload
from runtime.workload.mixed import MixedWorkload
from runtime.workload.mooncake import BlockStore, MooncakeTrace, TraceLine, read_trace

__all__ = [
    "ARRIVALS", "MAL_TOKENS", "PAPER_STATS", "SET_PARAMS", "TRAJECTORIES_PER_SET",
    "AgenticWorkload", "BlockStore", "BurstyArrivals", "MixedWorkload", "MooncakeTrace",
    "SetParams", "TraceLine", "TrajectorySet", "Workload", "read_trace", "trajectory_set",
    "trajectory_stats",
]
