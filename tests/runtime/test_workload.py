"""Workloads: the agentic trajectory sets and the Mooncake trace loader."""

from __future__ import annotations

import heapq
import json
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pytest

from runtime.request import Request
from runtime.workload import (
    MAL_TOKENS,
    PAPER_STATS,
    SET_PARAMS,
    AgenticWorkload,
    BurstyArrivals,
    MixedWorkload,
    MooncakeTrace,
    Workload,
    trajectory_stats,
)
from runtime.workload.trajectories import PAPER_HIT_RATE_64K, generate_set


def drive(workload: Workload, service_s: float = 0.5) -> list[tuple[Request, float]]:
    """Run a workload on an ideal server of fixed service time; (request, finish) in order."""
    heap = [(r.arrival_s, r.request_id, r) for r in workload.initial_requests()]
    heapq.heapify(heap)
    done = []
    while heap:
        arrival, _, req = heapq.heappop(heap)
        finish = arrival + service_s
        done.append((req, finish))
        for nxt in workload.on_complete(req, finish):
            heapq.heappush(heap, (nxt.arrival_s, nxt.request_id, nxt))
    return done


def by_agent(done: list[tuple[Request, float]]) -> dict[int, list[Request]]:
    agents: dict[int, list[Request]] = {}
    for req, _ in done:
        agents.setdefault(req.agent_id, []).append(req)
    return agents


# --- agentic: calibration -------------------------------------------------------


@pytest.mark.parametrize("mal", list(MAL_TOKENS))
@pytest.mark.parametrize("stat", list(PAPER_STATS["64k"]))
def test_set_calibrated_within_10_percent(mal: str, stat: str) -> None:
    got = trajectory_stats(mal)
    want = PAPER_STATS[mal][stat]
    assert got["trajectories"] == 500
    assert got[stat] == pytest.approx(want, rel=0.10), f"{mal} {stat}: {got[stat]} vs {want}"


def test_hit_rate_64k() -> None:
    stats = trajectory_stats("64k")
    # Averaged per trajectory it matches the paper; token-weighted it is higher
    # (see the agentic module docstring for why both cannot match).
    assert stats["trajectory_hit_rate"] == pytest.approx(PAPER_HIT_RATE_64K, abs=0.005)
    assert PAPER_HIT_RATE_64K < stats["hit_rate"] < 0.996


@pytest.mark.parametrize("mal", list(MAL_TOKENS))
def test_set_respects_max_length(mal: str) -> None:
    assert trajectory_stats(mal)["max_total_tokens"] <= MAL_TOKENS[mal]


def test_set_generation_is_deterministic_and_case_insensitive() -> None:
    a = generate_set("32k", SET_PARAMS["32k"], 50, np.random.default_rng(5))
    b = generate_set("32k", SET_PARAMS["32k"], 50, np.random.default_rng(5))
    assert np.array_equal(a.appended, b.appended)
    assert np.array_equal(a.generated, b.generated)
    assert trajectory_stats("48K") == trajectory_stats("48k")


# --- agentic: the workload ------------------------------------------------------


def test_offline_turns_and_hits_stay_within_agent() -> None:
    wl = AgenticWorkload(520, "32k", seed=3)  # 20 agents get synthetic first turns
    first = wl.initial_requests()
    assert all(r.arrival_s == 0.0 for r in first) and len(first) == 520
    done = drive(wl)
    assert len(done) == wl.total_requests
    assert len({r.request_id for r, _ in done}) == len(done)
    for agent, turns in by_agent(done).items():
        assert [r.turn for r in turns] == list(range(wl.turns_of(agent)))
        assert turns[0].hit_tokens == 0
        for prev, cur in zip(turns, turns[1:], strict=False):
            assert cur.hit_tokens == prev.prompt_tokens + prev.gen_tokens
            assert cur.appended_tokens >= 1 and cur.gen_tokens >= 1
        assert turns[-1].total_tokens <= MAL_TOKENS["32k"]


