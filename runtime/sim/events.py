"""Events of the simulator, ordered by (time, kind, sequence number) so runs are deterministic."""

from __future__ import annotations

import heapq
from enum import IntEnum
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


class EventQueue:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    def push(self, time: float, kind: EventKind, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, kind, self._seq, payload))

    def pop(self) -> tuple[float, int, int, Any]:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
