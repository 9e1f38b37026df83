"""The paper's offline results on the calibrated ds660b-2p4d preset (slow: minutes).

Run with ``pytest -m slow``. Tolerances are those the calibration was held to.
"""

from __future__ import annotations

import pytest

from experiments.evaluation.compare import ABLATION_STEPS
from experiments.evaluation.runner import RunConfig, run_many

pytestmark = pytest.mark.slow

PAPER_REDUCTION_PCT = {"+layerwise": 17.2, "+dual-path": 38.2, "+scheduler": 45.6}


def test_ablation_at_1024_agents_matches_the_paper_within_6_points():
    rows = run_many([RunConfig(policy=spec, agents=1024) for _, spec in ABLATION_STEPS], jobs=2)
    base = rows[0]["jct_s"]
    by_name = {name: row for (name, _), row in zip(ABLATION_STEPS, rows, strict=True)}
    for name, paper in PAPER_REDUCTION_PCT.items():
        ours = 100 * (1 - by_name[name]["jct_s"] / base)
        assert abs(ours - paper) <= 6, f"{name}: {ours:.1f}% vs paper {paper}%"
    assert by_name["oracle"]["jct_s"] <= by_name["+scheduler"]["jct_s"]


def test_baseline_over_dualpath_at_2048_agents():
    base, dual = run_many([RunConfig(policy="pe_only:layerwise=false", agents=2048),
                           RunConfig(policy="dualpath", agents=2048)], jobs=2)
    assert 1.70 <= base["jct_s"] / dual["jct_s"] <= 2.05