def test_agents_beyond_500_reuse_trajectory_with_new_first_turn() -> None:
    wl = AgenticWorkload(1000, "64k", seed=1)
    agents = by_agent(drive(wl))
    same_first = 0
    for k in range(500):
        a, b = agents[k], agents[k + 500]
        assert len(a) == len(b)
        assert [r.appended_tokens for r in a[1:]] == [r.appended_tokens for r in b[1:]]
        assert [r.gen_tokens for r in a] == [r.gen_tokens for r in b]
        same_first += a[0].appended_tokens == b[0].appended_tokens
        assert b[-1].total_tokens <= MAL_TOKENS["64k"]
    assert same_first < 25


def test_same_seed_same_requests_other_seed_differs() -> None:
    def run(seed: int) -> list[tuple[Request, float]]:
        return drive(AgenticWorkload(600, "32k", seed=seed, tool_latency_s=1.0))

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_online_poisson_arrivals() -> None:
    aps, duration = 2.0, 300.0
    counts = []
    for seed in range(5):
        wl = AgenticWorkload(None, "32k", seed=seed, online=True, aps=aps, duration_s=duration)
        first = wl.initial_requests()
        arrivals = [r.arrival_s for r in first]
        assert arrivals == sorted(arrivals)
        assert all(0.0 <= t < duration for t in arrivals)
        assert [r.agent_id for r in first] == list(range(len(first)))
        counts.append(len(first))
    mean = aps * duration
    # Poisson: sd = sqrt(600) ≈ 24.5 per run; 5 sd per run, 3 sd for the mean of 5.
    assert all(abs(c - mean) < 5 * mean**0.5 for c in counts)
    assert abs(np.mean(counts) - mean) < 3 * (mean / 5) ** 0.5


def test_online_and_offline_argument_errors() -> None:
    with pytest.raises(ValueError, match="aps"):
        AgenticWorkload(None, online=True, duration_s=10.0)
    with pytest.raises(ValueError, match="aps"):
        AgenticWorkload(None, online=True, aps=0.0, duration_s=10.0)
    with pytest.raises(ValueError, match="duration_s"):
        AgenticWorkload(None, online=True, aps=1.0, duration_s=-1.0)
    with pytest.raises(ValueError, match="agents"):
        AgenticWorkload(0)
    with pytest.raises(ValueError, match="agents"):
        AgenticWorkload(None)
    with pytest.raises(ValueError, match="online"):
        AgenticWorkload(4, aps=1.0)
    with pytest.raises(ValueError, match="append_scale"):
        AgenticWorkload(4, append_scale=0.0)
    with pytest.raises(ValueError, match="tool_latency_s"):
        AgenticWorkload(4, tool_latency_s=-1.0)


