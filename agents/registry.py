"""Heuristic policies by name."""

from __future__ import annotations

from agents.heuristics import DualPath, DualPathSplit, LeastTokens, PeOnly, RoundRobin

POLICIES: dict[str, type] = {
    "pe_only": PeOnly,
    "round_robin": RoundRobin,
    "least_tokens": LeastTokens,
    "dualpath": DualPath,
    "dualpath_split": DualPathSplit,
}
