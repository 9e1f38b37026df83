"""Simulator invariants on random small clusters and workloads, and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.decision import Decision
from runtime.execution.metrics import window_bytes
from runtime.request import Request
from runtime.sim import SimOptions, SimulationStuck, Simulator
from tests.builders import make_spec


class ScriptedAgents:
    """Agents with given per-turn (appended, generated) tokens; hits = earlier context."""

    name = "scripted"

    def __init__(self, turns: list[list[tuple[int, int]]], arrivals: list[float] | None = None):
        self.turns = turns
        self.arrivals = arrivals or [0.0] * len(turns)
        self.issued: list[int] = []
        self._next_id = 0

    def _request(self, agent: int, turn: int, context: int, at: float) -> Request:
        appended, gen = self.turns[agent][turn]
        self._next_id += 1
        self.issued.append(self._next_id)
        return Request(self._next_id, agent, turn, context, appended, gen, at)

    def initial_requests(self) -> list[Request]:
        return [self._request(a, 0, 0, self.arrivals[a]) for a in range(len(self.turns))]

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        if request.turn + 1 >= len(self.turns[request.agent_id]):
            return []
        context = request.prompt_tokens + request.gen_tokens
        return [self._request(request.agent_id, request.turn + 1, context, finish_s)]


class RandomPolicy:
    """Random engines with room, random path share; defers when no decode engine has room."""

    name = "random"

    def __init__(self, seed: int, shares: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)):
        self.rng = np.random.default_rng(seed)
        self.shares = shares
        self.completed: list[int] = []

    def decide(self, request, view):
        spec = view.spec
        need = request.total_tokens * spec.model.kv_bytes_per_token
        room = [e.engine_id for e in view.decode_engines()
                if e.free_hbm_bytes >= need and e.seq < spec.decode_max_batch]
        if not room:
            return None
        pe = int(self.rng.integers(spec.prefill_engines))
        de = room[int(self.rng.integers(len(room)))]
        return Decision(pe, de, float(self.shares[int(self.rng.integers(len(self.shares)))]))

    def complete(self, request_id, outcome):
        self.completed.append(request_id)


turn_lists = st.lists(
    st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 60)), min_size=1, max_size=4),
    min_size=1, max_size=6)


@st.composite
def clusters(draw):
    return make_spec(
        draw(st.integers(1, 2)), draw(st.integers(1, 2)), gpus=draw(st.integers(1, 3)),
        snic_gb_s=draw(st.sampled_from([0.5, 2.0, 10.0])),
        cnic_gb_s=draw(st.sampled_from([1.0, 5.0, 50.0])),
        host_buffer_gb=draw(st.sampled_from([0.005, 0.05, 80.0])),
        pe_hbm_kv_gb=draw(st.sampled_from([0.002, 1.0])),
        de_hbm_kv_gb=draw(st.sampled_from([0.02, 1.0])),
        decode_max_batch=draw(st.sampled_from([1, 4, 64])),
        prefill_quota_s=draw(st.sampled_from([0.001, 0.3])),
        block_tokens=draw(st.sampled_from([16, 64])),
    )


def _all_links(sim):
    for node in sim.nodes:
        yield node.snic
        yield node.snic_write
    for pe in sim.pes:
        yield from (pe.cnic_in, pe.cnic_out, pe.pcie)
    for de in sim.des:
        yield from (de.cnic_in, de.cnic_out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=clusters(), turns=turn_lists, seed=st.integers(0, 1000),
       layerwise=st.booleans(), oracle=st.booleans())
def test_invariants_on_random_clusters(spec, turns, seed, layerwise, oracle):
    workload = ScriptedAgents(turns)
    sim = Simulator(spec, workload, SimOptions(layerwise=layerwise, oracle=oracle, timeline=True))
    policy = RandomPolicy(seed)
    result = sim.run(policy)
    m = result.metrics

    # Every request finishes exactly once.
    finished = [row[0] for row in result.timeline]
    assert sorted(finished) == sorted(workload.issued)
    assert sorted(policy.completed) == sorted(workload.issued)
    assert m["requests"] == sum(len(t) for t in turns)

    # Bytes read from storage equal the hit bytes, whichever side read them.
    read = m["read_bytes_pe_side"] + m["read_bytes_de_side"]
    assert read == pytest.approx(0.0 if oracle else m["hit_bytes"], rel=1e-9, abs=1e-6)

    # Every reservation is released: buffers, HBM, tokens and sequences.
    for node in sim.nodes:
        assert node.buffer_used == 0 and not node.pending
    for pe in sim.pes:
        assert pe.hbm_used == pytest.approx(0, abs=1e-6) and pe.tok == 0 and pe.seq == 0
        assert not pe.ready and not pe.busy
    for de in sim.des:
        assert de.free_hbm == pytest.approx(spec.node.de_hbm_kv_bytes) and de.seq == 0
        assert de.tok == 0 and not de.heap

    # The time-integral of requests in system is the sum of their latencies
    # (the env's reward telescopes to it).
    assert sim.in_system == 0
    latencies = sum(row[18] - row[9] for row in result.timeline)
    assert sim.time_in_system == pytest.approx(latencies, rel=1e-9, abs=1e-9)

    # Timestamps are ordered within every request.
    for row in result.timeline:
        arrival, decision, prefill_start, first, finish = row[9], row[10], row[15], row[17], row[18]
        assert arrival <= decision <= prefill_start <= first <= finish

    # No link carries more than its bandwidth in any window.
    end = max(row[18] for row in result.timeline)
    for window in (0.01, 1.0):
        edges = np.arange(0.0, end + 2 * window, window)
        for link in _all_links(sim):
            carried = window_bytes(link, edges)
            assert (carried <= link.bytes_s * window * (1 + 1e-9) + 1e-6).all(), link.name


def _run(spec, turns, seed, shares=(0.0, 0.25, 0.5, 1.0), **opts):
    sim = Simulator(spec, ScriptedAgents(turns), SimOptions(**opts))
    return sim.run(RandomPolicy(seed, shares))


def test_same_inputs_give_same_metrics():
    spec = make_spec(2, 2, gpus=2, snic_gb_s=1.0, host_buffer_gb=0.01)
    turns = [[(500 + 37 * a + t, 20 + t) for t in range(5)] for a in range(8)]
    a = _run(spec, turns, seed=3).metrics
    b = _run(spec, turns, seed=3).metrics
    for key in ("wall_s", "sim_requests_per_s"):
        a.pop(key)
        b.pop(key)
    assert a == b


def test_oracle_is_no_slower_than_loading():
    spec = make_spec(1, 1, gpus=2, snic_gb_s=0.5)
    turns = [[(300, 10)] * 6 for _ in range(6)]
    loaded = _run(spec, turns, seed=1).metrics["jct_s"]
    oracle = _run(spec, turns, seed=1, oracle=True).metrics["jct_s"]
    assert oracle < loaded


@pytest.mark.parametrize("layerwise", [False, True])
def test_prefill_time_overlaps_loading_only_when_layerwise(layerwise):
    # Turn 1 loads 2,001 hit tokens over PCIe (4.002 ms + copies) and computes 2,000
    # tokens (2.963 ms at half of 1,350 TFLOP/s), over 4 layers.
    spec = make_spec(1, 1, gpus=1, snic_gb_s=100.0, pcie_gb_s=0.5, h2d_copy_us=6.0)
    sim = Simulator(spec, ScriptedAgents([[(2000, 1), (2000, 1)]]),
                    SimOptions(layerwise=layerwise, timeline=True))
    rows = sim.run(RandomPolicy(0, shares=(0.0,))).timeline
    turn1 = next(r for r in rows if r[2] == 1)
    # Loading also submits one 6 us copy per 64-token block and layer.
    copies = math.ceil(2001 / 64) * 4
    load, compute, layers = 2001 * 1000 / 0.5e9 + copies * 6e-6, 2000 * 1e9 / (0.5 * 1350e12), 4
    expected = (max(load / layers + compute, load + compute / layers) if layerwise
                else load + compute)
    assert turn1[16] - turn1[15] == pytest.approx(expected, rel=1e-9)


def test_decode_only_path_reads_on_decode_nodes():
    spec = make_spec(1, 1, gpus=1)
    m = _run(spec, [[(100, 5), (100, 5)]], 0, (1.0,)).metrics
    assert m["read_bytes_pe_side"] == 0
    assert m["read_bytes_de_side"] == m["hit_bytes"] > 0


def test_request_that_never_fits_reports_stuck():
    spec = make_spec(1, 1, gpus=1, de_hbm_kv_gb=1e-6)  # 1,000 bytes: one token of KV
    with pytest.raises(SimulationStuck, match="decode HBM"):
        _run(spec, [[(100, 5)]], seed=0)


def test_policy_choosing_a_full_decode_engine_is_refused():
    class Greedy:
        name = "greedy"

        def decide(self, request, view):
            return Decision(0, view.spec.prefill_engines)

    spec = make_spec(1, 1, gpus=1, decode_max_batch=1)
    sim = Simulator(spec, ScriptedAgents([[(100, 50)], [(100, 50)]]))
    with pytest.raises(ValueError, match="has no room"):
        sim.run(Greedy())


def test_decode_time_matches_closed_form():
    # One request alone: each of its 10 decode iterations runs at batch 1. Its
    # P->D transfer starts after the first of 4 layers and ends before the
    # prefill does, so it adds nothing.
    spec = make_spec(1, 1, gpus=1, decode_base_s=0.02, decode_per_seq_s=0.001,
                     rdma_write_us=1.0)
    compute = 100 * 1e9 / (0.5 * 1350e12)
    writes = math.ceil(100 / 64) * 4  # one RDMA write per block and layer
    transfer = 100 * 1000 / spec.node.cnic_kv_bytes_s + writes * 1e-6
    assert compute / 4 + transfer < compute
    m = _run(spec, [[(100, 11)]], seed=0).metrics
    assert m["tpot_mean_s"] == pytest.approx(0.021, rel=1e-9)


def test_slow_transfer_to_decode_holds_the_prefill_engine():
    # A slow CNIC: the P->D transfer outlasts the compute and delays both the
    # first decode step and the engine's next batch.
    spec = make_spec(1, 1, gpus=1, cnic_gb_s=0.001, cnic_kv_share=1.0, rdma_write_us=0.0,
                     decode_base_s=0.02, decode_per_seq_s=0.0)
    # The second agent arrives while the first one's batch computes.
    agents = ScriptedAgents([[(100, 2)], [(100, 2)]], arrivals=[0.0, 1e-6])
    sim = Simulator(spec, agents, SimOptions(timeline=True))
    first, second = sorted(sim.run(RandomPolicy(0)).timeline, key=lambda r: r[9])
    compute = 100 * 1e9 / (0.5 * 1350e12)
    transfer = 100 * 1000 / 1e6  # 0.1 s per request on a 1 MB/s lane
    assert first[18] == pytest.approx(compute / 4 + transfer + 0.02, rel=1e-9)
    assert second[15] == pytest.approx(compute / 4 + transfer, rel=1e-9)


def test_split_reads_whole_blocks_on_each_side():
    spec = make_spec(1, 1, gpus=1, block_tokens=64)
    m = _run(spec, [[(1000, 2), (10, 2)]], 0, (0.5,)).metrics
    hit_blocks = math.ceil(1002 / 64)
    de_tokens = round(0.5 * hit_blocks) * 64
    kvb = spec.model.kv_bytes_per_token
    assert m["read_bytes_de_side"] == de_tokens * kvb
    assert m["read_bytes_pe_side"] == (1002 - de_tokens) * kvb
