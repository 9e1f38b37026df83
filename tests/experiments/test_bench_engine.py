"""``bench engine --quick`` on the CPU: the measurements file has the schema ``calibrate
engine`` reads, its times are positive and ordered as work grows, and fitting a preset to
it runs end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.calibration.engine import calibrate_engine, load_measurements
from experiments.cli import main
from runtime.preset import load_preset
from runtime.transformer.config import TransformerConfig, config_for


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick bench's file and its printed table (run once for the module)."""
    out = tmp_path_factory.mktemp("bench") / "engine.json"
    import contextlib
    import io

    text = io.StringIO()
    threads = torch.get_num_threads()
    # One thread: the test host's cores are shared, and oversubscribed OpenMP threads
    # make single runs hundreds of times slower.
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(text):
            assert main(["bench", "engine", "--quick", "--size", "tiny", "--device", "cpu",
                         "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, text.getvalue()


def test_the_file_has_the_schema_and_the_model(quick):
    out, text = quick
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["device"] == "cpu" and data["quick"] is True
    assert data["threads"] == 1
    config = config_for("tiny")
    model = data["model"]
    for field in TransformerConfig.__dataclass_fields__:
        assert field in model
    assert model["size"] == "tiny" and model["layers"] == config.layers
    assert model["kv_bytes_per_token"] == config.kv_bytes_per_token
    assert model["params"] == config.params
    assert load_measurements(out) == data  # what calibrate engine accepts
    for kind in ("prefill", "decode", "copy", "layerwise"):
        assert data[kind], kind
    for p in data["prefill"]:
        assert p["batch_tokens"] == p["requests"] * p["new_tokens"] and p["seconds"] > 0
    assert all(p["seconds"] > 0 for p in data["decode"])
    slice_bytes = data["block_tokens"] * config.layer_kv_bytes_per_token
    assert data["copy"][0]["bytes_per_copy"] == slice_bytes
    assert all(c["submit_s_per_copy"] > 0 and c["bytes_s"] > 0 for c in data["copy"])
    for lw in data["layerwise"]:
        assert min(lw["compute_s"], lw["copy_s"], lw["serial_s"], lw["overlapped_s"]) > 0
        assert lw["hidden_share"] == pytest.approx(
            (lw["serial_s"] - lw["overlapped_s"]) / lw["copy_s"])
    for heading in ("prefill tokens/s", "decode step ms", "host-to-device copies",
                    "layer-wise prefill", f"wrote {out}"):
        assert heading in text


def test_more_work_takes_longer(quick):
    data = json.loads(quick[0].read_text())
    by_context: dict[int, list[tuple[int, float]]] = {}
    for p in data["prefill"]:
        by_context.setdefault(p["context"], []).append((p["batch_tokens"], p["seconds"]))
    for points in by_context.values():
        points.sort()
        # the largest batch takes longer than the smallest (16x the tokens)
        assert points[-1][1] > points[0][1], points
    decode = {(p["batch"], p["context"]): p["seconds"] for p in data["decode"]}
    batches = sorted({b for b, _ in decode})
    contexts = sorted({c for _, c in decode})
    assert decode[batches[-1], contexts[-1]] > decode[batches[0], contexts[0]]
    small, big = data["copy"][0], max(data["copy"], key=lambda c: c["bytes_per_copy"])
    assert big["bytes_per_copy"] >= 16 * small["bytes_per_copy"]
    # a copy of 16x (or more) the bytes takes longer than a block-layer slice's
    assert (big["bytes_per_copy"] / big["bytes_s"] > small["bytes_per_copy"] / small["bytes_s"])


def test_fitting_the_quick_bench_runs_end_to_end(quick, tmp_path):
    out = tmp_path / "cpu-tiny.toml"
    payload = calibrate_engine(quick[0], out)
    spec = load_preset(str(out))
    assert spec.name == "cpu-tiny" and spec.model.layers == config_for("tiny").layers
    assert spec.model.decode_base_s > 0 and spec.node.gpu_tflops > 0
    effs = [y for _, y in spec.model.prefill_efficiency]
    assert all(0 < y <= 1 for y in effs)
    assert [x for x, _ in spec.model.prefill_efficiency] == sorted(
        {p["batch_tokens"] for p in json.loads(quick[0].read_text())["prefill"]})
    for kind in ("prefill", "decode", "copy"):
        errors = payload["errors"][kind]
        assert 0 <= errors["mean_abs_pct"] <= errors["max_abs_pct"]
        assert math.isfinite(errors["max_abs_pct"])
