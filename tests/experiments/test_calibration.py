"""Calibration: the search finds known values, presets are rewritten exactly, the checks
compute the paper's relative results, and the command refuses bad input."""

from __future__ import annotations

import math

import pytest

from experiments.calibration.fit import FitResult, Parameter, errors_pct, fit
from experiments.calibration.paper import (
    PAPER_PARAMETERS,
    calibrate,
    paper_checks,
    render,
    run_points,
    summarize,
)
from experiments.calibration.preset_file import set_value, write_values
from experiments.calibration.targets import CHECK_RUNS, PAPER_TARGETS, Target
from experiments.cli import main
from experiments.evaluation.runner import RunConfig, run
from runtime.preset import load_preset

A = Parameter("node.storage_efficiency", 0.2, 1.0, "share", "storage")
B = Parameter("model.prefill_efficiency", 0.05, 0.9, "share", "compute")


def _power_law(truth, elasticities, floors):
    """JCTs that fall with each parameter as a power (with a fixed part, as decode is)."""
    def evaluate(points):
        return [[floor + math.prod((t / v) ** e for v, t, e in zip(point, truth, es,
                                                                   strict=True))
                 for es, floor in zip(elasticities, floors, strict=True)]
                for point in points]
    return evaluate


def test_fit_recovers_known_values_and_is_deterministic():
    truth = (0.55, 0.22)
    elasticities = [(1.0, 0.1), (0.3, 0.8), (0.0, 1.0), (0.7, 0.4)]
    floors = [0.0, 0.2, 0.1, 0.0]
    evaluate = _power_law(truth, elasticities, floors)
    targets = evaluate([truth])[0]
    first = fit(evaluate, [A, B], (1.0, 0.36), targets, steps=8)
    assert first.values == pytest.approx(truth, rel=0.01)
    assert max(abs(e) for e in errors_pct(first.fitted, targets)) < 0.5
    second = fit(evaluate, [A, B], (1.0, 0.36), targets, steps=8)
    assert second.history == first.history
    assert first.evaluations == len(first.history) >= 3  # start + one probe each, then steps


