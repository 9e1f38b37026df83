"""The discrete-event simulator of a dual-path PD cluster.

Drive it with a policy (:meth:`Simulator.run`) or one decision at a time
(:meth:`Simulator.next_decision` then :meth:`Simulator.apply`), which is how
the gymnasium environment steps it. Deterministic: events are ordered by
(time, kind, sequence number) and the only randomness is the workload's.
"""

from __future__ import annotations

import time as wallclock
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappop
from typing import TYPE_CHECKING, Any

from runtime.cache import CacheTiers
from runtime.cluster import ClusterSpec
from runtime.cost import CostModel
from runtime.decision import Decision, Defer, WaitFor
from runtime.execution.decode import DecodeEngine
from runtime.execution.job import Job, completion_hook
from runtime.execution.link import Link, reserve_pair
from runtime.execution.metrics import summarize
from runtime.execution.prefill import PrefillEngine
from runtime.execution.recorder import Recorder
from runtime.placement import Ledger, WaitingQueue
from runtime.placement.lifecycle import (
    DECODING,
    FINISHED,
    LOADING_STORAGE,
    PREFILLING,
    TRANSFERRING,
)
from runtime.placement.order import QueueOrder, order_of
from runtime.placement.plan import LoadPlan, load_plan
from runtime.policy import Policy
from runtime.request import Request
from runtime.sim.events import (
    ARRIVAL,
    DECODE_DONE,
    PREFILL_DONE,
    PREFILL_FREE,
    READ_DONE,
    TRANSFER_DONE,
    EventQueue,
)
from runtime.sim.node import NodeStorage
from runtime.sim.views import SimulatedViews
from runtime.view import ClusterView, NodeView, PrefixView, Role
from runtime.workload.base import Workload

if TYPE_CHECKING:
    from runtime.execution.executor import Executor

# Enum members read on the hot path, as globals (see runtime/placement/lifecycle.py).
_PREFILL, _DECODE = WaitFor.PREFILL, WaitFor.DECODE
_PREFILL_ROLE, _DECODE_ROLE = Role.PREFILL, Role.DECODE


@dataclass(frozen=True)
class SimOptions:
    """Run switches: layer-wise prefill, the zero-I/O oracle, and the per-request timeline."""

    layerwise: bool = True
    oracle: bool = False
    timeline: bool = False


class SimulationStuck(RuntimeError):
    """No event is left but requests still wait: no decision can ever place them."""


@dataclass
class SimResult:
    metrics: dict[str, Any]
    timeline: list[tuple[Any, ...]]


Progress = Callable[[int, float], None]


