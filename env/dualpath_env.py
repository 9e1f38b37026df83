"""``DualPathEnv``: the gymnasium environment over the simulator."""

from __future__ import annotations

import copy
import time as wallclock
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.encoding import QUEUE, QUEUE_CHOICES, Encoder, Encoding
from env.tuning import Tuning
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.execution.executor import Executor
from runtime.execution.job import Job, outcome
from runtime.live.config import LiveOptions
from runtime.live.model_run import spec_for_model
from runtime.live.session import LiveSession
from runtime.policy import Policy, as_learner
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import SimOptions, Simulator
from runtime.slo import tpot_target_s, ttft_target_s
from runtime.view import ClusterView
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.base import Workload

WorkloadFactory = Callable[[int], Workload]
TunableFactory = Callable[[dict[str, float]], Policy]
#: Features are log1p seconds or shares; the bound only keeps the space finite.
OBS_HIGH = 1e6


class Mode(StrEnum):
    ROUTE = "route"
    TUNE = "tune"


class DualPathEnv(gym.Env[np.ndarray, np.ndarray]):
    """Schedule the requests of a simulated dual-path PD cluster.

    ## Description

    A discrete-event simulation of a prefill/decode-disaggregated cluster whose
    requests reload their KV cache from storage, either through the prefill
    engine's node or through a decode engine's node and RDMA. In *routing* mode
    every step decides one request, the one the queue order picks (the head
    under FIFO): its prefill engine, its decode engine and the share of its KV read
    on the decode side; with the ``queue`` part controlled (encoding version 2,
    simulator only) the agent may place one of the first ``QUEUE_CHOICES`` waiting
    requests instead. In *tuning* mode every step sets the parameters of a heuristic
    (``tunable``) for the next ``tuning.window_s`` seconds of simulated time.
    Between steps the simulator runs until the next decision (or window end).

    ## Action Space

    Routing: ``MultiDiscrete`` over the parts of the decision the agent controls
    (``encoding.control``, default all three): prefill slot
    (``encoding.max_prefill``), decode slot (``encoding.max_decode``) and share
    level (``encoding.share_levels``). :meth:`action_masks` gives the valid
    choices: existing prefill engines, decode engines with HBM and a batch slot
    for the request, and share 0 alone for a request without hits. A masked-out
    choice is replaced by the next valid one (cyclically), so agents without
    masks and the env checkers can act. Parts the
    agent does not control are decided by ``fallback``, a ``Policy`` the caller
    passes in; when the fallback defers, the request waits without a step.
    Without a fallback the env defers only when no decode engine has room.

    Tuning: ``MultiDiscrete`` with one level index per parameter of ``tuning``.

    ## Observation Space

    ``Box(0, 1e6, (encoding.obs_size,), float32)``: per-engine, per-node, request
    and queue features padded to the encoding's maxima; see ``env/encoding.py``.
    In tuning mode the request block is zero.

    ## Rewards

    Minus the number of unfinished requests integrated over the simulated time
    until the next step, times ``reward_scale``: the undiscounted return is minus
    the total time requests spend in the system (sum of latencies), scaled.
    With ``slo_penalty`` > 0, each finished request that missed the TTFT or TPOT
    SLO subtracts that much more. Tuning mode with ``baseline`` (parameters): the
    reward is relative, minus the time in system the chosen parameters add over
    the window plus what ``baseline``'s would have added from the same state (run
    on a copy of the simulation, with the same future arrivals), so the reward
    measures the choice rather than the load.

    ## Starting State

    An idle cluster at time 0 with the workload's first requests arriving;
    ``reset(seed=...)`` seeds the workload (the only randomness), so two envs
    reset with the same seed give identical rollouts for identical actions.

    ## Episode End

    Terminated when every request of the workload has finished. Truncated by
    the ``TimeLimit`` given at registration (``max_episode_steps``).

    ## Arguments

    ``gymnasium.make("DualPath-v0")`` needs none: preset ``ds27b-1p1d``, routing
    mode, 16 offline agents of the 32K set. ``preset`` (name, file or
    ``ClusterSpec``), ``mode`` (``"route"``/``"tune"``), ``workload`` (a
    ``seed -> Workload`` factory, overriding ``agents``/``mal``), ``encoding``,
    ``fallback``, ``tuning`` and ``tunable`` (required in tuning mode: parameters
    → policy), ``layerwise``, ``reward_scale``, ``slo_penalty``, ``baseline``.
    ``backend="live"`` steps a live cluster of real processes (``live`` gives its
    :class:`LiveOptions`; routing mode only) instead of the simulator; call
    :meth:`close` to stop it.
    """

    metadata = {"render_modes": []}

    def __init__(self, preset: str | ClusterSpec = "ds27b-1p1d", mode: str = "route",
                 workload: WorkloadFactory | None = None, agents: int = 16,
                 mal: str = "32k", encoding: Encoding | None = None,
                 fallback: Policy | None = None, tuning: Tuning | None = None,
                 tunable: TunableFactory | None = None, layerwise: bool = True,
                 reward_scale: float = 0.01, slo_penalty: float = 0.0,
                 baseline: dict[str, float] | None = None, backend: str = "sim",
                 live: LiveOptions | None = None) -> None:
        super().__init__()
        self.mode = Mode(mode)
        cluster = preset if isinstance(preset, ClusterSpec) else load_preset(preset)
        self.live = live or LiveOptions()
        # A live cluster with the model engine takes the real model's layers and KV bytes.
        self.cluster = spec_for_model(cluster, self.live) if backend == "live" else cluster
        self.encoding = encoding or Encoding()
        self.encoder = Encoder(self.encoding, self.cluster)
        self.tuning = tuning or Tuning()
        self.fallback = fallback
        self.tunable = tunable
        self.baseline = dict(baseline) if baseline is not None else None
        if self.baseline is not None and self.mode is not Mode.TUNE:
            raise ValueError("baseline= applies to tuning mode only")
        if self.mode is Mode.ROUTE and not self.encoding.routes_fully and fallback is None:
            raise ValueError(f"the agent controls only {', '.join(self.encoding.control)}: "
                             "pass fallback=<Policy> to decide the rest")
        if backend not in ("sim", "live"):
            raise ValueError(f"backend {backend!r}: expected 'sim' or 'live'")
        if backend == "live" and QUEUE in self.encoding.control:
            raise ValueError("the queue part needs backend='sim': a live cluster is asked "
                             "about one request at a time")
        if backend == "live" and self.mode is Mode.TUNE:
            raise ValueError("backend='live' supports routing mode only: tuning mode replays "
                             "windows on a copy of the simulation, and a live cluster cannot "
                             "be copied")
        self.backend = backend
        if self.mode is Mode.TUNE and tunable is None:
            raise ValueError("tuning mode needs tunable=<callable: parameters -> Policy>, the "
                             "heuristic whose parameters the agent sets")
        self._workload = workload or (lambda seed: AgenticWorkload(agents, mal, seed))
        self.layerwise = layerwise
        self.reward_scale = _positive("reward_scale", reward_scale)
        self.slo_penalty = _non_negative("slo_penalty", slo_penalty)
        self.observation_space = spaces.Box(0.0, OBS_HIGH, (self.encoding.obs_size,), np.float32)
        nvec = self.encoding.action_nvec if self.mode is Mode.ROUTE else self.tuning.action_nvec
        self.action_space = spaces.MultiDiscrete(np.array(nvec, dtype=np.int64))
        self.sim: Executor | None = None
        self._point: tuple[Request, ClusterView] | None = None
        self._hint: Decision | None = None
        self._mask = np.ones(sum(nvec), dtype=bool)
        # Read on every step.
        self._routing = self.mode is Mode.ROUTE
        self._gate_decode = "decode" in self.encoding.control
        self._violations = 0
        self._wall = 0.0

    # -- gymnasium API ------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        workload_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else seed
        if self.backend == "live":
            self.close()
            self.sim = LiveSession(self.cluster, self._workload(workload_seed), self.live)
        else:
            self.sim = Simulator(self.cluster, self._workload(workload_seed),
                                 SimOptions(layerwise=self.layerwise))
        self.sim.on_finish = self._on_finish
        self._violations = 0
        self._wall = wallclock.perf_counter()
        self._point = self.sim.next_decision()
        if self.mode is Mode.ROUTE:
            self._route_to_agent()
        return self._observe(), self._info()

    def close(self) -> None:
        if isinstance(self.sim, LiveSession):
            self.sim.close()
            self.sim = None

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        sim = self.sim
        if sim is None or self._point is None:
            raise RuntimeError("step() called before reset() or after the episode ended")
        area, violations = sim.time_in_system, self._violations
        if self._routing:
            encoder = self.encoder
            chosen = encoder.project(action, self._mask)
            hint = self._hint
            if encoder.queue_choice(chosen):
                hint = self._present(encoder.queue_choice(chosen), chosen)
            sim.apply(encoder.decision(chosen, hint))
            self._point = sim.next_decision()
            self._route_to_agent()
        else:
            base = self._baseline_area() if self.baseline is not None else 0.0
            self._point = self._run_window(sim, self._point,
                                           self.tunable(self.tuning.params(action)))  # type: ignore[misc]
            area += base
        reward = -(sim.time_in_system - area) * self.reward_scale
        reward -= (self._violations - violations) * self.slo_penalty
        done = self._point is None
        return self._observe(), float(reward), done, False, self._info(done)

    def fallback_action(self) -> np.ndarray | None:
        """Routing: the action standing for the fallback's decision on the pending request
        (``None`` without a fallback) — a demonstration for imitation learning."""
        if self._hint is None:
            return None
        return np.array(self.encoder.action_of(self._hint), dtype=np.int64)

    def action_masks(self) -> np.ndarray:
        """Valid actions now, per part, concatenated (for MaskablePPO)."""
        return self._mask.copy()

    # -- stepping -----------------------------------------------------------
    def _present(self, choice: int, action: list[int]) -> Decision | None:
        """Make waiting request ``choice`` the one decided, if the action's decode engine
        has room for it and the fallback (if any) places it; else keep the pick. Returns
        the fallback's decision for the request decided."""
        sim = self.sim
        assert isinstance(sim, Simulator)
        request, view = sim.present(choice)
        hint = self.fallback.decide(request, view) if self.fallback is not None else None
        placed = self.fallback is None or isinstance(hint, Decision)
        decode = self.encoding.control.index("decode") if self._gate_decode else -1
        room = decode < 0 or self.encoder.room_for(request, view, action[decode])
        if placed and room:
            self._point = (request, view)
            return hint if isinstance(hint, Decision) else None
        self._point = sim.present(0)
        return self._hint

    def _route_to_agent(self) -> None:
        """Advance to the next request the agent must decide; defer the others."""
        sim = self.sim
        assert sim is not None
        while self._point is not None:
            request, view = self._point
            hint = None
            if self.fallback is not None:
                answer = self.fallback.decide(request, view)
                if not isinstance(answer, Decision):
                    sim.apply(answer)
                    self._point = sim.next_decision()
                    continue
                hint = answer
            if self._gate_decode and not self.encoder.any_room(request, view):
                sim.apply(Defer("no decode engine has room", WaitFor.DECODE))
                self._point = sim.next_decision()
                continue
            # Shared and read-only: action_masks() hands out copies.
            self._hint, self._mask = hint, self.encoder.shared_action_mask(
                request, view, len(self._waiting()))
            return

    def _waiting(self) -> list[Request]:
        """The requests the queue part chooses among; none when the agent does not choose
        (a served policy, asked about one request, sees none either)."""
        if isinstance(self.sim, Simulator) and QUEUE in self.encoding.control:
            return self.sim.candidates(QUEUE_CHOICES)
        return []

    def _run_window(self, sim: Executor, point: tuple[Request, ClusterView] | None,
                    policy: Policy) -> tuple[Request, ClusterView] | None:
        """Let ``policy`` decide for one window of simulated time; the next pending point."""
        end = sim.now + self.tuning.window_s
        while point is not None and point[1].time_s < end:
            sim.apply(policy.decide(*point))
            point = sim.next_decision()
        return point

    def _baseline_area(self) -> float:
        """Time in system the baseline parameters would add over this window, on a copy of
        the simulation (same state, same future arrivals): a counterfactual baseline that
        removes the workload's own variation from the reward."""
        sim = self.sim
        assert sim is not None
        callback, sim.on_finish = sim.on_finish, None  # the copy must not report to us
        try:
            shadow, point = copy.deepcopy((sim, self._point))
        finally:
            sim.on_finish = callback
        start = shadow.time_in_system
        self._run_window(shadow, point, self.tunable(self.baseline))  # type: ignore[arg-type, misc]
        return shadow.time_in_system - start

    def _on_finish(self, job: Job) -> None:
        spec, slo_class = self.cluster, job.request.slo_class
        if (job.ttft_s > ttft_target_s(spec, slo_class)
                or job.tpot_s > tpot_target_s(spec, slo_class)):
            self._violations += 1
        if (learner := as_learner(self.fallback)) is not None:
            learner.complete(job.request.request_id, outcome(job))

    # -- observation and info -----------------------------------------------
    def _observe(self) -> np.ndarray:
        sim = self.sim
        assert sim is not None
        if self._point is None:
            return self.encoder.observe(None, sim.view())
        request, view = self._point
        if not self._routing:
            return self.encoder.observe(None, view)
        return self.encoder.observe(request, view, self._hint, self._waiting())

    def _info(self, done: bool = False) -> dict[str, Any]:
        sim = self.sim
        assert sim is not None
        info: dict[str, Any] = {"time_s": sim.now, "finished": sim.finished,
                                "in_system": sim.in_system,
                                "slo_violations": self._violations}
        if done:
            info["metrics"] = sim.result(wallclock.perf_counter() - self._wall).metrics
        return info


def _positive(name: str, value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
