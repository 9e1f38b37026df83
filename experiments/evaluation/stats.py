"""Confidence intervals over seeds and the rule that promotes a learned policy.

Every figure we publish is a mean over evaluation seeds with a Student-t 95%
interval. Comparisons between two policies are paired: both ran on the same seeds
and workloads, so the interval is taken over the per-seed differences, which
removes the seed-to-seed variance the two share. A canary's window is the exception:
its arms decided different sessions, two independent samples
(:func:`canary_promote_decision`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# t(0.975, df) for df = 1..30, to 6 decimals. Small samples are where the
# expansion below is least accurate, and they are the common case (5-10 seeds).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054

# Promotion thresholds (fractions, not percent).
MIN_JCT_GAIN = 0.02
MAX_TTFT_P99_REGRESSION = 0.05


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1).

    Exact to 6 decimals up to df = 30 (table); beyond, the Cornish-Fisher expansion
    in 1/df (Abramowitz & Stegun 26.7.5), whose error there is below 1e-6.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def _finite(values: Sequence[float], what: str) -> list[float]:
    xs = [float(x) for x in values]
    if not xs:
        raise ValueError(f"{what}: no values")
    bad = [x for x in xs if not math.isfinite(x)]
    if bad:
        raise ValueError(f"{what}: non-finite values {bad}")
    return xs


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half width of its Student-t 95% interval: ``mean ± half_width``.

    One value carries no information about spread, so its half width is ``inf``
    (an interval that excludes nothing), never 0. Empty or non-finite input raises
    ``ValueError``.
    """
    xs = _finite(values, "mean_ci95")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.inf
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t975(n - 1) * math.sqrt(var / n)


@dataclass(frozen=True)
class PairedDiff:
    """Paired difference of ``a`` and ``b`` over the same seeds.

    ``diff ± diff_ci95`` is the mean of ``a - b``; ``rel ± rel_ci95`` is the mean of
    ``(a - b) / b`` (a fraction: -0.05 means ``a`` is 5% below ``b``).
    """

    n: int
    diff: float
    diff_ci95: float
    rel: float
    rel_ci95: float


def bootstrap_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half width of a statistic over bootstrap resamples: ``1.96 × sd`` of
    the resamples' values (the normal bootstrap interval). Unlike :func:`mean_ci95`, it
    does not narrow with more resamples: their spread *is* the statistic's uncertainty."""
    xs = _finite(values, "bootstrap_ci95")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.inf
    return mean, 1.96 * math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


Interval = Callable[[Sequence[float]], tuple[float, float]]


def paired_diff_ci95(a: Sequence[float], b: Sequence[float],
                     interval: Interval = mean_ci95) -> PairedDiff:
    """Paired difference of per-seed values ``a[i]`` and ``b[i]`` with 95% intervals
    (``interval``: over seeds by default; :func:`bootstrap_ci95` over resamples)."""
    xa, xb = _finite(a, "paired_diff_ci95 a"), _finite(b, "paired_diff_ci95 b")
    if len(xa) != len(xb):
        raise ValueError(f"paired values need equal lengths, got {len(xa)} and {len(xb)}")
    if any(y == 0 for y in xb):
        raise ValueError("paired_diff_ci95: b has a zero, the relative difference is undefined")
    diff, diff_hw = interval([x - y for x, y in zip(xa, xb, strict=True)])
    rel, rel_hw = interval([(x - y) / y for x, y in zip(xa, xb, strict=True)])
    return PairedDiff(n=len(xa), diff=diff, diff_ci95=diff_hw, rel=rel, rel_ci95=rel_hw)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if math.isfinite(x) else "inf%"


def _ttft_regression(challenger: Sequence[float], heuristic: Sequence[float]) -> float:
    """Relative change of the mean per-seed p99 TTFT (positive = challenger slower)."""
    c = math.fsum(_finite(challenger, "challenger TTFT p99")) / len(challenger)
    h = math.fsum(_finite(heuristic, "heuristic TTFT p99")) / len(heuristic)
    if h <= 0:
        return 0.0 if c <= h else math.inf
    return c / h - 1


def promote_decision(
    challenger_jct: Sequence[float],
    heuristic_jct: Sequence[float],
    challenger_ttft_p99: Sequence[float],
    heuristic_ttft_p99: Sequence[float],
    *,
    min_gain: float = MIN_JCT_GAIN,
    max_ttft_regression: float = MAX_TTFT_P99_REGRESSION,
    interval: Interval = mean_ci95,
) -> tuple[bool, str]:
    """Whether a challenger may replace the champion, and why.

    Inputs are per-seed values on the same evaluation seeds: mean JCT of the
    challenger and of the best heuristic, and each one's p99 TTFT. The challenger
    passes when (1) its paired relative JCT improvement ``(h - c) / h`` is at least
    ``min_gain`` on average, (2) the 95% interval of that improvement excludes
    zero, and (3) the mean of its per-seed p99 TTFTs is at most
    ``max_ttft_regression`` above the heuristic's. The reason names every part
    that failed, with the figures, or the figures that passed. ``interval`` is the
    95% interval's kind: over seeds, or :func:`bootstrap_ci95` where the values are
    bootstrap resamples (of a log's sessions).
    """
    d = paired_diff_ci95(challenger_jct, heuristic_jct, interval)
    # rel is (c - h) / h, so the improvement is its negation with the same half width
    gain, half = -d.rel, d.rel_ci95
    ttft = _ttft_regression(challenger_ttft_p99, heuristic_ttft_p99)
    figures = (f"JCT improvement {_pct(gain)} ± {_pct(half)} (95% CI, {d.n} seeds), "
               f"p99 TTFT change {ttft:+.2%}")
    return _rule(gain, half, ttft, figures, min_gain, max_ttft_regression)


