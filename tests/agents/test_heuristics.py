"""Each heuristic's rules on hand-built views, and the Policy contract for all of them."""

from __future__ import annotations

import copy
import math
import random

import pytest

from agents.heuristics import HEURISTICS, DualPath, DualPathSplit, LeastTokens, PeOnly, RoundRobin
from agents.heuristics.common import has_room
from agents.heuristics.dualpath_split import balanced_de_blocks
from runtime.cost import CostModel
from runtime.decision import Defer, WaitFor
from runtime.policy import Policy
from runtime.view import Role
from tests.builders import make_request, make_spec, make_view

KV = 1_000  # the builders' test model: KV bytes per token


def engines_chosen(policy, request, view, n):
    out = []
    for _ in range(n):
        d = policy.decide(request, view)
        out.append((d.prefill_engine, d.decode_engine))
    return out


# -- pe_only / round_robin ------------------------------------------------------------

@pytest.mark.parametrize("cls", [PeOnly, RoundRobin])
def test_round_robin_order_with_separate_cursors(cls):
    spec = make_spec(1, 2, gpus=2)  # PEs 0,1; DEs 2..5
    view = make_view(spec)
    got = engines_chosen(cls(), make_request(), view, 5)
    assert got == [(0, 2), (1, 3), (0, 4), (1, 5), (0, 2)]


@pytest.mark.parametrize("cls", [PeOnly, RoundRobin])
def test_round_robin_skips_decode_engines_without_room(cls):
    spec = make_spec(1, 1, gpus=3, decode_max_batch=4)  # PEs 0..2; DEs 3..5
    view = make_view(spec, free_hbm={3: 0.0}, seq={4: 4})
    got = engines_chosen(cls(), make_request(), view, 3)
    assert got == [(0, 5), (1, 5), (2, 5)]


@pytest.mark.parametrize("cls", [PeOnly, RoundRobin])
def test_round_robin_defers_without_room_and_keeps_its_place(cls):
    spec = make_spec(1, 1, gpus=2)
    request = make_request()
    policy = cls()
    policy.decide(request, make_view(spec))  # (0, 2)
    full = make_view(spec, free_hbm={2: 0.0, 3: 0.0})
    assert policy.decide(request, full) == Defer("no decode engine has room", WaitFor.DECODE)
    d = policy.decide(request, make_view(spec))
    assert (d.prefill_engine, d.decode_engine) == (1, 3)


def test_pe_only_always_reads_on_the_prefill_node():
    spec = make_spec(1, 1, gpus=1)
    view = make_view(spec, read_q=[1e6, 0.0])
    assert PeOnly().decide(make_request(), view).decode_share == 0.0


@pytest.mark.parametrize(("read_q", "share"), [
    ([100.0, 50.0], 1.0),   # DE node shorter
    ([50.0, 100.0], 0.0),   # PE node shorter
    ([70.0, 70.0], 1.0),    # tie: DE side
])
@pytest.mark.parametrize("cls", [RoundRobin, LeastTokens, DualPath])
def test_whole_request_reads_on_the_shorter_queue_side(cls, read_q, share):
    spec = make_spec(1, 1, gpus=1)
    d = cls().decide(make_request(), make_view(spec, read_q=read_q))
    assert d.decode_share == share


@pytest.mark.parametrize("cls", [RoundRobin, LeastTokens, DualPath, DualPathSplit])
def test_no_hit_tokens_means_share_zero(cls):
    spec = make_spec(1, 1, gpus=1)
    d = cls().decide(make_request(hit=0), make_view(spec, read_q=[1e6, 0.0]))
    assert d.decode_share == 0.0


def test_round_robin_alternating_reads_ignore_the_queues():
    spec = make_spec(1, 1, gpus=1)
    view = make_view(spec, read_q=[1e6, 0.0])  # the PE node's queue is far longer
    policy = RoundRobin(read="alternate")
    shares = [policy.decide(make_request(), view).decode_share for _ in range(4)]
    assert shares == [0.0, 1.0, 0.0, 1.0]
    # A request with nothing to read does not take a turn.
    assert policy.decide(make_request(hit=0), view).decode_share == 0.0
    assert policy.decide(make_request(), view).decode_share == 0.0


# -- least_tokens ---------------------------------------------------------------------

def test_least_tokens_picks_fewest_tokens_with_ties_to_lowest_id():
    spec = make_spec(1, 1, gpus=3)  # PEs 0..2; DEs 3..5
    view = make_view(spec, tok=[50, 20, 20, 500, 100, 100])
    d = LeastTokens().decide(make_request(), view)
    assert (d.prefill_engine, d.decode_engine) == (1, 4)


