"""The router of a live cluster: replays a workload and asks a policy for every request.

The placement core (``runtime/placement``) gives it the waiting queue (FIFO, defer
and ``WaitFor`` as in the simulator), the check of a decision and the ledger of
engine reservations (taken by its decisions, given back as the nodes report
progress). It takes the nodes' storage read queues and CNIC backlogs from their
``state`` reports (plus what it placed since each report) and builds the
:class:`ClusterView` it passes to the policy.

Every admitted request has one :class:`Phase` at every moment (placing, which
awaits the storage service, included), and the run ends only when every
admitted request is finished; otherwise it fails naming those that are not. A
node that goes away, or stays silent longer than ``liveness_s`` (it is then
killed: fenced), has its requests cancelled on the other side and put back at
the head of the queue under a new attempt number; reports of an old attempt are
ignored, so every request completes exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.live.blocks import block_name, hashed_block_name
from runtime.live.clock import Clock
from runtime.live.storage import StorageClient, corrupt_block
from runtime.live.wire import Channel
from runtime.placement import Ledger, Phase, WaitingQueue, unavailable, unfinished_message
from runtime.placement.lifecycle import (
    DECODING,
    FINISHED,
    LOADING_RDMA,
    LOADING_STORAGE,
    PLACING,
    PREFILLING,
    RESCHEDULED,
    WAITING,
)
from runtime.request import Request
from runtime.sim.job import Job
from runtime.sim.recorder import Recorder
from runtime.view import ClusterView, EngineView, NodeView
from runtime.workload.base import Workload

#: The unfinished tokens a dead engine shows in the view (far above any real backlog).
DEAD_BACKLOG_TOKENS = 10**12
#: Phases in which a request's work sits on its engines' nodes.
_ON_NODES = frozenset({LOADING_STORAGE, LOADING_RDMA, PREFILLING, DECODING})

Decider = Callable[[Request, ClusterView], Awaitable[Decision | Defer | None]]


class RunFailed(RuntimeError):
    """A node reported a fatal error, or the run cannot make progress; ``outcome`` holds
    the run's admitted/completed/lost/duplicated counts where the router had started."""

    def __init__(self, message: str, outcome: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class Entry:
    """A request in the router: its simulator-style record, its phase and where it went."""

    job: Job
    phase: Phase = WAITING
    attempt: int = 0
    pe: int = -1
    de: int = -1
    completions: int = 0  # ``fin`` reports of its current attempt (more than 1: duplicated)

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
    placed: list[tuple[int, float]] = field(default_factory=list)  # (sent, modelled bytes)
    sent: int = 0  # placements sent to it (a node acknowledges them by this number)
    dead: bool = False
    stats: dict[str, Any] | None = None
    heard: float = 0.0  # wall clock of its last message


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
                 kill: Callable[[int], None] | None = None, liveness_s: float = 5.0,
                 stall_s: float = 120.0) -> None:
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
        self.liveness_s = liveness_s
        self.stall_s = stall_s
        self._progress_at = time.monotonic()  # wall clock of the last report about a request
        self.nodes: dict[int, NodeState] = {}
        self.waiting: WaitingQueue[Entry] = WaitingQueue()
        self.entries: dict[int, Entry] = {}  # every admitted request, by id
        self.open = 0  # admitted and not finished
        self.recorder = Recorder(False)
        self.counters: Counter[str] = Counter()
        self._kvb = spec.model.kv_bytes_per_token
        self.ledger = Ledger(spec)
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
            self.nodes[node] = NodeState(channel, pid=int(msg.get("pid", 0)),
                                         heard=time.monotonic())
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
        watch = asyncio.ensure_future(self._watch())
        done = asyncio.ensure_future(self._done.wait())
        await asyncio.wait([decide, done], return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if decide.done():
            decide.result()  # raises the policy's or placement's error
        decide.cancel()
        left = unfinished_message((rid, e.phase) for rid, e in self.entries.items())
        if self._error is not None or left is not None:
            raise RunFailed("; ".join(m for m in (self._error, left) if m), self.outcome())

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
        if request.request_id in self.entries:
            self._fail(f"request {request.request_id} was admitted twice")
            return
        entry = Entry(Job(request))
        self._advance()
        self.in_system += 1
        self.open += 1
        self.entries[request.request_id] = entry
        self.recorder.arrive(entry.job)
        self._queue(entry, self.waiting.arrive)

    def _advance(self) -> None:
        now = self.clock.now()
        self.time_in_system += self.in_system * max(0.0, now - self._t_last)
        self._t_last = max(self._t_last, now)

    def _queue(self, entry: Entry, put: Callable[[Entry], None]) -> None:
        """``entry`` waits (``put``: at the tail or back at the head); the loop wakes."""
        entry.phase = WAITING
        put(entry)
        self._wake_event.set()

    def _wake(self, freed: WaitFor | None) -> None:
        if self.waiting.wake(freed):
            self._wake_event.set()

    async def _decide_loop(self) -> None:
        waiting = self.waiting
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            while waiting.ready:
                entry = waiting.head
                answer = await self.decider(entry.request, self.view())
                if not waiting.items or waiting.head is not entry:
                    continue  # the queue changed while the policy thought: ask about the head
                if isinstance(answer, Decision):
                    why = unavailable(answer, self._down)
                    answer = answer if why is None else Defer(why, WaitFor.ANY)
                if not isinstance(answer, Decision):
                    waiting.defer(answer)
                    break
                split = self.ledger.place(entry.request, answer)
                await self._place(waiting.take(), answer, split)

    def _down(self, engine: int) -> str | None:
        node = self.spec.node_of(engine)
        return f"is on node {node}, which is down" if self.nodes[node].dead else None

    # -- the view -------------------------------------------------------------------
    def view(self) -> ClusterView:
        spec = self.spec
        now = self.clock.now()
        engines = []
        for e in range(spec.engines):
            node = self.nodes[spec.node_of(e)]
            load = self.ledger.loads[e]
            seq, tok, free = load.seq, load.tok, load.free_hbm
            if node.dead:
                # An engine that is gone looks full: no HBM, a full batch and a backlog no
                # load-aware policy picks. One that picks it anyway is deferred.
                seq, tok, free = spec.decode_max_batch, DEAD_BACKLOG_TOKENS, 0.0
            engines.append(EngineView(e, spec.role_of(e), spec.node_of(e), spec.group_of(e),
                                      seq, tok, free, node.busy.get(e, 0.0)))
        nodes = []
        for n in range(spec.nodes):
            state = self.nodes[n]
            queued = state.read_q + sum(nbytes for _, nbytes in state.placed)
            nodes.append(NodeView(n, spec.role_of_node(n), queued / self._kvb,
                                  spec.snic_bytes_s_of(n), state.free_buffer))
        return ClusterView(now, spec, tuple(engines), tuple(nodes), self.waiting.view())

    # -- placing ----------------------------------------------------------------------
    async def _place(self, entry: Entry, d: Decision, split: tuple[int, int]) -> None:
        """With its capacity reserved (the next decision sees it), make sure storage holds
        the hit blocks, then send the placement, unless an engine's node died meanwhile."""
        req, job = entry.request, entry.job
        entry.phase = PLACING
        entry.pe, entry.de = d.prefill_engine, d.decode_engine
        job.pe, job.de, job.share = d.prefill_engine, d.decode_engine, d.decode_share
        pe_tokens, de_tokens = split
        names = self._names(req, 0, -(-req.hit_tokens // self.spec.block_tokens))
        if names:
            self.counters["blocks_ensured"] += await self.storage.ensure(self.block_bytes, names)
            if self.counters["blocks_corrupted"] < self.faults.corrupt_blocks:
                corrupt_block(self.storage_root, names[0])
                self.counters["blocks_corrupted"] += 1
        if self._down(entry.pe) or self._down(entry.de):
            self._reschedule(entry)  # a node went away while storage answered
            return
        job.t_decision = self.clock.now()
        if entry.attempt == 0:
            self.hit_bytes += req.hit_tokens * self._kvb
        entry.phase = LOADING_STORAGE if req.hit_tokens else PREFILLING  # ``loaded`` moves it on
        self._send_place(entry, names, pe_tokens, de_tokens)

    def _send_place(self, entry: Entry, names: list[str], pe_tokens: int,
                    de_tokens: int) -> None:
        spec, req = self.spec, entry.request
        block = spec.block_tokens
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
            state.sent += 1
            if tokens:
                state.placed.append((state.sent, tokens * self._kvb))
            state.channel.send({**msg, "seq": state.sent})

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
            state.heard = time.monotonic()
            kind = msg["t"]
            if kind != "state":
                self._progress_at = state.heard
            if kind == "state":
                self._on_state(state, msg)
            elif kind == "batch":
                self.ledger.computed(msg["engine"], msg["tokens"])
            elif kind == "free":
                self._wake(WaitFor.PREFILL)
            elif kind == "rdma":
                self._on_rdma(msg)
            elif kind == "loaded":
                self._on_loaded(msg)
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

    def _current(self, msg: dict[str, Any], *phases: Phase) -> Entry | None:
        """The entry a node's report is about if it is the current attempt, in one of
        ``phases``; otherwise the report is stale (an old attempt) or a duplicate."""
        entry = self.entries.get(msg["rid"])
        if entry is None or entry.attempt != msg["attempt"]:
            self.counters["stale_reports"] += 1
            return None
        if entry.phase not in phases:
            self.counters["out_of_order_reports"] += 1
            return None
        return entry

    def _on_rdma(self, msg: dict[str, Any]) -> None:
        entry = self._current(msg, LOADING_STORAGE)
        if entry is not None:  # the decode side read its blocks; they go over RDMA now
            entry.phase = LOADING_RDMA

    def _on_loaded(self, msg: dict[str, Any]) -> None:
        entry = self._current(msg, LOADING_STORAGE, LOADING_RDMA, PREFILLING)
        if entry is not None:
            entry.phase = PREFILLING

    def _on_first(self, msg: dict[str, Any]) -> None:
        entry = self._current(msg, LOADING_STORAGE, LOADING_RDMA, PREFILLING)
        if entry is None:
            return
        entry.phase = DECODING
        entry.job.t_first_token = msg["at"]
        self.ledger.prefilled(entry.pe)

    def _on_finish(self, msg: dict[str, Any]) -> None:
        entry = self.entries.get(msg["rid"])
        if entry is not None and entry.attempt == msg["attempt"]:
            entry.completions += 1
            if entry.completions > 1:
                self.counters["duplicated"] += 1
        entry = self._current(msg, LOADING_STORAGE, LOADING_RDMA, PREFILLING, DECODING)
        if entry is None:
            return
        req, job = entry.request, entry.job
        if entry.phase is not DECODING:  # a single-token request finishes at its prefill
            self.ledger.prefilled(entry.pe)
        entry.phase = FINISHED
        self.ledger.finished(req, entry.de)
        self._advance()
        job.t_finish = msg["at"]
        if math.isnan(job.t_first_token):
            job.t_first_token = job.t_finish
        self.finished += 1
        self.in_system -= 1
        self.open -= 1
        self.recorder.done(job)
        if self.on_finish is not None:
            self.on_finish(job)
        for follow in self.workload.on_complete(req, job.t_finish):
            self._schedule_arrival(follow)
        self._wake(WaitFor.DECODE)
        if self.open == 0 and self._pending_arrivals == 0:
            self._done.set()

    # -- faults -----------------------------------------------------------------------
    def _inject_kill(self) -> None:
        node = self.faults.kill_node
        assert node is not None
        print(f"[router] fault: killing node {node} at t={self.clock.now():.2f} s (model)",
              file=sys.stderr, flush=True)
        if self._kill is not None:
            self._kill(node)

    async def _watch(self) -> None:
        """Fence a node silent for ``liveness_s`` (stopped, hung, cut off): kill it, so it
        cannot act on work that is rescheduled elsewhere, and reschedule its requests.
        Fail the run, naming what is open, if nothing progressed for ``stall_s``."""
        period = min(0.5, self.liveness_s / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            late, last = now - last - period, now
            if late > 1.0:
                # The router itself was stalled (a blocking policy call, a starved process):
                # the nodes' reports wait unread in its sockets, so silence proves nothing.
                for state in self.nodes.values():
                    state.heard = max(state.heard, now)
                self._progress_at = max(self._progress_at, now)
                continue
            if self.open and now - self._progress_at > self.stall_s:
                self._fail(f"no request progressed for {self.stall_s:g} s")  # run() names them
                return
            for node, state in self.nodes.items():
                if not state.dead and state.stats is None and now - state.heard > self.liveness_s:
                    print(f"[router] node {node} silent for {now - state.heard:.1f} s: fencing it",
                          file=sys.stderr, flush=True)
                    self.counters["fenced"] += 1
                    if self._kill is not None:
                        self._kill(node)
                    self._node_lost(node)

    def _node_lost(self, node: int) -> None:
        """Reschedule every placed request that touched ``node``; its engines take no more
        work. (A request still placing is rescheduled when its placement resumes.)"""
        spec = self.spec
        if self.nodes[node].dead:
            return
        self.nodes[node].dead = True
        self.counters["node_lost"] += 1
        lost = [e for e in self.entries.values() if e.phase in _ON_NODES
                and node in (spec.node_of(e.pe), spec.node_of(e.de))]
        print(f"[router] node {node} went away; rescheduling {len(lost)} request(s)",
              file=sys.stderr, flush=True)
        alive = [n for n, s in self.nodes.items() if not s.dead
                 and spec.role_of_node(n) is spec.role_of_node(node)]
        if not alive:
            self._fail(f"node {node} went away and no {spec.role_of_node(node)} node is left")
            return
        for entry in sorted(lost, key=lambda e: e.request.arrival_s, reverse=True):
            for engine in (entry.pe, entry.de):
                other = self.nodes[spec.node_of(engine)]
                if not other.dead:
                    other.channel.send({"t": "cancel", "rid": entry.request.request_id,
                                        "attempt": entry.attempt})
            self._reschedule(entry)

    def _reschedule(self, entry: Entry) -> None:
        """Undo ``entry``'s placement and put it back at the head under a new attempt."""
        self.ledger.unplace(entry.request, entry.pe, entry.de,
                            prefilled=entry.phase is DECODING)
        entry.phase = RESCHEDULED
        entry.attempt += 1
        entry.completions = 0
        entry.job = Job(entry.request)  # a fresh record; the arrival stays
        self.counters["rescheduled"] += 1
        self._queue(entry, self.waiting.put_back)

    def outcome(self) -> dict[str, int]:
        """Admitted, completed (exactly once), lost and duplicated requests of the run."""
        completed = sum(e.phase is FINISHED for e in self.entries.values())
        return {"admitted": len(self.entries), "completed": completed,
                "lost": len(self.entries) - completed,
                "duplicated": self.counters["duplicated"]}

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
