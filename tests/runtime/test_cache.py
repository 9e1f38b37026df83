"""KV-cache tiers: the prefix cache against a block-by-block model, and the simulator's
invariants on random clusters and workloads (sources, capacity, provenance)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from agents import resolve_policy
from runtime.cache import CacheTiers, PrefixCache, prefix_hashes
from runtime.eviction import EVICTIONS
from runtime.execution.metrics import SOURCES
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.mooncake import MooncakeTrace


class Audit:
    """The blocks a cache reported storing and not evicting since (its observer)."""

    def __init__(self, cache: PrefixCache, block_tokens: int) -> None:
        self.blocks: set[int] = set()
        self.block_tokens = block_tokens
        cache.observer = self.changed

    def changed(self, what: str, hashes: Sequence[int], start: int, end: int) -> None:
        for block in hashes[start:end]:
            if what == "store":
                assert block not in self.blocks, f"block {block} stored twice"
                self.blocks.add(block)
            else:
                assert block in self.blocks, f"block {block} evicted but not held"
                self.blocks.discard(block)

    def leading(self, hashes: Sequence[int]) -> int:
        n = 0
        while n < len(hashes) and hashes[n] in self.blocks:
            n += 1
        return n


def _chain(tokens: Sequence[int]) -> tuple[int, ...]:
    """Chained hashes of a token-per-block sequence: equal hash, equal prefix."""
    out, last = [], 17
    for t in tokens:
        last = hash((last, t))
        out.append(last)
    return tuple(out)


@pytest.mark.parametrize("eviction", sorted(EVICTIONS))
@pytest.mark.parametrize("seed", range(6))
def test_prefix_cache_matches_a_block_model_and_never_overflows(seed: int, eviction: str) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([40, 120, 400])
    cache = PrefixCache(capacity, EVICTIONS[eviction]())
    audit = Audit(cache, 4)
    # Prompts that share prefixes and branch: a few stems, random continuations.
    stems = [[rng.randrange(3) for _ in range(rng.randrange(1, 12))] for _ in range(4)]
    for step in range(600):
        prompt = _chain(rng.choice(stems) + [rng.randrange(3) for _ in range(rng.randrange(20))])
        assert cache.match(prompt) == audit.leading(prompt)
        action = rng.random()
        if action < 0.6:
            end = rng.randrange(len(prompt) + 1)
            start = rng.choice([0, audit.leading(prompt), end])
            cache.store(prompt, end, 4, float(step), start=min(start, end))
        elif action < 0.8:
            held = cache.match(prompt)
            cache.touch(prompt, rng.randrange(held + 1), float(step))
        assert cache.used_tokens == 4 * len(audit.blocks) <= capacity
        assert cache.match(prompt) == audit.leading(prompt)


def test_lru_gives_up_the_least_recently_used_prefix_first() -> None:
    cache = PrefixCache(8 * 4, EVICTIONS["lru"]())
    a, b, c = (range(base, base + 4) for base in (100, 200, 300))
    cache.store(a, 4, 4, 0.0)
    cache.store(b, 4, 4, 1.0)
    cache.touch(a, 4, 2.0)  # a is now the more recent
    cache.store(c, 4, 4, 3.0)  # needs b's room
    assert (cache.match(a), cache.match(b), cache.match(c)) == (4, 0, 4)


def test_a_store_that_would_not_continue_a_held_prefix_keeps_nothing() -> None:
    cache = PrefixCache(1000, EVICTIONS["lru"]())
    chain = range(10, 30)
    assert cache.store(chain, 20, 4, 0.0, start=5) == 0
    assert cache.match(chain) == 0
    cache.store(chain, 5, 4, 0.0)
    cache.store(chain, 20, 4, 1.0, start=5)
    assert cache.match(chain) == 20


def test_agents_chains_are_their_prompts_full_blocks_and_never_meet_trace_ids() -> None:
    turn = Request(1, 7, 3, hit_tokens=1000, appended_tokens=100, gen_tokens=5, arrival_s=0)
    hashes = prefix_hashes(turn, 64)
    assert len(hashes) == 1100 // 64
    nxt = Request(2, 7, 4, hit_tokens=1105, appended_tokens=300, gen_tokens=5, arrival_s=1)
    assert list(prefix_hashes(nxt, 64)[:len(hashes)]) == list(hashes)  # the same chain
    other = prefix_hashes(Request(3, 8, 0, 0, 640, 1, 0.0), 64)
    assert not set(other) & set(hashes)
    assert min(hashes) > 2**62  # above any trace's ids


def _sim(spec_overrides: list[str], workload, policy: str = "dualpath_cache"):
    spec = load_preset("tiny", spec_overrides)
    sim = Simulator(spec, workload)
    return sim, resolve_policy(policy, cluster=spec).policy


def _audited(sim: Simulator) -> tuple[list[Audit], list[Audit]]:
    caches = sim.caches
    assert caches is not None
    tokens = caches.hash_tokens  # these workloads' requests all have one block size
    dram = [Audit(c, tokens) for c in caches.dram or []]
    hbm = [Audit(c, tokens) for c in caches.hbm or []]
    return dram, hbm


WORKLOADS = {
    "agents": lambda seed: AgenticWorkload(12, "32k", seed, online=True, aps=2.0,
                                           duration_s=6.0, shuffle=True),
    "trace": lambda seed: MooncakeTrace("experiments/scenarios/traces/"
                                        "mooncake_synthetic_1500.jsonl", limit=150,
                                        time_scale=0.05),
}


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
@pytest.mark.parametrize("seed", range(3))
def test_simulated_caches_serve_only_what_they_hold_and_sources_add_up(kind: str,
                                                                       seed: int) -> None:
    rng = random.Random(seed)
    overrides = [f"node.dram_cache_gb={rng.choice([0.5, 2, 8])}",
                 f"node.hbm_cache_gb={rng.choice([0, 0.3, 1])}",
                 f"cache.peer_fetch={rng.choice(['true', 'false'])}",
                 f"cache.eviction={rng.choice(sorted(EVICTIONS))}"]
    policy = rng.choice(["dualpath_cache", "cache_aware", "dualpath", "pe_only"])
    sim, chosen = _sim(overrides, WORKLOADS[kind](seed), policy)
    dram, hbm = _audited(sim)
    caches = sim.caches
    assert caches is not None
    spec = sim.spec
    while (point := sim.next_decision()) is not None:
        request, view = point
        prefix = view.prefix
        assert prefix is not None and prefix.request_id == request.request_id
        hashes, _ = caches.hashes(request)
        # What the view says is cached is exactly what was stored and not evicted since.
        assert list(prefix.dram_blocks) == [a.leading(hashes) for a in dram] or not dram
        assert list(prefix.hbm_blocks) == [a.leading(hashes) for a in hbm] or not hbm
        pairs = [*zip(dram, caches.dram or [], strict=True),
                 *zip(hbm, caches.hbm or [], strict=True)]
        for audit, cache in pairs:
            assert cache.used_tokens == len(audit.blocks) * audit.block_tokens
            assert cache.used_tokens <= cache.capacity_tokens
        sim.apply(chosen.decide(request, view))
    metrics = sim.result(1.0).metrics
    by_source = metrics["hit_bytes_by_source"]
    assert sorted(by_source) == sorted(SOURCES)
    assert sum(by_source.values()) == pytest.approx(metrics["hit_bytes"], rel=1e-9)
    assert metrics["storage_bytes_read"] == pytest.approx(
        by_source["storage_pe_path"] + by_source["storage_de_path"])
    # What the storage NICs carried is what the plan read from storage.
    assert metrics["read_bytes_pe_side"] + metrics["read_bytes_de_side"] == pytest.approx(
        metrics["storage_bytes_read"], rel=1e-9)
    if spec.cache.peer_fetch is False:
        assert by_source["dram_peer"] == 0
    assert metrics["requests"] == sim.finished


def test_caches_take_load_off_storage() -> None:
    runs = {}
    for dram in (0, 8):
        spec = load_preset("tiny", [f"node.dram_cache_gb={dram}"])
        sim = Simulator(spec, WORKLOADS["agents"](0))
        runs[dram] = sim.run(resolve_policy("dualpath", cluster=spec).policy).metrics
    assert runs[0]["storage_bytes_read"] == pytest.approx(runs[0]["hit_bytes"])
    assert runs[8]["storage_bytes_read"] < 0.5 * runs[0]["storage_bytes_read"]
    assert runs[8]["hit_bytes"] == runs[0]["hit_bytes"]


def test_no_cache_means_no_tiers() -> None:
    spec = load_preset("tiny")
    assert CacheTiers.of(spec, WORKLOADS["agents"](0)) is None