def test_least_tokens_decode_engine_needs_room():
    spec = make_spec(1, 1, gpus=3)
    view = make_view(spec, tok=[0, 0, 0, 10, 20, 30], free_hbm={3: 1.0}, seq={4: 256})
    assert LeastTokens().decide(make_request(), view).decode_engine == 5


def test_least_tokens_defers_when_no_decode_engine_has_room():
    spec = make_spec(1, 1, gpus=2)
    view = make_view(spec, free_hbm={2: 0.0, 3: 0.0})
    assert LeastTokens().decide(make_request(), view).wait_for is WaitFor.DECODE


# -- dualpath: prefill choice ---------------------------------------------------------

def alpha_beta(spec, request, alpha_s=3.0, beta_s=5.0):
    cost = CostModel(spec)
    return (cost.tokens_readable(alpha_s),
            cost.prefill_tokens_per_s(request.prompt_tokens) * beta_s)


def two_pe_spec():
    return make_spec(2, 1, gpus=1)  # PE 0 on node 0, PE 1 on node 1, DE 2 on node 2


@pytest.mark.parametrize(("alpha_s", "beta_s"), [(3.0, 5.0), (0.5, 2.0)])
def test_dualpath_thresholds_follow_the_cost_model(alpha_s, beta_s):
    spec, request = two_pe_spec(), make_request()
    policy = DualPath(alpha_s=alpha_s, beta_s=beta_s)
    assert policy.thresholds(request, spec) == pytest.approx(
        alpha_beta(spec, request, alpha_s, beta_s))


def test_dualpath_prefers_prefill_nodes_under_alpha_over_fewer_tokens():
    spec, request = two_pe_spec(), make_request()
    alpha, _ = alpha_beta(spec, request)
    view = make_view(spec, tok={0: 0, 1: 10}, read_q={0: alpha + 1, 1: alpha})
    d = DualPath().decide(request, view)
    assert d.prefill_engine == 1
    assert "read_q<=alpha" in d.reason


def test_dualpath_takes_lowest_tokens_under_alpha():
    spec, request = two_pe_spec(), make_request()
    view = make_view(spec, tok={0: 30, 1: 10})
    assert DualPath().decide(request, view).prefill_engine == 1


def test_dualpath_falls_back_to_lowest_tokens_when_every_node_is_over_alpha():
    spec, request = two_pe_spec(), make_request()
    alpha, _ = alpha_beta(spec, request)
    view = make_view(spec, tok={0: 5, 1: 10}, read_q={0: 2 * alpha, 1: alpha + 1})
    d = DualPath().decide(request, view)
    assert d.prefill_engine == 0
    assert "read_q>alpha" in d.reason


def test_dualpath_skips_prefill_engines_over_beta():
    spec, request = two_pe_spec(), make_request()
    alpha, beta = alpha_beta(spec, request)
    view = make_view(spec, tok={0: beta + 1, 1: beta}, read_q={0: 0.0, 1: alpha + 1})
    assert DualPath().decide(request, view).prefill_engine == 1


def test_dualpath_defers_when_every_prefill_engine_is_over_beta():
    spec, request = two_pe_spec(), make_request()
    _, beta = alpha_beta(spec, request)
    view = make_view(spec, tok={0: beta + 1, 1: 2 * beta})
    assert DualPath().decide(request, view).wait_for is WaitFor.PREFILL


def test_dualpath_alpha_parameter_moves_the_threshold():
    spec, request = two_pe_spec(), make_request()
    alpha1, _ = alpha_beta(spec, request, alpha_s=1.0)
    view = make_view(spec, tok={0: 0, 1: 10}, read_q={0: 2 * alpha1, 1: 0.0})
    assert DualPath(alpha_s=1.0).decide(request, view).prefill_engine == 1
    assert DualPath(alpha_s=3.0).decide(request, view).prefill_engine == 0


# -- dualpath: decode choice ----------------------------------------------------------

def test_dualpath_decode_group_with_fewest_total_tokens():
    spec = make_spec(1, 2, gpus=2)  # DE group 0 = engines 2,3; group 1 = engines 4,5
    view = make_view(spec, tok={2: 100, 3: 100, 4: 50, 5: 140})
    assert DualPath().decide(make_request(), view).decode_engine in (4, 5)


def three_de_spec():
    return make_spec(1, 1, gpus=3)  # PEs 0..2; one decode group of DEs 3, 4, 5


