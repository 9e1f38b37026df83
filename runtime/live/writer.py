"""One-sided writes of a node, run off its event loop (each is a blocking transport call)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.live.transport.base import Region, RemoteRegion, Transport


class Writer:
    """Writes into peers' registered buffers on ``pool``; counts them in ``counters``."""

    def __init__(self, node_id: int, pool: ThreadPoolExecutor, counters: Counter[str]) -> None:
        self.node_id = node_id
        self.pool = pool
        self.counters = counters

    async def write(self, transport: Transport, region: Region, offset: int,
                    remote: RemoteRegion, dst: int, nbytes: int) -> bool:
        """One one-sided write, run off the event loop; False if the peer is gone."""
        def run() -> None:
            transport.write(region, offset, remote, dst, nbytes).wait(30.0)
        return await self._off_loop(run)

    async def write_gathered(self, transport: Transport, staging: Region, slot: int,
                             slot_bytes: int, pieces: Sequence[bytes], remote: RemoteRegion,
                             dst: int) -> bool:
        """Gather ``pieces`` into a staging slot and write them to ``dst`` contiguously."""
        def run() -> None:
            view, at, filled = staging.view, dst, 0
            for piece in pieces:
                if filled + len(piece) > slot_bytes:
                    transport.write(staging, slot, remote, at, filled).wait(30.0)
                    at, filled = at + filled, 0
                view[slot + filled:slot + filled + len(piece)] = piece
                filled += len(piece)
            if filled:
                transport.write(staging, slot, remote, at, filled).wait(30.0)
        return await self._off_loop(run)

    async def _off_loop(self, run: Any) -> bool:
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, run)
            self.counters["writes"] += 1
            return True
        except Exception as exc:  # the peer died (its requests are being rescheduled)
            self.counters["write_errors"] += 1
            print(f"[node {self.node_id}] write failed: {exc!r}", file=sys.stderr, flush=True)
            return False
