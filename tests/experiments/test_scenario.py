"""Scenario files: the shipped ones load, seeds never overlap, bad files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.evaluation.compare import split_specs
from experiments.evaluation.scenario import list_scenarios, load_scenario

HARDER = {"degraded-snic", "mixed-reuse", "bursty", "pd-2p1d"}


def test_shipped_scenarios_load_with_disjoint_seeds():
    names = set(list_scenarios())
    assert {"paper-offline", "online"} | HARDER <= names
    for name in names:
        s = load_scenario(name)
        assert s.name == name
        assert len(s.eval_seeds) >= 10
        assert not set(s.train_seeds) & set(s.eval_seeds)
        assert s.workload(s.eval_seeds[0]).initial_requests()


def test_seeds_change_the_workload():
    s = load_scenario("paper-offline")
    first = [r.appended_tokens for r in s.workload(0).initial_requests()]
    other = [r.appended_tokens for r in s.workload(1).initial_requests()]
    assert first != other


def test_degraded_scenario_degrades_one_node():
    cluster = load_scenario("degraded-snic").cluster()
    rates = [cluster.snic_bytes_s_of(n) for n in range(cluster.nodes)]
    assert sorted(rates)[0] == pytest.approx(0.2 * sorted(rates)[-1])


def test_mixed_scenario_mixes_agents_and_trace_requests():
    workload = load_scenario("mixed-reuse").workload(0)
    assert workload.name.startswith("mixed(") and "mooncake" in workload.name


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


GOOD = """
name = "t"
preset = "tiny"
[workload]
agents = 2
mal = "32k"
[seeds]
train = [1]
eval = [2]
"""


@pytest.mark.parametrize("change, message", [
    (("train = [1]", "train = [2]"), "overlap"),
    (("eval = [2]", "eval = []"), "seeds.eval"),
    (("agents = 2", "agents = 2\nwings = 3"), "unknown keys"),
    (('preset = "tiny"', 'preset = "nope"'), "nope"),
    (('preset = "tiny"', 'preset = "tiny"\nlayerwise = "yes"'), "layerwise"),
    (("[workload]", '[workload]\nkind = "magic"'), "magic"),
    (("agents = 2", "agents = 0"), "agents"),
])
def test_bad_scenarios_are_refused_with_the_reason(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError, match=message) as err:
        load_scenario(path)
    assert "s.toml" in str(err.value)


def test_unknown_scenario_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="paper-offline"):
        load_scenario("nope")


def test_split_specs_keeps_parameters_with_their_policy():
    assert split_specs("pe_only,dualpath:alpha_s=2,beta_s=5,dualpath_split") == [
        "pe_only", "dualpath:alpha_s=2,beta_s=5", "dualpath_split"]
    assert split_specs("models:/dualpath-scheduler@champion,dualpath") == [
        "models:/dualpath-scheduler@champion", "dualpath"]
    with pytest.raises(ValueError, match="empty"):
        split_specs("pe_only,,dualpath")