class Simulator(SimulatedViews):
    def __init__(self, spec: ClusterSpec, workload: Workload,
                 options: SimOptions | None = None) -> None:
        self.spec = spec
        self.cost = CostModel(spec)
        self.options = options or SimOptions()
        self.workload = workload
        self.now = 0.0
        self.events = EventQueue()
        self._kvb = spec.model.kv_bytes_per_token
        # Spec values read per request (cached properties and nested attributes).
        self._npe = spec.prefill_engines
        self._layers = spec.model.layers
        self._gpus = spec.node.gpus
        self._oracle = self.options.oracle
        node = spec.node
        self.nodes = [NodeStorage(n, spec.snic_bytes_s_of(n), node.host_buffer_bytes,
                                  self._read_issued) for n in range(spec.nodes)]
        self.pes = [PrefillEngine(e, spec.node_of(e), self.cost)
                    for e in range(spec.prefill_engines)]
        self.des = [DecodeEngine(e, spec.node_of(e), self.cost)
                    for e in range(spec.prefill_engines, spec.engines)]
        self.ledger = Ledger(spec, [*self.pes, *self.des])
        self._groups = [spec.group_of(e) for e in range(spec.engines)]
        self._eviews = [self._engine_view(e) for e in range(spec.engines)]
        self._engines_view = tuple(self._eviews)
        # Engines whose view is rebuilt at the next view(): lazily, since an engine
        # may change several times between decisions.
        self._stale: set[int] = set()
        self._node_roles = [spec.role_of_node(n) for n in range(spec.nodes)]
        self._nviews: list[NodeView | None] = [None] * spec.nodes
        self.waiting: WaitingQueue[Job] = WaitingQueue()
        self.recorder = Recorder(self.options.timeline)
        self.on_finish: Callable[[Job], None] | None = None
        self.finished = 0
        self.in_system = 0  # arrived and not finished
        self.time_in_system = 0.0  # integral of in_system over simulated time
        self.hit_bytes = 0.0
        self.caches = CacheTiers.of(spec, workload)
        self._dram = self.caches.dram if self.caches is not None else None
        # Hit bytes by source, in the order of runtime.execution.metrics.SOURCES.
        self.hit_by_source = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._pick = 0       # index in the waiting queue of the order's pick ...
        self._presented = 0  # ... and of the request asked about (the env may choose)
        self._prefix: PrefixView | None = None  # where its prefix sits (with caches)
        # Indexed by event kind (a list: cheaper to index than a dict to look up).
        handlers: dict[int, Callable[[Any], None]] = {
            READ_DONE: self._on_read_done,
            PREFILL_DONE: self._on_prefill_done,
            PREFILL_FREE: self._on_prefill_free,
            TRANSFER_DONE: self._on_transfer_done,
            DECODE_DONE: self._on_decode_done,
            ARRIVAL: self._on_arrival,
        }
        self._handlers = [handlers[kind] for kind in range(len(handlers))]
        self._push = self.events.push
        for request in workload.initial_requests():
            self._push_arrival(request)

    # -- driving ------------------------------------------------------------
    def run(self, policy: Policy, progress: Progress | None = None,
            progress_every: int = 50_000) -> SimResult:
        """Run to completion with ``policy`` deciding every request."""
        if (hook := completion_hook(policy)) is not None:
            self.on_finish = hook
        self.set_order(order_of(policy))
        wall = wallclock.perf_counter()
        next_report = progress_every
        while (point := self.next_decision()) is not None:
            request, view = point
            self.apply(policy.decide(request, view))
            if progress is not None and self.finished >= next_report:
                progress(self.finished, self.now)
                next_report += progress_every
        return self.result(wallclock.perf_counter() - wall)

    def set_order(self, order: QueueOrder) -> None:
        """Ask about waiting requests in ``order`` (FIFO until set)."""
        self.waiting.set_order(order, self.spec)

    def candidates(self, k: int) -> list[Request]:
        """Up to ``k`` waiting requests: the queue order's pick, then the others by arrival."""
        items = self.waiting.items
        return [items[i].request for i in self.waiting.choices(self._pick, k)]

    def present(self, index: int) -> tuple[Request, ClusterView]:
        """Ask about :meth:`candidates` ``[index]`` instead of the order's pick (the env's
        queue choice); ``present(0)`` returns to the pick."""
        self._presented = self.waiting.choices(self._pick, index + 1)[index]
        return self.waiting.items[self._presented].request, self.view()

    def next_decision(self) -> tuple[Request, ClusterView] | None:
        """Advance until a decision is needed; ``None`` when the run is over."""
        heap = self.events.heap  # popped here directly: this loop is the hot path
        handlers = self._handlers
        waiting = self.waiting
        items = waiting.items
        while True:
            if waiting.due and items:
                index = waiting.pick(self.now) if waiting.ordered else 0
                self._pick = self._presented = index
                return items[index].request, self.view()
            if not heap:
                if items:
                    raise SimulationStuck(self._stuck_message())
                return None
            t, kind, _, payload = heappop(heap)
            self.time_in_system += self.in_system * (t - self.now)
            self.now = t
            handlers[kind](payload)

    def apply(self, decision: Decision | Defer | None) -> None:
        """Apply a decision for the request at the head of the queue.

        A :class:`Defer` (or ``None``) leaves it there until what it waits for frees.
        """
        waiting = self.waiting
        if not isinstance(decision, Decision):
            waiting.defer(decision)
            return
        index = self._presented
        request = waiting.items[index].request
        plan = None
        if self.caches is not None:
            plan = load_plan(self.spec, request, self._prefix, decision.prefill_engine,
                             decision.decode_engine)
        split = self.ledger.place(request, decision,
                                  None if plan is None else plan.storage_tokens)
        self._place(waiting.take(index), decision, split, plan)
        self._pick = self._presented = 0

    def result(self, wall_s: float) -> SimResult:
        cnics = [(e.cnic_in, e.cnic_out) for e in self.pes]
        cnics += [(e.cnic_in, e.cnic_out) for e in self.des]
        metrics = summarize(self.recorder, self.spec, [node.snic for node in self.nodes], cnics,
                            self.hit_bytes, wall_s, self.hit_by_source)
        return SimResult(metrics, self.recorder.rows)

    # -- decisions ----------------------------------------------------------
    def _place(self, job: Job, d: Decision, split: tuple[int, int],
               plan: LoadPlan | None = None) -> None:
        kvb = self._kvb
        hit = job.request.hit_tokens
        pe = self.pes[d.prefill_engine]
        de = self.des[d.decode_engine - self._npe]
        job.pe, job.de, job.share = d.prefill_engine, d.decode_engine, d.decode_share
        job.t_decision = self.now
        pe_tokens, de_tokens = split
        job.de_bytes = de_bytes = de_tokens * kvb
        job.pe_bytes = pe_bytes = pe_tokens * kvb
        self.hit_bytes += hit * kvb
        sources = self.hit_by_source
        if plan is not None and plan.cached_tokens:
            self._serve_cached(job, pe, plan)
        sources[3] += pe_bytes
        sources[4] += de_bytes
        stale = self._stale
        stale.add(pe.engine_id)
        stale.add(de.engine_id)
        if self._oracle or hit == 0:
            job.loaded = True
            self._ready(job)
            return
        job.state = LOADING_STORAGE
        job.reads_left = (pe_bytes > 0) + (de_bytes > 0)
        if job.reads_left == 0:  # every hit block is cached: moved when the batch starts
            self._ready(job)
            return
        if pe_bytes > 0:
            self.nodes[pe.node_id].enqueue_read(job, pe_bytes, self.now)
        if de_bytes > 0:
            self.nodes[de.node_id].enqueue_read(job, de_bytes, self.now)

    def _serve_cached(self, job: Job, pe: PrefillEngine, plan: LoadPlan) -> None:
        """Take ``plan``'s cached blocks: count them by source and note what moves them."""
        kvb = self._kvb
        sources = self.hit_by_source
        sources[0] += plan.hbm_tokens * kvb
        sources[1] += plan.dram_local_tokens * kvb
        sources[2] += plan.dram_peer_tokens * kvb
        job.cached = plan.cached_tokens
        job.dram_bytes = plan.dram_local_tokens * kvb
        job.peer_bytes = plan.dram_peer_tokens * kvb
        job.peer_engine = plan.peer_engine(pe.engine_id, self._gpus)
        assert self.caches is not None
        self.caches.served(job.prefix, plan, pe.engine_id, pe.node_id, self.now)

    # -- events -------------------------------------------------------------
    def _push_arrival(self, request: Request) -> None:
        self._push(request.arrival_s, ARRIVAL, Job(request))

    def _on_arrival(self, job: Job) -> None:
        self.in_system += 1
        self.recorder.arrive(job)
        self.waiting.arrive(job)

    def _read_issued(self, node_id: int, job: Job, start: float, end: float) -> None:
        if node_id < self.spec.prefill_nodes:
            job.t_pe_read = (start, end)
        else:
            job.t_de_read = (start, end)
        self._push(end, READ_DONE, (job, node_id))

    def _on_read_done(self, payload: tuple[Job, int]) -> None:
        job, node_id = payload
        if self.caches is not None:
            # The PE path reads the leading storage tokens, the DE path the rest.
            pe_tokens = int(job.pe_bytes // self._kvb)
            if node_id < self.spec.prefill_nodes:
                first, end = job.cached, job.cached + pe_tokens
            else:
                first, end = job.cached + pe_tokens, job.cached + pe_tokens + int(
                    job.de_bytes // self._kvb)
            self.caches.read_done(job.prefix, node_id, first, end, self.now)
        job.reads_left -= 1
        if job.reads_left == 0:
            self._ready(job)

    def _ready(self, job: Job) -> None:
        job.state = PREFILLING
        pe = self.pes[job.pe]
        pe.ready.append(job)
        self._try_prefill(pe)

    def _try_prefill(self, pe: PrefillEngine) -> None:
        if pe.busy or not pe.ready:
            return
        opts = self.options
        batch = pe.form_batch(self.cost, opts.layerwise)
        now = self.now
        finish = pe.batch_finish(now, batch, self.cost, opts.layerwise, opts.oracle,
                                 self._cnic_out)
        pe.start(now, batch)
        sent = self._send_to_decode(pe, batch, now, finish)
        pe.release_at = sent if sent > finish else finish  # max(finish, sent)
        self._push(finish, PREFILL_DONE, pe)

    def _send_to_decode(self, pe: PrefillEngine, batch: list[tuple[Job, int]],
                        start: float, finish: float) -> float:
        """Reserve the P→D transfers of the requests this batch completes; return the last end.

        The KV goes out layer by layer as the batch computes, so a transfer may
        start once the first layer is done; it cannot end before the compute.
        The engine takes its next batch only when these transfers are done: the
        KV occupies its HBM until sent, which stops a prefill engine from
        outrunning its CNIC.
        """
        first_layer = start + (finish - start) / self._layers
        last = finish
        for job, tokens in batch:
            if tokens < job.remaining:
                continue  # chunked: its KV goes with its last chunk
            de = self.des[job.de - self._npe]
            nbytes = job.request.prompt_tokens * self._kvb
            _, end = reserve_pair(pe.cnic_out, de.cnic_in, first_layer, nbytes,
                                  self.cost.rdma_overhead_s(nbytes))
            # Comparisons rather than max(): the same result, without a call.
            job.t_transfer = done = end if end > finish else finish
            if done > last:
                last = done
        return last

    def _cnic_out(self, engine_id: int) -> Link:
        npe = self._npe
        return (self.des[engine_id - npe] if engine_id >= npe else self.pes[engine_id]).cnic_out

    def _on_prefill_done(self, pe: PrefillEngine) -> None:
        computed = 0
        for job, tokens in pe.batch:
            job.remaining -= tokens
            job.context += tokens
            computed += tokens
            if not job.loaded:
                self._consume_buffers(job)
            if job.remaining == 0:
                self._prefilled(pe, job)
        pe.computed(computed)
        pe.batch = []
        self._stale.add(pe.engine_id)
        if pe.release_at > self.now:
            self._push(pe.release_at, PREFILL_FREE, pe)
        else:
            self._on_prefill_free(pe)

    def _on_prefill_free(self, pe: PrefillEngine) -> None:
        pe.busy = False
        self._try_prefill(pe)
        self.waiting.wake(_PREFILL)

    def _consume_buffers(self, job: Job) -> None:
        job.loaded = True
        gpus = self._gpus  # spec.node_of, inlined
        if job.pe_bytes > 0:
            self.nodes[job.pe // gpus].release(job.pe_bytes, self.now)
        if job.de_bytes > 0:
            self.nodes[job.de // gpus].release(job.de_bytes, self.now)

    def _prefilled(self, pe: PrefillEngine, job: Job) -> None:
        now = self.now
        req = job.request
        pe.left()
        pe.hbm_used -= job.hbm_bytes
        job.hbm_bytes = 0.0
        job.t_first_token = now
        job.state = TRANSFERRING
        self._push(job.t_transfer, TRANSFER_DONE, job)
        if self.caches is not None:
            self.caches.prefilled(job.prefix, pe.engine_id, pe.node_id, now)
        if not self._oracle:
            # Write-back of the blocks this prefill produced.
            self.nodes[pe.node_id].snic_write.reserve(now, req.appended_tokens * self._kvb)

    def _on_transfer_done(self, job: Job) -> None:
        if self.caches is not None:
            self.caches.received(job.prefix, job.de // self._gpus, self.now)
        if job.request.gen_tokens == 1:
            self._finish(job)
            return
        job.state = DECODING
        de = self.des[job.de - self._npe]
        self._schedule_decode(de, de.join(job, self.now))

    def _schedule_decode(self, de: DecodeEngine, at: float | None) -> None:
        if at is not None:
            self._push(at, DECODE_DONE, (de, de.version))

    def _on_decode_done(self, payload: tuple[DecodeEngine, int]) -> None:
        de, version = payload
        if version != de.version:
            return  # superseded by a later change of the batch
        done, at = de.finish_due(self.now)
        for job in done:
            self._finish(job)
        self._schedule_decode(de, at)

    def _finish(self, job: Job) -> None:
        now = self.now
        req = job.request
        de = self.des[job.de - self._npe]
        job.state = FINISHED
        job.t_finish = now
        self.ledger.finished(req, job.de)
        self._stale.add(de.engine_id)
        if not self._oracle:
            # Write-back of the generated tokens' KV for the agent's next turn.
            self.nodes[de.node_id].snic_write.reserve(now, req.gen_tokens * self._kvb)
        self.finished += 1
        self.in_system -= 1
        self.recorder.done(job)
        if self.on_finish is not None:
            self.on_finish(job)
        for follow in self.workload.on_complete(req, now):
            self._push_arrival(follow)
        self.waiting.wake(_DECODE)

    def _stuck_message(self) -> str:
        req = self.waiting.head.request
        need = req.total_tokens * self._kvb
        most = self.spec.node.de_hbm_kv_bytes
        return (f"{len(self.waiting)} request(s) wait but nothing is in flight: request "
                f"{req.request_id} was deferred with an idle cluster (it needs {need:.3g} B of "
                f"decode HBM; a decode engine has {most:.3g} B)")


if TYPE_CHECKING:  # the simulator satisfies the stepping protocol (checked by mypy)
    def _conforms(sim: Simulator) -> Executor:
        return sim
