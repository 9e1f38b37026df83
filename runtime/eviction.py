"""Which blocks a full KV cache gives up first: the pluggable part of a cache.

A cache keeps, per run of blocks, a key; the run with the smallest key loses its
tail blocks first. An eviction policy says what the key is when a run is stored and
when a hit touches it.
"""

from __future__ import annotations

from typing import Protocol


class Eviction(Protocol):
    name: str

    def touched(self, key: float, now: float) -> float:
        """The run's key after a hit at ``now`` (its key was ``key``)."""
        ...


class LeastRecentlyUsed:
    """LRU: a hit makes a run the most recent (vLLM's, SGLang's and LMCache's default)."""

    name = "lru"

    def touched(self, key: float, now: float) -> float:
        return now


class FirstInFirstOut:
    """FIFO: a run keeps the time it was stored; hits do not refresh it."""

    name = "fifo"

    def touched(self, key: float, now: float) -> float:
        return key


#: Every eviction policy by its name in ``cache.eviction``.
EVICTIONS: dict[str, type[Eviction]] = {
    "lru": LeastRecentlyUsed,
    "fifo": FirstInFirstOut,
}
