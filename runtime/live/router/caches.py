"""The router's side of the caches: a block index from the nodes' events, each
placement's load plan, the hit bytes by source, and the index's audit.

The nodes own their caches (:mod:`runtime.live.cache`) and report every store and
eviction; the router's :class:`runtime.cache.index.BlockIndex` is built from those
reports alone, so a decision sees the caches as the router last heard of them. Each
placement records the view it was decided on; :meth:`RouterCaches.audit` replays the
events in model-time order to tell how often that view was the caches' real content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runtime.cache import hash_block_tokens, prefix_hashes
from runtime.cache.index import BlockIndex, CacheEvent, EventKind, audit, event_of
from runtime.cluster import ClusterSpec
from runtime.decision import Decision
from runtime.execution.job import Job
from runtime.placement.plan import LoadPlan, load_plan
from runtime.view import PrefixView
from runtime.workload.base import Workload


class RouterCaches:
    """Block index, load plans and hit sources of a live run with caches."""

    def __init__(self, spec: ClusterSpec, workload: Workload) -> None:
        traced = hash_block_tokens(workload, spec.block_tokens)
        if traced != spec.block_tokens:
            raise ValueError(
                f"workload {workload.name}: its trace blocks hold {traced} tokens and the "
                f"cluster's {spec.block_tokens}; a live run with caches needs them equal "
                f"(set block_tokens={traced})")
        self.spec = spec
        self.index = BlockIndex(spec, spec.block_tokens)
        self.events: list[CacheEvent] = []
        self.decisions: list[tuple[float, Sequence[int], PrefixView]] = []
        #: Hit bytes by source, in the order of runtime.execution.metrics.SOURCES.
        self.by_source = [0.0] * 5
        #: Called with each node's events as they are applied (none: the node is alive),
        #: for a scheduler service keeping its own index.
        self.listeners: list[Callable[[int, Sequence[CacheEvent]], None]] = []
        #: What another index (a scheduler service's) said about a request's prefix when
        #: it was last asked (request id → view, or None), and those answers of placed ones.
        self.witness: Callable[[int], PrefixView | None] | None = None
        self.witnessed: list[tuple[float, Sequence[int], PrefixView]] = []

    def prefix(self, job: Job) -> PrefixView:
        """Where ``job``'s prefix sits, as the index knows it."""
        if job.prefix is None:
            job.prefix = (list(prefix_hashes(job.request, self.spec.block_tokens)),
                          self.spec.block_tokens)
        return self.index.locate(job.request.request_id, job.prefix[0])

    def plan(self, job: Job, prefix: PrefixView | None, d: Decision, now: float) -> LoadPlan:
        """The load plan of placing ``job`` by ``d`` on the view ``prefix``."""
        plan = load_plan(self.spec, job.request, prefix, d.prefill_engine, d.decode_engine)
        if prefix is not None:
            self.decisions.append((now, job.prefix[0], prefix))
        said = self.witness(job.request.request_id) if self.witness is not None else None
        if said is not None:
            self.witnessed.append((now, job.prefix[0], said))
        return plan

    def placed(self, plan: LoadPlan, split: tuple[int, int], first_attempt: bool) -> None:
        if first_attempt:
            kvb = self.spec.model.kv_bytes_per_token
            for k, tokens in enumerate((plan.hbm_tokens, plan.dram_local_tokens,
                                        plan.dram_peer_tokens, *split)):
                self.by_source[k] += tokens * kvb

    def heard(self, node: int, raw: list[list[Any]]) -> None:
        """Node ``node``'s cache events, as sent."""
        events = [event_of(node, *fields) for fields in raw]
        self.index.apply(events)
        self.events += events
        self._tell(node, events)

    def alive(self, node: int) -> None:
        """Node ``node`` reported (its state): listeners hear it is alive."""
        self._tell(node, [])

    def _tell(self, node: int, events: Sequence[CacheEvent]) -> None:
        for listener in self.listeners:
            listener(node, events)

    def node_lost(self, node: int, now: float) -> None:
        """Its caches went with it."""
        self.index.drop_node(node)
        engines = [-1] + [e for e in range(self.spec.prefill_engines)
                          if self.spec.node_of(e) == node]
        cleared = [CacheEvent(EventKind.CLEAR, node, e, (), now) for e in engines]
        self.events += cleared
        self._tell(node, cleared)

    def audit(self, witnessed: bool = False) -> dict[str, Any]:
        """How often the prefix locations placements were decided on equal the caches' real
        content then: the router's own index's, or (``witnessed``) the other index's."""
        return audit(self.spec, self.spec.block_tokens, self.events,
                     self.witnessed if witnessed else self.decisions)
