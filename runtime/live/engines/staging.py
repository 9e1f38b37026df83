"""An engine's staging slots: registered host memory that gathers blocks for one write.

Blocks held in host memory (read from storage, or cached) are scattered; a one-sided
write needs them contiguous in registered memory, so they are gathered into a slot
first. Slots are taken in turn: a decode engine's DE-path pushes and the cached blocks
a node sends to a prefill engine through that engine share them.
"""

from __future__ import annotations

import asyncio

from runtime.live.transport.base import Region

#: Slots per engine and bytes per slot.
STAGING_SLOTS = 4
STAGING_SLOT_BYTES = 1 << 20


class Staging:
    """``slots`` equal slots of the registered region ``region``."""

    def __init__(self, region: Region, slots: int = STAGING_SLOTS) -> None:
        self.region = region
        self.slot_bytes = region.size // slots
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for k in range(slots):
            self._free.put_nowait(k * self.slot_bytes)

    async def take(self) -> int:
        """A free slot's offset (waits for one)."""
        return await self._free.get()

    def give(self, slot: int) -> None:
        self._free.put_nowait(slot)
