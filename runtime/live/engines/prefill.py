"""The live prefill engine: batches of ready requests, layer-wise loading, P→D sends.

Layout of a request's KV in its registered buffer: see :mod:`runtime.live.engines`.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

from runtime.execution.prefill import PrefillEngine
from runtime.live.arena import Arena
from runtime.live.blocks import Checksummer
from runtime.live.engines.cached import (
    buffer_supply,
    fetch_message,
    read_missing,
    read_supply,
    take_cached,
)
from runtime.live.engines.device import DeviceMemory
from runtime.live.engines.host import NodeServices
from runtime.live.engines.job import LiveJob
from runtime.live.messages import Batch, First, Free, KvIn, Loaded, Push
from runtime.live.reader import Fetched, record_transfer
from runtime.live.transport.base import Region, Transport

#: Wall seconds a peer's write into a dropped request's range may still take.
PEER_WRITE_TIMEOUT_S = 30.0


class LivePrefill:
    """One prefill engine: batches of ready requests, layer-wise loading, P→D sends."""

    def __init__(self, node: NodeServices, engine_id: int, transport: Transport,
                 region: Region) -> None:
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
        missing = take_cached(node, job) if job.ncache else []
        if job.peer_bytes > 0:
            job.peer_layers = [node.loop.create_future() for _ in range(node.layers)]
        job.reads_left = (job.pe_bytes > 0) + (job.de_bytes > 0) + bool(missing)
        if job.de_bytes > 0:
            job.de_layers = [node.loop.create_future() for _ in range(node.layers)]
            job.de_loaded.add_done_callback(lambda _: self._read_done(job))
        if job.pe_bytes > 0:
            read = node.storage.read(job.pe_bytes, job.pe_names)
            read.add_done_callback(lambda fut: self._pe_read(job, fut))
        if missing:
            asyncio.ensure_future(node.guard(self._read_missing(job, missing)))
        if job.reads_left == 0:  # every hit block was cached here or on a peer
            self.ready(job)

    async def _read_missing(self, job: LiveJob, columns: list[int]) -> None:
        """Blocks the plan had cached here that were evicted since: read from storage."""
        fetched = await read_missing(self.node, [job.names[i] for i in columns])
        for i, payload, stored in zip(columns, fetched.payloads, fetched.checksums,
                                      strict=True):
            job.cached_in[i] = (payload, stored)
        self._read_done(job)

    def _pe_read(self, job: LiveJob, fut: asyncio.Future[Fetched]) -> None:
        if job.cancelled and not fut.cancelled() and fut.exception() is None:
            self.node.storage.release(job.pe_bytes)
            return
        if fut.cancelled() or fut.exception() is not None:
            self.node.fatal(f"request {job.request.request_id}: PE-side read failed: "
                            f"{fut.exception()!r}")
            return
        job.fetched = fut.result()
        caches = self.node.caches
        if caches is not None and job.prefix is not None:
            first = job.cached_tokens
            caches.read_done(job.prefix, job.prompt_names, first, first + job.pe_tokens,
                             read_supply(job.fetched, job.ncache))
        self._read_done(job)

    def _read_done(self, job: LiveJob) -> None:
        if job.cancelled:
            return
        job.reads_left -= 1
        if job.reads_left == 0:
            self.ready(job)

    def ready(self, job: LiveJob) -> None:
        """Its KV is loaded (or there is none to load): it waits for a prefill batch."""
        self.node.to_router(Loaded(job.request.request_id, job.attempt))
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
        futures: list[asyncio.Future[Any]] = [*job.de_layers, *job.peer_layers, job.de_loaded,
                                              job.de_offset]
        for fut in futures:
            if not fut.done():
                fut.cancel()

    def _drop(self, job: LiveJob) -> None:
        """Forget a cancelled request: its tokens and sequence leave the engine's counts."""
        self.core.computed(job.remaining)
        self.core.left()
        self.node.to_router(Batch(self.engine_id, job.remaining))
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
        for job, _ in batch:
            if job.offset < 0:  # its first batch (a chunked request keeps its range)
                job.offset = self.arena.alloc(job.nbytes_real)
        loads = [job for job, _ in batch if not job.loaded and not job.cancelled]
        arrivals = self._start_loads(loads, start)
        finished = node.loop.create_future()
        run = self._compute if node.model is not None else self._emulate
        done_at, sends = await run(batch, loads, arrivals, finished)
        finished.set_result(done_at)
        self._batch_done(batch, done_at)
        if sends:
            await asyncio.gather(*sends)
        self.busy = False
        node.to_router(Free(self.engine_id))
        self.kick()

    def _sends(self, batch: list[tuple[LiveJob, int]], first_layer: float,
               finished: asyncio.Future[float]) -> list[asyncio.Future[float]]:
        """Start the P→D sends of the requests whose prompt this batch ends."""
        return [asyncio.ensure_future(self._send(job, first_layer, finished))
                for job, n in batch if n >= job.remaining and not job.cancelled]

    async def _emulate(self, batch: list[tuple[LiveJob, int]], loads: list[LiveJob],
                       arrivals: Callable[[int], Awaitable[None]],
                       finished: asyncio.Future[float]
                       ) -> tuple[float, list[asyncio.Future[float]]]:
        """The batch's compute timed by the cost model; returns when it ends and its sends."""
        node, clock = self.node, self.node.clock
        compute = node.cost.batch_prefill_s([(n, job.context) for job, n in batch],
                                            self.core.speed)
        layers, done_at = node.layers, clock.now()
        sends: list[asyncio.Future[float]] = []
        if not node.opts.layerwise:
            for layer in range(layers):
                await arrivals(layer)
            await self._verify(loads)
            done_at = clock.now() + compute
            await clock.sleep_until(done_at)
            return done_at, self._sends(batch, done_at, finished)
        for layer in range(layers):
            await arrivals(layer)
            if layer == layers - 1:
                await self._verify(loads)
            done_at = max(done_at, clock.now()) + compute / layers
            await clock.sleep_until(done_at)
            if layer == 0:
                sends = self._sends(batch, done_at, finished)
        return done_at, sends

    async def _compute(self, batch: list[tuple[LiveJob, int]], loads: list[LiveJob],
                       arrivals: Callable[[int], Awaitable[None]],
                       finished: asyncio.Future[float]
                       ) -> tuple[float, list[asyncio.Future[float]]]:
        """The batch computed by the model, each layer once its own layer's KV is in (all
        layers first without layer-wise prefill). Blocks are verified before the last
        layer; if one had to be re-read, the layers before are computed again on it."""
        node, model = self.node, self.node.model
        assert model is not None
        view, layers = self.region.view, node.layers
        hits = None if self.device is None else self.device.hbm  # copied per layer, own stream
        chunks = model.chunks(batch)
        await model.run(model.embed, chunks)
        sends: list[asyncio.Future[float]] = []
        if not node.opts.layerwise:
            for layer in range(layers):
                await arrivals(layer)
        for layer in range(layers):
            await arrivals(layer)
            if layer == layers - 1 and await self._verify(loads):
                await model.run(model.embed, chunks)
                for again in range(layer):
                    await model.run(model.layer, view, chunks, again, hits)
            await model.run(model.layer, view, chunks, layer, hits)
            if layer == 0:
                sends = self._sends(batch, node.clock.now(), finished)
        await model.run(model.finish, view, chunks)
        return node.clock.now(), sends

    async def _write_back(self, job: LiveJob) -> None:
        """Write the prompt's new blocks back: the model engine's real KV of those its
        prompt completes (the decode engine writes the one its answer goes on in)."""
        node, blocks = self.node, job.kv_out
        if node.model is None:
            await node.write_back(job.request.appended_tokens, job.writes)
        elif blocks:
            job.kv_out = []
            await node.write_back(len(blocks) * node.spec.block_tokens,
                                  job.writes[:len(blocks)], blocks)

    def _free(self, job: LiveJob) -> None:
        if job.offset < 0:
            return
        offset, job.offset = job.offset, -1
        if job.fetch_sent and not all(f.done() and not f.cancelled() for f in job.peer_layers):
            # A peer may still be writing there (its request was dropped mid-fetch): the
            # range is reused only after the longest a write may take.
            self.node.loop.call_later(PEER_WRITE_TIMEOUT_S, self.arena.free, offset)
        else:
            self.arena.free(offset)

    def _start_loads(self, loads: list[LiveJob], now: float
                     ) -> Callable[[int], Awaitable[None]]:
        """Start both streams of every loading job; returns ``await arrivals(layer)``."""
        node, cost = self.node, self.node.cost
        # Through host memory: blocks read from storage and from this node's DRAM cache.
        pe_bytes = sum(job.pe_bytes + job.dram_bytes for job in loads)
        overhead = sum(cost.h2d_overhead_s(job.pe_bytes + job.dram_bytes) for job in loads)
        h_start, h_end = self.core.pcie.reserve(now, pe_bytes, overhead)
        ingress = self._rdma_paths(loads, now)
        h2d = [node.loop.create_future() for _ in range(node.layers)]
        asyncio.ensure_future(node.guard(self._copy_in(loads, h2d, h_start, h_end)))
        return functools.partial(self._arrivals, loads, h2d, ingress)

    def _rdma_paths(self, loads: list[LiveJob], now: float) -> tuple[float, float] | None:
        """Ask the decode node of every job with DE-side blocks, and the peer of every job
        with blocks in a peer's DRAM cache, to write them here; returns the span of this
        batch on the PE's CNIC ingress when it is paced here (FIFO reservations, so the
        first starts first), else None."""
        node, cost = self.node, self.node.cost
        in_start: float | None = None
        in_end = now
        for job in loads:
            for nbytes in (job.de_bytes, job.peer_bytes):
                if nbytes > 0 and node.paced_cnic:
                    s, e = self.core.cnic_in.reserve(now, nbytes, cost.rdma_overhead_s(nbytes))
                    in_start = s if in_start is None else in_start
                    in_end = max(in_end, e)
            size, columns = node.slice_bytes, len(job.names)
            if job.de_bytes > 0:
                node.to_peer(node.node_of(job.de), Push(
                    job.request.request_id, job.attempt, self.engine_id,
                    job.offset + (columns - job.nde) * size, columns * size))
            if job.peer_bytes > 0:
                assert job.plan is not None
                job.fetch_sent = True
                node.to_peer(job.plan.peer_node, fetch_message(node, job))
        return None if in_start is None else (in_start, in_end)

    async def _arrivals(self, loads: list[LiveJob], h2d: list[asyncio.Future[None]],
                        ingress: tuple[float, float] | None, layer: int) -> None:
        """Until layer ``layer`` of every loading job is in (and on the device, if any)."""
        await h2d[layer]
        for job in loads:
            for layers in (job.de_layers, job.peer_layers):
                if layers and not job.cancelled:
                    try:
                        await layers[layer]
                    except asyncio.CancelledError:
                        if not job.cancelled:
                            raise
        if ingress is not None:
            start, end = ingress
            await self.node.clock.sleep_until(
                start + (layer + 1) * (end - start) / self.node.layers)
        if self.device is not None:
            await self._to_device(loads, layer)

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
        """The blocks in host memory (read from storage, or cached on this node), host
        buffer → engine buffer, one layer at a time."""
        node = self.node
        layers, size = node.layers, node.slice_bytes
        view = self.region.view
        for layer in range(layers):
            await node.clock.sleep_until(start + (layer + 1) * (end - start) / layers)
            for job in loads:
                if job.cancelled:
                    continue
                row = job.offset + layer * len(job.names) * size
                pieces = [(i, data) for i, (data, _) in job.cached_in.items()]
                if job.fetched is not None:
                    pieces += enumerate(job.fetched.payloads, job.ncache)
                for i, payload in pieces:
                    dst = row + i * size
                    view[dst:dst + size] = payload[layer * size:(layer + 1) * size]
            h2d[layer].set_result(None)

    async def _verify(self, loads: list[LiveJob]) -> bool:
        """Check every block that arrived against its checksum; re-read the bad ones.
        Returns whether any was re-read."""
        node = self.node
        reread = False
        for job in loads:
            if job.cancelled:
                continue
            for b, want in enumerate(job.expected_checksums()):
                node.counters["blocks_verified"] += 1
                if self._block_checksum(job, b) == want:
                    continue
                node.counters["checksum_failures"] += 1
                name = job.names[b]
                print(f"[node {node.node_id}] request {job.request.request_id}: block {name} "
                      f"failed its checksum ({job.source_of(b)}); re-reading",
                      file=sys.stderr, flush=True)
                data, _ = await node.storage.reread(name, node.opts.replicas)
                self._place_block(job, b, data)
                node.counters["blocks_reread"] += 1
                reread = True
                if self._block_checksum(job, b) != want:
                    raise RuntimeError(f"block {name}: still corrupt after re-reading")
        return reread

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
        if node.model is not None:  # real KV: sent once every layer of it is computed
            await finished
        if job.cancelled:
            return self._sent(job, clock.now())
        ok = await node.writer.write(self.transport, self.region, job.offset,
                              node.remote(self.engine_id, job.de), dst_offset, job.nbytes_real)
        if node.paced_cnic:
            await clock.sleep_until(end)
        else:
            end = clock.now()
            record_transfer(self.core.cnic_out, start, end, nbytes)
        done = max(end, await finished)
        await clock.sleep_until(done)
        if ok and not job.cancelled:
            node.to_peer(node.node_of(job.de),
                         KvIn(job.request.request_id, job.attempt, start, done,
                              job.first_token))
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
                if node.caches is not None and job.prefix is not None:
                    node.caches.prefilled(job.prefix, job.prompt_names, self.engine_id,
                                          buffer_supply(node, self.region.view, job))
                rid = job.request.request_id
                node.to_router(First(rid, job.attempt, now))
                asyncio.ensure_future(self._write_back(job))
        self.core.computed(tokens)
        self.core.batch = []
        node.to_router(Batch(self.engine_id, tokens))
