"""``reserve`` changes a view as the simulator's placement changes its state."""

from __future__ import annotations

import pytest

from agents import resolve_policy
from runtime.decision import Decision, split_tokens
from runtime.preset import load_preset
from runtime.reservation import reserve
from runtime.sim.simulator import Simulator
from runtime.workload.agentic import AgenticWorkload


@pytest.mark.parametrize("policy", ["dualpath", "dualpath_split", "pe_only"])
def test_reserve_matches_the_simulators_view_after_placing(policy):
    spec = load_preset("ds27b-1p1d")
    sim = Simulator(spec, AgenticWorkload(64, "32k", seed=3))
    decide = resolve_policy(policy).policy.decide
    checked = 0
    for _ in range(200):
        point = sim.next_decision()
        if point is None:
            break
        request, view = point
        answer = decide(request, view)
        if not isinstance(answer, Decision):
            sim.apply(answer)
            continue
        predicted = reserve(view, request, answer)
        sim.apply(answer)
        after = sim.view()  # same instant: no event ran in between
        assert after.time_s == view.time_s
        for mine, real in zip(predicted.engines, after.engines, strict=True):
            assert (mine.seq, mine.tok) == (real.seq, real.tok)
            assert mine.free_hbm_bytes == pytest.approx(real.free_hbm_bytes)
        for mine, real in zip(predicted.nodes, after.nodes, strict=True):
            assert mine.read_q_tokens == pytest.approx(real.read_q_tokens, rel=1e-9, abs=1e-6)
        assert predicted.queue == after.queue
        checked += 1
    assert checked > 50


def test_reserve_leaves_the_view_unchanged():
    spec = load_preset("tiny")
    sim = Simulator(spec, AgenticWorkload(4, "32k", seed=0))
    request, view = sim.next_decision()
    before = (view.engines, view.nodes, view.queue)
    reserve(view, request, Decision(0, spec.prefill_engines, 0.5))
    assert (view.engines, view.nodes, view.queue) == before


@pytest.mark.parametrize("hit,share,block,expected", [
    (0, 0.5, 64, (0, 0)), (640, 0.0, 64, (640, 0)), (640, 1.0, 64, (0, 640)),
    (640, 0.5, 64, (320, 320)), (650, 1.0, 64, (0, 650)), (650, 0.5, 64, (266, 384)),
])
def test_split_tokens_rounds_to_whole_blocks(hit, share, block, expected):
    assert split_tokens(hit, share, block) == expected