def _window_dispersion(arrivals: np.ndarray, duration_s: float, window_s: float) -> float:
    """Variance / mean of the arrival counts per window (1 for a Poisson process)."""
    counts = np.bincount((arrivals // window_s).astype(np.int64),
                         minlength=int(duration_s // window_s))
    return float(counts.var() / counts.mean())


def test_bursty_process_keeps_the_mean_rate_over_a_long_window() -> None:
    aps, duration = 1.0, 400_000.0
    arrivals = BurstyArrivals().draw(np.random.default_rng(0), aps, duration)
    assert np.all(np.diff(arrivals) >= 0) and arrivals[0] >= 0 and arrivals[-1] < duration
    # sd of the realised rate here is about 1.4% (bursts of ~20 s, cycles of ~100 s)
    assert len(arrivals) / duration == pytest.approx(aps, rel=0.05)
    assert _window_dispersion(arrivals, duration, 10.0) > 5


def test_bursty_arrivals_are_overdispersed_poisson_are_not() -> None:
    aps, duration = 2.0, 20_000.0

    def arrivals(arrival: str) -> np.ndarray:
        wl = AgenticWorkload(None, "32k", seed=3, online=True, aps=aps, duration_s=duration,
                             arrival=arrival)
        first = wl.initial_requests()
        assert [r.agent_id for r in first] == list(range(len(first)))
        return np.array([r.arrival_s for r in first])

    poisson, bursty = arrivals("poisson"), arrivals("bursty")
    for times in (poisson, bursty):
        assert np.all(np.diff(times) >= 0) and times[-1] < duration
        assert len(times) / duration == pytest.approx(aps, rel=0.1)
    assert _window_dispersion(poisson, duration, 10.0) == pytest.approx(1.0, abs=0.15)
    assert _window_dispersion(bursty, duration, 10.0) > 5


def test_bursty_rates_and_period_lengths() -> None:
    b = BurstyArrivals(burst_s=10.0, burst_factor=3.0, burst_share=0.25)
    assert b.quiet_factor == pytest.approx((1 - 0.75) / 0.75)
    assert b.quiet_s == pytest.approx(30.0)
    # long-run mean of the modulated rate is the base rate
    assert 0.25 * 3.0 + 0.75 * b.quiet_factor == pytest.approx(1.0)
    assert BurstyArrivals(burst_factor=5.0, burst_share=0.2).quiet_factor == 0.0


def test_default_arrival_is_poisson_and_unchanged() -> None:
    def firsts(**kw: object) -> list[Request]:
        return AgenticWorkload(None, "32k", seed=5, online=True, aps=2.0, duration_s=100.0,
                               **kw).initial_requests()  # type: ignore[arg-type]

    default = AgenticWorkload(None, "32k", seed=5, online=True, aps=2.0, duration_s=100.0)
    assert default.name == "agentic-32k-online-2aps-100s"
    assert firsts(arrival="poisson") == firsts()
    assert firsts(arrival="bursty") != firsts()


def test_bursty_is_deterministic_and_named() -> None:
    def run(seed: int) -> list[tuple[Request, float]]:
        return drive(AgenticWorkload(None, "32k", seed=seed, online=True, aps=1.0,
                                     duration_s=60.0, arrival="bursty", burst_factor=2.0))

    assert run(4) == run(4)
    assert run(4) != run(5)
    wl = AgenticWorkload(None, "32k", online=True, aps=1.0, duration_s=60.0, arrival="bursty")
    assert wl.name == "agentic-32k-online-1aps-60s-bursty-20s-x4-0.2"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"arrival": "spiky"}, ["arrival", "'spiky'", "poisson, bursty"]),
    ({"arrival": "bursty", "burst_factor": 0.5}, ["burst_factor", ">= 1", "0.5"]),
    ({"arrival": "bursty", "burst_share": 0.0}, ["burst_share", "(0, 1)"]),
    ({"arrival": "bursty", "burst_share": 1.0}, ["burst_share", "(0, 1)"]),
    ({"arrival": "bursty", "burst_share": 0.3, "burst_factor": 4.0},
     ["burst_share × burst_factor", "<= 1", "quiet rate"]),
    ({"arrival": "bursty", "burst_s": 0.0}, ["burst_s", "> 0"]),
    ({"arrival": "bursty", "burst_factor": float("inf")}, ["burst_factor", "finite"]),
    ({"burst_factor": 2.0}, ["apply only to arrival='bursty'"]),
])
def test_bursty_argument_errors(kwargs: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        AgenticWorkload(None, "32k", online=True, aps=1.0, duration_s=10.0,
                        **kwargs)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value), str(info.value)


def test_bursty_is_online_only() -> None:
    with pytest.raises(ValueError, match="online=True"):
        AgenticWorkload(4, arrival="bursty")


def test_unknown_mal_names_value_and_choices() -> None:
    with pytest.raises(ValueError, match=r"'16k'.*32k, 48k, 64k"):
        AgenticWorkload(4, "16k")
    assert AgenticWorkload(4, "64K").mal == "64k"


