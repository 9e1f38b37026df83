"""``dualpath bench env`` and ``bench policy``: raw env steps per second with random valid
actions, and microseconds per decision of policy specs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from gymnasium import spaces

from env import DualPathEnv

BENCH_PRESET = "ds27b-1p1d"


class RandomValidAction:
    """A uniformly random valid choice per part: the argmax of random keys over the mask.

    Cheap next to the env step it is timed with: the keys are drawn in blocks (the
    same numbers as one ``rng.random(len(mask))`` per call: a generator fills an
    array in order), and the argmax is vectorised over the parts: each part's keys
    are gathered into one row, padded after the part with -1 (a masked key).
    """

    BLOCK = 1024  # draws of keys per call to the generator

    def __init__(self, nvec: np.ndarray) -> None:
        self._size = size = int(np.sum(nvec))
        self._layout = np.full((len(nvec), int(np.max(nvec))), size)  # padding -> key[size]
        at = 0
        for k, n in enumerate(nvec):
            self._layout[k, :n] = np.arange(at, at + n)
            at += n
        self._keys = np.empty(size + 1)  # this call's masked keys, then the padding
        self._head = self._keys[:-1]
        self._rows: list[np.ndarray] = []
        self._next = 0

    def __call__(self, mask: np.ndarray, rng: np.random.Generator,
                 out: np.ndarray) -> np.ndarray:
        if self._next == len(self._rows):
            self._rows = list(rng.random((self.BLOCK, self._size)))
            self._next = 0
        keys = self._keys
        keys.fill(-1.0)
        np.putmask(self._head, mask, self._rows[self._next])  # keys where valid
        self._next += 1
        return keys[self._layout].argmax(axis=1, out=out)


def bench_env(steps: int = 50_000, seed: int = 0) -> dict[str, Any]:
    """Step ``DualPathEnv()`` (its defaults: ds27b-1p1d, routing) ``steps`` times, resetting
    at each episode end; reports steps per second of the whole loop (sampling included)
    and of the env alone."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    env = DualPathEnv(BENCH_PRESET)
    rng = np.random.default_rng(seed)
    assert isinstance(env.action_space, spaces.MultiDiscrete)
    nvec = env.action_space.nvec
    sample = RandomValidAction(nvec)
    action = np.zeros(len(nvec), dtype=np.int64)
    episodes = 1
    env_s = 0.0
    start = time.perf_counter()
    env.reset(seed=seed)
    env_s += time.perf_counter() - start
    for _ in range(steps):
        sample(env.action_masks(), rng, action)
        t = time.perf_counter()
        _, _, done, _, _ = env.step(action)
        if done:
            env.reset(seed=seed + episodes)
            episodes += 1
        env_s += time.perf_counter() - t
    wall = time.perf_counter() - start
    return {"steps": steps, "episodes": episodes, "wall_s": wall, "steps_per_s": steps / wall,
            "env_only_steps_per_s": steps / env_s, "preset": BENCH_PRESET, "mode": "route"}


class _Timed:
    """Wraps a policy; records the wall time of every ``decide``."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.name = policy.name
        self.times: list[float] = []

    def decide(self, request: Any, view: Any) -> Any:
        start = time.perf_counter()
        answer = self.policy.decide(request, view)
        self.times.append(time.perf_counter() - start)
        return answer


def bench_policy(specs: list[str], preset: str = "ds660b-2p4d", agents: int = 64,
                 seed: int = 0, overrides: list[str] | None = None,
                 scenario: str | None = None) -> dict[str, Any]:
    """Microseconds per ``decide`` of each policy spec, over one simulated run each
    (64K agents on ``preset`` with ``overrides``, or ``scenario``'s cluster and workload on
    its first evaluation seed); the first spec is the baseline of the ratios."""
    from agents.spec import resolve_policy
    from experiments.evaluation.scenario import load_scenario
    from runtime.preset import load_preset
    from runtime.sim import Simulator
    from runtime.workload.agentic import AgenticWorkload

    chosen = load_scenario(scenario) if scenario else None
    cluster = chosen.cluster() if chosen else load_preset(preset, overrides or [])
    rows: list[dict[str, Any]] = []
    for spec in specs:
        timed = _Timed(resolve_policy(spec, cluster).policy)
        workload = (chosen.workload(chosen.eval_seeds[0]) if chosen
                    else AgenticWorkload(agents, "64k", seed))
        Simulator(cluster, workload).run(timed)
        us = np.array(timed.times) * 1e6
        rows.append({"policy": spec, "decisions": len(us), "mean_us": float(us.mean()),
                     "p50_us": float(np.percentile(us, 50)),
                     "p99_us": float(np.percentile(us, 99))})
    for row in rows:
        row["vs_first"] = row["mean_us"] / rows[0]["mean_us"]
    where = ({"scenario": chosen.name} if chosen
             else {"preset": preset, "overrides": list(overrides or []), "agents": agents})
    return {**where, "rows": rows}


def render_bench_env(payload: dict[str, Any]) -> str:
    return (f"{payload['steps']:,} env steps ({payload['preset']}, random valid actions) in "
            f"{payload['wall_s']:.2f} s: {payload['steps_per_s']:,.0f} steps/s")


def render_bench_policy(payload: dict[str, Any]) -> str:
    from experiments.evaluation.table import format_table

    where = (f"scenario {payload['scenario']}" if "scenario" in payload else
             " ".join([payload["preset"], *payload["overrides"]])
             + f" ({payload['agents']} agents, 64K)")
    return (f"decision latency on {where}\n"
            + format_table(payload["rows"], ["policy", "decisions", "mean_us", "p50_us",
                                             "p99_us", "vs_first"]))
