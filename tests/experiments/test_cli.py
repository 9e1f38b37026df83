"""The dualpath command line: JSON output, determinism, every preset, clear errors."""

from __future__ import annotations

import csv
import json

import pytest

from experiments.cli import main
from runtime.preset import list_presets

NONDETERMINISTIC = ("wall_s", "sim_requests_per_s")


def _json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # stdout holds exactly one JSON object


def _stable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in NONDETERMINISTIC}


def test_simulate_json_is_deterministic(capsys):
    argv = ("simulate", "--preset", "tiny", "--agents", "6", "--mal", "32k", "--json")
    a, b = _json(capsys, *argv), _json(capsys, *argv)
    assert _stable(a) == _stable(b)
    for key in ("jct_s", "jct_mean_s", "latency_mean_s", "throughput_tok_s", "ttft_mean_s",
                "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "slo_attainment",
                "snic_util", "cnic_util", "snic_max_over_avg", "requests", "wall_s",
                "sim_requests_per_s"):
        assert key in a
    assert a["requests"] > 6


def test_seed_changes_the_workload(capsys):
    base = ("simulate", "--preset", "tiny", "--agents", "600", "--mal", "32k", "--json")
    a = _json(capsys, *base, "--seed", "0")
    b = _json(capsys, *base, "--seed", "1")
    assert a["jct_s"] != b["jct_s"]


@pytest.mark.parametrize("preset", list_presets())
def test_simulate_and_ablation_run_on_every_preset(capsys, preset):
    m = _json(capsys, "simulate", "--preset", preset, "--agents", "3", "--mal", "32k", "--json")
    assert m["requests"] > 0 and m["jct_s"] > 0
    ab = _json(capsys, "ablation", "--preset", preset, "--agents", "3", "--mal", "32k",
               "--jobs", "1", "--json")
    assert [s["name"] for s in ab["steps"]] == [
        "baseline", "+layerwise", "+dual-path", "+scheduler", "oracle"]
    assert all(s["jct_s"] > 0 for s in ab["steps"])


def test_spec_switches_match_command_line_switches(capsys):
    base = ("simulate", "--preset", "tiny", "--agents", "4", "--mal", "32k", "--json")
    by_spec = _json(capsys, *base, "--policy", "pe_only:layerwise=false")
    by_flag = _json(capsys, *base, "--policy", "pe_only", "--no-layerwise")
    assert _stable(by_spec) | {"policy": ""} == _stable(by_flag) | {"policy": ""}
    assert by_spec["layerwise"] is False
    oracle = _json(capsys, *base, "--policy", "dualpath:oracle=true")
    assert oracle["oracle"] is True and oracle["read_bytes_pe_side"] == 0


def test_timeline_csv_has_one_row_per_request(capsys, tmp_path):
    path = tmp_path / "t.csv"
    m = _json(capsys, "simulate", "--preset", "tiny", "--agents", "3", "--mal", "32k",
              "--timeline", str(path), "--json")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["requests"]
    assert len({r["request_id"] for r in rows}) == len(rows)


def test_timeline_parquet(capsys, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    m = _json(capsys, "simulate", "--preset", "tiny", "--agents", "2", "--mal", "32k",
              "--timeline", str(path), "--json")
    assert pq.read_table(path).num_rows == m["requests"]


def test_online_mode(capsys):
    m = _json(capsys, "simulate", "--preset", "tiny", "--mal", "32k", "--online",
              "--aps", "0.5", "--duration", "20", "--json")
    assert m["requests"] > 0


def test_trace_mode(capsys, tmp_path):
    trace = tmp_path / "trace.jsonl"
    lines = [{"timestamp": 0, "input_length": 1500, "output_length": 5, "hash_ids": [1, 2, 3]},
             {"timestamp": 500, "input_length": 2000, "output_length": 7,
              "hash_ids": [1, 2, 3, 4]}]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    m = _json(capsys, "simulate", "--preset", "tiny", "--trace", f"mooncake:{trace}", "--json")
    assert m["requests"] == 2
    assert m["hit_bytes"] > 0  # the second request reuses three stored blocks


def test_bench_reports_speed(capsys):
    m = _json(capsys, "bench", "sim", "--agents", "2", "--json")
    assert m["sim_requests_per_s"] > 0 and m["requests"] > 0


def test_bench_policy_on_a_scenario_times_every_decision(capsys):
    m = _json(capsys, "bench", "policy", "--scenario", "cache-mooncake", "--policy", "dualpath",
              "--policy", "dualpath_cache", "--json")
    assert m["scenario"] == "cache-mooncake"
    assert [r["policy"] for r in m["rows"]] == ["dualpath", "dualpath_cache"]
    assert all(r["decisions"] == 1_500 and r["mean_us"] > 0 for r in m["rows"])
    assert m["rows"][0]["vs_first"] == 1.0


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--preset", "nope"], "nope"),
    (["train", "--mode", "predict"], "exactly one of --scenario"),
    (["select", "--scenario", "online"], "at least one --candidate"),
    (["scoreboard", "--scenario", "nosuch"], "nosuch"),
    (["simulate", "--preset", "tiny", "--set", "node.snic_gb_s=-1"], "node.snic_gb_s"),
    (["simulate", "--preset", "tiny", "--set", "node.bogus=1"], "node.bogus"),
    (["simulate", "--preset", "tiny", "--policy", "nosuch"], "nosuch"),
    (["simulate", "--preset", "tiny", "--policy", "dualpath:alpha_s=x"], "alpha_s"),
    (["simulate", "--preset", "tiny", "--online"], "--aps"),
    (["simulate", "--preset", "tiny", "--agents", "2", "--timeline", "t.txt"], ".parquet"),
])
def test_bad_input_is_a_clear_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err


def test_preset_from_a_file_with_overrides(capsys, tmp_path):
    from runtime.preset import PRESET_DIR

    path = tmp_path / "mine.toml"
    path.write_text((PRESET_DIR / "tiny.toml").read_text())
    base = ("simulate", "--agents", "3", "--mal", "32k", "--json")
    from_file = _json(capsys, *base, "--preset", str(path))
    named = _json(capsys, *base, "--preset", "tiny")
    assert _stable(from_file) | {"preset": ""} == _stable(named) | {"preset": ""}
    slower = _json(capsys, *base, "--preset", str(path), "--set", "node.snic_gb_s=0.05")
    assert slower["jct_s"] > from_file["jct_s"]
