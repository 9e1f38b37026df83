"""The router: start-up, the decision loop, placements, the nodes' reports, node loss.

See :mod:`runtime.live.router`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable

from runtime.cache.index import EventError
from runtime.cache.stored import StoredBlocks
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.execution.job import Job
from runtime.execution.recorder import Recorder
from runtime.live.clock import Clock
from runtime.live.messages import (
    Batch,
    Cached,
    Error,
    Fin,
    First,
    Free,
    Loaded,
    Message,
    Rdma,
    Setup,
    State,
    Stats,
    Stop,
    Submit,
)
from runtime.live.router import ingress
from runtime.live.router.caches import RouterCaches
from runtime.live.router.loss import lose_node, reschedule
from runtime.live.router.naming import BlockNamer, place_message
from runtime.live.router.records import (
    NO_FAULTS,
    Decider,
    Entry,
    Faults,
    NodeState,
    Progress,
    RunFailed,
    outcome,
)
from runtime.live.router.snapshot import cluster_view
from runtime.live.router.startup import Hellos, accept_hello, gather_nodes, start_nodes
from runtime.live.router.watch import inject_kill, watch_nodes
from runtime.live.storage import StorageClient, corrupt_block
from runtime.placement import Ledger, Phase, WaitingQueue, unavailable, unfinished_message
from runtime.placement.lifecycle import (
    DECODING,
    FINISHED,
    LOADING_RDMA,
    LOADING_STORAGE,
    PLACING,
    PREFILLING,
    WAITING,
)
from runtime.placement.plan import LoadPlan
from runtime.request import Request
from runtime.view import ClusterView
from runtime.workload.base import Workload

#: Served requests' ids kept for a feed that has not drained them (none drains: bounded).
PLACED_KEPT = 100_000
#: Wall seconds after which a decision naming a dead node's engine is asked again.
RETRY_DEAD_S = 0.01
#: Event-loop passes before each decision with caches: a socket's data reaches its reader's
#: task a few passes after the poll that sees it, and the block index needs it first.
READ_PASSES = 3


class Router:
    def __init__(self, spec: ClusterSpec, workload: Workload, decider: Decider, *,
                 clock_scale: float, block_bytes: int, storage: tuple[str, int],
                 storage_root: str, host: str = "127.0.0.1", faults: Faults = NO_FAULTS,
                 kill: Callable[[int], None] | None = None, liveness_s: float = 5.0,
                 stall_s: float = 120.0, real_kv: bool = False) -> None:
        """``real_kv``: the engines compute a model; hit blocks are only those the run wrote."""
        self.spec = spec
        self.real_kv = real_kv
        self.workload = workload
        self.decider = decider
        self.time_scale = clock_scale
        self.block_bytes = block_bytes
        self.storage_addr = storage
        self.storage_root = storage_root
        self.host = host
        self.faults = faults
        self.kill = kill
        self.liveness_s = liveness_s
        self.stall_s = stall_s
        self.progress_at = time.monotonic()  # wall clock of the last report about a request
        self.nodes: dict[int, NodeState] = {}
        self.waiting: WaitingQueue[Entry] = WaitingQueue()  # FIFO unless set_order is called
        self.caches = RouterCaches(spec, workload) if spec.has_cache else None
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
        self.serving = False  # requests come from the nodes' HTTP fronts until stop_serving
        self.stored = StoredBlocks()
        self.placed_ids: list[int] = []  # served requests the engines' loads took since
        # a service fed by the router last looked (it counts them: ReportEngineState)
        self.on_finish: Callable[[Job], None] | None = None
        self.port = 0
        self._namer = BlockNamer(spec, workload)

    # -- start-up -----------------------------------------------------------------
    async def listen(self) -> int:
        self._hello: Hellos = asyncio.Queue()
        self._server = await asyncio.start_server(accept_hello(self._hello), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def start(self, timeout_s: float = 60.0) -> None:
        """Wait for every node's hello, exchange addresses, agree on t0, say go."""
        self.nodes, regions, peers = await gather_nodes(self._hello, self.spec.nodes, timeout_s)
        self.storage = StorageClient(*self.storage_addr)
        await self.storage.connect()
        # t0 a little ahead, so every node has its clock before model time 0.
        self.clock = Clock(self.time_scale, time.monotonic() + 0.5)
        await start_nodes(self.nodes, Setup(self.clock.t0, regions, peers), timeout_s)

    # -- the run --------------------------------------------------------------------
    async def run(self) -> None:
        """Replay the workload to the end; raises RunFailed on a node's fatal error."""
        loop = asyncio.get_running_loop()
        for node, state in self.nodes.items():
            asyncio.ensure_future(self._serve_node(node, state))
        for request in self.workload.initial_requests():
            self._schedule_arrival(request)
        if (victim := self.faults.kill_node) is not None:
            loop.call_at(self.clock.t0 + self.faults.kill_at_s * self.time_scale,
                         inject_kill, self, victim, self.faults.kill_at_s)
        decide = asyncio.ensure_future(self._decide_loop())
        watch = asyncio.ensure_future(watch_nodes(self))
        done = asyncio.ensure_future(self._done.wait())
        await asyncio.wait([decide, done], return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if decide.done():
            decide.result()  # raises the policy's or placement's error
        decide.cancel()
        left = unfinished_message((rid, e.phase) for rid, e in self.entries.items())
        if self._error is not None or left is not None:
            raise RunFailed("; ".join(m for m in (self._error, left) if m), self.outcome())

    async def stop(self) -> list[Stats]:
        """Ask every live node for its statistics and end the run."""
        for state in self.nodes.values():
            if not state.dead:
                state.channel.send(Stop())
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

    def stop_serving(self) -> None:
        """Take no more requests from the fronts; the run ends once those open finish."""
        self.serving = False
        if self.open == 0:
            self._done.set()

    def _arrive(self, request: Request) -> None:
        self._pending_arrivals -= 1
        self.admit(Entry(Job(request)))

    def admit(self, entry: Entry) -> None:
        """``entry`` (an arrival of the workload, or served over HTTP) joins the queue."""
        request = entry.request
        if request.request_id in self.entries:
            self.fail(f"request {request.request_id} was admitted twice")
            return
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

    def requeue(self, entry: Entry) -> None:
        """``entry`` goes back to the head of the queue (its placement was undone)."""
        self._queue(entry, self.waiting.put_back)

    def _wake(self, freed: WaitFor | None) -> None:
        if self.waiting.wake(freed):
            self._wake_event.set()

    async def _decide_loop(self) -> None:
        waiting = self.waiting
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            while waiting.ready:
                for _ in range(READ_PASSES if self.caches is not None else 0):
                    await asyncio.sleep(0)  # so reports already received are applied first
                entry = waiting.items[self._pick()]
                view = self.view(entry)
                answer = await ingress.ask(self, entry, view)
                if not waiting.items or waiting.items[index := self._pick()] is not entry:
                    continue  # the queue changed while the policy thought: ask again
                if isinstance(answer, Decision) and (why := unavailable(answer, self.down)):
                    # Asked again soon, not only when capacity frees: nothing may free (the
                    # last request), and the next answer may avoid the dead node.
                    asyncio.get_running_loop().call_later(RETRY_DEAD_S, self._wake, None)
                    answer = Defer(why, WaitFor.ANY)
                if not isinstance(answer, Decision):
                    waiting.defer(answer)
                    break
                plan = (None if self.caches is None
                        else self.caches.plan(entry.job, view.prefix, answer, view.time_s))
                split = self.ledger.place(entry.request, answer,
                                          None if plan is None else plan.storage_tokens)
                if entry.front >= 0 and len(self.placed_ids) < PLACED_KEPT:
                    self.placed_ids.append(entry.request.request_id)
                await self._place(waiting.take(index), answer, split, plan)

    def _pick(self) -> int:
        """Index of the waiting request the queue order asks about next."""
        return self.waiting.pick(self.clock.now()) if self.waiting.ordered else 0

    def down(self, engine: int) -> str | None:
        node = self.spec.node_of(engine)
        return f"is on node {node}, which is down" if self.nodes[node].dead else None

    # -- the view -------------------------------------------------------------------
    def view(self, entry: Entry | None = None) -> ClusterView:
        """The view a policy decides ``entry`` on (the head's by default)."""
        if entry is None and self.waiting.items:
            entry = self.waiting.head
        prefix = None if self.caches is None or entry is None else self.caches.prefix(entry.job)
        return cluster_view(self.spec, self.nodes, self.ledger, self.waiting.view(),
                            self.clock.now(), prefix)

    # -- placing ----------------------------------------------------------------------
    async def _place(self, entry: Entry, d: Decision, split: tuple[int, int],
                     plan: LoadPlan | None) -> None:
        """With its capacity reserved (the next decision sees it), make sure storage holds
        the hit blocks, then send the placement, unless an engine's node died meanwhile."""
        req, job = entry.request, entry.job
        entry.phase = PLACING
        entry.pe, entry.de = d.prefill_engine, d.decode_engine
        job.pe, job.de, job.share = d.prefill_engine, d.decode_engine, d.decode_share
        entry.peer = -1 if plan is None or not plan.dram_peer_tokens else plan.peer_node
        names = self._namer.names(req, 0, -(-req.hit_tokens // self.spec.block_tokens))
        if names and not self.real_kv:
            self.counters["blocks_ensured"] += await self.storage.ensure(self.block_bytes, names)
            first = 0 if plan is None else -(-plan.cached_tokens // self.spec.block_tokens)
            corrupting = self.counters["blocks_corrupted"] < self.faults.corrupt_blocks
            if first < len(names) and corrupting:
                corrupt_block(self.storage_root, names[first])  # the first one read from storage
                self.counters["blocks_corrupted"] += 1
        if any(self.nodes[node].dead for node in entry.nodes(self.spec)):
            self._reschedule(entry)  # a node went away while storage answered
            return
        job.t_decision = self.clock.now()
        if entry.attempt == 0:
            self.hit_bytes += req.hit_tokens * self._kvb
        if self.caches is not None and plan is not None:
            self.caches.placed(plan, split, entry.attempt == 0)
        entry.phase = LOADING_STORAGE if req.hit_tokens else PREFILLING  # ``loaded`` moves it on
        self._send_place(entry, names, split, plan)

    def _send_place(self, entry: Entry, names: list[str], split: tuple[int, int],
                    plan: LoadPlan | None) -> None:
        """To the prefill and decode nodes and a peer whose DRAM serves blocks."""
        spec = self.spec
        pe_tokens, de_tokens = split
        msg = place_message(spec, self._namer, entry, names, split, plan)
        targets = [(spec.node_of(entry.pe), pe_tokens), (spec.node_of(entry.de), de_tokens)]
        if entry.peer >= 0 and entry.peer != targets[1][0]:
            targets.append((entry.peer, 0))  # its DRAM serves blocks: it holds them
        for node, tokens in targets:
            state = self.nodes[node]
            state.sent += 1
            if tokens:
                state.placed.append((state.sent, tokens * self._kvb))
            state.channel.send(dataclasses.replace(msg, seq=state.sent))

    # -- reports ------------------------------------------------------------------------
    async def _serve_node(self, node: int, state: NodeState) -> None:
        while (msg := await state.channel.recv()) is not None:
            state.heard = time.monotonic()
            if not isinstance(msg, State):
                self.progress_at = state.heard
            if isinstance(msg, Stats):
                state.stats = msg
                return
            self._on_report(node, state, msg)
        if not state.dead and state.stats is None:
            self.node_lost(node)

    def _on_report(self, node: int, state: NodeState, msg: Message) -> None:
        match msg:
            case State():
                self._on_state(state, msg)
            case Batch(engine=engine, tokens=tokens):
                self.ledger.computed(engine, tokens)
            case Free():
                self._wake(WaitFor.PREFILL)
            case Rdma() | Loaded() | First() | Fin():
                self._on_progress(msg)
            case Cached(events=events):
                self._on_cached(node, events)
            case Submit():
                ingress.admit(self, node, msg)
            case Error(message=message):
                self.fail(f"node {node}: {message}")

    def _on_progress(self, msg: Progress) -> None:
        match msg:
            case Rdma():
                self._on_rdma(msg)
            case Loaded():
                self._on_loaded(msg)
            case First():
                self._on_first(msg)
            case Fin():
                self._on_finish(msg)

    def _on_cached(self, node: int, events: list[list[object]]) -> None:
        if self.caches is not None and not self.nodes[node].dead:
            try:
                self.caches.heard(node, events)
            except (EventError, TypeError) as exc:
                self.fail(f"node {node} sent cache events the index refused: {exc}")

    def _on_state(self, state: NodeState, msg: State) -> None:
        if self.caches is not None:
            self.caches.alive(msg.node)
        state.read_q = msg.read_q
        state.free_buffer = msg.free_buffer
        state.ack = msg.ack
        state.busy = {int(e): t for e, t in msg.busy.items()}
        state.placed = [(seq, b) for seq, b in state.placed if seq > state.ack]

    def _current(self, msg: Progress, *phases: Phase) -> Entry | None:
        """The entry a node's report is about if it is the current attempt, in one of
        ``phases``; otherwise the report is stale (an old attempt) or a duplicate."""
        entry = self.entries.get(msg.rid)
        if entry is None or entry.attempt != msg.attempt:
            self.counters["stale_reports"] += 1
            return None
        if entry.phase not in phases:
            self.counters["out_of_order_reports"] += 1
            return None
        return entry

    def _on_rdma(self, msg: Rdma) -> None:
        entry = self._current(msg, LOADING_STORAGE)
        if entry is not None:  # the decode side read its blocks; they go over RDMA now
            entry.phase = LOADING_RDMA

    def _on_loaded(self, msg: Loaded) -> None:
        entry = self._current(msg, LOADING_STORAGE, LOADING_RDMA, PREFILLING)
        if entry is not None:
            entry.phase = PREFILLING

    def _on_first(self, msg: First) -> None:
        entry = self._current(msg, LOADING_STORAGE, LOADING_RDMA, PREFILLING)
        if entry is None:
            return
        entry.phase = DECODING
        entry.job.t_first_token = msg.at
        self.ledger.prefilled(entry.pe)

    def _on_finish(self, msg: Fin) -> None:
        entry = self.entries.get(msg.rid)
        if entry is not None and entry.attempt == msg.attempt:
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
        entry.generated = msg.tokens
        self.ledger.finished(req, entry.de)
        self._advance()
        job.t_finish = msg.at
        if math.isnan(job.t_first_token):
            job.t_first_token = job.t_finish
        self.finished += 1
        self.in_system -= 1
        self.open -= 1
        self.recorder.done(job)
        ingress.finished(self, entry)
        if self.on_finish is not None:
            self.on_finish(job)
        for follow in self.workload.on_complete(req, job.t_finish):
            self._schedule_arrival(follow)
        self._wake(WaitFor.DECODE)
        if self.open == 0 and self._pending_arrivals == 0 and not self.serving:
            self._done.set()

    # -- faults -----------------------------------------------------------------------
    def node_lost(self, node: int) -> None:
        lose_node(self, node)

    def _reschedule(self, entry: Entry) -> None:
        reschedule(self, entry)

    def outcome(self) -> dict[str, int]:
        return outcome(self.entries, self.counters["duplicated"])

    def fail(self, message: str) -> None:
        if self._error is None:
            self._error = message
        self._done.set()
