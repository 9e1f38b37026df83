"""ClusterSpec: per-node storage NIC factors, and the simulator running a degraded SNIC."""

from __future__ import annotations

import dataclasses

import pytest

from agents.heuristics import PeOnly
from runtime.decision import Decision
from runtime.errors import ConfigError
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import SimOptions, Simulator
from runtime.view import ClusterView
from runtime.workload.agentic import AgenticWorkload
from tests.builders import make_spec


def test_no_factors_is_nominal_everywhere() -> None:
    spec = make_spec(2, 3, snic_gb_s=10.0)
    assert spec.snic_factors == ()
    assert [spec.snic_bytes_s_of(n) for n in range(spec.nodes)] == [10e9] * 5


def test_factors_scale_each_node() -> None:
    spec = make_spec(1, 2, snic_gb_s=10.0, snic_factors=(0.5, 1.0, 0.25))
    assert [spec.snic_bytes_s_of(n) for n in range(3)] == [5e9, 10e9, 2.5e9]
    assert spec.node.snic_bytes_s == 10e9  # the nominal figure is untouched


@pytest.mark.parametrize(("factors", "words"), [
    ((1.0,), ["one factor per node", "got 1"]),
    ((1.0, 1.0, 1.0), ["one factor per node", "got 3"]),
    ((1.0, 0.0), ["node 1", "(0, 1]", "0.0"]),
    ((-0.5, 1.0), ["node 0", "-0.5"]),
    ((1.0, 1.01), ["node 1", "1.01"]),
    ((1.0, float("nan")), ["node 1", "nan"]),
    ((True, 1.0), ["node 0", "True"]),
    ([1.0, 0.5], ["tuple", "list"]),
])
def test_bad_factors_name_the_key_and_value(factors: object, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        make_spec(1, 1, snic_factors=factors)
    message = str(info.value)
    assert message.startswith("snic_factors:"), message
    for word in words:
        assert word in message, message


class ViewRecorder:
    """Delegates to a policy and keeps the first view it was shown."""

    name = "recorder"

    def __init__(self) -> None:
        self.inner = PeOnly()
        self.view: ClusterView | None = None

    def decide(self, request: Request, view: ClusterView) -> Decision | None:
        if self.view is None:
            self.view = view
        return self.inner.decide(request, view)


def test_simulator_links_and_view_use_the_degraded_bandwidth() -> None:
    spec = load_preset("tiny", ["snic_factors=0.25,1"])
    sim = Simulator(spec, AgenticWorkload(2, "32k", seed=0))
    assert [n.snic.bytes_s for n in sim.nodes] == [0.25e9, 1e9]
    assert [n.snic_write.bytes_s for n in sim.nodes] == [0.25e9, 1e9]
    recorder = ViewRecorder()
    sim.run(recorder)
    assert recorder.view is not None
    assert [n.snic_bytes_s for n in recorder.view.nodes] == [0.25e9, 1e9]


def _pe_only_jct(factors: str | None) -> float:
    overrides = ["node.snic_gb_s=0.25"] + ([f"snic_factors={factors}"] if factors else [])
    spec = load_preset("tiny", overrides)
    return float(Simulator(spec, AgenticWorkload(8, "32k", seed=0),
                           SimOptions(layerwise=False)).run(PeOnly()).metrics["jct_s"])


def test_a_degraded_prefill_snic_slows_the_single_path_baseline() -> None:
    nominal = _pe_only_jct(None)
    assert _pe_only_jct("1,1") == nominal  # all-ones factors are the nominal cluster
    # the baseline reads only through the prefill node's SNIC: degrading it must hurt
    assert _pe_only_jct("0.25,1") > 1.5 * nominal


def test_factors_are_part_of_the_frozen_spec() -> None:
    spec = make_spec(1, 1, snic_factors=(1.0, 0.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.snic_factors = ()  # type: ignore[misc]
    assert spec == make_spec(1, 1, snic_factors=(1.0, 0.5))
    assert spec != make_spec(1, 1)
