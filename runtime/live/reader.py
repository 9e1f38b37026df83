"""A node's storage side in the live runtime: the SNIC read queue and the write-back path.

It mirrors the simulator's ``NodeStorage``: reads are served first come, first
served into the host buffer; a read is issued once the buffer has room for it
(or the buffer is empty); the buffer is freed when the data has been consumed.
Bytes are real: every block is fetched from the storage service. Bandwidth is
enforced one of two ways. *Paced* (loopback): each read reserves the SNIC for
``bytes / bandwidth`` model seconds, first come first served, and its data is
handed over only when that reservation ends, which is a token bucket with the
queue in front of it. *Kernel-shaped* (network namespaces): the bytes cross a
veth link that ``tc`` limits, and the read ends when the last byte arrives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.execution.link import Link
from runtime.live.blocks import checksum
from runtime.live.clock import Clock
from runtime.live.storage import StorageClient


@dataclass
class Fetched:
    """Blocks as they arrived: payloads and the checksums storage holds for them."""

    payloads: list[bytes]
    checksums: list[str]


@dataclass
class _Read:
    nbytes: float  # modelled bytes: what the buffer and the SNIC account
    names: Sequence[str]
    done: asyncio.Future[Fetched]


class StorageSide:
    """The node's SNIC (reads and write-back) and host-buffer accounting."""

    def __init__(self, node_id: int, clock: Clock, snic_bytes_s: float, buffer_bytes: float,
                 clients: list[StorageClient], writer: StorageClient, paced: bool) -> None:
        self.node_id = node_id
        self.clock = clock
        self.snic = Link(f"snic{node_id}", snic_bytes_s)
        self.snic_write = Link(f"snic{node_id}-write", snic_bytes_s)
        self.buffer_bytes = buffer_bytes
        self.buffer_used = 0.0
        self.pending: deque[_Read] = deque()
        self.pending_bytes = 0.0
        self.inflight_bytes = 0.0
        self.paced = paced
        self._clients: asyncio.Queue[StorageClient] = asyncio.Queue()
        for client in clients:
            self._clients.put_nowait(client)
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self.bytes_read = 0
        self.bytes_written = 0
        self.blocks_written = 0

    # -- reads ----------------------------------------------------------------
    def read(self, nbytes: float, names: Sequence[str]) -> asyncio.Future[Fetched]:
        """Queue a read of ``names`` (``nbytes`` modelled); the future gives the blocks."""
        entry = _Read(nbytes, names, asyncio.get_running_loop().create_future())
        self.pending.append(entry)
        self.pending_bytes += nbytes
        self.pump()
        return entry.done

    def pump(self) -> None:
        while self.pending:
            entry = self.pending[0]
            if self.buffer_used > 0 and self.buffer_used + entry.nbytes > self.buffer_bytes:
                return
            self.pending.popleft()
            self.pending_bytes -= entry.nbytes
            self.buffer_used += entry.nbytes
            self.inflight_bytes += entry.nbytes
            asyncio.ensure_future(self._serve(entry))

    def release(self, nbytes: float) -> None:
        """The data of a read (``nbytes`` modelled) was consumed: free its buffer."""
        self.buffer_used = max(0.0, self.buffer_used - nbytes)
        if self.buffer_used < 1e-6:
            self.buffer_used = 0.0
        self.pump()

    async def _serve(self, entry: _Read) -> None:
        start = self.clock.now()
        end = None
        if self.paced:
            start, end = self.snic.reserve(start, entry.nbytes)
        try:
            fetched = await self._fetch(entry.names)
        except Exception as exc:  # the storage service failed: the read fails
            self.inflight_bytes -= entry.nbytes
            if not entry.done.done():
                entry.done.set_exception(exc)
            return
        if end is not None:
            await self.clock.sleep_until(end)
        else:
            record_transfer(self.snic, start, self.clock.now(), entry.nbytes)
        self.inflight_bytes -= entry.nbytes
        if not entry.done.done():
            entry.done.set_result(fetched)

    async def _fetch(self, names: Sequence[str]) -> Fetched:
        results = await asyncio.gather(*(self._get(name) for name in names))
        return Fetched([r[0] for r in results], [r[1] for r in results])

    async def _get(self, name: str, replica: int = 0) -> tuple[bytes, str]:
        client = await self._clients.get()
        try:
            data, stored = await client.get(name, replica)
        finally:
            self._clients.put_nowait(client)
        self.bytes_read += len(data)
        return data, stored

    async def reread(self, name: str, replicas: int) -> tuple[bytes, str]:
        """Fetch a good copy of ``name`` from another replica and have storage repair it."""
        for replica in range(1, replicas):
            data, stored = await self._get(name, replica)
            if checksum(data) == stored:
                client = await self._clients.get()
                try:
                    await client.repair(name)
                finally:
                    self._clients.put_nowait(client)
                return data, stored
        raise RuntimeError(f"block {name}: no replica of {replicas} matches its checksum")

    def read_queue_bytes(self) -> float:
        """Bytes requested through this SNIC and not yet read (modelled)."""
        if self.paced:
            busy = self.snic.busy_until - self.clock.now()
            return self.pending_bytes + (busy * self.snic.bytes_s if busy > 0 else 0.0)
        return self.pending_bytes + self.inflight_bytes

    # -- write-back -------------------------------------------------------------
    async def write_back(self, nbytes: float, blocks: Sequence[tuple[str, bytes]]) -> None:
        """Write new KV blocks (``nbytes`` modelled) to storage through this SNIC."""
        if not blocks:
            return
        start = self.clock.now()
        async with self._write_lock:  # one writer connection, FIFO
            if self.paced:
                start, end = self.snic_write.reserve(start, nbytes)
            for name, data in blocks:
                await self._writer.put(name, data)
                self.bytes_written += len(data)
                self.blocks_written += 1
            if self.paced:
                await self.clock.sleep_until(end)
            else:
                record_transfer(self.snic_write, start, self.clock.now(), nbytes)


def record_transfer(link: Link, start: float, end: float, nbytes: float) -> None:
    """Note a transfer the kernel shaped (not reserved by us) for the utilisation metrics."""
    link.starts.append(start)
    link.ends.append(max(end, start))
    link.sizes.append(nbytes)
    link.busy_until = max(link.busy_until, end)
