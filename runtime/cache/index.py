"""Where blocks are cached, as the caches said: the block index a router keeps.

Caches report what they store and evict (:class:`CacheEvent`, the way engines
report KV events to Dynamo's and llm-d's routers); an index built from those
reports answers, for a request's block hashes, how many leading blocks each
node's DRAM and each prefill engine's HBM holds (a :class:`PrefixView`). The
live router and the scheduler service keep one each.

Bounds: a location never holds more blocks than its cache can (the cluster's
``dram_cache_gb`` or ``hbm_cache_gb`` in blocks), so a flood of stores is refused
with an :class:`EventError` naming the location rather than grown without end; a
node not heard from for ``ttl_s`` is forgotten (its events were lost: it died, or
its link did), and so are blocks the index only guessed from a placement and no
event confirmed within ``ttl_s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.view import PrefixView

#: Blocks one event may name (a prompt of 64K blocks).
MAX_EVENT_BLOCKS = 1 << 16


class EventKind(StrEnum):
    STORE = "store"
    EVICT = "evict"
    CLEAR = "clear"  # the location holds nothing (a restarted node says so first)


class EventError(ValueError):
    """An event the index cannot take: it names what is wrong; nothing was applied."""


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """Cache ``kind`` happened at model time ``at``: ``hashes`` were stored in or evicted
    from node ``node``'s DRAM (``engine`` -1) or prefill engine ``engine``'s HBM cache."""

    kind: EventKind
    node: int
    engine: int
    hashes: tuple[int, ...]
    at: float


class BlockIndex:
    """Block hashes per cache location, from events (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, hash_tokens: int, ttl_s: float = math.inf) -> None:
        self.spec = spec
        self.hash_tokens = hash_tokens
        self.ttl_s = ttl_s
        kv = spec.model.kv_bytes_per_token
        self.dram_cap = int(spec.node.dram_cache_bytes // kv) // hash_tokens
        self.hbm_cap = int(spec.node.hbm_cache_bytes // kv) // hash_tokens
        self.dram: list[set[int]] = [set() for _ in range(spec.nodes)]
        self.hbm: list[set[int]] = [set() for _ in range(spec.prefill_engines)]
        self.heard: list[float] = [-math.inf] * spec.nodes
        # Blocks guessed from placements: (location, hash) → model time of the guess.
        self._guessed: dict[tuple[int, int, int], float] = {}

    # -- events -----------------------------------------------------------------------
    def check(self, event: CacheEvent) -> None:
        """Raise :class:`EventError` unless ``event`` names a real location and kind."""
        spec = self.spec
        if not isinstance(event.kind, EventKind):
            raise EventError(f"unknown cache event kind {event.kind!r}")
        if not 0 <= event.node < spec.nodes:
            raise EventError(f"cache event names node {event.node}; the cluster has nodes "
                             f"0..{spec.nodes - 1}")
        if event.engine != -1 and not (0 <= event.engine < spec.prefill_engines
                                       and spec.node_of(event.engine) == event.node):
            raise EventError(f"cache event names engine {event.engine}, not a prefill engine "
                             f"of node {event.node} (-1 for the node's DRAM)")
        if not math.isfinite(event.at):
            raise EventError(f"cache event time {event.at!r} is not finite")
        if len(event.hashes) > MAX_EVENT_BLOCKS:
            raise EventError(f"cache event of {len(event.hashes)} blocks; at most "
                             f"{MAX_EVENT_BLOCKS} per event")

    def apply(self, events: Iterable[CacheEvent], heard_at: float | None = None) -> None:
        """Apply ``events`` in order, all or none (:class:`EventError` names the first bad).
        ``heard_at``: the clock the TTL runs on (default: the events' own times)."""
        batch = list(events)
        for event in batch:
            self.check(event)
        self._check_room(batch)
        for event in batch:
            self._apply(event, event.at if heard_at is None else heard_at)

    def _check_room(self, batch: list[CacheEvent]) -> None:
        """Refuse a batch after which, at any point, a location would hold more than its
        cache can plus one event's worth (a store is reported before the evictions that
        make room for it)."""
        sizes: dict[tuple[int, int], int] = {}
        for event in batch:
            key = (event.node, event.engine)
            held = self._where(*key)
            size = sizes.get(key, len(held))
            if event.kind is EventKind.STORE:
                size += sum(h not in held for h in event.hashes)
            elif event.kind is EventKind.EVICT:
                size -= sum(h in held for h in event.hashes)
            else:
                size = 0
            sizes[key] = max(size, 0)
            cap = self._cap(event.engine) + MAX_EVENT_BLOCKS
            if size > cap:
                where = (f"engine {event.engine}'s HBM" if event.engine >= 0
                         else f"node {event.node}'s DRAM")
                raise EventError(f"{where} would hold {size} blocks, more than its cache's "
                                 f"{self._cap(event.engine)} (+{MAX_EVENT_BLOCKS}): events "
                                 "refused")

    def _apply(self, event: CacheEvent, heard_at: float) -> None:
        held = self._where(event.node, event.engine)
        if event.kind is EventKind.STORE:
            held.update(event.hashes)
        elif event.kind is EventKind.EVICT:
            held.difference_update(event.hashes)
        else:
            held.clear()
        if self._guessed:  # an event settles what was guessed there
            for h in event.hashes:
                self._guessed.pop((event.node, event.engine, h), None)
        self.heard[event.node] = max(self.heard[event.node], heard_at)

    def hear(self, node: int, now: float) -> None:
        """Node ``node`` is alive at ``now`` (a heartbeat with no events)."""
        self.heard[node] = max(self.heard[node], now)

    def guess(self, hashes: Sequence[int], node: int, engine: int, now: float) -> None:
        """A placement will put ``hashes`` there: believed for ``ttl_s``. Only for a node
        that has never reported events (one that does is believed, not guessed about)."""
        if self.heard[node] > -math.inf:
            return
        held = self._where(node, engine)
        for h in hashes:
            if h not in held and len(held) < self._cap(engine):
                held.add(h)
                self._guessed[(node, engine, h)] = now

    def drop_node(self, node: int) -> None:
        """Forget node ``node``'s caches (it is gone, so are they)."""
        self.dram[node].clear()
        for engine in range(self.spec.prefill_engines):
            if self.spec.node_of(engine) == node:
                self.hbm[engine].clear()
        self._guessed = {k: t for k, t in self._guessed.items() if k[0] != node}
        self.heard[node] = -math.inf

    def expire(self, now: float) -> list[int]:
        """Drop what was not heard about for ``ttl_s``; returns the nodes forgotten."""
        if math.isinf(self.ttl_s):
            return []
        gone = [n for n, t in enumerate(self.heard)
                if t > -math.inf and now - t > self.ttl_s]
        for node in gone:
            self.drop_node(node)
        for (node, engine, h), t in list(self._guessed.items()):
            if now - t > self.ttl_s:
                del self._guessed[(node, engine, h)]
                self._where(node, engine).discard(h)
        return gone

    def snapshot(self, now: float) -> list[CacheEvent]:
        """The index's content as events (per location: cleared, then stored), which
        bring another index to this one's state whatever it held: a resync."""
        out: list[CacheEvent] = []
        locations = [(n, -1, held) for n, held in enumerate(self.dram)] + [
            (self.spec.node_of(e), e, held) for e, held in enumerate(self.hbm)]
        for node, engine, held in locations:
            out.append(CacheEvent(EventKind.CLEAR, node, engine, (), now))
            blocks = sorted(held)
            out += [CacheEvent(EventKind.STORE, node, engine,
                               tuple(blocks[i:i + MAX_EVENT_BLOCKS]), now)
                    for i in range(0, len(blocks), MAX_EVENT_BLOCKS)]
        return out

    # -- answers ------------------------------------------------------------------------
    def locate(self, request_id: int, hashes: Sequence[int]) -> PrefixView:
        """Leading blocks of ``hashes`` per node DRAM and per prefill engine HBM."""
        return PrefixView(request_id, self.hash_tokens,
                          tuple([_leading(s, hashes) for s in self.dram]),
                          tuple([_leading(s, hashes) for s in self.hbm]))

    @property
    def blocks(self) -> int:
        return sum(map(len, self.dram)) + sum(map(len, self.hbm))

    def _where(self, node: int, engine: int) -> set[int]:
        return self.hbm[engine] if engine >= 0 else self.dram[node]

    def _cap(self, engine: int) -> int:
        return self.hbm_cap if engine >= 0 else self.dram_cap


def _leading(held: set[int], hashes: Sequence[int]) -> int:
    if not held or not hashes or hashes[0] not in held:
        return 0
    n = 0
    for h in hashes:
        if h not in held:
            break
        n += 1
    return n


def event_of(node: int, kind: object, engine: object, hashes: object, at: object) -> CacheEvent:
    """A :class:`CacheEvent` from plain values (as they came over a wire), checked for
    types only (:meth:`BlockIndex.check` checks the rest); :class:`EventError` if wrong."""
    try:
        event_kind = EventKind(kind)  # type: ignore[arg-type]  # checked right here
    except ValueError:
        raise EventError(f"unknown cache event kind {kind!r}; expected one of "
                         f"{', '.join(k.value for k in EventKind)}") from None
    if isinstance(engine, bool) or not isinstance(engine, int):
        raise EventError(f"cache event engine must be an int, got {engine!r}")
    if not isinstance(hashes, list | tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and 0 <= h < 1 << 64
            for h in hashes):
        raise EventError("cache event hashes must be a list of ints in [0, 2**64)")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise EventError(f"cache event time must be a number, got {at!r}")
    return CacheEvent(event_kind, node, engine, tuple(hashes), float(at))


def audit(spec: ClusterSpec, hash_tokens: int, events: Sequence[CacheEvent],
          decisions: Sequence[tuple[float, Sequence[int], PrefixView]]) -> dict[str, Any]:
    """How often an index's answers equal the caches' real contents at decision time.

    ``events`` are every cache change as it happened (each stamped with its model
    time); ``decisions`` are (model time, block hashes, the view the index gave). The
    truth at a decision is every event up to its time, replayed in time order."""
    truth = BlockIndex(spec, hash_tokens)
    ordered = sorted(events, key=lambda e: e.at)  # stable: one node's order is kept
    k = exact = 0
    misses: list[float] = []
    for t, hashes, seen in sorted(decisions, key=lambda d: d[0]):
        while k < len(ordered) and ordered[k].at <= t:
            truth._apply(ordered[k], ordered[k].at)
            k += 1
        real = truth.locate(seen.request_id, hashes)
        if real.dram_blocks == seen.dram_blocks and real.hbm_blocks == seen.hbm_blocks:
            exact += 1
        else:
            misses.append(t)
    n = len(decisions)
    return {"decisions": n, "exact": exact, "exact_share": exact / n if n else 1.0,
            "miss_times_s": [round(t, 3) for t in misses[:20]]}
