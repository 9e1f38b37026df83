"""The agentic trajectory sets: multi-turn agent trajectories calibrated to the DualPath paper.

The paper's agent traces are not public; only their means are (its table of
trajectory sets by "max agent length", MAL):

    =====  =====  =============  ==============  ============  ============
    MAL    turns  appended/turn  generated/turn  total tokens  mean context
    =====  =====  =============  ==============  ============  ============
    32K       60            608             148        28,639        17,183
    48K      106            474             172        42,607        25,120
    64K      157            429             176        55,958        32,721
    =====  =====  =============  ==============  ============  ============

500 trajectories per set; KV hit rate 98.7% on the 64K set.

Each set here is a fixed data set of 500 synthetic trajectories drawn from the
set's own seed (independent of any run seed). One trajectory is drawn so:

1. its total length ``L`` (context at the end) is ``MAL × Beta`` with mean
   ``fill_mean``, so it never exceeds the MAL;
2. its first turn appends ``F`` tokens (the system prompt and the task),
   lognormal around ``first_median``, at most ``L / 2``;
3. its number of turns ``T`` is lognormal (``turns_median``, ``turns_sigma``),
   at least 2 and at most ``(L - F) / 16`` (so each later turn has a few tokens);
4. the rest, ``L - F``, splits into generated tokens (share drawn from a Beta
   around ``gen_share``) and appended tokens of turns 1..T-1; each is spread
   over its turns by a multinomial with lognormal weights (per-turn spread).

How the statistics are defined (:func:`trajectory_stats`): turns, appended per
turn and generated per turn are per-trajectory averages averaged over the
trajectories; total tokens is the mean of ``L``; context is a request's prompt
(hit + appended tokens), averaged over all requests of the set.

What cannot match: the means are not those of independent turns and lengths.
157 turns × (429 + 176) tokens would be 95k tokens, far above the 64K cap, so
turns and per-turn lengths must be strongly anti-correlated (long trajectories
have short turns); here that comes from the fixed budget ``L``. Then the
*token-weighted* hit rate (hit tokens / prompt tokens over all requests, i.e.
what the storage actually serves) is ``1 - request-weighted appended / mean
context``; the request-weighted appended per turn is far below the
trajectory-averaged 429 because long trajectories contribute most requests, so
it comes out ≈ 99.2% rather than the paper's 98.7% (which equals
``1 - 429 / 32,721``, a ratio of the published means). The hit rate averaged
per trajectory does come out ≈ 98.7%; both are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache, cached_property
from statistics import NormalDist

import numpy as np

# --- calibration -------------------------------------------------------------

#: The paper's table, the target of the calibration (and of the tests).
PAPER_STATS: dict[str, dict[str, float]] = {
    "32k": {"turns": 60, "appended_per_turn": 608, "generated_per_turn": 148,
            "total_tokens": 28_639, "mean_context": 17_183},
    "48k": {"turns": 106, "appended_per_turn": 474, "generated_per_turn": 172,
            "total_tokens": 42_607, "mean_context": 25_120},
    "64k": {"turns": 157, "appended_per_turn": 429, "generated_per_turn": 176,
            "total_tokens": 55_958, "mean_context": 32_721},
}
#: The paper's KV hit rate on the 64K set (see the module docstring).
PAPER_HIT_RATE_64K = 0.987

MAL_TOKENS: dict[str, int] = {"32k": 32_768, "48k": 49_152, "64k": 65_536}
TRAJECTORIES_PER_SET = 500
#: Fixed per-set seeds: "the 500 trajectories" of a set are one data set.
SET_SEEDS: dict[str, int] = {"32k": 32_768, "48k": 49_152, "64k": 65_536}

_MIN_FIRST_TURN = 256  # tokens: a system prompt is never tiny
_MIN_TOKENS_PER_TURN = 16  # bounds the number of turns a budget can hold


@dataclass(frozen=True)
class SetParams:
    """Distribution parameters of one trajectory set (see the module docstring)."""

    turns_median: float
    turns_sigma: float
    fill_mean: float
    first_median: float
    gen_share: float
    fill_concentration: float = 10.0  # Beta(a, b) with a + b = this
    first_sigma: float = 0.35
    gen_share_concentration: float = 30.0
    append_spread: float = 0.8  # lognormal sigma of per-turn appended weights
    gen_spread: float = 0.6  # lognormal sigma of per-turn generated weights


# Fitted by ``fit_set_params(mal)`` (20,000 trajectories from seed 123, 30
# damped fixed-point iterations, each parameter driven by the statistic it
# mostly controls): turns_median by mean turns, turns_sigma by appended +
# generated per turn (the spread of turns sets E[1/T]), fill_mean by total
# tokens, first_median by mean context, gen_share by generated per turn. The
# spreads (concentrations, sigmas) are chosen, not fitted. Fitted on a large
# sample, not on the 500 of a set; the sets' own deviations (within ±2.5% of the
# table) are sampling noise, kept small by stratifying the turn counts.
SET_PARAMS: dict[str, SetParams] = {
    "32k": SetParams(turns_median=47.65, turns_sigma=0.6768, fill_mean=0.8736,
                     first_median=5439.0, gen_share=0.2435),
    "48k": SetParams(turns_median=83.61, turns_sigma=0.6890, fill_mean=0.8679,
                     first_median=7322.0, gen_share=0.3265),
    "64k": SetParams(turns_median=120.51, turns_sigma=0.7270, fill_mean=0.8537,
                     first_median=9034.0, gen_share=0.3488),
}


# --- trajectory sets -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrajectorySet:
    """Trajectories stored flat: trajectory ``k`` is ``offsets[k] : offsets[k] + turns[k]``.

    ``appended[j]`` / ``generated[j]`` are the tokens turn ``j`` appends /
    generates; ``before[j]`` is the tokens of all earlier turns of the same
    trajectory (its hit tokens). Arrays are read-only and shared.
    """

    mal: str
    max_tokens: int
    appended: np.ndarray
    generated: np.ndarray
    before: np.ndarray
    offsets: np.ndarray
    turns: np.ndarray

    @classmethod
    def from_turns(cls, mal: str, max_tokens: int, appended: np.ndarray,
                   generated: np.ndarray, turns: np.ndarray) -> TrajectorySet:
        appended = np.asarray(appended, dtype=np.int64)
        generated = np.asarray(generated, dtype=np.int64)
        turns = np.asarray(turns, dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(turns)[:-1])).astype(np.int64)
        per_turn = appended + generated
        cum = np.cumsum(per_turn)
        start = np.repeat(cum[offsets] - per_turn[offsets], turns)
        before = cum - per_turn - start
        for arr in (appended, generated, before, offsets, turns):
            arr.setflags(write=False)
        return cls(mal, max_tokens, appended, generated, before, offsets, turns)

    def __len__(self) -> int:
        return len(self.turns)

    @cached_property
    def turn_lists(self) -> tuple[list[int], list[int], list[int]]:
        """``(appended, generated, before)`` as Python lists, for per-turn lookups (a
        list item is cheaper to read than a numpy one). Built once per set and shared
        by every workload replaying it: read only."""
        return self.appended.tolist(), self.generated.tolist(), self.before.tolist()

    def scaled(self, append_scale: float, gen_scale: float) -> TrajectorySet:
        """Every turn's appended / generated tokens times a scale (rounded, >= 1)."""
        if append_scale == 1.0 and gen_scale == 1.0:
            return self
        return TrajectorySet.from_turns(
            self.mal, self.max_tokens, scale_tokens(self.appended, append_scale),
            scale_tokens(self.generated, gen_scale), self.turns)