def test_dualpath_prefers_fewest_requests_among_engines_under_z():
    spec = three_de_spec()
    request = make_request(hit=0, appended=100, gen=10)  # len = 110
    # Z = 1.05 * (0 + 2500) / 3 = 875: engines 3 and 4 fit, 5 (2110) does not.
    view = make_view(spec, tok={3: 200, 4: 300, 5: 2000}, seq={3: 3, 4: 1, 5: 0})
    d = DualPath().decide(request, view)
    assert d.decode_engine == 4
    assert "Z" in d.reason


def test_dualpath_z_counts_queued_tokens():
    spec = three_de_spec()
    request = make_request(hit=0, appended=100, gen=10)
    # Z = 1.05 * (10000 + 2500) / 3 = 4375: now engine 5 fits and has the fewest requests.
    view = make_view(spec, tok={3: 200, 4: 300, 5: 2000}, seq={3: 3, 4: 1, 5: 0},
                     queue=(5, 10_000))
    assert DualPath().decide(request, view).decode_engine == 5


def test_dualpath_z_caps_queued_tokens_at_free_hbm():
    spec = three_de_spec()
    request = make_request(hit=0, appended=100, gen=10)
    # 200 free tokens per engine: queued capped at 600, Z = 1.05 * 3100 / 3 = 1085.
    view = make_view(spec, tok={3: 200, 4: 300, 5: 2000}, seq={3: 3, 4: 1, 5: 0},
                     free_hbm={3: 200 * KV, 4: 200 * KV, 5: 200 * KV}, queue=(5, 10_000))
    assert DualPath().decide(request, view).decode_engine == 4


def test_dualpath_z_slack_parameter():
    spec = three_de_spec()
    request = make_request(hit=0, appended=100, gen=10)
    view = make_view(spec, tok={3: 200, 4: 300, 5: 2000}, seq={3: 3, 4: 1, 5: 0})
    # With slack 3, Z = 2500: engine 5 fits and has the fewest requests.
    assert DualPath(z_slack=3.0).decide(request, view).decode_engine == 5


def test_dualpath_lowest_tokens_with_room_when_none_is_under_z():
    spec = make_spec(1, 1, gpus=3, decode_max_batch=8)
    request = make_request(hit=0, appended=5_000, gen=10)  # len exceeds Z everywhere
    view = make_view(spec, tok={3: 200, 4: 300, 5: 400}, seq={3: 8, 4: 2, 5: 0})
    d = DualPath().decide(request, view)
    assert d.decode_engine == 4  # 3 has no batch slot
    assert "lowest tok" in d.reason


def test_dualpath_next_group_when_the_lightest_has_no_room():
    spec = make_spec(1, 2, gpus=2)
    view = make_view(spec, tok={2: 0, 3: 0, 4: 50, 5: 10}, free_hbm={2: 0.0, 3: 0.0})
    assert DualPath().decide(make_request(), view).decode_engine == 5


def test_dualpath_defers_when_no_decode_engine_has_room():
    spec = make_spec(1, 2, gpus=2)
    view = make_view(spec, free_hbm={2: 0.0, 3: 0.0, 4: 0.0}, seq={5: 256})
    assert DualPath().decide(make_request(), view).wait_for is WaitFor.DECODE


# -- dualpath_split -------------------------------------------------------------------

def split_times(request, view, d):
    spec = view.spec
    blocks = math.ceil(request.hit_tokens / spec.block_tokens)
    de_blocks = round(d.decode_share * blocks)
    assert de_blocks == pytest.approx(d.decode_share * blocks)  # whole blocks
    pe_node = view.nodes[spec.node_of(d.prefill_engine)]
    de_node = view.nodes[spec.node_of(d.decode_engine)]
    t_pe = ((pe_node.read_q_tokens * KV + (blocks - de_blocks) * spec.block_bytes)
            / pe_node.snic_bytes_s)
    t_de = (de_node.read_q_tokens * KV + de_blocks * spec.block_bytes) / de_node.snic_bytes_s
    return t_pe, t_de


@pytest.mark.parametrize(("read_q", "snic"), [
    ((0.0, 0.0), (1e9, 1e9)),
    ((5_000.0, 1_000.0), (1e9, 2e9)),
    ((1_000.0, 3_000.0), (3e9, 1e9)),
    ((12_345.0, 6_789.0), (5e8, 7e8)),
])
def test_split_finishes_both_sides_together_within_one_block(read_q, snic):
    spec = make_spec(1, 1, gpus=1, block_tokens=64)
    request = make_request(hit=20_000, appended=100)  # 313 blocks, the last one partial
    view = make_view(spec, read_q=read_q, snic_bytes_s=snic)
    d = DualPathSplit().decide(request, view)
    assert 0.0 < d.decode_share < 1.0
    t_pe, t_de = split_times(request, view, d)
    assert abs(t_pe - t_de) <= spec.block_bytes / min(snic)


