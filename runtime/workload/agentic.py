"""Agentic workload: agents replay trajectories of :mod:`runtime.workload.trajectories`.

Agents start all at once (offline) or arrive online by an arrival process
(Poisson or bursty); each agent's next turn arrives when its previous one ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.request import Request
from runtime.slo import BATCH, INTERACTIVE
from runtime.workload.trajectories import (
    SET_PARAMS,
    TrajectorySet,
    check_mal,
    draw_first_turn,
    scale_tokens,
    trajectory_set,
)

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

    ``batch_share`` makes each agent a ``batch`` tenant (no latency target, see
    :mod:`runtime.slo`) with that probability, drawn after everything else, so a
    share of 0 (the default: every agent ``interactive``) leaves the draws of a seed
    as they were.

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
                 shuffle: bool = False, batch_share: float = 0.0) -> None:
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
        self._classes = self._draw_classes(batch_share)
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
        if batch_share:
            self.name += f"-batch{batch_share:g}"

    def _draw_classes(self, batch_share: float) -> list[str]:
        """Each agent's latency class."""
        _check_finite("batch_share", batch_share)
        if not 0 <= batch_share <= 1:
            raise ValueError(f"batch_share: must lie in [0, 1], got {batch_share!r}")
        if batch_share == 0:
            return [INTERACTIVE] * self.agents
        batch = self._rng.uniform(size=self.agents) < batch_share
        return [BATCH if b else INTERACTIVE for b in batch.tolist()]

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
            drawn = draw_first_turn(SET_PARAMS[self.mal], self._rng, int(extra.sum()))
            traj = self._traj[extra]
            totals = np.add.reduceat(base.appended + base.generated, base.offsets)[traj]
            room = base.appended[first_idx[extra]] + base.max_tokens - totals
            first[extra] = np.minimum(drawn, room)
        return scale_tokens(first, self.append_scale) if self.append_scale != 1.0 else first

    def initial_requests(self) -> list[Request]:
        """First turns of all agents, by arrival (request id = agent id)."""
        return [
            Request(request_id=k, agent_id=k, turn=0, hit_tokens=0,
                    appended_tokens=int(self._first[k]), gen_tokens=int(self._first_gen[k]),
                    arrival_s=float(self._arrivals[k]), slo_class=self._classes[k])
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
        # hit_tokens, appended_tokens, gen_tokens, arrival_s, block_hashes, slo_class.
        return [Request(rid, agent, turn, self._before[j] + self._shift[agent],
                        self._appended[j], self._generated[j],
                        finish_s + self._delay() if self._delays else finish_s, None,
                        self._classes[agent])]

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
