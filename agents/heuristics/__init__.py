"""Heuristic schedulers, one small class per module, and the table that names them."""

from agents.heuristics.cache_aware import CacheAware
from agents.heuristics.dualpath import DualPath
from agents.heuristics.dualpath_cache import DualPathCache
from agents.heuristics.dualpath_split import DualPathSplit
from agents.heuristics.least_tokens import LeastTokens
from agents.heuristics.pe_only import PeOnly
from agents.heuristics.round_robin import RoundRobin

#: Every heuristic by its spec name: the one list of them.
HEURISTICS: dict[str, type] = {
    "pe_only": PeOnly,
    "round_robin": RoundRobin,
    "least_tokens": LeastTokens,
    "dualpath": DualPath,
    "dualpath_split": DualPathSplit,
    "cache_aware": CacheAware,
    "dualpath_cache": DualPathCache,
}

__all__ = ["HEURISTICS", "CacheAware", "DualPath", "DualPathCache", "DualPathSplit",
           "LeastTokens", "PeOnly", "RoundRobin"]
