"""A live node's KV caches: the model's cache rules, with the blocks' bytes, and events.

The rules (what is stored when, how much fits, what goes first) are
:class:`runtime.cache.CacheTiers`' — the simulator's own object, built for the
whole cluster; a node only ever calls it with its own node and engine ids, so only
its own caches fill. Observers on those caches keep each block's bytes beside it
(a whole Full Block and the checksum storage holds for it: host memory for the
node's DRAM cache and, standing for HBM, for its prefill engines' caches) and
note each store and eviction as a :class:`runtime.cache.index.CacheEvent` for the
router's block index.

Bytes for the blocks a store keeps come from a *supply* the caller passes: the
blocks just read from storage, or the prompt's blocks in an engine's buffer at the
end of a prefill or a P→D transfer. A block the supply lacks is computed from its
name (:func:`runtime.live.blocks.block_content`, what storage holds under that
name) and counted: the model's rule counts a partly read block as read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runtime.cache import CacheTiers
from runtime.cache.index import CacheEvent, EventKind
from runtime.cache.prefix_cache import PrefixCache
from runtime.cache.tiers import Prefix
from runtime.cluster import ClusterSpec
from runtime.live.blocks import block_content, checksum
from runtime.placement.plan import LoadPlan

#: A block's bytes and its checksum.
Held = tuple[bytes, str]
#: Bytes for block ``i`` of the prompt being stored, if the caller has them.
Supply = Callable[[int], Held | None]


class NodeCaches:
    """Node ``node_id``'s DRAM cache and its prefill engines' HBM caches, with bytes."""

    def __init__(self, spec: ClusterSpec, node_id: int, block_bytes: int,
                 now: Callable[[], float], changed: Callable[[], None]) -> None:
        """``now``: model time; ``changed``: called after each event (to send them)."""
        self.node_id = node_id
        self._changed = changed
        self.block_bytes = block_bytes
        self.tiers = CacheTiers(spec, spec.block_tokens)
        self._now = now
        self.events: list[CacheEvent] = []
        self.filled_by_name = 0
        self.stored_blocks = self.evicted_blocks = 0
        #: Bytes per location: -1 the node's DRAM, else a local prefill engine's HBM.
        self.held: dict[int, dict[int, Held]] = {}
        self._names: Sequence[str] = ()
        self._supply: Supply = _nothing
        if self.tiers.dram is not None:
            self._watch(self.tiers.dram[node_id], -1)
        if self.tiers.hbm is not None:
            for engine in range(spec.prefill_engines):
                if spec.node_of(engine) == node_id:
                    self._watch(self.tiers.hbm[engine], engine)

    def _watch(self, cache: PrefixCache, engine: int) -> None:
        held: dict[int, Held] = {}
        self.held[engine] = held

        def observe(kind: str, hashes: Sequence[int], start: int, end: int) -> None:
            blocks = tuple(hashes[start:end])
            if kind == "store":
                for i in range(start, end):
                    held[hashes[i]] = self._bytes_of(i)
                self.stored_blocks += end - start
            else:
                for h in blocks:
                    held.pop(h, None)
                self.evicted_blocks += end - start
            self.events.append(CacheEvent(EventKind(kind), self.node_id, engine, blocks,
                                          self._now()))
            self._changed()
        cache.observer = observe

    def _bytes_of(self, i: int) -> Held:
        got = self._supply(i)
        if got is not None:
            return got
        self.filled_by_name += 1
        data = block_content(self._names[i], self.block_bytes)
        return data, checksum(data)

    def _storing(self, names: Sequence[str], supply: Supply) -> None:
        self._names, self._supply = names, supply

    # -- the model's moments, with the bytes -----------------------------------------------
    def read_done(self, prefix: Prefix, names: Sequence[str], first: int, end: int,
                  supply: Supply) -> None:
        self._storing(names, supply)
        self.tiers.read_done(prefix, self.node_id, first, end, self._now())

    def prefilled(self, prefix: Prefix, names: Sequence[str], engine: int,
                  supply: Supply) -> None:
        self._storing(names, supply)
        self.tiers.prefilled(prefix, engine, self.node_id, self._now())

    def received(self, prefix: Prefix, names: Sequence[str], supply: Supply) -> None:
        self._storing(names, supply)
        self.tiers.received(prefix, self.node_id, self._now())

    def served(self, prefix: Prefix, plan: LoadPlan, engine: int, pe_node: int) -> None:
        """A hit on the blocks ``plan`` takes from this node's caches (the same call on
        every node involved: only the caches this node has change)."""
        self.tiers.served(prefix, plan, engine, pe_node, self._now())

    def take(self, engine: int, hashes: Sequence[int]) -> list[Held | None]:
        """The bytes of ``hashes`` in a location (None for each one it no longer holds)."""
        held = self.held.get(engine, {})
        return [held.get(h) for h in hashes]

    def drain(self) -> list[CacheEvent]:
        events, self.events = self.events, []
        return events


def _nothing(_: int) -> Held | None:
    return None
