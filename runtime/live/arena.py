"""First-fit allocation of byte ranges inside one registered buffer."""

from __future__ import annotations

from bisect import insort


class ArenaFull(RuntimeError):
    """No free range is large enough."""


class Arena:
    """Hands out ``[offset, offset + size)`` ranges of a buffer of ``capacity`` bytes.

    Free ranges are kept sorted by offset and merged with their neighbours on
    free, so fragmentation stays bounded by the live allocations. Sizes are
    rounded up to ``align`` so that copies stay aligned.
    """

    def __init__(self, capacity: int, align: int = 64) -> None:
        if capacity <= 0:
            raise ValueError(f"arena capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.align = align
        self._free: list[tuple[int, int]] = [(0, capacity)]  # (offset, size), by offset
        self._used: dict[int, int] = {}

    @property
    def used(self) -> int:
        return sum(self._used.values())

    def alloc(self, size: int) -> int:
        if size <= 0:
            raise ValueError(f"allocation size must be > 0, got {size}")
        size = -(-size // self.align) * self.align
        for i, (offset, free) in enumerate(self._free):
            if free >= size:
                if free == size:
                    del self._free[i]
                else:
                    self._free[i] = (offset + size, free - size)
                self._used[offset] = size
                return offset
        raise ArenaFull(f"no free range of {size:,} B (capacity {self.capacity:,} B, "
                        f"{self.used:,} B in use in {len(self._used)} ranges)")

    def free(self, offset: int) -> None:
        size = self._used.pop(offset, None)
        if size is None:
            raise ValueError(f"offset {offset} is not allocated")
        insort(self._free, (offset, size))
        self._merge()

    def _merge(self) -> None:
        merged: list[tuple[int, int]] = []
        for offset, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == offset:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((offset, size))
        self._free = merged