def test_scaling_multiplies_per_turn_lengths() -> None:
    base = drive(AgenticWorkload(100, "48k"))
    scaled = drive(AgenticWorkload(100, "48k", append_scale=2.0, gen_scale=3.0))
    assert len(base) == len(scaled)
    for (b, _), (s, _) in zip(base, scaled, strict=True):
        assert (s.agent_id, s.turn) == (b.agent_id, b.turn)
        assert s.appended_tokens == 2 * b.appended_tokens
        assert s.gen_tokens == 3 * b.gen_tokens
    for turns in by_agent(scaled).values():
        for prev, cur in zip(turns, turns[1:], strict=False):
            assert cur.hit_tokens == prev.prompt_tokens + prev.gen_tokens
    half = drive(AgenticWorkload(100, "48k", append_scale=0.5, gen_scale=0.5))
    ratio = np.mean([r.appended_tokens for r, _ in half]) / np.mean(
        [r.appended_tokens for r, _ in base])
    assert ratio == pytest.approx(0.5, rel=0.02)
    assert min(r.gen_tokens for r, _ in half) >= 1


def test_no_delay_by_default() -> None:
    for turns in by_agent(drive(AgenticWorkload(20, "32k"), service_s=0.25)).values():
        assert all(cur.arrival_s == prev.arrival_s + 0.25
                   for prev, cur in zip(turns, turns[1:], strict=False))


def test_exponential_delays_applied() -> None:
    wl = AgenticWorkload(50, "32k", seed=2, tool_latency_s=2.0, think_time_s=3.0)
    gaps = []
    for agent, turns in by_agent(drive(wl, service_s=0.5)).items():
        assert turns[0].arrival_s == 0.0, agent
        gaps += [cur.arrival_s - (prev.arrival_s + 0.5) for prev, cur in
                 zip(turns, turns[1:], strict=False)]
    gaps_arr = np.array(gaps)
    assert (gaps_arr >= 0).all()
    assert gaps_arr.mean() == pytest.approx(5.0, rel=0.05)  # thousands of samples
    # Sum of two exponentials is not exponential: its variance is 2² + 3² = 13.
    assert gaps_arr.var() == pytest.approx(13.0, rel=0.15)


def test_large_offline_run_is_cheap() -> None:
    wl = AgenticWorkload(4096, "64k", seed=0)
    assert wl.total_requests == sum(wl.turns_of(k) for k in range(wl.agents))
    assert wl.name == "agentic-64k-offline-4096agents"
    req = wl.initial_requests()[4095]
    assert wl.on_complete(req, 1.0)[0].request_id == 4096


# --- Mooncake traces ------------------------------------------------------------


