"""The live decode engine: receives the prompt's KV, decodes in a continuous batch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from runtime.execution.decode import DecodeEngine
from runtime.execution.job import Job
from runtime.live.arena import Arena
from runtime.live.engines.cached import buffer_supply, read_supply
from runtime.live.engines.host import NodeServices
from runtime.live.engines.job import LiveJob
from runtime.live.engines.push import push_layers
from runtime.live.engines.staging import Staging
from runtime.live.messages import (
    DeLoaded,
    DeReady,
    Fin,
    KvIn,
    Layer,
    Push,
    Rdma,
)
from runtime.live.reader import Fetched, record_transfer
from runtime.live.transport.base import Region, Transport
from runtime.placement.lifecycle import DECODING

if TYPE_CHECKING:  # the model engine's modules need torch: imported only when it runs
    from runtime.live.engines.model_decode import Member, ModelBatch


class LiveDecode:
    """One decode engine: receives the prompt's KV, decodes in a continuous batch."""

    def __init__(self, node: NodeServices, engine_id: int, transport: Transport, region: Region,
                 staging: Staging) -> None:
        self.node = node
        self.engine_id = engine_id
        self.core = DecodeEngine(engine_id, node.node_id, node.cost)
        self.transport = transport
        self.region = region
        self.arena = Arena(region.size)
        self.staging = staging
        self.batch: ModelBatch | None = None
        if node.model is not None:
            from runtime.live.engines.model_decode import ModelBatch
            self.batch = ModelBatch(node.model, region.view, self._token, self._answered)

    def place(self, job: LiveJob) -> None:
        node = self.node
        job.offset = self.arena.alloc(job.nbytes_real)
        pe_node = node.node_of(job.pe)
        rid = job.request.request_id
        node.to_peer(pe_node, DeReady(rid, job.attempt, job.offset))
        if job.de_bytes > 0 and not node.opts.oracle:
            read = node.storage.read(job.de_bytes, job.de_names)
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
        caches = self.node.caches
        if caches is not None and job.prefix is not None:
            first = job.cached_tokens + job.pe_tokens
            caches.read_done(job.prefix, job.prompt_names, first, first + job.de_tokens,
                             read_supply(job.fetched, len(job.names) - job.nde))
        job.de_loaded.set_result(None)
        rid = job.request.request_id
        self.node.to_router(Rdma(rid, job.attempt))
        self.node.to_peer(self.node.node_of(job.pe),
                          DeLoaded(rid, job.attempt, job.fetched.checksums))

    async def push(self, job: LiveJob, msg: Push) -> None:
        """Write the DE-path blocks into the prefill engine's buffer, one layer at a time."""
        node = self.node
        await job.de_loaded
        # Taken from the job: from here on this push owns (and frees) the host buffer.
        fetched, job.fetched = job.fetched, None
        assert fetched is not None
        pe_node, rid = node.node_of(job.pe), job.request.request_id
        if await push_layers(node, self.transport, self.staging, self.core.cnic_out,
                             fetched.payloads, node.remote(self.engine_id, msg.engine),
                             msg.offset, msg.stride, job.de_bytes,
                             lambda layer: node.to_peer(pe_node, Layer(rid, job.attempt, layer))):
            node.storage.release(job.de_bytes)

    async def receive(self, job: LiveJob, msg: KvIn) -> None:
        """The P→D transfer ended: the request joins the decode batch."""
        node, clock, cost = self.node, self.node.clock, self.node.cost
        nbytes = job.request.prompt_tokens * node.spec.model.kv_bytes_per_token
        at = msg.at
        if node.paced_cnic:
            _, end = self.core.cnic_in.reserve(msg.start, nbytes, cost.rdma_overhead_s(nbytes))
            at = max(at, end)
        else:
            record_transfer(self.core.cnic_in, msg.start, at, nbytes)
        await clock.sleep_until(at)
        if job.cancelled:
            return
        if node.caches is not None and job.prefix is not None:
            node.caches.received(job.prefix, job.prompt_names,
                                 buffer_supply(node, self.region.view, job))
        if self.batch is not None:
            job.state = DECODING
            if node.front is not None:
                node.front.joined(job.request.request_id, None)
            await self.batch.join(job, msg.token)
            return
        if job.request.gen_tokens == 1:
            self._finish(job, clock.now())
            return
        job.state = DECODING
        self._schedule(self.core.join(job, clock.now()))
        if node.front is not None:  # its client sees the first token now
            node.front.joined(job.request.request_id, self.core)

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
        node.to_router(Fin(rid, job.attempt, now))
        if node.front is not None:
            node.front.finished(rid)
        asyncio.ensure_future(node.write_back(job.request.gen_tokens, job.writes))

    # -- the model engine ---------------------------------------------------------------
    def _token(self, job: LiveJob, token: int) -> None:
        if self.node.front is not None:
            self.node.front.token(job.request.request_id, token)

    def _answered(self, member: Member) -> None:
        asyncio.ensure_future(self.node.guard(self._finish_model(member)))

    async def _finish_model(self, member: Member) -> None:
        """The answer is out: its blocks are written back before the request counts as
        finished, since the agent's next turn, arriving then, reads them."""
        node, job = self.node, member.job
        assert self.batch is not None and node.model is not None
        if job.writes and not job.cancelled:
            blocks = await node.model.run(self.batch.answer_blocks, member)
            await node.write_back(len(blocks) * node.spec.block_tokens, job.writes, blocks)
        self.arena.free(job.offset)
        if job.cancelled:
            return
        rid = job.request.request_id
        node.jobs.pop(rid, None)
        node.to_router(Fin(rid, job.attempt, node.clock.now(), member.tokens))
        if node.front is not None:
            node.front.finished(rid)

    def cancel(self, job: LiveJob) -> None:
        """Drop ``job`` (its prefill node died). One already in the decode batch runs out
        there (and is forgotten when it ends); otherwise its buffers are freed now."""
        job.cancelled = True
        if job.fetched is not None:  # read, but no push will ever take it
            self.node.storage.release(job.de_bytes)
            job.fetched = None
        if job.state is not DECODING:
            self.arena.free(job.offset)
