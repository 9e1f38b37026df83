"""The paper's offline results on the calibrated ds660b-2p4d preset (slow: minutes).

Run with ``pytest -m slow``. Tolerances are those the calibration was held to: the
relative results as the paper's (ablation within 6 points, speed-up 1.70-2.05), the
absolute JCTs within 15% of the paper's (``dualpath calibrate paper`` fits them).
"""

from __future__ import annotations

import pytest

from experiments.calibration.targets import PAPER_TARGETS
from experiments.evaluation.compare import ABLATION_STEPS
from experiments.evaluation.runner import RunConfig, run_many

pytestmark = pytest.mark.slow

PAPER_REDUCTION_PCT = {"+layerwise": 17.2, "+dual-path": 38.2, "+scheduler": 45.6}
ABSOLUTE_TOLERANCE = 0.15


def _paper_jct(policy: str, agents: int) -> float:
    found = [t.paper_s for t in PAPER_TARGETS
             if (t.policy, t.agents, t.metric) == (policy, agents, "jct_s")]
    assert len(found) == 1, (policy, agents)
    return found[0]


def _assert_absolute(row: dict) -> None:
    paper = _paper_jct(row["policy"], row["agents"])
    assert abs(row["jct_s"] / paper - 1) <= ABSOLUTE_TOLERANCE, \
        f"{row['policy']} at {row['agents']} agents: {row['jct_s']:.0f} s vs paper {paper:.0f} s"


def test_ablation_at_1024_agents_matches_the_paper_within_6_points():
    rows = run_many([RunConfig(policy=spec, agents=1024) for _, spec in ABLATION_STEPS], jobs=2)
    base = rows[0]["jct_s"]
    by_name = {name: row for (name, _), row in zip(ABLATION_STEPS, rows, strict=True)}
    for name, paper in PAPER_REDUCTION_PCT.items():
        ours = 100 * (1 - by_name[name]["jct_s"] / base)
        assert abs(ours - paper) <= 6, f"{name}: {ours:.1f}% vs paper {paper}%"
    assert by_name["oracle"]["jct_s"] <= by_name["+scheduler"]["jct_s"]
    for name in ("baseline", *PAPER_REDUCTION_PCT):
        _assert_absolute(by_name[name])


def test_baseline_over_dualpath_at_2048_agents():
    base, dual = run_many([RunConfig(policy="pe_only:layerwise=false", agents=2048),
                           RunConfig(policy="dualpath", agents=2048)], jobs=2)
    assert 1.70 <= base["jct_s"] / dual["jct_s"] <= 2.05
    _assert_absolute(base)
    _assert_absolute(dual)
