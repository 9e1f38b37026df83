"""The live engines: a prefill engine and a decode engine that move real KV bytes.

Both reuse the simulator's scheduling logic (the prefill engine's batch former,
the decode engine's continuous batch), so the two executions make the same
choices; what differs is that here every transfer moves real bytes through a
transport or from storage, and every duration is waited for on the clock.

Layout of a request's KV in a prefill engine's registered buffer: hit blocks
layer-major (``[layer][block]``, each slice ``block_bytes / layers``) so that one
layer of the DE-path blocks arrives as one contiguous write, then the appended
tokens' KV. The DE-path blocks come first in each layer row, the PE-path ones
after them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from runtime.live.arena import Arena
from runtime.live.blocks import Checksummer, block_content
from runtime.live.reader import Fetched, record_transfer
from runtime.live.transport.base import Region, Transport
from runtime.placement.lifecycle import DECODING
from runtime.request import Request
from runtime.sim.decode import DecodeEngine
from runtime.sim.job import Job
from runtime.sim.prefill import PrefillEngine

if TYPE_CHECKING:
    from runtime.live.node import Node


class LiveJob(Job):
    """A request inside a node: the simulator's record plus what the live path needs."""

    __slots__ = ("attempt", "names", "nde", "writes", "fetched", "de_checksums",
                 "offset", "de_offset", "de_layers", "de_loaded", "cancelled", "nbytes_real")

    def __init__(self, request: Request, msg: dict[str, Any], node: Node) -> None:
        super().__init__(request)
        self.attempt: int = msg["attempt"]
        self.pe, self.de = msg["pe"], msg["de"]
        kvb = node.spec.model.kv_bytes_per_token
        self.pe_bytes = msg["pe_tokens"] * kvb
        self.de_bytes = msg["de_tokens"] * kvb
        self.names: list[str] = msg["names"]
        self.nde: int = msg["nde"]
        self.writes: list[str] = []
        self.fetched: Fetched | None = None
        self.de_checksums: list[str] = []
        self.offset = -1     # of its KV in the engine's registered buffer
        self.de_offset: asyncio.Future[int] = node.loop.create_future()
        self.de_layers: list[asyncio.Future[None]] = []
        self.de_loaded: asyncio.Future[None] = node.loop.create_future()
        self.cancelled = False
        # Its prompt's KV as stored and moved: whole hit blocks, then the appended tokens.
        self.nbytes_real = (len(self.names) * node.block_bytes
                            + -(-request.appended_tokens * kvb // node.opts.bytes_scale))


class DeviceMemory:
    """The engine's HBM on a CUDA device: every arrived layer is copied host → GPU for real.

    The registered host buffer (where both paths land) is pinned, so the copies are
    DMA; checksums are then computed on what came back from the device, so a block
    counts as verified only if the right bytes reached GPU memory.
    """

    def __init__(self, region: Region) -> None:
        import torch  # only on CUDA hosts: the CPU runtime never needs it

        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' needs a CUDA GPU; torch sees none")
        self.torch = torch
        self.host = torch.frombuffer(region.view, dtype=torch.uint8)
        torch.cuda.cudart().cudaHostRegister(self.host.data_ptr(), region.size, 0)
        self.hbm = torch.empty(region.size, dtype=torch.uint8, device="cuda")
        self.stream = torch.cuda.Stream()

    def copy_in(self, ranges: list[tuple[int, int]]) -> int:
        """Copy ``(offset, length)`` ranges host → GPU; returns the bytes copied."""
        with self.torch.cuda.stream(self.stream):
            for at, n in ranges:
                self.hbm[at:at + n].copy_(self.host[at:at + n], non_blocking=True)
        self.stream.synchronize()
        return sum(n for _, n in ranges)

    def read(self, at: int, n: int) -> bytes:
        return bytes(self.hbm[at:at + n].cpu().numpy())


class LivePrefill:
    """One prefill engine: batches of ready requests, layer-wise loading, P→D sends."""

    def __init__(self, node: Node, engine_id: int, transport: Transport, region: Region) -> None:
        self.node = node
        self.engine_id = engine_id
        self.core = PrefillEngine(engine_id, node.node_id, node.cost)
        self.transport = transport
        self.region = region
        self.arena = Arena(region.size)
        self.busy = False
        self.device = DeviceMemory(region) if node.opts.device == "cuda" else None

    def place(self, job: LiveJob) -> None:
        self.core.admit(job.remaining)
        node = self.node
        if node.opts.oracle or job.request.hit_tokens == 0:
            job.loaded = True
            self.ready(job)
            return
        job.reads_left = (job.pe_bytes > 0) + (job.de_bytes > 0)
        if job.de_bytes > 0:
            job.de_layers = [node.loop.create_future() for _ in range(node.layers)]
            job.de_loaded.add_done_callback(lambda _: self._read_done(job))
        if job.pe_bytes > 0:
            read = node.storage.read(job.pe_bytes, job.names[job.nde:])
            read.add_done_callback(lambda fut: self._pe_read(job, fut))

    def _pe_read(self, job: LiveJob, fut: asyncio.Future[Fetched]) -> None:
        if job.cancelled and not fut.cancelled() and fut.exception() is None:
            self.node.storage.release(job.pe_bytes)
            return
        if fut.cancelled() or fut.exception() is not None:
            self.node.fatal(f"request {job.request.request_id}: PE-side read failed: "
                            f"{fut.exception()!r}")
            return
        job.fetched = fut.result()
        self._read_done(job)

    def _read_done(self, job: LiveJob) -> None:
        if job.cancelled:
            return
        job.reads_left -= 1
        if job.reads_left == 0:
            self.ready(job)

    def ready(self, job: LiveJob) -> None:
        """Its KV is loaded (or there is none to load): it waits for a prefill batch."""
        self.node.to_router({"t": "loaded", "rid": job.request.request_id,
                             "attempt": job.attempt})
        self.core.ready.append(job)
        self.kick()

    def cancel(self, job: LiveJob) -> None:
        """Drop ``job`` (its decode node died): unblock whatever waits on it.

        A request in the running batch is dropped when the batch ends; one whose prefill
        is done only has its P→D send stopped (the send frees its range); any other now.
        """
        job.cancelled = True
        if job in self.core.ready:
            self.core.ready.remove(job)
        if job.remaining > 0 and not any(j is job for j, _ in self.core.batch):
            self._drop(job)
        futures: list[asyncio.Future[Any]] = [*job.de_layers, job.de_loaded, job.de_offset]
        for fut in futures:
            if not fut.done():
                fut.cancel()

    def _drop(self, job: LiveJob) -> None:
        """Forget a cancelled request: its tokens and sequence leave the engine's counts."""
        self.core.computed(job.remaining)
        self.core.left()
        self.node.to_router({"t": "batch", "engine": self.engine_id, "tokens": job.remaining})
        job.remaining = 0
        self._free(job)

    def kick(self) -> None:
        if not self.busy and self.core.ready:
            self.busy = True
            asyncio.ensure_future(self.node.guard(self._run_batch()))

    async def _run_batch(self) -> None:
        node, core, clock = self.node, self.core, self.node.clock
        formed = core.form_batch(node.cost, node.opts.layerwise)
        start = clock.now()
        core.start(start, formed)
        batch = cast(list[tuple[LiveJob, int]], formed)
        compute = node.cost.batch_prefill_s([(n, job.context) for job, n in batch])
        for job, _ in batch:
            if job.offset < 0:  # its first batch (a chunked request keeps its range)
                job.offset = self.arena.alloc(job.nbytes_real)
        loads = [job for job, _ in batch if not job.loaded and not job.cancelled]
        arrivals = self._start_loads(loads, start)
        finished = node.loop.create_future()
        sends: list[asyncio.Future[float]] = []
        layers = node.layers
        per_layer = compute / layers
        done_at = start
        if not node.opts.layerwise:
            for layer in range(layers):
                await arrivals(layer)
            await self._verify(loads)
            done_at = clock.now() + compute
            await clock.sleep_until(done_at)
        for layer in range(layers if node.opts.layerwise else 0):
            await arrivals(layer)
            if layer == layers - 1:
                await self._verify(loads)
            done_at = max(done_at, clock.now()) + per_layer
            await clock.sleep_until(done_at)
            if layer == 0:
                sends = [asyncio.ensure_future(self._send(job, done_at, finished))
                         for job, n in batch if n >= job.remaining and not job.cancelled]
        if not node.opts.layerwise:
            sends = [asyncio.ensure_future(self._send(job, done_at, finished))
                     for job, n in batch if n >= job.remaining and not job.cancelled]
        finished.set_result(done_at)
        self._batch_done(batch, done_at)
        if sends:
            await asyncio.gather(*sends)
        self.busy = False
        node.to_router({"t": "free", "engine": self.engine_id})
        self.kick()

    def _free(self, job: LiveJob) -> None:
        if job.offset >= 0:
            self.arena.free(job.offset)
            job.offset = -1

    def _start_loads(self, loads: list[LiveJob], now: float
                     ) -> Callable[[int], Any]:
        """Start both streams of every loading job; returns ``await arrivals(layer)``."""
        node, clock, cost = self.node, self.node.clock, self.node.cost
        layers = node.layers
        pe_bytes = sum(job.pe_bytes for job in loads)
        overhead = sum(cost.h2d_overhead_s(job.pe_bytes) for job in loads)
        h_start, h_end = self.core.pcie.reserve(now, pe_bytes, overhead)
        # The PE's CNIC ingress for this batch: FIFO reservations, so the first starts first.
        in_start: float | None = None
        in_end = now
        for job in loads:
            if job.de_bytes > 0:
                if node.paced_cnic:
                    s, e = self.core.cnic_in.reserve(now, job.de_bytes,
                                                     cost.rdma_overhead_s(job.de_bytes))
                    in_start = s if in_start is None else in_start
                    in_end = max(in_end, e)
                node.to_peer(node.node_of(job.de), {
                    "t": "push", "rid": job.request.request_id, "attempt": job.attempt,
                    "engine": self.engine_id, "offset": job.offset,
                    "stride": len(job.names) * node.slice_bytes})
        h2d = [node.loop.create_future() for _ in range(layers)]
        asyncio.ensure_future(node.guard(self._copy_in(loads, h2d, h_start, h_end)))

        async def arrivals(layer: int) -> None:
            await h2d[layer]
            for job in loads:
                if job.de_layers and not job.cancelled:
                    try:
                        await job.de_layers[layer]
                    except asyncio.CancelledError:
                        if not job.cancelled:
                            raise
            if in_start is not None:
                await clock.sleep_until(in_start + (layer + 1) * (in_end - in_start) / layers)
            if self.device is not None:
                await self._to_device(loads, layer)
        return arrivals

    async def _to_device(self, loads: list[LiveJob], layer: int) -> None:
        """Layer ``layer`` of every loading request, host buffer → GPU (one range each)."""
        assert self.device is not None
        size = self.node.slice_bytes
        ranges = [(job.offset + layer * len(job.names) * size, len(job.names) * size)
                  for job in loads if not job.cancelled]
        copied = await self.node.loop.run_in_executor(self.node.pool, self.device.copy_in,
                                                      ranges)
        self.node.counters["h2d_bytes"] += copied

    async def _copy_in(self, loads: list[LiveJob], h2d: list[asyncio.Future[None]],
                       start: float, end: float) -> None:
        """The PE-path blocks, host buffer → engine buffer, one layer at a time."""
        node = self.node
        layers, size = node.layers, node.slice_bytes
        view = self.region.view
        for layer in range(layers):
            await node.clock.sleep_until(start + (layer + 1) * (end - start) / layers)
            for job in loads:
                if job.fetched is None or job.cancelled:
                    continue
                row = job.offset + layer * len(job.names) * size
                for j, payload in enumerate(job.fetched.payloads):
                    dst = row + (job.nde + j) * size
                    view[dst:dst + size] = payload[layer * size:(layer + 1) * size]
            h2d[layer].set_result(None)

    async def _verify(self, loads: list[LiveJob]) -> None:
        """Check every block that arrived against its checksum; re-read the bad ones."""
        node = self.node
        for job in loads:
            if job.cancelled:
                continue
            expected = list(job.de_checksums)
            if job.fetched is not None:
                expected += job.fetched.checksums
            for b, want in enumerate(expected):
                node.counters["blocks_verified"] += 1
                if self._block_checksum(job, b) == want:
                    continue
                node.counters["checksum_failures"] += 1
                name = job.names[b]
                print(f"[node {node.node_id}] request {job.request.request_id}: block {name} "
                      f"failed its checksum ({'DE' if b < job.nde else 'PE'} path); re-reading",
                      file=sys.stderr, flush=True)
                data, _ = await node.storage.reread(name, node.opts.replicas)
                self._place_block(job, b, data)
                node.counters["blocks_reread"] += 1
                if self._block_checksum(job, b) != want:
                    raise RuntimeError(f"block {name}: still corrupt after re-reading")

    def _block_checksum(self, job: LiveJob, b: int) -> str:
        size, stride = self.node.slice_bytes, len(job.names) * self.node.slice_bytes
        view = self.region.view
        summer = Checksummer()
        for layer in range(self.node.layers):
            at = job.offset + layer * stride + b * size
            summer.update(view[at:at + size] if self.device is None
                          else self.device.read(at, size))
        return summer.hexdigest()

    def _place_block(self, job: LiveJob, b: int, data: bytes) -> None:
        size, stride = self.node.slice_bytes, len(job.names) * self.node.slice_bytes
        for layer in range(self.node.layers):
            at = job.offset + layer * stride + b * size
            self.region.view[at:at + size] = data[layer * size:(layer + 1) * size]
            if self.device is not None:
                self.device.copy_in([(at, size)])

    async def _send(self, job: LiveJob, first_layer: float,
                    finished: asyncio.Future[float]) -> float:
        """The P→D transfer of a finished prompt's KV; returns when it ended."""
        node, cost, clock = self.node, self.node.cost, self.node.clock
        nbytes = job.request.prompt_tokens * node.spec.model.kv_bytes_per_token
        if node.paced_cnic:
            start, end = self.core.cnic_out.reserve(first_layer, nbytes,
                                                    cost.rdma_overhead_s(nbytes))
            await clock.sleep_until(start)
        else:
            start = clock.now()
        try:
            dst_offset = await job.de_offset
        except asyncio.CancelledError:  # its decode node died before it said where
            return self._sent(job, clock.now())
        if job.cancelled:
            return self._sent(job, clock.now())
        ok = await node.write(self.transport, self.region, job.offset,
                              node.remote(self.engine_id, job.de), dst_offset, job.nbytes_real)
        if node.paced_cnic:
            await clock.sleep_until(end)
        else:
            end = clock.now()
            record_transfer(self.core.cnic_out, start, end, nbytes)
        done = max(end, await finished)
        await clock.sleep_until(done)
        if ok and not job.cancelled:
            node.to_peer(node.node_of(job.de), {
                "t": "kv_in", "rid": job.request.request_id, "attempt": job.attempt,
                "start": start, "at": done})
        return self._sent(job, done)

    def _sent(self, job: LiveJob, at: float) -> float:
        """The P→D send of ``job`` is over (or stopped): this node is done with it. Until
        now a cancel must still find it, to stop a send waiting on a lost decode node."""
        self._free(job)
        if self.node.jobs.get(job.request.request_id) is job:
            del self.node.jobs[job.request.request_id]
        return at

    def _batch_done(self, batch: list[tuple[LiveJob, int]], now: float) -> None:
        node = self.node
        tokens = 0
        for job, n in batch:
            job.remaining -= n
            job.context += n
            tokens += n
            if not job.loaded:
                job.loaded = True
                if job.pe_bytes > 0:
                    node.storage.release(job.pe_bytes)
                job.fetched = None
            if job.cancelled:
                tokens += job.remaining  # what it will no longer compute
                job.remaining = 0
                self.core.left()
                self._free(job)
            elif job.remaining == 0:
                self.core.left()
                rid = job.request.request_id
                node.to_router({"t": "first", "rid": rid, "attempt": job.attempt, "at": now})
                asyncio.ensure_future(node.write_back(
                    job.request.appended_tokens, job.writes))
        self.core.computed(tokens)
        self.core.batch = []
        node.to_router({"t": "batch", "engine": self.engine_id, "tokens": tokens})


class LiveDecode:
    """One decode engine: receives the prompt's KV, decodes in a continuous batch."""

    def __init__(self, node: Node, engine_id: int, transport: Transport, region: Region,
                 staging: Region, slots: int) -> None:
        self.node = node
        self.engine_id = engine_id
        self.core = DecodeEngine(engine_id, node.node_id, node.cost)
        self.transport = transport
        self.region = region
        self.arena = Arena(region.size)
        self.staging = staging
        self.slot_bytes = staging.size // slots
        self.slots: asyncio.Queue[int] = asyncio.Queue()
        for k in range(slots):
            self.slots.put_nowait(k * self.slot_bytes)

    def place(self, job: LiveJob) -> None:
        node = self.node
        job.offset = self.arena.alloc(job.nbytes_real)
        pe_node = node.node_of(job.pe)
        rid = job.request.request_id
        node.to_peer(pe_node, {"t": "de_ready", "rid": rid, "attempt": job.attempt,
                               "offset": job.offset})
        if job.de_bytes > 0 and not node.opts.oracle:
            read = node.storage.read(job.de_bytes, job.names[:job.nde])
            read.add_done_callback(lambda fut: self._loaded(job, fut))

    def _loaded(self, job: LiveJob, fut: asyncio.Future[Fetched]) -> None:
        if job.cancelled:
            if not fut.cancelled() and fut.exception() is None:
                self.node.storage.release(job.de_bytes)  # read for a request now gone
            return
        if fut.cancelled() or fut.exception() is not None:
            self.node.fatal(f"request {job.request.request_id}: DE-side read failed: "
                            f"{fut.exception()!r}")
            return
        job.fetched = fut.result()
        job.de_loaded.set_result(None)
        rid = job.request.request_id
        self.node.to_router({"t": "rdma", "rid": rid, "attempt": job.attempt})
        self.node.to_peer(self.node.node_of(job.pe), {
            "t": "de_loaded", "rid": rid, "attempt": job.attempt,
            "checksums": job.fetched.checksums})

    async def push(self, job: LiveJob, msg: dict[str, Any]) -> None:
        """Write the DE-path blocks into the prefill engine's buffer, one layer at a time."""
        node, clock, cost = self.node, self.node.clock, self.node.cost
        await job.de_loaded
        # Taken from the job: from here on this push owns (and frees) the host buffer.
        fetched, job.fetched = job.fetched, None
        assert fetched is not None
        layers, size = node.layers, node.slice_bytes
        now = clock.now()
        if node.paced_cnic:
            start, end = self.core.cnic_out.reserve(now, job.de_bytes,
                                                    cost.rdma_overhead_s(job.de_bytes))
        remote = node.remote(self.engine_id, msg["engine"])
        for layer in range(layers):
            slot = await self.slots.get()
            try:
                ok = await node.write_gathered(
                    self.transport, self.staging, slot, self.slot_bytes,
                    [p[layer * size:(layer + 1) * size] for p in fetched.payloads],
                    remote, msg["offset"] + layer * msg["stride"])
            finally:
                self.slots.put_nowait(slot)
            if not ok:
                return
            if node.paced_cnic:
                await clock.sleep_until(start + (layer + 1) * (end - start) / layers)
            node.to_peer(node.node_of(job.pe), {"t": "layer", "rid": job.request.request_id,
                                                "attempt": job.attempt, "layer": layer})
        if not node.paced_cnic:
            record_transfer(self.core.cnic_out, now, clock.now(), job.de_bytes)
        node.storage.release(job.de_bytes)

    async def receive(self, job: LiveJob, msg: dict[str, Any]) -> None:
        """The P→D transfer ended: the request joins the decode batch."""
        node, clock, cost = self.node, self.node.clock, self.node.cost
        nbytes = job.request.prompt_tokens * node.spec.model.kv_bytes_per_token
        at = msg["at"]
        if node.paced_cnic:
            _, end = self.core.cnic_in.reserve(msg["start"], nbytes, cost.rdma_overhead_s(nbytes))
            at = max(at, end)
        else:
            record_transfer(self.core.cnic_in, msg["start"], at, nbytes)
        await clock.sleep_until(at)
        if job.cancelled:
            return
        if job.request.gen_tokens == 1:
            self._finish(job, clock.now())
            return
        job.state = DECODING
        self._schedule(self.core.join(job, clock.now()))

    def _schedule(self, at: float | None) -> None:
        if at is not None:
            asyncio.ensure_future(self.node.guard(self._wake(at, self.core.version)))

    async def _wake(self, at: float, version: int) -> None:
        await self.node.clock.sleep_until(at)
        if version != self.core.version:
            return  # superseded by a later change of the batch
        done, nxt = self.core.finish_due(self.node.clock.now())
        now = self.node.clock.now()
        for job in done:
            self._finish(job, now)
        self._schedule(nxt)

    def _finish(self, job: Job, now: float) -> None:
        assert isinstance(job, LiveJob)
        node = self.node
        self.arena.free(job.offset)
        if job.cancelled:
            return  # rescheduled elsewhere: its decode batch slot is simply given back
        rid = job.request.request_id
        node.jobs.pop(rid, None)
        node.to_router({"t": "fin", "rid": rid, "attempt": job.attempt, "at": now})
        asyncio.ensure_future(node.write_back(job.request.gen_tokens, job.writes))

    def cancel(self, job: LiveJob) -> None:
        """Drop ``job`` (its prefill node died). One already in the decode batch runs out
        there (and is forgotten when it ends); otherwise its buffers are freed now."""
        job.cancelled = True
        if job.fetched is not None:  # read, but no push will ever take it
            self.node.storage.release(job.de_bytes)
            job.fetched = None
        if job.state is not DECODING:
            self.arena.free(job.offset)


def write_blocks(names: list[str], size: int) -> list[tuple[str, bytes]]:
    """The KV blocks a request produced, as (name, content) to write back."""
    return [(name, block_content(name, size)) for name in names]
