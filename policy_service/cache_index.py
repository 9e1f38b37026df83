"""The service's block index: cache events in, prefix locations out.

Clusters report what their caches store and evict (``ReportCacheEvents``); the
index (:class:`runtime.cache.index.BlockIndex`, the one the live router keeps)
answers where a request's prefix sits for requests that arrive without saying.
It runs on the service's clock: a node neither reported about nor named alive for
``ttl_s`` is forgotten (its events were lost with it), and so are blocks guessed
from placements on nodes that report nothing. Bounds: at most
:data:`MAX_EVENTS_PER_CALL` events a call, and no location beyond its cache's
size (see :class:`~runtime.cache.index.BlockIndex`), so a flood is refused with a
message rather than taken in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from policy_service.codec import InvalidMessage
from policy_service.proto import scheduler_pb2 as pb
from runtime.cache import prefix_hashes
from runtime.cache.index import BlockIndex, EventError, EventKind, event_of
from runtime.cluster import ClusterSpec
from runtime.decision import Decision
from runtime.request import Request
from runtime.view import PrefixView

MAX_EVENTS_PER_CALL = 10_000
DEFAULT_TTL_S = 30.0
_KINDS = {pb.CACHE_STORED: EventKind.STORE, pb.CACHE_EVICTED: EventKind.EVICT,
          pb.CACHE_CLEARED: EventKind.CLEAR}


class CacheIndex:
    """The block index of the service's cluster (None inside when it has no cache)."""

    def __init__(self, spec: ClusterSpec, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ValueError(f"cache ttl_s must be > 0, got {ttl_s}")
        self.spec = spec
        self._clock = clock
        self.index = BlockIndex(spec, spec.block_tokens, ttl_s) if spec.has_cache else None
        self._lock = threading.Lock()  # the shadow thread never calls in; the loop does

    def report(self, batch: pb.CacheEventBatch) -> int:
        """Apply a batch of events (all or none); returns how many."""
        index = self.index
        if index is None:
            raise InvalidMessage(f"cluster {self.spec.name!r} has no cache tiers "
                                 "(node.dram_cache_gb and node.hbm_cache_gb are 0): no events")
        if len(batch.events) > MAX_EVENTS_PER_CALL:
            raise InvalidMessage(f"{len(batch.events)} cache events in one call; at most "
                                 f"{MAX_EVENTS_PER_CALL}")
        for node in batch.alive_nodes:
            if not 0 <= node < self.spec.nodes:
                raise InvalidMessage(f"alive_nodes names node {node}; the cluster has nodes "
                                     f"0..{self.spec.nodes - 1}")
        try:
            events = [event_of(e.node_id, _KINDS.get(e.kind, e.kind), e.engine_id,
                               list(e.hashes), e.at_s) for e in batch.events]
            now = self._clock()
            with self._lock:
                index.apply(events, heard_at=now)
                for node in batch.alive_nodes:
                    index.hear(node, now)
        except EventError as err:
            raise InvalidMessage(f"events[]: {err}") from None
        return len(events)

    def locate(self, request: Request) -> PrefixView | None:
        """Where ``request``'s prefix sits, as reported (None without caches)."""
        index = self.index
        if index is None:
            return None
        with self._lock:
            index.expire(self._clock())
            return index.locate(request.request_id,
                                prefix_hashes(request, self.spec.block_tokens))

    def placed(self, request: Request, decision: Decision) -> None:
        """The blocks this placement will leave in caches (the prefill engine's HBM, its
        node's DRAM, the decode node's DRAM), believed for nodes that report nothing."""
        index, spec = self.index, self.spec
        if index is None:
            return
        hashes = prefix_hashes(request, spec.block_tokens)
        pe_node, de_node = spec.node_of(decision.prefill_engine), spec.node_of(
            decision.decode_engine)
        now = self._clock()
        with self._lock:
            if index.hbm_cap:
                index.guess(hashes, pe_node, decision.prefill_engine, now)
            if index.dram_cap:
                index.guess(hashes, pe_node, -1, now)
                index.guess(hashes, de_node, -1, now)