@pytest.mark.parametrize(("read_q", "share"), [((1e7, 0.0), 1.0), ((0.0, 1e7), 0.0)])
def test_split_sends_everything_to_an_idle_side_against_a_long_queue(read_q, share):
    spec = make_spec(1, 1, gpus=1)
    view = make_view(spec, read_q=read_q)
    assert DualPathSplit().decide(make_request(hit=1_000), view).decode_share == share


def test_split_uses_dualpaths_engine_choice():
    spec = make_spec(2, 2, gpus=2)
    view = make_view(spec, tok={0: 40, 1: 30, 2: 10, 3: 20, 4: 50, 5: 50, 6: 0, 7: 0})
    request = make_request()
    a, b = DualPath().decide(request, view), DualPathSplit().decide(request, view)
    assert (a.prefill_engine, a.decode_engine) == (b.prefill_engine, b.decode_engine)


def test_balanced_blocks_rounding_and_ties():
    # Equal sides: an even count splits in half; an odd count leaves the extra block on the PE.
    assert balanced_de_blocks(10, 1.0, 0.0, 1.0, 0.0, 1.0) == 5
    assert balanced_de_blocks(11, 1.0, 0.0, 1.0, 0.0, 1.0) == 5
    # A DE side with no bandwidth gets nothing; a PE side with none gets everything.
    assert balanced_de_blocks(7, 1.0, 0.0, 1.0, 0.0, 0.0) == 0
    assert balanced_de_blocks(7, 1.0, 0.0, 0.0, 0.0, 1.0) == 7


# -- parameters -----------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "name"), [
    ({"alpha_s": -1.0}, "alpha_s"), ({"alpha_s": float("nan")}, "alpha_s"),
    ({"alpha_s": "3"}, "alpha_s"), ({"beta_s": 0}, "beta_s"), ({"beta_s": True}, "beta_s"),
    ({"z_slack": 0.0}, "z_slack"), ({"z_slack": float("inf")}, "z_slack"),
])
@pytest.mark.parametrize("cls", [DualPath, DualPathSplit])
def test_bad_parameters_are_refused_by_name(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_infinite_thresholds_disable_their_rule():
    spec, request = two_pe_spec(), make_request()
    _, beta = alpha_beta(spec, request)
    view = make_view(spec, tok={0: 10 * beta, 1: 20 * beta})
    assert DualPath(beta_s=math.inf).decide(request, view).prefill_engine == 0
    assert DualPath(alpha_s=0.0).decide(request, make_view(spec)).prefill_engine == 0


# -- the Policy contract, for every registered heuristic -------------------------------

def random_view(rng: random.Random):
    spec = make_spec(rng.randint(1, 3), rng.randint(1, 3), gpus=rng.randint(1, 3),
                     decode_max_batch=4, de_hbm_kv_gb=0.001, decode_group_nodes=1)
    n, m = spec.engines, spec.nodes
    return make_view(
        spec, seq=[rng.randint(0, 4) for _ in range(n)],
        tok=[rng.choice([0, 10, 10_000, 10**8]) for _ in range(n)],
        free_hbm=[rng.choice([0.0, 5e4, 1e6]) for _ in range(n)],
        read_q=[rng.choice([0.0, 1e3, 1e9]) for _ in range(m)],
        queue=(rng.randint(1, 9), rng.randint(0, 10**5)))


@pytest.mark.parametrize("name", sorted(HEURISTICS))
def test_decide_keeps_the_contract(name):
    rng = random.Random(name)
    policy = HEURISTICS[name]()
    assert isinstance(policy, Policy)
    assert policy.name == name
    decided = 0
    for _ in range(200):
        view = random_view(rng)
        request = make_request(hit=rng.choice([0, 500, 5_000]), appended=rng.randint(1, 500))
        before = copy.deepcopy(view)
        d = policy.decide(request, view)
        assert view == before
        if isinstance(d, Defer):
            continue
        decided += 1
        assert view.engines[d.prefill_engine].role is Role.PREFILL
        assert view.engines[d.decode_engine].role is Role.DECODE
        assert has_room(view.engines[d.decode_engine], request, view.spec)
        assert 0.0 <= d.decode_share <= 1.0
        assert d.reason
    assert decided > 20
