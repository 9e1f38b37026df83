"""Agentic workload: multi-turn agent trajectories calibrated to the DualPath paper.

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

from runtime.request import Request

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
            self.mal, self.max_tokens, _scale(self.appended, append_scale),
            _scale(self.generated, gen_scale), self.turns)


def _scale(tokens: np.ndarray, scale: float) -> np.ndarray:
    return np.maximum(1, np.rint(tokens * scale)).astype(np.int64)


def _draw_first_turn(params: SetParams, rng: np.random.Generator, size: int) -> np.ndarray:
    draws = params.first_median * np.exp(params.first_sigma * rng.standard_normal(size))
    return np.maximum(_MIN_FIRST_TURN, np.rint(draws)).astype(np.int64)


def _draw_trajectory(params: SetParams, max_tokens: int, turns_z: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    conc = params.fill_concentration
    fill = rng.beta(params.fill_mean * conc, (1 - params.fill_mean) * conc)
    total = max(int(round(max_tokens * fill)), 4 * _MIN_FIRST_TURN)  # room for 2 turns
    first = min(int(_draw_first_turn(params, rng, 1)[0]), total // 2)
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


# --- online arrival processes ----------------------------------------------------

ARRIVALS = ("poisson", "bursty")


@dataclass(frozen=True)
class BurstyArrivals:
    """An on/off modulated Poisson process with a given long-run mean rate.

    Time alternates between bursts and quiet periods of exponential lengths,
    bursts with mean ``burst_s`` and quiet periods with mean ``burst_s × (1 −
    burst_share) / burst_share``, so that a long run spends ``burst_share`` of
    its time in bursts. For a mean rate ``aps``, arrivals come at ``burst_factor
    × aps`` in a burst and at ``aps × (1 − burst_share × burst_factor) / (1 −
    burst_share)`` when quiet, which keeps the long-run mean at ``aps`` (the
    quiet rate must be >= 0: ``burst_share × burst_factor <= 1``). The first
    period is a burst with probability ``burst_share`` (the stationary state).
    ``burst_factor = 1`` is a plain Poisson process.
    """

    burst_s: float = 20.0
    burst_factor: float = 4.0
    burst_share: float = 0.2

    def __post_init__(self) -> None:
        _check_positive("burst_s", self.burst_s)
        _check_finite("burst_factor", self.burst_factor)
        if self.burst_factor < 1:
            raise ValueError(f"burst_factor: must be >= 1 (a burst is busier than the mean), "
                             f"got {self.burst_factor!r}")
        _check_finite("burst_share", self.burst_share)
        if not 0 < self.burst_share < 1:
            raise ValueError(f"burst_share: must lie in (0, 1), got {self.burst_share!r}")
        if self.burst_share * self.burst_factor > 1:
            raise ValueError(
                f"burst_share × burst_factor must be <= 1 (else the quiet rate is < 0 and the "
                f"mean cannot be kept), got {self.burst_share!r} × {self.burst_factor!r}")

    @property
    def quiet_factor(self) -> float:
        """Quiet-period rate as a multiple of the mean rate."""
        return (1 - self.burst_share * self.burst_factor) / (1 - self.burst_share)

    @property
    def quiet_s(self) -> float:
        """Mean length of a quiet period."""
        return self.burst_s * (1 - self.burst_share) / self.burst_share

    @property
    def label(self) -> str:
        return f"bursty-{self.burst_s:g}s-x{self.burst_factor:g}-{self.burst_share:g}"

    def draw(self, rng: np.random.Generator, aps: float, duration_s: float) -> np.ndarray:
        """Sorted arrival times in ``[0, duration_s)`` at a mean of ``aps`` per second."""
        in_burst = bool(rng.uniform() < self.burst_share)
        t = 0.0
        chunks: list[np.ndarray] = []
        while t < duration_s:
            mean_s, factor = ((self.burst_s, self.burst_factor) if in_burst
                              else (self.quiet_s, self.quiet_factor))
            end = min(t + float(rng.exponential(mean_s)), duration_s)
            count = int(rng.poisson(aps * factor * (end - t)))
            chunks.append(rng.uniform(t, end, count))
            t, in_burst = end, not in_burst
        return np.sort(np.concatenate(chunks)) if chunks else np.zeros(0)


def _arrival_process(arrival: str, online: bool,
                     bursts: BurstyArrivals) -> BurstyArrivals | None:
    """The bursty process, or None for Poisson; refuses options that would be ignored."""
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival: unknown arrival process {arrival!r}; choose one of "
                         f"{', '.join(ARRIVALS)}")
    if arrival == "bursty":
        if not online:
            raise ValueError("arrival='bursty' applies only to online=True")
        return bursts
    if bursts != BurstyArrivals():
        raise ValueError("burst_s, burst_factor and burst_share apply only to "
                         "arrival='bursty'")
    return None


# --- the workload --------------------------------------------------------------


class AgenticWorkload:
    """Agents replaying the trajectories of one set; implements ``Workload``.

    Agent ``k`` replays trajectory ``k % 500``; agents from the 500th on get a
    synthetic first turn (its appended length re-drawn from the set's
    first-turn distribution with this workload's rng, capped so the trajectory
    still fits the MAL), so that no two agents share a prompt and hits stay
    within an agent. Turn ``i`` hits every earlier token of its agent
    (appended and generated) and appends that turn's tokens; turn 0 hits none.

    Offline (default): ``agents`` agents all arrive at t = 0. Online: agents
    arrive at ``aps`` agents per second over ``[0, duration_s)``; ``agents`` is
    ignored. ``arrival`` picks the process: ``"poisson"`` (default) or
    ``"bursty"``, an on/off modulated Poisson process of the same long-run rate
    (see :class:`BurstyArrivals`; ``burst_s``, ``burst_factor`` and
    ``burst_share`` set it and apply only to it). A turn arrives when the
    previous one finishes plus two exponential delays with means
    ``tool_latency_s`` and ``think_time_s`` (0 = none, as in the paper).

    ``append_scale`` / ``gen_scale`` multiply every turn's appended / generated
    tokens (rounded, >= 1), as in the paper's length-scaling experiment; a
    scaled run may exceed the MAL (the cap holds only for unscaled runs).

    All randomness comes from one ``numpy.random.Generator`` built from
    ``seed`` (or passed as ``seed``); the trajectory sets themselves are fixed.
    Turns are produced lazily: nothing per turn is stored.
    """

    def __init__(self, agents: int | None, mal: str = "64k",
                 seed: int | np.random.Generator = 0, *,
                 online: bool = False, aps: float | None = None,
                 duration_s: float | None = None, append_scale: float = 1.0,
                 gen_scale: float = 1.0, tool_latency_s: float = 0.0,
                 think_time_s: float = 0.0, arrival: str = "poisson",
                 burst_s: float = BurstyArrivals.burst_s,
                 burst_factor: float = BurstyArrivals.burst_factor,
                 burst_share: float = BurstyArrivals.burst_share,
                 shuffle: bool = False) -> None:
        self.mal = check_mal(mal)
        self.bursts = _arrival_process(arrival, online, BurstyArrivals(
            burst_s=burst_s, burst_factor=burst_factor, burst_share=burst_share))
        _check_positive("append_scale", append_scale)
        _check_positive("gen_scale", gen_scale)
        _check_non_negative("tool_latency_s", tool_latency_s)
        _check_non_negative("think_time_s", think_time_s)
        self.online = online
        self.append_scale = float(append_scale)
        self.gen_scale = float(gen_scale)
        self.tool_latency_s = float(tool_latency_s)
        self.think_time_s = float(think_time_s)
        self._delays = self.tool_latency_s > 0 or self.think_time_s > 0
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        base = trajectory_set(self.mal)
        self._set = base.scaled(self.append_scale, self.gen_scale)
        self._arrivals = self._draw_arrivals(agents, aps, duration_s)
        self.agents = len(self._arrivals)
        self._traj = self._assign(len(base), shuffle)
        self._first = self._draw_first_turns(base)
        first_idx = self._set.offsets[self._traj]
        # Later turns' hits shift by how much the (synthetic) first turn differs.
        self._delta = self._first - self._set.appended[first_idx]
        self._first_gen = self._set.generated[first_idx]
        self.total_requests = int(self._set.turns[self._traj].sum())
        # Python lists: the per-turn lookups below are the hot path of a simulation.
        self._turns: list[int] = self._set.turns[self._traj].tolist()
        self._offset: list[int] = self._set.offsets[self._traj].tolist()
        self._shift: list[int] = self._delta.tolist()
        self._appended, self._generated, self._before = self._set.turn_lists
        self._next_id = self.agents
        if online:
            self.name = f"agentic-{self.mal}-online-{aps:g}aps-{duration_s:g}s"
            if self.bursts is not None:
                self.name += f"-{self.bursts.label}"
        else:
            self.name = f"agentic-{self.mal}-offline-{self.agents}agents"
        if shuffle:
            self.name += "-shuffled"
        if self.append_scale != 1.0 or self.gen_scale != 1.0:
            self.name += f"-x{self.append_scale:g}a-x{self.gen_scale:g}g"

    def _draw_arrivals(self, agents: int | None, aps: float | None,
                       duration_s: float | None) -> np.ndarray:
        if not self.online:
            if aps is not None or duration_s is not None:
                raise ValueError("aps and duration_s apply only to online=True")
            if isinstance(agents, bool) or not isinstance(agents, int | np.integer) or agents < 1:
                raise ValueError(f"agents: must be an integer >= 1 offline, got {agents!r}")
            return np.zeros(int(agents))
        if aps is None or duration_s is None:
            raise ValueError("online=True needs aps (agents per second) and duration_s")
        _check_positive("aps", aps)
        _check_positive("duration_s", duration_s)
        if self.bursts is not None:
            return self.bursts.draw(self._rng, aps, duration_s)
        # Poisson process: a Poisson count, then uniform order statistics.
        count = int(self._rng.poisson(aps * duration_s))
        return np.sort(self._rng.uniform(0.0, duration_s, count))

    def _assign(self, trajectories: int, shuffle: bool) -> np.ndarray:
        """Each agent's trajectory: in set order, or (``shuffle``) in a seeded random order,
        so that offline runs of fewer agents than the set differ by seed. The shuffle draws
        after the arrivals, so it leaves the arrival stream of a seed unchanged."""
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle: must be true or false, got {shuffle!r}")
        if not shuffle:
            return np.arange(self.agents, dtype=np.int64) % trajectories
        rounds = -(-self.agents // trajectories)
        order = np.concatenate([self._rng.permutation(trajectories) for _ in range(rounds)])
        return order[:self.agents].astype(np.int64)

    def _draw_first_turns(self, base: TrajectorySet) -> np.ndarray:
        first_idx = base.offsets[self._traj]
        first = base.appended[first_idx].copy()
        extra = np.arange(self.agents) >= len(base)
        if extra.any():
            drawn = _draw_first_turn(SET_PARAMS[self.mal], self._rng, int(extra.sum()))
            traj = self._traj[extra]
            totals = np.add.reduceat(base.appended + base.generated, base.offsets)[traj]
            room = base.appended[first_idx[extra]] + base.max_tokens - totals
            first[extra] = np.minimum(drawn, room)
        return _scale(first, self.append_scale) if self.append_scale != 1.0 else first

    def initial_requests(self) -> list[Request]:
        """First turns of all agents, by arrival (request id = agent id)."""
        return [
            Request(request_id=k, agent_id=k, turn=0, hit_tokens=0,
                    appended_tokens=int(self._first[k]), gen_tokens=int(self._first_gen[k]),
                    arrival_s=float(self._arrivals[k]))
            for k in range(self.agents)
        ]

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        """The agent's next turn (after the delays), or [] when its trajectory ends."""
        agent = request.agent_id
        if not 0 <= agent < self.agents:
            raise ValueError(f"request {request.request_id}: agent {agent} is not of {self.name}")
        turn = request.turn + 1
        if turn >= self._turns[agent]:
            return []
        j = self._offset[agent] + turn
        rid = self._next_id
        self._next_id += 1
        # Positional (a call with keywords costs more): request_id, agent_id, turn,
        # hit_tokens, appended_tokens, gen_tokens, arrival_s.
        return [Request(rid, agent, turn, self._before[j] + self._shift[agent],
                        self._appended[j], self._generated[j],
                        finish_s + self._delay() if self._delays else finish_s)]

    def _delay(self) -> float:
        delay = 0.0
        if self.tool_latency_s > 0:
            delay += float(self._rng.exponential(self.tool_latency_s))
        if self.think_time_s > 0:
            delay += float(self._rng.exponential(self.think_time_s))
        return delay

    def turns_of(self, agent: int) -> int:
        """Number of turns agent ``agent`` will run."""
        return self._turns[agent]


def _check_positive(key: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{key}: must be a finite number > 0, got {value!r}")


def _check_finite(key: str, value: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)):
        raise ValueError(f"{key}: must be a finite number, got {value!r}")


def _check_non_negative(key: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{key}: must be a finite number >= 0, got {value!r}")