def scale_tokens(tokens: np.ndarray, scale: float) -> np.ndarray:
    return np.maximum(1, np.rint(tokens * scale)).astype(np.int64)


def draw_first_turn(params: SetParams, rng: np.random.Generator, size: int) -> np.ndarray:
    draws = params.first_median * np.exp(params.first_sigma * rng.standard_normal(size))
    return np.maximum(_MIN_FIRST_TURN, np.rint(draws)).astype(np.int64)


def _draw_trajectory(params: SetParams, max_tokens: int, turns_z: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    conc = params.fill_concentration
    fill = rng.beta(params.fill_mean * conc, (1 - params.fill_mean) * conc)
    total = max(int(round(max_tokens * fill)), 4 * _MIN_FIRST_TURN)  # room for 2 turns
    first = min(int(draw_first_turn(params, rng, 1)[0]), total // 2)
    rest = total - first
    turns = int(round(params.turns_median * math.exp(params.turns_sigma * turns_z)))
    turns = min(max(turns, 2), rest // _MIN_TOKENS_PER_TURN)
    gconc = params.gen_share_concentration
    share = rng.beta(params.gen_share * gconc, (1 - params.gen_share) * gconc)
    gen_total = min(max(int(round(share * rest)), turns), rest - (turns - 1))
    app_total = rest - gen_total
    appended = np.empty(turns, dtype=np.int64)
    appended[0] = first
    appended[1:] = _spread(app_total, turns - 1, params.append_spread, rng)
    generated = _spread(gen_total, turns, params.gen_spread, rng)
    return appended, generated


def _spread(total: int, parts: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``total`` tokens over ``parts`` turns, each >= 1, with lognormal-weighted spread."""
    weights = np.exp(sigma * rng.standard_normal(parts))
    return rng.multinomial(total - parts, weights / weights.sum()) + 1


def generate_set(mal: str, params: SetParams, count: int,
                 rng: np.random.Generator) -> TrajectorySet:
    """Draw ``count`` trajectories of a set from ``params``."""
    max_tokens = MAL_TOKENS[mal]
    turns_z = _stratified_normal(count, rng)
    drawn = [_draw_trajectory(params, max_tokens, float(z), rng) for z in turns_z]
    return TrajectorySet.from_turns(
        mal, max_tokens,
        np.concatenate([a for a, _ in drawn]), np.concatenate([g for _, g in drawn]),
        np.array([len(a) for a, _ in drawn]))


def _stratified_normal(count: int, rng: np.random.Generator) -> np.ndarray:
    """Standard normal draws, one per stratum of probability 1/count, shuffled.

    The number of turns drives the per-turn means through 1/T, which a sample
    of 500 estimates noisily; stratifying it makes a fixed set representative.
    """
    u = (rng.permutation(count) + rng.uniform(size=count)) / count
    inv_cdf = NormalDist().inv_cdf
    return np.array([inv_cdf(min(max(x, 1e-12), 1 - 1e-12)) for x in u])


def check_mal(mal: str) -> str:
    """Normalise a MAL name ("32k", "48K", ...) or raise ``ValueError``."""
    key = str(mal).strip().lower()
    if key not in MAL_TOKENS:
        raise ValueError(f"mal: unknown max agent length {mal!r}; choose one of "
                         f"{', '.join(MAL_TOKENS)}")
    return key


def trajectory_set(mal: str) -> TrajectorySet:
    """The fixed set of 500 trajectories of a MAL (same on every call and run)."""
    return _fixed_set(check_mal(mal))


@cache
def _fixed_set(key: str) -> TrajectorySet:
    return generate_set(key, SET_PARAMS[key], TRAJECTORIES_PER_SET,
                        np.random.default_rng(SET_SEEDS[key]))


def set_stats(tset: TrajectorySet) -> dict[str, float]:
    """Calibration statistics of a trajectory set (definitions in the module docstring)."""
    a, g, offsets, turns = tset.appended, tset.generated, tset.offsets, tset.turns
    prompt = tset.before + a
    app_sum = np.add.reduceat(a, offsets)
    prompt_sum = np.add.reduceat(prompt, offsets)
    totals = app_sum + np.add.reduceat(g, offsets)
    return {
        "trajectories": float(len(tset)),
        "turns": float(turns.mean()),
        "appended_per_turn": float((app_sum / turns).mean()),
        "generated_per_turn": float((np.add.reduceat(g, offsets) / turns).mean()),
        "total_tokens": float(totals.mean()),
        "mean_context": float(prompt.mean()),
        "hit_rate": float(1.0 - a.sum() / prompt.sum()),
        "trajectory_hit_rate": float((1.0 - app_sum / prompt_sum).mean()),
        "max_total_tokens": float(totals.max()),
        "requests": float(turns.sum()),
    }


def trajectory_stats(mal: str) -> dict[str, float]:
    """Statistics of the fixed set of a MAL, comparable with :data:`PAPER_STATS`."""
    return set_stats(trajectory_set(mal))


def fit_set_params(mal: str, count: int = 20_000, iterations: int = 30,
                   seed: int = 123) -> SetParams:
    """Re-fit :data:`SET_PARAMS` for a MAL (how the constants were made; slow: ~1 min)."""
    key = check_mal(mal)
    target = PAPER_STATS[key]
    params = SET_PARAMS[key]
    for _ in range(iterations):
        s = set_stats(generate_set(key, params, count, np.random.default_rng(seed)))
        per_turn = target["appended_per_turn"] + target["generated_per_turn"]
        got_per_turn = s["appended_per_turn"] + s["generated_per_turn"]
        sigma2 = params.turns_sigma ** 2 + 0.8 * math.log(per_turn / got_per_turn)
        params = replace(
            params,
            turns_median=params.turns_median * target["turns"] / s["turns"],
            turns_sigma=math.sqrt(max(0.01, sigma2)),
            fill_mean=min(0.97, params.fill_mean * target["total_tokens"] / s["total_tokens"]),
            first_median=params.first_median + 1.5 * (target["mean_context"] - s["mean_context"]),
            gen_share=params.gen_share * target["generated_per_turn"] / s["generated_per_turn"],
        )
    return params
