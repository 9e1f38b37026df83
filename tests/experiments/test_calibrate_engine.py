"""``calibrate engine``: the fit recovers the values synthetic measurements were made
from, the preset it writes loads and its cost model predicts the measurements, and bad
input is refused naming what is wrong."""

from __future__ import annotations

import json
import math

import pytest

from experiments.calibration.engine import (
    calibrate_engine,
    fit_decode,
    load_measurements,
    model_flops,
    nnls_relative,
    prefill_flops,
    render,
)
from experiments.calibration.preset_file import set_value
from experiments.cli import main
from runtime.cost import CostModel
from runtime.preset import load_preset

MODEL = {"size": "tiny", "dtype": "float32", "vocab": 1024, "dim": 256, "layers": 4,
         "heads": 4, "kv_heads": 2, "ffn_dim": 704, "max_context": 8192,
         "rope_theta": 10000.0, "norm_eps": 1e-5, "seed": 0, "head_dim": 64,
         "kv_bytes_per_token": 4 * 2 * 2 * 64 * 4, "params": 3_000_000}
BLOCK = 16
PEAK = 2.0e12  # FLOP/s at the best batch
EFF = {64: 0.2, 256: 0.5, 1024: 0.8, 4096: 1.0}
DECODE = (0.002, 5e-5, 2e-9)
SUBMIT_S, BW = 5e-6, 4e9


def _decode_s(b, c):
    return DECODE[0] + DECODE[1] * b + DECODE[2] * b * c


def synthetic():
    """Measurements made from known values, in the bench's format."""
    dense, attn = model_flops(MODEL)
    prefill = []
    for tokens, eff in EFF.items():
        n = min(tokens, 256)
        for c in (0, 1024, 4096):
            p = {"requests": tokens // n, "new_tokens": n, "context": c,
                 "batch_tokens": tokens}
            prefill.append({**p, "seconds": prefill_flops(p, dense, attn) / (PEAK * eff)})
    decode = [{"batch": b, "context": c, "seconds": _decode_s(b, c)}
              for b in (1, 4, 16, 64) for c in (128, 1024, 8192)]
    block_bytes = BLOCK * MODEL["kv_bytes_per_token"] // MODEL["layers"]
    copy = [{"copies": 256, "bytes_per_copy": block_bytes, "submit_s_per_copy": SUBMIT_S,
             "bytes_s": block_bytes / (block_bytes / BW + SUBMIT_S)},
            {"copies": 16, "bytes_per_copy": 64 * block_bytes, "submit_s_per_copy": 2 * SUBMIT_S,
             "bytes_s": BW}]
    layerwise = [{"context": 4096, "new_tokens": 256, "compute_s": 0.04, "copy_s": 0.02,
                  "serial_s": 0.06, "overlapped_s": 0.045, "hidden_share": 0.75}]
    return {"schema": 1, "device": "cpu", "torch": "x", "model": dict(MODEL), "block_tokens": BLOCK,
            "repeats": 3, "prefill": prefill, "decode": decode, "copy": copy,
            "layerwise": layerwise}


