"""Student-t intervals, paired differences and the promotion rule."""

from __future__ import annotations

import math

import pytest

from experiments.evaluation.stats import mean_ci95, paired_diff_ci95, promote_decision, t975


@pytest.mark.parametrize(("df", "expected"), [
    (1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (19, 2.093), (30, 2.042),
    (40, 2.021), (60, 2.000), (120, 1.980), (10_000, 1.960),
])
def test_t_quantile_matches_tables(df, expected):
    assert t975(df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(("df", "expected"), [
    (31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930), (1000, 1.962339),
])
def test_t_quantile_expansion_is_exact_past_the_table(df, expected):
    assert t975(df) == pytest.approx(expected, abs=1e-6)
    assert t975(df - 1) > t975(df)


def test_mean_ci95_known_value():
    mean, half = mean_ci95([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # sd = 3.02765, se = 0.957427, t(0.975, 9) = 2.262157
    assert mean == 5.5
    assert half == pytest.approx(2.262157 * 3.0276504 / math.sqrt(10), rel=1e-6)


def test_mean_ci95_shrinks_with_n():
    base = [1.0, 2.0, 3.0, 4.0]
    widths = [mean_ci95(base * k)[1] for k in (1, 2, 4, 8)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 3


def test_mean_ci95_edge_cases():
    assert mean_ci95([3.0]) == (3.0, math.inf)
    assert mean_ci95([2.0, 2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_ci95([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci95([1.0, math.nan])


def test_paired_diff():
    a, b = [9.0, 19.0, 29.5], [10.0, 20.0, 30.0]
    d = paired_diff_ci95(a, b)
    assert d.n == 3
    assert d.diff == pytest.approx(-2.5 / 3)
    assert d.diff_ci95 == pytest.approx(mean_ci95([-1.0, -1.0, -0.5])[1])
    assert d.rel == pytest.approx((-0.1 - 0.05 - 0.5 / 30) / 3)
    assert d.rel_ci95 > 0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff_ci95([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="zero"):
        paired_diff_ci95([1.0], [0.0])


def test_pairing_removes_shared_seed_variance():
    b = [10.0, 50.0, 100.0, 20.0]
    a = [x * 0.9 for x in b]
    d = paired_diff_ci95(a, b)
    assert d.rel == pytest.approx(-0.1) and d.rel_ci95 == pytest.approx(0.0, abs=1e-12)
    assert mean_ci95(a)[1] > 10  # unpaired, the seeds' spread would swamp the gain


HEUR = [10.0, 12.0, 11.0, 13.0, 10.5]
TTFT = [1.0, 1.1, 0.9, 1.0, 1.0]


def test_promote_accepts_a_clear_gain():
    chall = [h * 0.95 for h in HEUR]
    ok, reason = promote_decision(chall, HEUR, TTFT, TTFT)
    assert ok, reason
    assert reason.startswith("promoted") and "5.00%" in reason and "5 seeds" in reason


def test_promote_refuses_a_small_gain():
    chall = [h * 0.99 for h in HEUR]
    ok, reason = promote_decision(chall, HEUR, TTFT, TTFT)
    assert not ok
    assert "1.00% is below the 2.00% bar" in reason and "exclude zero" not in reason


def test_promote_refuses_a_noisy_gain():
    chall = [h * f for h, f in zip(HEUR, (0.80, 1.10, 0.85, 1.05, 0.90), strict=True)]
    ok, reason = promote_decision(chall, HEUR, TTFT, TTFT)
    assert not ok
    assert "does not exclude zero" in reason and "below" not in reason


def test_promote_refuses_one_seed():
    ok, reason = promote_decision([9.0], [10.0], [1.0], [1.0])
    assert not ok and "does not exclude zero" in reason


def test_promote_refuses_a_ttft_regression():
    chall = [h * 0.9 for h in HEUR]
    ok, reason = promote_decision(chall, HEUR, [t * 1.08 for t in TTFT], TTFT)
    assert not ok
    assert "p99 TTFT regresses by 8.00%" in reason and "below" not in reason
    ok, _ = promote_decision(chall, HEUR, [t * 1.04 for t in TTFT], TTFT)
    assert ok


def test_promote_names_every_failure():
    ok, reason = promote_decision(HEUR, HEUR, [2.0] * 5, TTFT)
    assert not ok
    assert "below" in reason and "exclude zero" in reason and "TTFT regresses" in reason
