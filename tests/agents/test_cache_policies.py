"""The cache-aware policies: dualpath_cache is dualpath where nothing is cached, and both
use the caches where something is."""

from __future__ import annotations

import pytest

from agents import resolve_policy
from agents.heuristics import CacheAware, DualPath, DualPathCache
from runtime.decision import Decision
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload


def _points(overrides: list[str], agents: int = 24, seed: int = 0):
    """(request, view) of a dualpath_cache simulation, decided as it goes."""
    spec = load_preset("tiny", overrides)
    sim = Simulator(spec, AgenticWorkload(agents, "32k", seed, online=True, aps=4.0,
                                          duration_s=6.0, shuffle=True))
    policy = DualPathCache()
    while (point := sim.next_decision()) is not None:
        yield point
        sim.apply(policy.decide(*point))


@pytest.mark.parametrize("overrides", [[], ["node.dram_cache_gb=1", "node.hbm_cache_gb=0.2"]])
def test_dualpath_cache_decides_as_dualpath_wherever_nothing_is_cached(overrides) -> None:
    ours, paper = DualPathCache(), DualPath()
    same = differ = 0
    for request, view in _points(overrides):
        if view.prefix is None or not view.prefix.anywhere or request.hit_tokens == 0:
            assert ours.decide(request, view) == paper.decide(request, view)
            same += 1
        else:
            differ += ours.decide(request, view) != paper.decide(request, view)
    assert same > 20
    if overrides:
        assert differ > 0  # where caches hold the prefix, it does look at them


def test_without_caches_a_whole_run_equals_dualpath() -> None:
    spec = load_preset("tiny")
    runs = []
    for policy in (DualPath(), DualPathCache()):
        sim = Simulator(spec, AgenticWorkload(16, "32k", 1))
        metrics = sim.run(policy).metrics
        runs.append({k: v for k, v in metrics.items() if k not in ("wall_s",
                                                                    "sim_requests_per_s")})
    assert runs[0] == runs[1]


def test_cache_aware_prefers_the_engine_that_holds_the_prefix() -> None:
    chosen = held = 0
    policy = CacheAware()
    for request, view in _points(["node.hbm_cache_gb=0.5"]):
        prefix = view.prefix
        if prefix is None or request.hit_tokens == 0 or max(prefix.hbm_blocks) == 0:
            continue
        loads = {e.tok for e in view.prefill_engines()}
        if len(loads) > 1:
            continue  # equal loads: the prefix alone decides
        answer = policy.decide(request, view)
        assert isinstance(answer, Decision)
        held += 1
        chosen += prefix.hbm_blocks[answer.prefill_engine] == max(prefix.hbm_blocks)
    assert held > 0 and chosen == held


def test_cache_aware_reads_on_the_prefill_side_unless_told_shorter() -> None:
    pe, shorter = CacheAware(), resolve_policy("cache_aware:path=shorter").policy
    shares = {0.0}
    for request, view in _points([]):
        answer = pe.decide(request, view)
        assert not isinstance(answer, Decision) or answer.decode_share == 0.0
        other = shorter.decide(request, view)
        if isinstance(other, Decision):
            shares.add(other.decode_share)
    assert shares == {0.0, 1.0}
