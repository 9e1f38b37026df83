"""Which blocks storage holds, as far as a scheduler heard: the blocks of prompts that
finished (their prefill wrote every full prompt block back). Bounded: the oldest are
forgotten first, so a long-running scheduler's memory stays flat; a forgotten block
only makes a later prompt count fewer hit tokens (computed again, not wrong)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

#: Block hashes remembered by default (about 100 MB of Python ints and links).
STORED_BLOCKS = 1 << 20


class StoredBlocks:
    def __init__(self, capacity: int = STORED_BLOCKS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._held: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def leading(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt with these chained hashes storage holds."""
        held = self._held
        for i, h in enumerate(hashes):
            if h not in held:
                return i
            held.move_to_end(h)
        return len(hashes)

    def add(self, hashes: Sequence[int]) -> None:
        held = self._held
        for h in hashes:
            held[h] = None
            held.move_to_end(h)
        while len(held) > self.capacity:
            held.popitem(last=False)
