"""Trends the simulator must respect on fixed seeds."""

from __future__ import annotations

import numpy as np

from agents.heuristics import PeOnly
from runtime.preset import load_preset
from runtime.sim import SimOptions, Simulator
from runtime.workload.agentic import AgenticWorkload

SEEDS = range(5)


def _baseline_mean_jct(snic_gb_s: float) -> float:
    spec = load_preset("tiny", [f"node.snic_gb_s={snic_gb_s}"])
    jcts = [Simulator(spec, AgenticWorkload(8, "32k", seed),
                      SimOptions(layerwise=False)).run(PeOnly()).metrics["jct_s"]
            for seed in SEEDS]
    return float(np.mean(jcts))


def test_baseline_jct_does_not_rise_with_snic_bandwidth():
    bandwidths = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
    jcts = [_baseline_mean_jct(bw) for bw in bandwidths]
    for slower, faster, bw in zip(jcts, jcts[1:], bandwidths[1:], strict=False):
        assert faster <= slower * 1.01, f"mean JCT rose at {bw} GB/s: {jcts}"
    # The storage-bound end must actually be storage-bound, or the check is empty.
    assert jcts[0] > 1.5 * jcts[-1], jcts
