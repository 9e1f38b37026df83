"""Workloads: sources of requests for the simulator and the live runtime."""

from runtime.workload.agentic import ARRIVALS, AgenticWorkload, BurstyArrivals
from runtime.workload.base import Workload
from runtime.workload.mixed import MixedWorkload
from runtime.workload.mooncake import MooncakeTrace, StoredBlockSet, TraceLine, read_trace
from runtime.workload.trajectories import (
    MAL_TOKENS,
    PAPER_STATS,
    SET_PARAMS,
    TRAJECTORIES_PER_SET,
    SetParams,
    TrajectorySet,
    trajectory_set,
    trajectory_stats,
)

__all__ = [
    "ARRIVALS", "MAL_TOKENS", "PAPER_STATS", "SET_PARAMS", "TRAJECTORIES_PER_SET",
    "AgenticWorkload", "StoredBlockSet", "BurstyArrivals", "MixedWorkload", "MooncakeTrace",
    "SetParams", "TraceLine", "TrajectorySet", "Workload", "read_trace", "trajectory_set",
    "trajectory_stats",
]
