"""The model engine: a real transformer computes on the KV both paths deliver, and every
generated token is checked against a float64 recomputation."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.decision import Decision
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.router import Router
from runtime.preset import load_preset
from runtime.request import Request
from runtime.view import ClusterView
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.mooncake import MooncakeTrace

# Engines 0, 1 prefill; 2, 3 decode. 256-token blocks: a context spans several, the
# last one partial (the decode side's write-back completes it turn after turn).
SPEC = load_preset("tiny", ("block_tokens=256",))
MODEL = LiveOptions(engine="model", bytes_scale=1)


class FixedPath:
    """Every request on prefill engine 0 and decode engine 2, ``share`` of its hit blocks
    by the decode side: the path under test, and nothing else, differs between runs."""

    def __init__(self, share: float) -> None:
        self.name = f"fixed-{share:g}"
        self.share = share

    def decide(self, request: Request, view: ClusterView) -> Decision:
        return Decision(0, 2, self.share)


def _workload() -> AgenticWorkload:
    # Two agents with short turns (contexts of a few 1,024-token blocks, so the float64
    # check stays quick): every turn still hits its agent's whole earlier context.
    return AgenticWorkload(2, "32k", 0, append_scale=0.05, gen_scale=0.05)


def _run(share: float) -> tuple[dict[str, Any], dict[tuple[int, int], list[int]]]:
    routers: list[Router] = []
    metrics = LiveCluster(SPEC, MODEL).run(_workload(), local_decider(FixedPath(share)),
                                           router_hook=routers.append)
    entries = routers[0].entries.values()
    tokens = {(e.request.agent_id, e.request.turn): e.generated for e in entries}
    metrics["most_hit_blocks"] = max(e.request.hit_tokens for e in entries) / 256
    return metrics, tokens


@pytest.fixture(scope="module")
def runs() -> dict[float, tuple[dict[str, Any], dict[tuple[int, int], list[int]]]]:
    return {share: _run(share) for share in (0.0, 1.0)}


def test_every_token_is_checked_and_matches_float64(runs) -> None:
    for metrics, tokens in runs.values():
        live = metrics["live"]
        assert metrics["engine"] == "model"
        assert metrics["lost"] == 0 and metrics["completed"] == metrics["admitted"] > 10
        generated = sum(len(t) for t in tokens.values())
        assert live["tokens_generated"] == live["tokens_checked"] == generated > 0
        assert live["token_mismatches"] == 0
        assert live["blocks_verified"] > 0 and live.get("checksum_failures", 0) == 0
        assert metrics["most_hit_blocks"] > 3
        # Each request generated exactly what it asked for.
        assert all(len(t) > 0 for t in tokens.values())


def test_the_two_paths_give_identical_tokens(runs) -> None:
    pe_metrics, pe_tokens = runs[0.0]
    de_metrics, de_tokens = runs[1.0]
    assert pe_tokens == de_tokens
    # The paths really differed: the decode side read the hit blocks in one run only.
    assert pe_metrics["read_bytes_de_side"] == 0.0 < de_metrics["read_bytes_de_side"]


def test_model_options_are_checked() -> None:
    with pytest.raises(ValueError, match="bytes_scale must be 1"):
        LiveOptions(engine="model", bytes_scale=32)
    with pytest.raises(ValueError, match="oracle"):
        LiveOptions(engine="model", bytes_scale=1, oracle=True)
    with pytest.raises(ValueError, match="engine 'gpu'"):
        LiveOptions(engine="gpu")
    with pytest.raises(ValueError, match="huge"):
        LiveCluster(SPEC, LiveOptions(engine="model", bytes_scale=1, model_size="huge"))
    cached = load_preset("tiny", ("block_tokens=256", "node.dram_cache_gb=0.05"))
    with pytest.raises(ValueError, match="caches"):
        LiveCluster(cached, MODEL)


def test_a_trace_cannot_run_on_the_model_engine(tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 600, "output_length": 4, '
                     '"hash_ids": [1, 2]}\n')
    workload = MooncakeTrace(trace)
    with pytest.raises(ValueError, match="MooncakeTrace"):
        LiveCluster(SPEC, MODEL).run(workload, local_decider(FixedPath(0.0)))


def test_the_model_shape_reaches_the_cluster() -> None:
    from runtime.transformer import config_for

    config = config_for("tiny")
    spec = LiveCluster(SPEC, MODEL).spec
    assert spec.model.layers == config.layers
    assert spec.model.kv_bytes_per_token == config.kv_bytes_per_token
    assert MODEL.real_block_bytes(spec) == SPEC.block_tokens * config.kv_bytes_per_token