def _write(tmp_path, data, name="m.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_nnls_keeps_coefficients_non_negative_and_the_base_positive():
    # The time falls with batch: unconstrained, per_seq would be negative.
    features = [(1.0, b, 0.0) for b in (1, 2, 4, 8)]
    coef = nnls_relative(features, [0.010, 0.009, 0.008, 0.007])
    assert coef[0] > 0 and coef[1] == 0 and coef[2] == 0
    assert coef[0] == pytest.approx(0.0083, rel=0.05)


def test_decode_fit_recovers_known_values():
    assert fit_decode(synthetic()["decode"]) == pytest.approx(DECODE, rel=1e-6)


def test_fit_recovers_the_values_and_the_preset_carries_them(tmp_path):
    out = tmp_path / "engine-tiny.toml"
    payload = calibrate_engine(_write(tmp_path, synthetic()), out)
    spec = load_preset(str(out))
    assert spec.name == "engine-tiny" and spec.block_tokens == BLOCK
    model, node = spec.model, spec.node
    assert (model.layers, model.kv_bytes_per_token) == (4, MODEL["kv_bytes_per_token"])
    dense, attn = model_flops(MODEL)
    assert model.dense_flops_per_token == pytest.approx(dense, rel=1e-5)
    assert model.attn_flops_per_ctx_token == 4 * 4 * 4 * 64
    assert node.gpu_tflops == pytest.approx(PEAK / 1e12, rel=0.01)
    assert [x for x, _ in model.prefill_efficiency] == list(EFF)
    assert [y for _, y in model.prefill_efficiency] == pytest.approx(list(EFF.values()),
                                                                    rel=0.01)
    assert (model.decode_base_s, model.decode_per_seq_s,
            model.decode_per_ctx_token_s) == pytest.approx(DECODE, rel=0.01)
    assert node.h2d_copy_us == pytest.approx(SUBMIT_S * 1e6, rel=0.01)
    assert node.pcie_gb_s == pytest.approx(BW / 1e9, rel=0.01)
    # The rest is the base preset's.
    tiny = load_preset("tiny")
    assert (spec.prefill_nodes, node.snic_gb_s, spec.slo_tpot_s) == (
        tiny.prefill_nodes, tiny.node.snic_gb_s, tiny.slo_tpot_s)
    text = out.read_text()
    assert "# measured: dualpath bench engine on cpu, tiny float32, medians of up to 3 runs" in text
    # The simulator's cost model of that preset predicts every measurement.
    for kind in ("prefill", "decode"):
        assert payload["errors"][kind]["max_abs_pct"] < 0.01
    assert payload["errors"]["copy"]["max_abs_pct"] < 3
    cost = CostModel(spec)
    for p in synthetic()["decode"]:
        assert cost.decode_iteration_s(p["batch"], p["batch"] * p["context"]) == pytest.approx(
            p["seconds"], rel=0.001)
    (lw,) = payload["layerwise"]
    assert lw["hidden_share"] == pytest.approx(0.75)
    # layer-wise: max(copy / 4 + compute, copy + compute / 4) = 0.045 s of 0.06 serial
    assert lw["model_share"] == pytest.approx(0.75)
    text = render(payload)
    assert "prefill: mean |error| 0.0%" in text and f"wrote {out}" in text


def test_cli_writes_the_preset_and_prints_json(tmp_path, capsys):
    out = tmp_path / "fit.toml"
    argv = ["calibrate", "engine", "--measurements", str(_write(tmp_path, synthetic())),
            "--out", str(out), "--base", "ds27b-1p1d", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["out"] == str(out) and payload["errors"]["decode"]["max_abs_pct"] < 0.01
    spec = load_preset(str(out))
    assert spec.name == "fit" and spec.model.indexer_flops_per_ctx_token == 0
    assert spec.node.gpus == load_preset("ds27b-1p1d").node.gpus


def _without_prefill(d):
    d["prefill"] = []


def _negative_seconds(d):
    d["decode"][2]["seconds"] = -0.1


def _wrong_schema(d):
    d["schema"] = 7


def _no_heads(d):
    del d["model"]["heads"]


def _string_bytes(d):
    d["copy"][0]["bytes_s"] = "fast"


@pytest.mark.parametrize(("spoil", "message"), [
    (_without_prefill, "prefill: no prefill points"),
    (_negative_seconds, "decode[2].seconds: must be > 0, got -0.1"),
    (_wrong_schema, "schema: expected 1"),
    (_no_heads, "model.heads: missing"),
    (_string_bytes, "copy[0].bytes_s: must be a finite number, got 'fast'"),
])
def test_bad_measurements_are_refused_naming_the_problem(tmp_path, capsys, spoil, message):
    data = synthetic()
    spoil(data)
    path = _write(tmp_path, data)
    out = tmp_path / "x.toml"
    assert main(["calibrate", "engine", "--measurements", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {message}" in err
    assert not out.exists()


def test_missing_file_and_missing_options_are_refused(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["calibrate", "engine", "--measurements", str(missing), "--out",
                 str(tmp_path / "x.toml")]) == 2
    assert f"{missing}: measurements file not found" in capsys.readouterr().err
    assert main(["calibrate", "engine", "--out", str(tmp_path / "x.toml")]) == 2
    assert "needs --measurements" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=f"{bad}: not a JSON measurements file"):
        load_measurements(bad)


def test_a_top_level_key_is_replaced_or_added_before_the_first_table():
    text = "# why\nname = \"a\"\nx = 1\n\n[node]\ngpus = 2\n"
    assert set_value(text, "name", '"b"', "new") == (
        "# new\nname = \"b\"\nx = 1\n\n[node]\ngpus = 2\n")
    added = set_value(text, "block_tokens", "64", "bench")
    assert added.index("block_tokens = 64") < added.index("[node]")
    assert math.isclose(load_toml_value(added, "block_tokens"), 64)


def load_toml_value(text, key):
    import tomllib

    return tomllib.loads(text)[key]
