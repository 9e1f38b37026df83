"""The cost model: FLOPs, efficiency, decode iterations and per-piece submission costs."""

from __future__ import annotations

import pytest

from runtime.cost import Chunk, CostModel
from runtime.errors import ConfigError
from runtime.model import ModelSpec
from runtime.preset import load_preset
from tests.builders import make_spec


def test_deepseek_prefill_flops_match_the_papers_derivation():
    model = load_preset("ds660b-2p4d").model
    for context, gflop in ((16_000, 125), (32_700, 141), (64_000, 174)):
        assert model.prefill_flops_per_token(context) / 1e9 == pytest.approx(gflop, rel=0.02)


def test_efficiency_interpolates_and_holds_flat_outside_the_table():
    model = ModelSpec(name="m", layers=1, kv_bytes_per_token=1, dense_flops_per_token=1.0,
                      attn_flops_per_ctx_token=0.0,
                      prefill_efficiency=((100, 0.1), (1100, 0.5)))
    assert model.efficiency(10) == 0.1
    assert model.efficiency(600) == pytest.approx(0.3)
    assert model.efficiency(10_000) == 0.5


@pytest.mark.parametrize("table", [((100, 0.1), (50, 0.2)), ((100, 1.5),), ()])
def test_bad_efficiency_table_is_refused(table):
    with pytest.raises(ConfigError, match="prefill_efficiency"):
        ModelSpec(name="m", layers=1, kv_bytes_per_token=1, dense_flops_per_token=1.0,
                  attn_flops_per_ctx_token=0.0, prefill_efficiency=table)


def test_prefill_time_is_flops_over_achieved_rate():
    spec = make_spec(attn_flops_per_ctx_token=1e6)  # 1 GFLOP dense, half of 1,350 TFLOP/s
    cost = CostModel(spec)
    chunks = [Chunk(100, 1000), Chunk(50, 0)]
    flops = 100 * (1e9 + 1e6 * 1050) + 50 * (1e9 + 1e6 * 25)
    assert cost.prefill_s(chunks) == pytest.approx(flops / (0.5 * 1350e12))
    assert cost.prefill_s([]) == 0.0


def test_sparse_attention_stops_growing_at_its_window():
    model = load_preset("ds660b-2p4d").model
    beyond = model.attention_flops_per_token(100_000) - model.attention_flops_per_token(50_000)
    # Past the window only the indexer grows with the context.
    assert beyond == pytest.approx(model.indexer_flops_per_ctx_token * 50_000)


def test_submission_costs_count_one_piece_per_block_and_layer():
    spec = make_spec(block_tokens=64, layers=4, kv_bytes_per_token=1000,
                     h2d_copy_us=5.0, rdma_write_us=1.0)
    cost = CostModel(spec)
    nbytes = 130 * 1000  # 130 tokens: 3 blocks
    assert cost.layer_pieces(nbytes) == 12
    assert cost.h2d_overhead_s(nbytes) == pytest.approx(12 * 5e-6)
    assert cost.rdma_overhead_s(nbytes) == pytest.approx(12 * 1e-6)


def test_decode_iteration_and_readable_tokens():
    spec = make_spec(decode_base_s=0.03, decode_per_seq_s=0.001, decode_per_ctx_token_s=1e-8,
                     snic_gb_s=10.0, kv_bytes_per_token=1000)
    cost = CostModel(spec)
    assert cost.decode_iteration_s(4, 1e5) == pytest.approx(0.03 + 0.004 + 0.001)
    assert cost.tokens_readable(3.0) == pytest.approx(3.0 * 10e9 / 1000)
