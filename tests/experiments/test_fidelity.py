"""Simulator against the live runtime: the claim that throughput and mean JCT agree within
10%, checked on real runs (slow), and ``fidelity --max-error-pct`` failing above its bound."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main
from experiments.live import runs
from experiments.live.runs import FIDELITY_CONFIGS, fidelity, fidelity_failures


def _payload(tput_err: float, jct_err: float) -> dict:
    row = {"config": "tiny-live dualpath", "sim_throughput_tok_s": 100.0,
           "live_throughput_tok_s": 100.0 + tput_err, "throughput_error_pct": tput_err,
           "sim_jct_mean_s": 10.0, "live_jct_mean_s": 10.0, "jct_error_pct": jct_err,
           "blocks_verified": 5, "checksum_failures": 0}
    return {"rows": [row], "max_error_pct": max(tput_err, jct_err), "runs": 1}


def test_failures_name_each_error_over_the_bound():
    assert fidelity_failures(_payload(4.0, 2.0), 5.0) == []
    assert fidelity_failures(_payload(6.0, 2.0), 5.0) == [
        "tiny-live dualpath: throughput error 6.0% > 5%"]
    assert len(fidelity_failures(_payload(6.0, 7.5), 5.0)) == 2


def test_with_caches_each_sources_error_counts_too():
    payload = _payload(1.0, 1.0)
    payload["rows"][0]["source_error_pct"] = {"dram_local": 2.0, "dram_peer": 12.5}
    assert fidelity_failures(payload, 10.0) == [
        "tiny-live dualpath: hit bytes from dram_peer error 12.5% > 10%"]


def test_a_cache_config_reports_sources_and_only_substantial_ones_are_judged():
    sim = {"hit_bytes_by_source": {"hbm": 0.0, "dram_local": 800.0, "dram_peer": 190.0,
                                   "storage_pe_path": 10.0, "storage_de_path": 0.0}}
    lives = [{"hit_bytes_by_source": {**sim["hit_bytes_by_source"], "dram_peer": v,
                                      "storage_pe_path": 30.0},
              "index": {"exact_share": s}} for v, s in ((200.0, 1.0), (210.0, 0.99),
                                                        (150.0, 0.995))]
    errors = runs._source_errors(sim, lives)
    # storage_pe_path carries 1% of the hit bytes: judged (3x); storage_de_path: not.
    assert errors["source_error_pct"] == pytest.approx(
        {"dram_local": 0.0, "dram_peer": 100 * 10 / 190, "storage_pe_path": 200.0})
    assert errors["index_exact_share"] == 0.99
    assert runs._source_errors({"hit_bytes_by_source": {**sim["hit_bytes_by_source"],
                                                        "dram_local": 0.0, "dram_peer": 0.0}},
                               lives) == {}


def test_every_fidelity_label_can_be_picked_alone(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(runs, "fidelity", lambda configs, runs: seen.append(configs)
                        or _payload(1.0, 1.0))
    main(["fidelity", "--runs", "1", "--config", "cache-live pe_only", "--json"])
    assert [label for label, _ in seen[0]] == ["cache-live pe_only"]
    with pytest.raises(SystemExit, match="unknown --config"):
        main(["fidelity", "--config", "no-such-config"])


@pytest.mark.parametrize(("error", "code"), [(3.0, 0), (12.0, 1)])
def test_max_error_pct_sets_the_exit_status_after_the_report(monkeypatch, capsys, error, code):
    monkeypatch.setattr(runs, "fidelity", lambda configs, runs: _payload(error, 1.0))
    argv = ["fidelity", "--runs", "1", "--max-error-pct", "10", "--json"]
    if code:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == code
    else:
        assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["max_error_pct"] == error  # the report comes first
    assert ("throughput error 12.0% > 10%" in captured.err) is bool(code)


@pytest.mark.slow
def test_simulator_and_live_runtime_agree_within_ten_percent():
    """Every fidelity configuration (one compute-bound), one live run each."""
    payload = fidelity(FIDELITY_CONFIGS, runs=1, progress=False)
    assert fidelity_failures(payload, 10.0) == [], payload
    for row in payload["rows"]:
        assert row["blocks_verified"] > 0 and row["checksum_failures"] == 0
