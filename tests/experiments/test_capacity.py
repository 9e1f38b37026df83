"""Online serving-capacity search: the measurement window, the bisection, the outcomes,
the command line and input errors. Small cluster (tiny) and short windows keep it fast."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.spec import resolve_policy
from experiments.cli import main
from experiments.evaluation.runner import RunConfig, build_workload
from experiments.evaluation.scenario import load_scenario
from experiments.sweeps.capacity import CapacitySearch, capacity_ratio, find_capacity
from experiments.sweeps.probe import Slo, probe, probe_setup
from runtime.preset import load_preset
from runtime.sim import SimOptions, Simulator

TINY = RunConfig(policy="dualpath", preset="tiny", mal="32k")
DURATION = 40.0
FAST = CapacitySearch(duration_s=DURATION, tolerance=0.1)
NONDETERMINISTIC = ("wall_s",)


def _stable(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in NONDETERMINISTIC}
    out["probes"] = [{k: v for k, v in p.items() if k not in NONDETERMINISTIC}
                     for p in result["probes"]]
    return out


def _full_run(aps: float, lo: float, hi: float) -> tuple[int, float, float, float]:
    """Count and means over requests arriving in [lo, hi) of a full run (drained to the
    end), and when it ended."""
    cfg = RunConfig(policy="dualpath", preset="tiny", mal="32k", online=True, aps=aps,
                    duration_s=DURATION)
    spec = load_preset("tiny")
    sim = Simulator(spec, build_workload(cfg, spec), SimOptions())
    sim.run(resolve_policy("dualpath", spec).policy)
    rec = sim.recorder
    a, f, e, g = (np.asarray(x) for x in (rec.arrival, rec.first_token, rec.finish, rec.gen))
    keep = (a >= lo) & (a < hi)
    multi = keep & (g > 1)
    return (int(keep.sum()), float((f - a)[keep].mean()),
            float(((e - f)[multi] / (g[multi] - 1)).mean()), sim.now)


def test_probe_measures_only_requests_arriving_in_the_window():
    # The same probe with warm-up 0 and 20 s: the later warm-up drops exactly the
    # requests that arrive before 20 s, and both equal the means of a full run.
    all_in = probe(TINY, 2.0, Slo(warmup_s=0.0), DURATION)
    late = probe(TINY, 2.0, Slo(warmup_s=20.0), DURATION)
    n_all, ttft_all, tpot_all, end = _full_run(2.0, 0.0, DURATION)
    n_late, ttft_late, tpot_late, _ = _full_run(2.0, 20.0, DURATION)
    assert (all_in["requests"], late["requests"]) == (n_all, n_late)
    assert 0 < n_late < n_all
    assert all_in["ttft_mean_s"] == pytest.approx(ttft_all)
    assert all_in["tpot_mean_s"] == pytest.approx(tpot_all)
    assert late["ttft_mean_s"] == pytest.approx(ttft_late)
    assert late["tpot_mean_s"] == pytest.approx(tpot_late)
    # It stopped once the window's requests were done, well before the drain ended.
    assert DURATION <= late["sim_end_s"] < end / 2


def test_probe_holds_follows_the_thresholds():
    p = probe(TINY, 2.0, Slo(), DURATION)
    assert p["holds"] is (p["ttft_mean_s"] <= 4.0 and p["tpot_mean_s"] <= 0.05)
    tight = probe(TINY, 2.0, Slo(ttft_s=p["ttft_mean_s"] * 0.99), DURATION)
    assert tight["holds"] is False
    assert tight["ttft_mean_s"] == p["ttft_mean_s"]


def test_bisection_converges_within_tolerance_and_is_deterministic():
    a = find_capacity(TINY, Slo(), FAST)
    b = find_capacity(TINY, Slo(), FAST)
    assert _stable(a) == _stable(b)
    assert a["status"] == "converged"
    lo, hi = a["bracket"]
    assert a["max_aps"] == lo and (hi - lo) / hi <= FAST.tolerance
    by_rate = {p["aps"]: p for p in a["probes"]}
    assert by_rate[lo]["holds"] and not by_rate[hi]["holds"]
    # The answer is reported with the means measured at that rate.
    assert a["ttft_mean_s"] == by_rate[lo]["ttft_mean_s"] <= 4.0
    assert a["tpot_mean_s"] == by_rate[lo]["tpot_mean_s"] <= 0.05
    assert a["requests"] == by_rate[lo]["requests"] > 0
    assert len(a["probes"]) <= FAST.max_probes


def test_a_given_bracket_is_probed_then_narrowed():
    r = find_capacity(TINY, Slo(), CapacitySearch(duration_s=DURATION, tolerance=0.1,
                                                  lo=1.0, hi=16.0))
    assert [p["aps"] for p in r["probes"][:2]] == [1.0, 16.0]
    assert r["status"] == "converged" and 1.0 <= r["max_aps"] < 16.0


def test_a_stricter_slo_gives_a_lower_or_equal_capacity():
    loose = find_capacity(TINY, Slo(ttft_s=4.0), FAST)
    strict = find_capacity(TINY, Slo(ttft_s=1.0), FAST)
    assert 0 < strict["max_aps"] <= loose["max_aps"]
    assert strict["slo_ttft_s"] == 1.0 and loose["slo_ttft_s"] == 4.0


def test_no_rate_holds_reports_zero():
    search = CapacitySearch(duration_s=DURATION, min_aps=0.25, start_aps=1.0)
    r = find_capacity(TINY, Slo(tpot_s=1e-6), search)  # no decode is that fast
    assert r["status"] == "none_holds"
    assert r["max_aps"] == 0.0 and r["ttft_mean_s"] is None and r["tpot_mean_s"] is None
    assert "fails even at the lowest rate" in r["message"] and "capacity 0" in r["message"]
    assert [p["aps"] for p in r["probes"]] == [1.0, 0.5, 0.25]
    assert r["bracket"] == [None, 0.25]


def test_holding_at_the_cap_reports_the_cap():
    search = CapacitySearch(duration_s=DURATION, max_aps=0.5, start_aps=0.25)
    r = find_capacity(TINY, Slo(), search)
    assert r["status"] == "capped" and r["max_aps"] == 0.5
    assert "still holds at the cap" in r["message"]


def test_running_out_of_probes_says_so():
    r = find_capacity(TINY, Slo(), CapacitySearch(duration_s=DURATION, tolerance=0.01,
                                                  max_probes=3))
    assert r["status"] == "max_probes" and len(r["probes"]) == 3
    assert "stopped after 3 probes" in r["message"]


def test_capacity_ratio_is_over_the_first():
    ratio = capacity_ratio({"a": {"max_aps": 2.0}, "b": {"max_aps": 3.0}})
    assert ratio == {"a": 1.0, "b": 1.5}
    assert math.isnan(capacity_ratio({"a": {"max_aps": 0.0}, "b": {"max_aps": 1.0}})["b"])
    assert capacity_ratio({}) == {}


def _cli(capsys, *argv: str) -> dict:
    assert main(["capacity", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_keys(capsys):
    r = _cli(capsys, "--preset", "tiny", "--mal", "32k", "--duration", "40", "--tolerance",
             "0.1", "--json")
    for key in ("max_aps", "ttft_mean_s", "tpot_mean_s", "slo_ttft_s", "slo_tpot_s",
                "warmup_s", "duration_s", "tolerance", "bracket", "probes", "status",
                "message", "policy", "preset", "wall_s"):
        assert key in r
    assert r["slo_ttft_s"] == 4.0 and r["slo_tpot_s"] == 0.05
    assert r["duration_s"] == 40.0 and r["warmup_s"] == 20.0
    for p in r["probes"]:
        assert {"aps", "ttft_mean_s", "tpot_mean_s", "holds", "requests"} <= set(p)
    assert r["max_aps"] == _stable(find_capacity(TINY, Slo(), FAST))["max_aps"]


def test_cli_several_policies_give_ratios(capsys):
    r = _cli(capsys, "--preset", "tiny", "--mal", "32k", "--duration", "40", "--tolerance",
             "0.2", "--policy", "pe_only", "--policy", "dualpath", "--jobs", "1",
             "--ttft", "2", "--json")
    assert [s["policy"] for s in r["searches"]] == ["pe_only", "dualpath"]
    assert r["capacity_ratio"]["pe_only"] == 1.0
    assert r["searches"][1]["slo_ttft_s"] == 2.0


def test_scenario_supplies_cluster_and_workload():
    scenario = load_scenario("online")
    p = probe(RunConfig(policy="dualpath"), 0.2, Slo(warmup_s=5.0), 20.0, scenario=scenario)
    assert p["requests"] > 0
    setup = probe_setup(RunConfig(overrides=("node.snic_gb_s=7",)), scenario)
    assert setup.cluster.name == "ds27b-1p1d" and setup.cluster.node.snic_gb_s == 7
    with pytest.raises(ValueError, match="leave mal"):
        probe_setup(RunConfig(mal="32k"), scenario)
    with pytest.raises(ValueError, match="agentic workload"):
        probe_setup(RunConfig(), load_scenario("mixed-reuse"))


def test_spec_switches_are_in_effect_and_reported():
    setup = probe_setup(RunConfig(policy="pe_only:layerwise=false", preset="tiny"), None)
    assert setup.layerwise is False and setup.oracle is False
    assert probe_setup(RunConfig(policy="dualpath:oracle=true", preset="tiny"), None).oracle


@pytest.mark.parametrize(("make", "match"), [
    (lambda: CapacitySearch(tolerance=-0.1), "tolerance must lie in"),
    (lambda: CapacitySearch(tolerance=0.0), "tolerance must lie in"),
    (lambda: CapacitySearch(duration_s=0), "duration_s must be"),
    (lambda: CapacitySearch(lo=4.0, hi=2.0), "lo 4 must be below hi 2"),
    (lambda: CapacitySearch(max_probes=1), "max_probes"),
    (lambda: CapacitySearch(start_aps=5000.0), "start_aps 5000 must lie in"),
    (lambda: Slo(ttft_s=0.0), "ttft_s must be"),
    (lambda: Slo(ttft_s=-1.0), "ttft_s must be"),
    (lambda: Slo(tpot_s=float("nan")), "tpot_s must be"),
    (lambda: Slo(warmup_s=-1.0), "warmup_s must be"),
    (lambda: probe(TINY, 1.0, Slo(warmup_s=40.0), 40.0), "warmup_s 40 must be shorter"),
    (lambda: find_capacity(TINY, Slo(warmup_s=50.0), FAST), "warmup_s 50 must be shorter"),
    (lambda: probe(TINY, -1.0, Slo(), 40.0), "aps must be"),
    (lambda: probe(RunConfig(trace="mooncake:x.jsonl"), 1.0), "own arrival times"),
    (lambda: find_capacity(RunConfig(policy="nope", preset="tiny")), "unknown policy"),
])
def test_bad_input_is_a_clear_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
