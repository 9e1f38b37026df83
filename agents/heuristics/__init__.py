"""Heuristic schedulers, one small class per module."""

from agents.heuristics.dualpath import DualPath
from agents.heuristics.dualpath_split import DualPathSplit
from agents.heuristics.least_tokens import LeastTokens
from agents.heuristics.pe_only import PeOnly
from agents.heuristics.round_robin import RoundRobin

__all__ = ["DualPath", "DualPathSplit", "LeastTokens", "PeOnly", "RoundRobin"]