def _rule(gain: float, half: float, ttft: float, figures: str, min_gain: float,
          max_ttft_regression: float) -> tuple[bool, str]:
    """The promotion rule on a JCT improvement ``gain ± half`` and a p99 TTFT change."""
    failed = []
    if gain < min_gain:
        failed.append(f"mean JCT improvement {_pct(gain)} is below the {_pct(min_gain)} bar")
    if not gain - half > 0:
        failed.append(f"the 95% interval [{_pct(gain - half)}, {_pct(gain + half)}] "
                      "of the JCT improvement does not exclude zero")
    if ttft > max_ttft_regression:
        failed.append(f"p99 TTFT regresses by {_pct(ttft)}, more than the "
                      f"{_pct(max_ttft_regression)} allowed")
    if failed:
        return False, "refused: " + "; ".join(failed) + f" ({figures})"
    return True, f"promoted: {figures}"


def _quantile(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation between order statistics (numpy's
    default)."""
    ordered = sorted(xs)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _welch_ratio(c: Sequence[float], h: Sequence[float]) -> tuple[float, float]:
    """``mean(c) / mean(h) - 1`` of two independent samples and the half width of its 95%
    interval: the delta method's variance, ``ratio² (s_c² / (n_c m_c²) + s_h² / (n_h
    m_h²))`` (written so that it holds at m_c = 0), with Student's t at the
    Welch-Satterthwaite degrees of freedom of its two terms. An arm of one value gives
    an infinite half width."""
    (nc, mc), (nh, mh) = (len(c), math.fsum(c) / len(c)), (len(h), math.fsum(h) / len(h))
    if not mh > 0:
        raise ValueError(f"the champion's mean is {mh}: the relative change is undefined")
    if nc < 2 or nh < 2:
        return mc / mh - 1, math.inf
    vc = math.fsum((x - mc) ** 2 for x in c) / (nc - 1)
    vh = math.fsum((x - mh) ** 2 for x in h) / (nh - 1)
    ratio = mc / mh
    a, b = vc / (nc * mh**2), ratio**2 * vh / (nh * mh**2)
    if a + b == 0:
        return ratio - 1, 0.0
    df = (a + b) ** 2 / (a**2 / (nc - 1) + b**2 / (nh - 1))
    return ratio - 1, t975(max(1, math.floor(df))) * math.sqrt(a + b)


def canary_promote_decision(
    challenger_jct: Sequence[float],
    champion_jct: Sequence[float],
    challenger_ttft: Sequence[float],
    champion_ttft: Sequence[float],
    *,
    min_gain: float = MIN_JCT_GAIN,
    max_ttft_regression: float = MAX_TTFT_P99_REGRESSION,
) -> tuple[bool, str]:
    """:func:`promote_decision`'s rule on a canary's window: per-request JCTs and TTFTs
    of the sessions each arm decided, two independent samples rather than paired seeds.

    The challenger passes when (1) its relative mean JCT improvement
    ``1 - mean_c / mean_h`` is at least ``min_gain``, (2) its 95% interval (see
    :func:`_welch_ratio`: delta method, Welch's degrees of freedom) excludes zero, and
    (3) its p99 TTFT is at most ``max_ttft_regression`` above the champion's. The
    reason names every part that failed, with the figures, or the figures that passed.
    """
    cj, hj = _finite(challenger_jct, "challenger JCT"), _finite(champion_jct, "champion JCT")
    ct = _finite(challenger_ttft, "challenger TTFT")
    ht = _finite(champion_ttft, "champion TTFT")
    change, half = _welch_ratio(cj, hj)
    gain = -change
    c99, h99 = _quantile(ct, 0.99), _quantile(ht, 0.99)
    ttft = (c99 / h99 - 1) if h99 > 0 else (0.0 if c99 <= h99 else math.inf)
    figures = (f"JCT improvement {_pct(gain)} ± {_pct(half)} (95% CI, {len(cj)} vs "
               f"{len(hj)} requests), p99 TTFT change {ttft:+.2%} ({c99:.3g} s vs "
               f"{h99:.3g} s)")
    return _rule(gain, half, ttft, figures, min_gain, max_ttft_regression)