def write_trace(path: Path, rows: list[dict[str, object] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def row(ts: int, inp: int, hashes: list[int], out: int = 10) -> dict[str, object]:
    return {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": hashes}


def test_mooncake_hits_unlimited_storage(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", [
        row(0, 1024, [1, 2]),
        "",
        row(10, 1536, [1, 2, 3]),   # 2 leading blocks stored
        row(20, 1024, [1, 2]),      # all stored, capped at input - 1
        row(30, 700, [4, 2]),       # 2 is stored but not leading
        row(40, 600, [1, 9], out=0),
    ])
    trace = MooncakeTrace(path, time_scale=2.0)
    reqs = trace.initial_requests()
    assert [r.hit_tokens for r in reqs] == [0, 1024, 1023, 0, 512]
    assert [r.appended_tokens for r in reqs] == [1024, 512, 1, 700, 88]
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert [r.agent_id for r in reqs] == [0, 1, 2, 3, 4]
    assert [r.request_id for r in reqs] == [0, 1, 2, 3, 4]
    assert {r.turn for r in reqs} == {0}
    assert reqs[4].gen_tokens == 1 and reqs[0].gen_tokens == 10
    assert reqs[1].block_hashes == (1, 2, 3)
    assert trace.on_complete(reqs[0], 1.0) == []
    stats = trace.stats()
    assert stats["requests"] == 5
    assert stats["block_reuse"] == pytest.approx(5 / 11)
    assert stats["mean_input"] == pytest.approx((1024 + 1536 + 1024 + 700 + 600) / 5)
    assert len(MooncakeTrace(path, limit=2).initial_requests()) == 2


def test_mooncake_lru_eviction(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", [
        row(0, 1024, [1, 2]),   # store (LRU -> MRU): 2 1
        row(1, 1024, [3, 4]),   # 2 1 4 3 -> evict 2: 1 4 3
        row(2, 1024, [1, 2]),   # hit [1]; 4 3 1; store: 4 3 2 1 -> evict 4: 3 2 1
        row(3, 1024, [3, 4]),   # hit [3]; 2 1 3; store: 2 1 4 3 -> evict 2: 1 4 3
        row(4, 1024, [1, 2]),   # hit [1]; 4 3 1; store: 4 3 2 1 -> evict 4: 3 2 1
        row(5, 1024, [4, 3]),   # 4 was evicted by row 4's write-back
    ])
    lru = [r.hit_tokens for r in MooncakeTrace(path, storage_capacity_blocks=3).initial_requests()]
    assert lru == [0, 0, 512, 512, 512, 0]
    full = [r.hit_tokens for r in MooncakeTrace(path).initial_requests()]
    assert full == [0, 0, 1023, 1023, 1023, 1023]
    none = [r.hit_tokens for r in MooncakeTrace(path, storage_capacity_blocks=0).initial_requests()]
    assert none == [0] * 6


def test_mooncake_lru_evicts_prefix_tails_first(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", [row(0, 2000, [1, 2, 3]), row(1, 2000, [1, 2, 3])])
    reqs = MooncakeTrace(path, storage_capacity_blocks=2).initial_requests()
    assert [r.hit_tokens for r in reqs] == [0, 1024]


BAD_LINES = {
    "bad json": ('{"timestamp": 1,', "invalid JSON"),
    "not an object": ("[1, 2]", "JSON object"),
    "missing timestamp": ('{"input_length": 5, "output_length": 1, "hash_ids": []}',
                          "'timestamp'"),
    "missing input": ('{"timestamp": 5, "output_length": 1, "hash_ids": []}', "'input_length'"),
    "missing output": ('{"timestamp": 5, "input_length": 1, "hash_ids": []}', "'output_length'"),
    "missing hashes": ('{"timestamp": 5, "input_length": 1, "output_length": 1}', "'hash_ids'"),
    "negative timestamp": (json.dumps(row(-1, 5, [])), "timestamp"),
    "negative output": (json.dumps(row(5, 5, [], out=-2)), "output_length"),
    "zero input": (json.dumps(row(5, 0, [])), "input_length"),
    "float input": (json.dumps(row(5, 5, [])).replace('"input_length": 5', '"input_length": 5.5'),
                    "input_length"),
    "string output": (json.dumps(row(5, 5, [])).replace('"output_length": 10',
                                                        '"output_length": "10"'),
                      "output_length"),
    "bool timestamp": (json.dumps(row(5, 5, [])).replace('"timestamp": 5', '"timestamp": true'),
                       "timestamp"),
    "hashes not a list": (json.dumps(row(5, 5, [])).replace("[]", '"abc"'), "hash_ids"),
    "hashes not ints": (json.dumps(row(5, 5, [])).replace("[]", '[1, "x"]'), "hash_ids"),
    "timestamp backwards": (json.dumps(row(0, 5, [])), "backwards"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_mooncake_malformed_line_names_file_and_line(tmp_path: Path, case: str) -> None:
    bad, what = BAD_LINES[case]
    path = write_trace(tmp_path / "bad.jsonl", [row(0, 100, [1]), "", row(3, 100, [1]), bad])
    with pytest.raises(ValueError) as err:
        MooncakeTrace(path)
    assert f"{path}:4:" in str(err.value)
    assert what in str(err.value)


def test_mooncake_empty_trace_and_bad_options(tmp_path: Path) -> None:
    empty = write_trace(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(ValueError, match="no requests"):
        MooncakeTrace(empty)
    good = write_trace(tmp_path / "g.jsonl", [row(0, 100, [1])])
    with pytest.raises(ValueError, match="storage_capacity_blocks"):
        MooncakeTrace(good, storage_capacity_blocks=-1)
    with pytest.raises(ValueError, match="time_scale"):
        MooncakeTrace(good, time_scale=0.0)
    with pytest.raises(ValueError, match="limit"):
        MooncakeTrace(good, limit=0)


def generated_trace(path: Path, n: int = 200) -> Path:
    """``n`` requests of 4 blocks, one every 0.5 s; every other request repeats the
    previous one's first 3 blocks, so 3 of every 8 blocks are a stored leading prefix."""
    lines: list[dict[str, object]] = []
    next_id = 0
    for i in range(n):
        if i % 2:
            ids = [*lines[-1]["hash_ids"][:3], next_id]  # type: ignore[index]
            next_id += 1
        else:
            ids = list(range(next_id, next_id + 4))
            next_id += 4
        lines.append({"timestamp": 500 * i, "input_length": 2000, "output_length": 10,
                      "hash_ids": ids})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_generated_mooncake_trace_loads_with_the_stats_it_was_built_with(tmp_path) -> None:
    path = generated_trace(tmp_path / "trace.jsonl")
    stats = MooncakeTrace(path).stats()
    assert stats["requests"] == 200
    assert stats["mean_input"] == 2000 and stats["mean_output"] == 10
    assert stats["duration_s"] == pytest.approx(99.5)
    assert stats["block_reuse"] == pytest.approx(3 / 8)
    assert all(r.appended_tokens >= 1 for r in MooncakeTrace(path).initial_requests())
    # A store of one block keeps no 3-block prefix: less reuse.
    assert MooncakeTrace(path, storage_capacity_blocks=1).stats()["block_reuse"] < 3 / 8


# --- mixed workloads -------------------------------------------------------------

class Recording:
    """Wraps a workload and records which requests its ``on_complete`` is shown."""

    def __init__(self, inner: Workload) -> None:
        self.inner = inner
        self.name = inner.name
        self.total_requests: int = inner.total_requests  # type: ignore[attr-defined]
        self.issued: list[Request] = []
        self.completed: list[Request] = []

    def initial_requests(self) -> list[Request]:
        reqs = self.inner.initial_requests()
        self.issued += reqs
        return reqs

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        self.completed.append(request)
        reqs = self.inner.on_complete(request, finish_s)
        self.issued += reqs
        return reqs


def _mixed_parts(tmp_path: Path) -> list[Recording]:
    path = write_trace(tmp_path / "t.jsonl", [
        row(0, 1024, [1, 2]), row(500, 1536, [1, 2, 3]), row(1500, 700, [4]),
        row(3000, 1024, [1, 2], out=3)])
    return [Recording(AgenticWorkload(3, "32k", seed=1, tool_latency_s=0.5)),
            Recording(MooncakeTrace(path))]


def test_mixed_ids_unique_and_routed_to_their_part(tmp_path: Path) -> None:
    parts = _mixed_parts(tmp_path)
    mixed = MixedWorkload(parts)
    assert mixed.name == "mixed(agentic-32k-offline-3agents+mooncake-t)"
    done = drive(mixed)
    ids = [r.request_id for r, _ in done]
    assert len(ids) == len(set(ids))
    assert len(done) == mixed.total_requests == sum(p.total_requests for p in parts)
    # each part saw exactly its own requests, as the very objects it issued
    for p, part in enumerate(parts):
        assert len(part.completed) == len(part.issued) == part.total_requests
        assert {id(r) for r in part.completed} == {id(r) for r in part.issued}
        mine = [r for r, _ in done if mixed.part_of(r.request_id) == p]
        assert len(mine) == part.total_requests
    # agent ids do not collide: agentic agents 0..2 and trace agents 0..3 stay apart
    agents_of = [{r.agent_id for r, _ in done if mixed.part_of(r.request_id) == p}
                 for p in range(2)]
    assert not agents_of[0] & agents_of[1]
    assert len(agents_of[0]) == 3 and len(agents_of[1]) == 4
    # ids are ``own × parts + part``; everything else is the part's own
    for r, _ in done:
        p = mixed.part_of(r.request_id)
        own = {q.request_id: q for q in parts[p].issued}[r.request_id // 2]
        assert r.agent_id == own.agent_id * 2 + p
        assert dataclasses_replace(r, request_id=own.request_id, agent_id=own.agent_id) == own


def test_mixed_initial_requests_merge_by_arrival(tmp_path: Path) -> None:
    parts = _mixed_parts(tmp_path)
    firsts = MixedWorkload(parts).initial_requests()
    assert [r.arrival_s for r in firsts] == sorted(r.arrival_s for r in firsts)
    own = sorted((r.arrival_s, r.hit_tokens, r.appended_tokens, r.gen_tokens, r.turn)
                 for part in parts for r in part.issued)
    assert sorted((r.arrival_s, r.hit_tokens, r.appended_tokens, r.gen_tokens, r.turn)
                  for r in firsts) == own


def test_mixed_is_deterministic(tmp_path: Path) -> None:
    def run() -> list[tuple[Request, float]]:
        return drive(MixedWorkload([part.inner for part in _mixed_parts(tmp_path)]))

    assert run() == run()


def test_mixed_refuses_unknown_and_repeated_completions(tmp_path: Path) -> None:
    mixed = MixedWorkload(_mixed_parts(tmp_path))
    first = mixed.initial_requests()[0]
    mixed.on_complete(first, 1.0)
    with pytest.raises(ValueError, match="already completed"):
        mixed.on_complete(first, 2.0)
    with pytest.raises(ValueError, match="not issued"):
        mixed.on_complete(dataclasses_replace(first, request_id=10_001), 2.0)


def test_mixed_needs_workloads() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        MixedWorkload([])
    with pytest.raises(ValueError, match=r"parts\[1\].*not a workload"):
        MixedWorkload([AgenticWorkload(1), object()])  # type: ignore[list-item]


def test_mixed_agents_with_a_trace(tmp_path) -> None:
    agents = AgenticWorkload(None, "64k", seed=0, online=True, aps=0.5, duration_s=200.0)
    trace = MooncakeTrace(generated_trace(tmp_path / "trace.jsonl", 600), limit=400,
                          time_scale=0.5)
    mixed = MixedWorkload([agents, trace])
    assert mixed.name.startswith("mixed(agentic-64k-online") and "+mooncake-" in mixed.name
    firsts = mixed.initial_requests()
    assert len(firsts) == agents.agents + 400
    assert len({r.request_id for r in firsts}) == len(firsts)
    assert mixed.total_requests == agents.total_requests + 400


def test_shuffle_draws_a_seeded_set_of_distinct_trajectories():
    plain = AgenticWorkload(40, "32k", 0)
    a = AgenticWorkload(40, "32k", 0, shuffle=True)
    b = AgenticWorkload(40, "32k", 0, shuffle=True)
    c = AgenticWorkload(40, "32k", 1, shuffle=True)
    assert list(plain._traj) == list(range(40))
    assert list(a._traj) == list(b._traj) != list(c._traj)
    assert len(set(a._traj.tolist())) == 40  # no trajectory twice while the set lasts
    assert a.name.endswith("-shuffled")
    with pytest.raises(ValueError, match="shuffle"):
        AgenticWorkload(4, "32k", 0, shuffle=1)


def test_shuffle_keeps_the_online_arrival_stream():
    kw = dict(online=True, aps=1.0, duration_s=60.0)
    plain = AgenticWorkload(None, "32k", 5, **kw)
    mixed = AgenticWorkload(None, "32k", 5, shuffle=True, **kw)
    assert [r.arrival_s for r in plain.initial_requests()] == \
        [r.arrival_s for r in mixed.initial_requests()]
