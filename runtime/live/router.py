"""The router of a live cluster: replays a workload and asks a policy for every request.

It owns the waiting queue (FIFO, with the simulator's defer semantics) and the
engines' bookkeeping (sequences, tokens and decode HBM reserved by its own
decisions, released by the nodes' reports), takes the nodes' storage read
queues and CNIC backlogs from their ``state`` reports (plus what it placed
since each report), and builds the :class:`ClusterView` it passes to the
policy. A node that goes away mid-run has its requests cancelled on the other
side and put back at the head of the queue under a new attempt number, so
every request completes exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor, split_tokens
from runtime.live.blocks import block_name, hashed_block_name
from runtime.live.clock import Clock
from runtime.live.storage import StorageClient, corrupt_block
from runtime.live.wire import Channel
from runtime.request import Request
from runtime.sim.job import Job
from runtime.sim.recorder import Recorder
from runtime.view import ClusterView, EngineView, NodeView, QueueView
from runtime.workload.base import Workload

#: The unfinished tokens a dead engine shows in the view (far above any real backlog).
DEAD_BACKLOG_TOKENS = 10**12

Decider = Callable[[Request, ClusterView], Awaitable[Decision | Defer | None]]


class RunFailed(RuntimeError):
    """A node reported a fatal error, or the run cannot make progress."""


@dataclass
class Entry:
    """A request in the router: its simulator-style record and where it went."""

    job: Job
    attempt: int = 0
    prefilled: bool = False
    pe: int = -1
    de: int = -1

    @property
    def request(self) -> Request:
        return self.job.request


@dataclass
class NodeState:
    """The latest report of one node, and placements sent since it."""

    channel: Channel
    pid: int = 0
    read_q: float = 0.0
    free_buffer: float = 0.0
    ack: int = -1
    busy: dict[int, float] = field(default_factory=dict)
    placed: list[tuple[int, float]] = field(default_factory=list)  # (seq, modelled bytes)
    seq: int = 0
    dead: bool = False
    stats: dict[str, Any] | None = None


@dataclass(frozen=True)
class Faults:
    """Faults to inject: kill a node at a model time; corrupt, in storage, the first block
    of the first ``corrupt_blocks`` requests that read any."""

    kill_node: int | None = None
    kill_at_s: float = 0.0
    corrupt_blocks: int = 0


class Router:
    def __init__(self, spec: ClusterSpec, workload: Workload, decider: Decider, *,
                 clock_scale: float, block_bytes: int, storage: tuple[str, int],
                 storage_root: str, host: str = "127.0.0.1", faults: Faults = Faults(),
                 kill: Callable[[int], None] | None = None) -> None:
        self.spec = spec
        self.workload = workload
        self.decider = decider
        self.time_scale = clock_scale
        self.block_bytes = block_bytes
        self.storage_addr = storage
        self.storage_root = storage_root
        self.host = host
        self.faults = faults
        self._kill = kill
        self.nodes: dict[int, NodeState] = {}
        self.waiting: deque[Entry] = deque()
        self.inflight: dict[int, Entry] = {}
        self.recorder = Recorder(False)
        self.counters: Counter[str] = Counter()
        kvb = spec.model.kv_bytes_per_token
        self._kvb = kvb
        self._seq = [0] * spec.engines
        self._tok = [0] * spec.engines
        self._free = [spec.node.pe_hbm_kv_bytes if e < spec.prefill_engines
                      else spec.node.de_hbm_kv_bytes for e in range(spec.engines)]
        self._due = False
        self._wait: WaitFor | None = None
        self._wake_event = asyncio.Event()
        self._pending_arrivals = 0
        self._done = asyncio.Event()
        self._error: str | None = None
        self.finished = 0
        self.in_system = 0
        self.time_in_system = 0.0
        self._t_last = 0.0
        self.hit_bytes = 0.0
        self.on_finish: Callable[[Job], None] | None = None
        self.port = 0
        self._trace_ratio = _trace_ratio(spec, workload)

    # -- start-up -----------------------------------------------------------------
    async def listen(self) -> int:
        self._hello: asyncio.Queue[tuple[dict[str, Any], Channel]] = asyncio.Queue()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        msg = await channel.recv()
        if msg is None or msg.get("t") != "hello":
            channel.close()
            return
        await self._hello.put((msg, channel))

    async def start(self, timeout_s: float = 60.0) -> None:
        """Wait for every node's hello, exchange addresses, agree on t0, say go."""
        regions: dict[str, Any] = {}
        peers: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(self.nodes) < self.spec.nodes:
            left = deadline - time.monotonic()
            try:
                msg, channel = await asyncio.wait_for(self._hello.get(), max(left, 0.01))
            except TimeoutError:
                raise RunFailed(f"only {len(self.nodes)} of {self.spec.nodes} nodes came up "
                                f"within {timeout_s:.0f} s") from None
            node = int(msg["node"])
            self.nodes[node] = NodeState(channel, pid=int(msg.get("pid", 0)))
            regions.update(msg["regions"])
            peers[str(node)] = msg["peer"]
        self.storage = StorageClient(*self.storage_addr)
        await self.storage.connect()
        # t0 a little ahead, so every node has its clock before model time 0.
        self.clock = Clock(self.time_scale, time.monotonic() + 0.5)
        for state in self.nodes.values():
            state.channel.send({"t": "setup", "t0": self.clock.t0, "regions": regions,
                                "peers": peers})
        for node, state in self.nodes.items():
            ready = await asyncio.wait_for(state.channel.recv(), timeout_s)
            if ready is None or ready["t"] != "ready":
                raise RunFailed(f"node {node} did not get ready: {ready}")
        for state in self.nodes.values():
            state.channel.send({"t": "go"})

    # -- the run --------------------------------------------------------------------
    async def run(self) -> None:
        """Replay the workload to the end; raises RunFailed on a node's fatal error."""
        loop = asyncio.get_running_loop()
        for node, state in self.nodes.items():
            asyncio.ensure_future(self._serve_node(node, state))
        for request in self.workload.initial_requests():
            self._schedule_arrival(request)
        if self.faults.kill_node is not None:
            loop.call_at(self.clock.t0 + self.faults.kill_at_s * self.time_scale,
                         self._inject_kill)
        decide = asyncio.ensure_future(self._decide_loop())
        done = asyncio.ensure_future(self._done.wait())
        await asyncio.wait([decide, done], return_when=asyncio.FIRST_COMPLETED)
        if decide.done():
            decide.result()  # raises the policy's or placement's error
        decide.cancel()
        if self._error is not None:
            raise RunFailed(self._error)

    async def stop(self) -> list[dict[str, Any]]:
        """Ask every live node for its statistics and end the run."""
        for state in self.nodes.values():
            if not state.dead:
                state.channel.send({"t": "stop"})
        deadline = time.monotonic() + 30.0
        while any(s.stats is None and not s.dead for s in self.nodes.values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        await self.storage.close()
        self._server.close()
        return [s.stats for s in self.nodes.values() if s.stats is not None]

    def _schedule_arrival(self, request: Request) -> None:
        self._pending_arrivals += 1
        asyncio.get_running_loop().call_at(
            self.clock.t0 + request.arrival_s * self.time_scale, self._arrive, request)

    def _arrive(self, request: Request) -> None:
        self._pending_arrivals -= 1
        job = Job(request)
        self._advance()
        self.in_system += 1
        self.recorder.arrive(job)
        self.waiting.append(Entry(job))
        self._wake(None)

    def _advance(self) -> None:
        now = self.clock.now()
        self.time_in_system += self.in_system * max(0.0, now - self._t_last)
        self._t_last = max(self._t_last, now)

    def _wake(self, freed: WaitFor | None) -> None:
        wait = self._wait
        if wait is None or wait is WaitFor.ANY or wait is freed:
            self._due = True
            self._wake_event.set()

    async def _decide_loop(self) -> None:
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            while self._due and self.waiting:
                entry = self.waiting[0]
                answer = await self.decider(entry.request, self.view())
                if not isinstance(answer, Decision):
                    self._due = False
                    self._wait = answer.wait_for if answer is not None else WaitFor.ANY
                    break
                self._wait = None
                self._check(entry, answer)
                self.waiting.popleft()
                await self._place(entry, answer)
            self._check_done()

    # -- the view -------------------------------------------------------------------
    def view(self) -> ClusterView:
        spec = self.spec
        now = self.clock.now()
        engines = []
        for e in range(spec.engines):
            node = self.nodes[spec.node_of(e)]
            seq, tok, free = self._seq[e], self._tok[e], self._free[e]
            if node.dead:
                # An engine that is gone looks full: no HBM, a full batch and a backlog no
                # load-aware policy picks. One that picks it anyway is refused in _check.
                seq, tok, free = spec.decode_max_batch, DEAD_BACKLOG_TOKENS, 0.0
            engines.append(EngineView(e, spec.role_of(e), spec.node_of(e), spec.group_of(e),
                                      seq, tok, free, node.busy.get(e, 0.0)))
        nodes = []
        for n in range(spec.nodes):
            state = self.nodes[n]
            queued = state.read_q + sum(nbytes for _, nbytes in state.placed)
            nodes.append(NodeView(n, spec.role_of_node(n), queued / self._kvb,
                                  spec.snic_bytes_s_of(n), state.free_buffer))
        tokens = sum(e.request.prompt_tokens for e in self.waiting)
        return ClusterView(now, spec, tuple(engines), tuple(nodes),
                           QueueView(len(self.waiting), tokens))

    def _check(self, entry: Entry, d: Decision) -> None:
        spec, rid = self.spec, entry.request.request_id
        if not 0 <= d.prefill_engine < spec.prefill_engines:
            raise ValueError(f"request {rid}: prefill_engine {d.prefill_engine} is not a "
                             f"prefill engine (0..{spec.prefill_engines - 1})")
        if not spec.prefill_engines <= d.decode_engine < spec.engines:
            raise ValueError(f"request {rid}: decode_engine {d.decode_engine} is not a decode "
                             f"engine ({spec.prefill_engines}..{spec.engines - 1})")
        for engine in (d.prefill_engine, d.decode_engine):
            if self.nodes[spec.node_of(engine)].dead:
                raise ValueError(f"request {rid}: engine {engine} is on node "
                                 f"{spec.node_of(engine)}, which is down")
        need = entry.request.total_tokens * self._kvb
        de = d.decode_engine
        if self._free[de] < need or self._seq[de] >= spec.decode_max_batch:
            raise ValueError(f"request {rid}: decode engine {de} has no room (needs {need:.0f} "
                             f"B of HBM, has {self._free[de]:.0f} B free, "
                             f"{self._seq[de]}/{spec.decode_max_batch} sequences)")

    # -- placing ----------------------------------------------------------------------
    async def _place(self, entry: Entry, d: Decision) -> None:
        spec, req, job = self.spec, entry.request, entry.job
        block = spec.block_tokens
        pe_tokens, de_tokens = split_tokens(req.hit_tokens, d.decode_share, block)
        names = self._names(req, 0, -(-req.hit_tokens // block))
        if names:
            self.counters["blocks_ensured"] += await self.storage.ensure(self.block_bytes, names)
            if self.counters["blocks_corrupted"] < self.faults.corrupt_blocks:
                corrupt_block(self.storage_root, names[0])
                self.counters["blocks_corrupted"] += 1
        entry.pe, entry.de = d.prefill_engine, d.decode_engine
        job.pe, job.de, job.share = d.prefill_engine, d.decode_engine, d.decode_share
        job.t_decision = self.clock.now()
        self._seq[entry.pe] += 1
        self._tok[entry.pe] += max(req.appended_tokens, 1)
        self._seq[entry.de] += 1
        self._tok[entry.de] += req.total_tokens
        self._free[entry.de] -= req.total_tokens * self._kvb
        if entry.attempt == 0:
            self.hit_bytes += req.hit_tokens * self._kvb
        self.inflight[req.request_id] = entry
        msg = {"t": "place", "rid": req.request_id, "attempt": entry.attempt,
               "agent": req.agent_id, "turn": req.turn, "hit": req.hit_tokens,
               "app": req.appended_tokens, "gen": req.gen_tokens, "arrival": req.arrival_s,
               "pe": entry.pe, "de": entry.de, "pe_tokens": pe_tokens, "de_tokens": de_tokens,
               "names": names, "nde": -(-de_tokens // block),
               "pe_writes": self._names(req, req.hit_tokens // block,
                                        -(-req.prompt_tokens // block)),
               "de_writes": ([] if req.block_hashes else
                             self._names(req, req.prompt_tokens // block,
                                         -(-req.total_tokens // block)))}
        for engine, tokens in ((entry.pe, pe_tokens), (entry.de, de_tokens)):
            state = self.nodes[spec.node_of(engine)]
            state.seq += 1
            if tokens:
                state.placed.append((state.seq, tokens * self._kvb))
            state.channel.send({**msg, "seq": state.seq})

    def _names(self, req: Request, first: int, end: int) -> list[str]:
        """Names of the cluster's blocks ``first .. end-1`` of ``req``'s context.

        A trace names its own (smaller) blocks by hash id; a cluster block holding
        ``k`` of them is named by the ids together, so equal prefixes share blocks.
        """
        hashes = req.block_hashes
        if hashes is None:
            return [block_name(req.agent_id, i) for i in range(first, end)]
        k = self._trace_ratio
        return [hashed_block_name(_fold(hashes[i * k:(i + 1) * k]))
                for i in range(first, min(end, -(-len(hashes) // k)))]

    # -- reports ------------------------------------------------------------------------
    async def _serve_node(self, node: int, state: NodeState) -> None:
        while (msg := await state.channel.recv()) is not None:
            kind = msg["t"]
            if kind == "state":
                self._on_state(state, msg)
            elif kind == "batch":
                self._tok[msg["engine"]] = max(0, self._tok[msg["engine"]] - msg["tokens"])
            elif kind == "free":
                self._wake(WaitFor.PREFILL)
            elif kind == "first":
                self._on_first(msg)
            elif kind == "fin":
                self._on_finish(msg)
            elif kind == "stats":
                state.stats = msg
                return
            elif kind == "error":
                self._fail(f"node {node}: {msg['message']}")
        if not state.dead and state.stats is None:
            self._node_lost(node)

    def _on_state(self, state: NodeState, msg: dict[str, Any]) -> None:
        state.read_q = msg["read_q"]
        state.free_buffer = msg["free_buffer"]
        state.ack = msg["ack"]
        state.busy = {int(e): t for e, t in msg["busy"].items()}
        state.placed = [(seq, b) for seq, b in state.placed if seq > state.ack]

    def _current(self, msg: dict[str, Any]) -> Entry | None:
        entry = self.inflight.get(msg["rid"])
        if entry is None or entry.attempt != msg["attempt"]:
            self.counters["stale_reports"] += 1
            return None
        return entry

    def _on_first(self, msg: dict[str, Any]) -> None:
        entry = self._current(msg)
        if entry is None:
            return
        entry.prefilled = True
        entry.job.t_first_token = msg["at"]
        self._seq[entry.pe] -= 1

    def _on_finish(self, msg: dict[str, Any]) -> None:
        entry = self._current(msg)
        if entry is None:
            return
        req, job = entry.request, entry.job
        del self.inflight[req.request_id]
        self._release_decode(entry)
        self._advance()
        job.t_finish = msg["at"]
        if math.isnan(job.t_first_token):
            job.t_first_token = job.t_finish
        self.finished += 1
        self.in_system -= 1
        self.recorder.done(job)
        if self.on_finish is not None:
            self.on_finish(job)
        for follow in self.workload.on_complete(req, job.t_finish):
            self._schedule_arrival(follow)
        self._wake(WaitFor.DECODE)
        self._check_done()

    def _check_done(self) -> None:
        if not self.waiting and not self.inflight and self._pending_arrivals == 0:
            self._done.set()

    def _release_decode(self, entry: Entry) -> None:
        req = entry.request
        self._seq[entry.de] -= 1
        self._tok[entry.de] -= req.total_tokens
        self._free[entry.de] += req.total_tokens * self._kvb

    # -- faults -----------------------------------------------------------------------
    def _inject_kill(self) -> None:
        node = self.faults.kill_node
        assert node is not None
        print(f"[router] fault: killing node {node} at t={self.clock.now():.2f} s (model)",
              file=sys.stderr, flush=True)
        if self._kill is not None:
            self._kill(node)

    def _node_lost(self, node: int) -> None:
        """Reschedule every request that touched ``node``; its engines take no more work."""
        spec = self.spec
        self.nodes[node].dead = True
        lost = [e for e in self.inflight.values()
                if node in (spec.node_of(e.pe), spec.node_of(e.de))]
        print(f"[router] node {node} went away; rescheduling {len(lost)} request(s)",
              file=sys.stderr, flush=True)
        alive = [n for n, s in self.nodes.items() if not s.dead
                 and spec.role_of_node(n) is spec.role_of_node(node)]
        if not alive:
            self._fail(f"node {node} went away and no {spec.role_of_node(node)} node is left")
            return
        for entry in sorted(lost, key=lambda e: e.request.arrival_s, reverse=True):
            rid = entry.request.request_id
            del self.inflight[rid]
            for engine in (entry.pe, entry.de):
                other = self.nodes[spec.node_of(engine)]
                if not other.dead:
                    other.channel.send({"t": "cancel", "rid": rid})
            if not entry.prefilled:
                self._seq[entry.pe] -= 1
            self._release_decode(entry)
            entry.attempt += 1
            entry.prefilled = False
            entry.job = Job(entry.request)  # a fresh record; the arrival stays
            self.waiting.appendleft(entry)
            self.counters["rescheduled"] += 1
        self._wake(None)

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message
        self._done.set()


def _trace_ratio(spec: ClusterSpec, workload: Workload) -> int:
    """How many of a trace's blocks one cluster block holds (1 for generated workloads)."""
    trace_block = getattr(workload, "trace_block_tokens", None)
    if trace_block is None:
        return 1
    k, rest = divmod(spec.block_tokens, trace_block)
    if k < 1 or rest:
        raise ValueError(f"block_tokens {spec.block_tokens} must be a multiple of the trace's "
                         f"block of {trace_block} tokens to name blocks by its hash ids")
    return k


def _fold(ids: tuple[int, ...]) -> int:
    """One 63-bit id for a run of trace block ids (the id itself when there is one)."""
    if len(ids) == 1:
        return ids[0]
    digest = hashlib.blake2b(repr(ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