def test_fit_stays_in_range_and_reports_the_best_point():
    # The targets need a storage efficiency of 1.6: beyond the range's 1.0.
    evaluate = _power_law((1.6, 0.3), [(1.0, 0.0), (0.0, 1.0)], [0.0, 0.0])
    targets = evaluate([(1.6, 0.3)])[0]
    result = fit(evaluate, [A, B], (0.5, 0.1), targets, steps=6)
    assert result.values[0] == pytest.approx(1.0)
    assert result.values[1] == pytest.approx(0.3, rel=0.01)
    assert all(A.low <= h["values"][0] <= A.high for h in result.history)
    best = min(h["rms_log_error"] for h in result.history)
    assert best == pytest.approx(math.log(1.6) / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize(("key", "low", "high", "message"), [
    ("node.snic_gb_s", 0.0, 1.0, "0 < low < high"),
    ("node.snic_gb_s", 2.0, 1.0, "0 < low < high"),
    ("snic_gb_s", 0.5, 1.0, "SECTION.KEY"),
])
def test_parameter_refuses_a_bad_range_or_key(key, low, high, message):
    with pytest.raises(ValueError, match=message):
        Parameter(key, low, high, "", "")


def test_parameters_read_and_write_preset_values():
    spec = load_preset("ds660b-2p4d")
    assert A.value_in(spec) == spec.node.storage_efficiency
    assert B.value_in(spec) == spec.model.prefill_efficiency[-1][1]
    scaled = load_preset("ds660b-2p4d", [B.override(B.value_in(spec) / 2, spec)])
    assert [y for _, y in scaled.model.prefill_efficiency] == pytest.approx(
        [y / 2 for _, y in spec.model.prefill_efficiency], rel=1e-3)
    assert [x for x, _ in scaled.model.prefill_efficiency] == [
        x for x, _ in spec.model.prefill_efficiency]


TOML = """# top comment
name = "t"

[node]
# old reason
# second line of it
gpus = 8
snic_gb_s = 50.0

[model]
name = "m"
"""


def test_set_value_replaces_the_line_and_its_comment_and_keeps_the_rest():
    out = set_value(TOML, "node.gpus", "4", "new reason")
    assert out == TOML.replace("# old reason\n# second line of it\ngpus = 8",
                               "# new reason\ngpus = 4")


def test_set_value_adds_a_missing_key_at_the_end_of_its_table():
    out = set_value(TOML, "node.storage_efficiency", "0.6", "why")
    assert out == TOML.replace("snic_gb_s = 50.0\n",
                               "snic_gb_s = 50.0\n# why\nstorage_efficiency = 0.6\n")
    assert set_value(out, "node.storage_efficiency", "0.7", "why") == out.replace("0.6", "0.7")
    with pytest.raises(ValueError, match=r"no \[decode\] table"):
        set_value(TOML, "decode.x", "1", "")


def test_write_values_leaves_the_file_alone_when_the_result_does_not_load(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text((load_preset.__globals__["PRESET_DIR"] / "tiny.toml").read_text())
    before = path.read_text()
    with pytest.raises(ValueError, match="storage_efficiency"):
        write_values(path, [("node.storage_efficiency", "1.5", "too high")])
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.toml"]
    write_values(path, [("node.storage_efficiency", "0.5", "fitted")])
    assert load_preset(str(path)).node.storage_efficiency == 0.5


def test_calibrate_finds_the_values_a_simulated_cluster_was_run_with():
    """Targets made by the simulator itself at known values; the fit, started from the
    preset's values, must find them again."""
    spec = load_preset("tiny")
    truth = (0.5, 0.3)
    targets = []
    for policy, agents in (("pe_only", 48), ("dualpath", 48), ("dualpath:oracle=true", 48)):
        cfg = RunConfig(policy=policy, preset="tiny", agents=agents, mal="32k",
                        overrides=(A.override(truth[0], spec), B.override(truth[1], spec)))
        targets.append(Target(policy, policy, agents, run(cfg)["jct_s"]))
    result = calibrate("tiny", targets, [A, B], jobs=2, steps=5, mal="32k",
                       ratios=[("pe_only", "dualpath"), ("dualpath", "dualpath:oracle=true")])
    assert len(result.fitted) == len(targets) + 2
    errors = errors_pct(result.fitted[:len(targets)], [t.paper_s for t in targets])
    assert max(abs(e) for e in errors) < 2.0
    assert result.values == pytest.approx(truth, rel=0.1)


def test_run_points_runs_only_what_it_has_not_run():
    targets = [Target("a", "pe_only", 4, 1.0), Target("b", "dualpath", 4, 1.0)]
    done: dict = {}
    first = run_points("tiny", targets, [A], [(0.5,)], jobs=1, mal="32k", done=done)
    assert len(done) == 2
    (key,) = [c for c in done if c.policy == "pe_only"]
    done[key] = {"jct_s": -1.0}  # a run it would not have made: it must be reused
    again = run_points("tiny", targets, [A], [(0.5,)], jobs=1, mal="32k", done=done)
    assert again[0][0] == {"jct_s": -1.0}
    assert again[0][1] == first[0][1]


def _runs(jct: dict[str, float], tpot: float = 0.037) -> dict[str, dict[str, float | str]]:
    """Runs with the given JCTs; SNIC max/avg 1.5 where reads alternate, else 1.2."""
    return {t.name: {"jct_s": jct[t.name], "policy": t.policy, "tpot_mean_s": tpot,
                     "snic_max_over_avg_steady": 1.5 if "alternate" in t.policy else 1.2}
            for t in PAPER_TARGETS + CHECK_RUNS}


def test_paper_checks_on_the_papers_own_figures():
    jct = {t.name: t.paper_s for t in PAPER_TARGETS}
    jct.update({"baseline, 512 agents": 2_900.0, "dualpath, 512 agents": 1_600.0,
                "round-robin reads alternating, 1,024 agents": 3_300.0})
    checks = {c["name"]: c for c in paper_checks(_runs(jct))}
    assert checks["speed-up at 2,048 agents"]["value"] == pytest.approx(10_050 / 5_380)
    assert checks["ablation +layer-wise reduction %"]["value"] == pytest.approx(
        100 * (1 - 4_250 / 5_400))
    assert checks["dualpath / oracle at 4,096 agents"]["value"] == pytest.approx(10_350 / 9_400)
    assert all(c["holds"] in (True, None) for c in checks.values()), checks
    # A gain that falls by 10% from 2,048 to 4,096 agents fails its check.
    jct["dualpath, 4,096 agents"] = 19_400 / (10_050 / 5_380 * 0.9)
    checks = {c["name"]: c for c in paper_checks(_runs(jct, tpot=0.045))}
    assert checks["largest fall of the gain, 512 -> 4,096 agents"]["holds"] is False
    assert checks["dualpath mean TPOT, s (worst run)"]["holds"] is False


def test_summary_rows_follow_the_targets_and_render():
    jct = {t.name: t.paper_s * 1.1 for t in PAPER_TARGETS}
    jct.update({"baseline, 512 agents": 2_900.0, "dualpath, 512 agents": 1_600.0,
                "round-robin reads alternating, 1,024 agents": 3_300.0})
    runs = _runs(jct, tpot=0.0375 * 0.95)
    values = tuple(p.start for p in PAPER_PARAMETERS)
    payload = summarize(FitResult(values, (), 7), [runs[t.name] for t in PAPER_TARGETS
                                                    + CHECK_RUNS])
    assert [r["name"] for r in payload["rows"]] == [t.name for t in PAPER_TARGETS]
    errors = {r["metric"]: r["error_pct"] for r in payload["rows"]}
    assert errors["jct_s"] == pytest.approx(10.0)
    assert errors["tpot_mean_s"] == pytest.approx(-5.0)
    assert payload["max_error_pct"] == pytest.approx(10.0)
    assert [p["key"] for p in payload["parameters"]] == [p.key for p in PAPER_PARAMETERS]
    text = render({**payload, "written": ["a.toml"], "wall_s": 1.0})
    assert "max |error| 10.0%" in text and "wrote a.toml" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["calibrate", "paper", "--steps", "-1"], "--steps must be >= 0"),
    (["calibrate", "paper", "--jobs", "0"], "--jobs must be >= 1"),
])
def test_calibrate_refuses_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_calibrate_names_what_it_can_fit_to(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "nosuch"])
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
