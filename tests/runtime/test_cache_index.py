"""The block index against the caches it hears from, and its audit."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from runtime.cache import PrefixCache
from runtime.cache.index import BlockIndex, CacheEvent, EventError, EventKind, audit, event_of
from runtime.eviction import EVICTIONS
from runtime.preset import load_preset

BLOCK = 4
SPEC = load_preset("tiny", ("node.dram_cache_gb=0.01",))


def _chain(tokens: Sequence[int]) -> tuple[int, ...]:
    out, last = [], 17
    for t in tokens:
        last = hash((last, t)) & ((1 << 63) - 1)
        out.append(last)
    return tuple(out)


def _reporting(cache: PrefixCache, node: int, events: list[CacheEvent], clock: list[float]):
    def observe(kind: str, hashes: Sequence[int], start: int, end: int) -> None:
        events.append(CacheEvent(EventKind(kind), node, -1, tuple(hashes[start:end]), clock[0]))
    cache.observer = observe


@pytest.mark.parametrize("seed", range(4))
def test_an_index_fed_every_event_answers_as_the_caches_do(seed: int) -> None:
    rng = random.Random(seed)
    caches = [PrefixCache(rng.choice([40, 120, 400]), EVICTIONS["lru"]()) for _ in range(2)]
    events: list[CacheEvent] = []
    clock = [0.0]
    for node, cache in enumerate(caches):
        _reporting(cache, node, events, clock)
    index = BlockIndex(SPEC, BLOCK)
    stems = [[rng.randrange(3) for _ in range(rng.randrange(1, 12))] for _ in range(4)]
    for step in range(500):
        clock[0] = float(step)
        prompt = _chain(rng.choice(stems) + [rng.randrange(3) for _ in range(rng.randrange(20))])
        cache = rng.choice(caches)
        end = rng.randrange(len(prompt) + 1)
        cache.store(prompt, end, BLOCK, clock[0], start=rng.choice([0, cache.match(prompt)]))
        index.apply(events)
        events.clear()
        assert index.locate(0, prompt).dram_blocks == tuple(c.match(prompt) for c in caches)


def test_the_audit_counts_answers_that_lag_the_caches() -> None:
    cache = PrefixCache(400, EVICTIONS["lru"]())
    events: list[CacheEvent] = []
    clock = [0.0]
    _reporting(cache, 0, events, clock)
    prompts = [_chain([a, b]) for a in range(3) for b in range(3)]
    fresh, late, decisions_fresh, decisions_late = (BlockIndex(SPEC, BLOCK),
                                                    BlockIndex(SPEC, BLOCK), [], [])
    for step, prompt in enumerate(prompts):
        clock[0] = float(step)
        cache.store(prompt, 2, BLOCK, clock[0])
        fresh.apply(events[len(events) - 1:])        # heard at once
        if step:
            late.apply(events[-2:-1])                 # one store behind
        t = step + 0.5
        decisions_fresh.append((t, prompt, fresh.locate(step, prompt)))
        decisions_late.append((t, prompt, late.locate(step, prompt)))
    assert audit(SPEC, BLOCK, events, decisions_fresh)["exact_share"] == 1.0
    lagging = audit(SPEC, BLOCK, events, decisions_late)
    assert lagging["exact"] < lagging["decisions"] and lagging["miss_times_s"]


def test_events_from_a_wire_are_checked_by_type_and_place() -> None:
    index = BlockIndex(SPEC, BLOCK)
    with pytest.raises(EventError, match="unknown cache event kind"):
        event_of(0, "stash", -1, [1], 0.0)
    with pytest.raises(EventError, match="hashes"):
        event_of(0, "store", -1, [-1], 0.0)
    with pytest.raises(EventError, match="not a prefill engine of node 1"):
        index.apply([event_of(1, "store", 0, [1], 0.0)])  # engine 0 is on node 0
    with pytest.raises(EventError, match="more than its cache's"):
        index.apply([event_of(0, "store", -1, list(range(1 << 16)), 0.0),
                     event_of(0, "store", -1, list(range(1 << 16, 1 << 17)), 0.0)])
    assert index.blocks == 0  # nothing of a refused batch was applied


def test_a_lost_node_is_forgotten_at_once_or_after_its_ttl() -> None:
    index = BlockIndex(SPEC, BLOCK, ttl_s=5.0)
    index.apply([event_of(0, "store", -1, [1, 2], 0.0), event_of(1, "store", -1, [1], 0.0)],
                heard_at=0.0)
    index.drop_node(1)
    assert index.locate(0, [1, 2]).dram_blocks == (2, 0)
    index.hear(0, 4.0)
    assert index.expire(6.0) == [] and index.locate(0, [1, 2]).dram_blocks == (2, 0)
    assert index.expire(9.5) == [0] and index.blocks == 0


def test_a_snapshot_brings_any_index_to_the_same_answers() -> None:
    source, stale = BlockIndex(SPEC, BLOCK), BlockIndex(SPEC, BLOCK)
    source.apply([event_of(0, "store", -1, [1, 2, 3], 0.0), event_of(1, "store", -1, [1], 0.0),
                  event_of(0, "store", 0, [1, 2], 0.0)])
    stale.apply([event_of(1, "store", -1, [1, 2, 3, 4], 0.0), event_of(0, "store", 1, [1], 0.0)])
    stale.apply(source.snapshot(5.0))
    for prompt in ([1, 2, 3, 4], [1, 5], [2]):
        assert stale.locate(0, prompt) == source.locate(0, prompt)
