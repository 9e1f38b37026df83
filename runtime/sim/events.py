"""Events of the simulator, ordered by (time, kind, sequence number) so runs are deterministic."""

from __future__ import annotations

from enum import IntEnum
from heapq import heappop, heappush
from itertools import count
from typing import Any


class EventKind(IntEnum):
    # At equal times, completions come first so that capacity they free is
    # visible to the arrivals and decisions that follow.
    READ_DONE = 0
    PREFILL_DONE = 1
    PREFILL_FREE = 2
    TRANSFER_DONE = 3
    DECODE_DONE = 4
    ARRIVAL = 5


# The kinds as plain ints, for the hot path: fetching an IntEnum member is a class
# attribute lookup, and hashing one calls Enum.__hash__ in Python. The heap orders
# them exactly as the members (IntEnum compares as int).
READ_DONE, PREFILL_DONE, PREFILL_FREE, TRANSFER_DONE, DECODE_DONE, ARRIVAL = (
    int(kind) for kind in EventKind)


class EventQueue:
    """A heap of ``(time, kind, seq, payload)``; ``heap`` is public so the simulator's
    event loop can pop from it without a method call per event (the hot path)."""

    __slots__ = ("heap", "_next_seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any]] = []
        self._next_seq = count(1).__next__  # 1, 2, 3, ...: one C call per event

    def push(self, time: float, kind: int, payload: Any) -> None:
        heappush(self.heap, (time, kind, self._next_seq(), payload))

    def pop(self) -> tuple[float, int, int, Any]:
        return heappop(self.heap)

    def __len__(self) -> int:
        return len(self.heap)
