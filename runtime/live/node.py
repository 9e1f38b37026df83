"""One node of the live cluster, as one process: its engines and its traffic manager.

Run by the cluster launcher as ``python -m runtime.live.node --config JSON``.
The node dials the router, announces its engines' registered buffers, learns
its peers', then executes placements: storage reads through its SNIC into the
host buffer, the per-layer DE→PE writes, the P→D transfer and the write-back
of new KV blocks. It reports its state (read queue, CNIC backlog) and the
requests' progress to the router.

Messages (:mod:`runtime.live.messages`, framed by :mod:`runtime.live.wire`) from
the router: ``Setup``, ``Go``, ``Place``, ``Cancel``, ``Stop``, ``Reject``; to it:
``Hello``, ``Ready``, ``State``, ``Batch``, ``Free``, ``Loaded``, ``Rdma``, ``First``,
``Fin``, ``Stats``, ``Error``, ``Submit`` (a request its HTTP fronts took: ``front/``).
Between nodes: ``DeReady``, ``DeLoaded``, ``Push``, ``Layer``, ``KvIn``. The node
implements :class:`runtime.live.engines.NodeServices`, what its engines use of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from collections import Counter, defaultdict
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from runtime.cluster import ClusterSpec
from runtime.cost import CostModel
from runtime.execution.link import Link
from runtime.live.blocks import write_blocks
from runtime.live.cache import NodeCaches
from runtime.live.clock import Clock
from runtime.live.config import LiveOptions, spec_from_dict
from runtime.live.engines import LiveDecode, LiveJob, LivePrefill
from runtime.live.engines.cached import serve_fetch
from runtime.live.engines.staging import STAGING_SLOT_BYTES, STAGING_SLOTS, Staging
from runtime.live.front import Front
from runtime.live.messages import (
    Cached,
    Cancel,
    DeLoaded,
    DeReady,
    Error,
    Fetch,
    Go,
    Hello,
    KvIn,
    Layer,
    Message,
    NodeReport,
    PeerMessage,
    Place,
    Push,
    Ready,
    Reject,
    Setup,
    State,
    Stats,
    Stop,
)
from runtime.live.reader import StorageSide
from runtime.live.storage import StorageClient
from runtime.live.transport import make_transport
from runtime.live.transport.base import RemoteRegion, Transport
from runtime.live.wire import Channel
from runtime.live.writer import Writer
from runtime.request import Request
from runtime.serving.tokenizer import load_tokenizer
from runtime.view import Role

_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class NodeConfig:
    """What a node process is told on its command line."""

    node_id: int
    spec: dict[str, Any]  # the ClusterSpec, as spec_to_dict gives it
    options: dict[str, Any]
    router: tuple[str, int]
    storage: tuple[str, int]
    control_host: str = "127.0.0.1"
    compute_ips: tuple[str, ...] = ()
    kernel_shaped: bool = False  # bandwidths enforced by tc, not paced here

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        data = json.loads(text)
        data["router"] = tuple(data["router"])
        data["storage"] = tuple(data["storage"])
        data["compute_ips"] = tuple(data["compute_ips"])
        return cls(**data)


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.spec: ClusterSpec = spec_from_dict(cfg.spec)
        self.opts = LiveOptions(**cfg.options)
        self.cost = CostModel(self.spec)
        self.layers = self.spec.model.layers
        self.block_bytes = self.opts.real_block_bytes(self.spec)
        self.slice_bytes = self.block_bytes // self.layers
        self.role = self.spec.role_of_node(cfg.node_id)
        # CNICs are paced here unless the kernel shapes them (netns with a network transport).
        self.paced_cnic = not (cfg.kernel_shaped and self.opts.transport != "shm")
        self.counters: Counter[str] = Counter()
        self.jobs: dict[int, LiveJob] = {}
        self._early: dict[int, list[PeerMessage]] = defaultdict(list)
        self._peers: dict[int, Channel] = {}
        self._remotes: dict[tuple[int, int], RemoteRegion] = {}
        self._transports: list[Transport] = []
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"node{cfg.node_id}")
        self.writer = Writer(cfg.node_id, self.pool, self.counters)
        self._ack = -1
        self._dirty = False
        self._failed: str | None = None
        self.prefill: dict[int, LivePrefill] = {}
        self.decode: dict[int, LiveDecode] = {}
        self.staging: dict[int, Staging] = {}
        self.caches: NodeCaches | None = None
        self.front: Front | None = None
        self.model: NodeModel | None = None
        # Another node's DRAM cache may send blocks to a prefill engine of the same role.
        self._peer_fetch = self.spec.has_cache and self.spec.cache.peer_fetch

    # -- set-up -----------------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.router = await Channel.connect(*self.cfg.router)
        try:
            await self._setup()
            await self._serve_router()
        finally:
            for transport in self._transports:
                transport.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _setup(self) -> None:
        spec, opts = self.spec, self.opts
        if opts.engine == "model":
            from runtime.live.engines.model import NodeModel
            self.model = NodeModel(spec, opts)
        clients = [StorageClient(*self.cfg.storage) for _ in range(opts.storage_clients + 1)]
        for client in clients:
            await client.connect()
        regions: dict[int, dict[str, Any]] = {}
        engines = [e for e in range(spec.engines) if spec.node_of(e) == self.node_id]
        for k, engine in enumerate(engines):
            bind = self.cfg.compute_ips[k] if self.cfg.compute_ips else self.cfg.control_host
            transport = make_transport(opts.transport, bind_host=bind)
            self._transports.append(transport)
            region = transport.register(self._region_bytes())
            regions[engine] = region.descriptor
            if self.role is Role.DECODE or self._peer_fetch:
                self.staging[engine] = Staging(
                    transport.register(STAGING_SLOTS * STAGING_SLOT_BYTES))
            if self.role is Role.PREFILL:
                self.prefill[engine] = LivePrefill(self, engine, transport, region)
            else:
                self.decode[engine] = LiveDecode(self, engine, transport, region,
                                                 self.staging[engine])
        server = await asyncio.start_server(self._serve_peer, self.cfg.control_host, 0)
        port = server.sockets[0].getsockname()[1]
        self.router.send(Hello(self.node_id, [self.cfg.control_host, port],
                               {str(e): d for e, d in regions.items()}, os.getpid()))
        setup = await self._expect(Setup)
        self.clock = Clock(opts.time_scale, setup.t0)
        if spec.has_cache:
            self.caches = NodeCaches(spec, self.node_id, self.block_bytes, self.clock.now,
                                     self.mark_dirty)
        self.storage = StorageSide(
            self.node_id, self.clock, spec.snic_bytes_s_of(self.node_id),
            spec.node.host_buffer_bytes, clients[:-1], clients[-1],
            paced=not self.cfg.kernel_shaped)
        await self._connect_peers(setup)
        if opts.fronts:
            limits = (None if self.model is None else
                      (self.model.config.vocab, self.model.config.max_context))
            self.front = Front(self, opts.front_host, dict(enumerate(opts.fronts)),
                               load_tokenizer(opts.tokenizer), opts.served_model, limits)
            await self.front.start()
        self.router.send(Ready(self.node_id))
        await self._expect(Go)

    def _region_bytes(self) -> int:
        node, scale = self.spec.node, self.opts.bytes_scale
        if self.role is Role.PREFILL:
            # Room for a batch's prompts beyond the modelled HBM: layer-wise prefill
            # does not account HBM for loaded KV (it streams), but the bytes need a home.
            return int(2 * node.pe_hbm_kv_bytes / scale) + 64 * self.block_bytes
        return int(1.5 * node.de_hbm_kv_bytes / scale) + 64 * self.block_bytes

    async def _connect_peers(self, setup: Setup) -> None:
        # Each local engine reaches the other role's buffers through its own
        # transport (its own CNIC: in namespaces, its own address); with peer fetches,
        # other nodes' engines of its own role too.
        local: dict[int, LivePrefill | LiveDecode] = {**self.prefill, **self.decode}
        for engine_text, descriptor in setup.regions.items():
            peer = int(engine_text)
            if self.spec.role_of(peer) is self.role and not (
                    self._peer_fetch and self.spec.node_of(peer) != self.node_id):
                continue
            for engine, owner in local.items():
                self._remotes[(engine, peer)] = owner.transport.connect(descriptor)
        for node_text, (host, port) in setup.peers.items():
            node = int(node_text)
            if node != self.node_id:
                self._peers[node] = await Channel.connect(host, port)

    async def _expect(self, kind: type[_M]) -> _M:
        msg = await self.router.recv()
        if msg is None:
            raise SystemExit(f"node {self.node_id}: router closed before {kind.kind.value!r}")
        if not isinstance(msg, kind):
            raise RuntimeError(f"node {self.node_id}: expected {kind.kind.value!r}, "
                               f"got {msg.kind.value!r}")
        return msg

    # -- messages -----------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """A state report at least every ``heartbeat_s``: the router's proof of life."""
        while True:
            await asyncio.sleep(self.opts.heartbeat_s)
            self.mark_dirty()

    async def _serve_router(self) -> None:
        heartbeat = asyncio.ensure_future(self._heartbeat())
        try:
            await self._route()
        finally:
            heartbeat.cancel()

    async def _route(self) -> None:
        while (msg := await self.router.recv()) is not None:
            match msg:
                case Place():
                    self._place(msg)
                case Cancel(rid=rid, attempt=attempt):
                    self._cancel(rid, attempt)
                case Reject(rid=rid, status=status, message=message) if self.front:
                    self.front.rejected(rid, status, message)
                case Stop():
                    self.router.send(self._stats())
                    await self.router.drain()
                    return
                case _:
                    self.fatal(f"unexpected router message {msg.kind.value!r}")

    async def _serve_peer(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        try:
            while (msg := await channel.recv()) is not None:
                if isinstance(msg, PeerMessage):
                    self._on_peer(msg)
                else:
                    self.fatal(f"unexpected peer message {msg.kind.value!r}")
        except asyncio.CancelledError:
            pass  # the node is shutting down

    def _on_peer(self, msg: PeerMessage) -> None:
        if isinstance(msg, Fetch):  # about a request placed elsewhere: this node serves it
            sender = {**self.prefill, **self.decode}[msg.src]
            asyncio.ensure_future(self.guard(serve_fetch(self, sender, self.staging[msg.src],
                                                         msg)))
            return
        rid = msg.rid
        job = self.jobs.get(rid)
        if job is None or job.attempt != msg.attempt:
            if job is None or job.attempt < msg.attempt:
                self._early[rid].append(msg)  # its placement has not reached us yet
            return
        self._on_job_message(job, msg)

    def _on_job_message(self, job: LiveJob, msg: PeerMessage) -> None:
        match msg:
            case DeReady(offset=offset):
                _resolve(job.de_offset, offset)
            case DeLoaded(checksums=checksums):
                job.de_checksums = checksums
                _resolve(job.de_loaded, None)
            case Layer(layer=layer, src="peer", checksums=checksums):
                if checksums:
                    job.peer_checksums = checksums
                _resolve(job.peer_layers[layer], None)
            case Layer(layer=layer):
                _resolve(job.de_layers[layer], None)
            case Push():
                asyncio.ensure_future(self.guard(self.decode[job.de].push(job, msg)))
            case KvIn():
                asyncio.ensure_future(self.guard(self.decode[job.de].receive(job, msg)))

    def _place(self, msg: Place) -> None:
        request = Request(msg.rid, msg.agent, msg.turn, msg.hit, msg.app, msg.gen, msg.arrival)
        job = LiveJob(request, msg, kv_bytes_per_token=self.spec.model.kv_bytes_per_token,
                      block_tokens=self.spec.block_tokens, block_bytes=self.block_bytes,
                      bytes_scale=self.opts.bytes_scale, loop=self.loop)
        self._ack = msg.seq
        plan = job.plan
        if plan is not None and plan.dram_peer_tokens and plan.peer_node == self.node_id:
            # This node's DRAM serves some of its blocks: they count as hit from now on,
            # as the model's do from the decision on (the fetch comes at its batch).
            assert self.caches is not None
            self.caches.served(job.prefix, plan, job.pe, self.node_of(job.pe))
            if job.pe not in self.prefill and job.de not in self.decode:
                self.mark_dirty()
                return
        self.jobs[request.request_id] = job
        if job.pe in self.prefill:
            job.writes = msg.pe_writes
            self.prefill[job.pe].place(job)
        else:
            job.writes = msg.de_writes
            self.decode[job.de].place(job)
        for early in self._early.pop(request.request_id, []):
            self._on_peer(early)
        self.mark_dirty()

    def _cancel(self, rid: int, attempt: int) -> None:
        """Drop attempt ``attempt`` of request ``rid``. Peer messages of a later attempt
        may already wait for that attempt's placement (its new decode node answered
        first): they are kept, or the new attempt would wait for them forever."""
        early = [m for m in self._early.pop(rid, []) if m.attempt > attempt]
        if early:
            self._early[rid] = early
        job = self.jobs.get(rid)
        if job is None or job.attempt > attempt:
            return
        del self.jobs[rid]
        self.counters["cancelled"] += 1
        if job.pe in self.prefill:
            self.prefill[job.pe].cancel(job)
        else:
            self.decode[job.de].cancel(job)

    # -- services for the engines ---------------------------------------------------
    def node_of(self, engine: int) -> int:
        return self.spec.node_of(engine)

    def remote(self, local: int, peer: int) -> RemoteRegion:
        """Engine ``peer``'s registered buffer, as reached from local engine ``local``."""
        return self._remotes[(local, peer)]

    def to_router(self, msg: NodeReport) -> None:
        self.router.send(msg)
        self.mark_dirty()

    def to_peer(self, node: int, msg: PeerMessage) -> None:
        peer = self._peers.get(node)
        if peer is not None:
            peer.send(msg)

    def mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.loop.call_soon(self._send_state)

    def _send_state(self) -> None:
        self._dirty = False
        busy = {str(e): max(p.core.cnic_in.busy_until, p.core.cnic_out.busy_until)
                for e, p in self.prefill.items()}
        busy.update({str(e): max(d.core.cnic_in.busy_until, d.core.cnic_out.busy_until)
                     for e, d in self.decode.items()})
        storage = self.storage
        if self.caches is not None and self.caches.events:
            self.router.send(Cached(self.node_id, [
                [e.kind.value, e.engine, list(e.hashes), e.at] for e in self.caches.drain()]))
        self.router.send(State(self.node_id, self._ack, storage.read_queue_bytes(),
                               storage.buffer_bytes - storage.buffer_used, busy))

    async def write_back(self, tokens: int, names: list[str],
                         blocks: list[bytes] | None = None) -> None:
        """Write blocks ``names`` (``tokens`` of KV): ``blocks`` (the model's), else emulated."""
        if self.opts.oracle or not names:
            return
        named = (list(zip(names, blocks, strict=True)) if blocks is not None else
                 await self.loop.run_in_executor(self.pool, write_blocks, names,
                                                 self.block_bytes))
        await self.guard(self.storage.write_back(tokens * self.spec.model.kv_bytes_per_token,
                                                 named))

    async def guard(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro``; an exception in it is fatal to the node and reported."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.fatal(traceback.format_exc())
            return None

    def fatal(self, message: str) -> None:
        if self._failed is None:
            self._failed = message
            print(f"[node {self.node_id}] fatal: {message}", file=sys.stderr, flush=True)
            self.router.send(Error(self.node_id, message))

    def _stats(self) -> Stats:
        links: list[Link] = [self.storage.snic, self.storage.snic_write]
        for engine in self.prefill.values():
            links += [engine.core.cnic_in, engine.core.cnic_out]
        for de in self.decode.values():
            links += [de.core.cnic_in, de.core.cnic_out]
        counters = dict(self.counters)
        if self.caches is not None:
            counters.update(cache_filled_by_name=self.caches.filled_by_name,
                            cache_stored_blocks=self.caches.stored_blocks,
                            cache_evicted_blocks=self.caches.evicted_blocks)
        counters.update(bytes_read=self.storage.bytes_read,
                        bytes_written=self.storage.bytes_written,
                        blocks_written=self.storage.blocks_written)
        return Stats(self.node_id, counters,
                     {link.name: [link.bytes_s, link.starts, link.ends, link.sizes]
                      for link in links})


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one node of a live dual-path cluster")
    parser.add_argument("--config", required=True, help="NodeConfig as JSON")
    args = parser.parse_args(argv)
    asyncio.run(Node(NodeConfig.from_json(args.config)).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())


if TYPE_CHECKING:  # the node is what its engines take it for (checked by mypy)
    from runtime.live.engines import NodeServices
    from runtime.live.engines.model import NodeModel

    def _serves(node: Node) -> NodeServices:
        return node
