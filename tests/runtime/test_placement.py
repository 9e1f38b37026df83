"""``reserve`` changes a view as the simulator's placement changes its state."""

from __future__ import annotations

import pytest

from agents import resolve_policy
from runtime.decision import Decision, split_tokens
from runtime.placement import reserve_view as reserve
from runtime.preset import load_preset
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


# -- the placement core's queue, ledger and lifecycle --------------------------------------

def _item(rid: int, prompt: int = 100):
    from types import SimpleNamespace

    from tests.builders import make_request
    return SimpleNamespace(request=make_request(0, prompt, request_id=rid))


def test_a_deferred_head_is_asked_again_only_when_what_it_waits_for_frees():
    from runtime.decision import Defer, WaitFor
    from runtime.placement import WaitingQueue

    q = WaitingQueue()
    q.arrive(_item(1))
    assert q.ready and q.view().requests == 1 and q.view().tokens == 100
    q.defer(Defer("full", WaitFor.DECODE))
    assert not q.ready
    assert not q.wake(WaitFor.PREFILL) and not q.wake(None)  # an arrival does not either
    assert q.wake(WaitFor.DECODE) and q.ready
    q.defer(None)  # no reason given: anything wakes it
    assert q.wake(None)


def test_a_request_put_back_is_asked_about_at_once_and_keeps_its_turn():
    from runtime.decision import Defer, WaitFor
    from runtime.placement import WaitingQueue

    q = WaitingQueue()
    q.arrive(_item(1))
    q.arrive(_item(2, 50))
    first = q.take()
    q.defer(Defer("full", WaitFor.DECODE))
    q.put_back(first)
    assert q.ready and q.head is first and q.tokens == 150


def test_the_ledger_refuses_a_decision_without_room_and_undoes_exactly_what_it_took():
    from runtime.decision import Decision
    from runtime.placement import Ledger, PlacementError
    from tests.builders import make_request, make_spec

    spec = make_spec(1, 1, gpus=1, decode_max_batch=1)
    ledger = Ledger(spec)
    request = make_request(1000, 10, 5, request_id=7)
    before = [(x.seq, x.tok, x.free_hbm) for x in ledger.loads]
    with pytest.raises(PlacementError, match="not a prefill engine"):
        ledger.place(request, Decision(1, 1, 0.0))
    assert [(x.seq, x.tok, x.free_hbm) for x in ledger.loads] == before  # took nothing
    assert ledger.place(request, Decision(0, 1, 0.5)) == (488, 512)  # whole 64-token blocks
    with pytest.raises(PlacementError, match="decode engine 1 has no room"):
        ledger.place(request, Decision(0, 1, 0.0))
    ledger.unplace(request, 0, 1, prefilled=False)
    ledger.computed(0, 10)
    assert [(x.seq, x.tok, x.free_hbm) for x in ledger.loads] == before


def test_an_unfinished_run_names_its_requests_and_their_phases():
    from runtime.placement import Phase, unfinished_message

    assert unfinished_message([(1, Phase.FINISHED)]) is None
    message = unfinished_message([(1, Phase.FINISHED), (2, Phase.PLACING), (3, Phase.DECODING)])
    assert message is not None
    assert "2 admitted request(s) did not finish" in message
    assert "2 (placing)" in message and "3 (decoding)" in message


def test_a_reserved_view_no_longer_carries_the_placed_requests_prefix():
    from dataclasses import replace

    from runtime.view import PrefixView
    from tests.builders import make_request, make_view

    spec = load_preset("ds27b-1p1d", ("node.dram_cache_gb=1",))
    request = make_request()
    own = PrefixView(request.request_id, spec.block_tokens, (0, 3), (0,) * spec.prefill_engines)
    view = make_view(spec)
    placed = reserve(replace(view, prefix=own), request, Decision(0, spec.prefill_engines, 0.0))
    assert placed.prefix is None  # the next decision is about another request
    other = PrefixView(request.request_id + 1, spec.block_tokens, (0, 3),
                       (0,) * spec.prefill_engines)
    kept = reserve(replace(view, prefix=other), request, Decision(0, spec.prefill_engines, 0.0))
    assert kept.prefix is other
