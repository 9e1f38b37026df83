"""``dualpath bench env``: raw env steps per second with random valid actions."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from env import DualPathEnv

BENCH_PRESET = "ds27b-1p1d"


class RandomValidAction:
    """A uniformly random valid choice per part: the argmax of random keys over the mask.

    Vectorised over the parts (the loop's sampling should cost little next to the
    env step it measures): the parts' keys are gathered into one row each, padded
    after the part with -1 (a masked key), so each row's argmax is the part's.
    """

    def __init__(self, nvec: np.ndarray) -> None:
        size = int(np.sum(nvec))
        self._layout = np.full((len(nvec), int(np.max(nvec))), size)  # padding -> keys[size]
        at = 0
        for k, n in enumerate(nvec):
            self._layout[k, :n] = np.arange(at, at + n)
            at += n
        self._keys = np.full(size + 1, -1.0)

    def __call__(self, mask: np.ndarray, rng: np.random.Generator,
                 out: np.ndarray) -> np.ndarray:
        keys = self._keys[:-1]
        rng.random(out=keys)  # the same draws as rng.random(len(mask))
        keys[~mask] = -1.0
        return self._keys[self._layout].argmax(axis=1, out=out)


def bench_env(steps: int = 50_000, seed: int = 0) -> dict[str, Any]:
    """Step ``DualPathEnv()`` (its defaults: ds27b-1p1d, routing) ``steps`` times, resetting
    at each episode end; reports steps per second of the whole loop (sampling included)
    and of the env alone."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    env = DualPathEnv(BENCH_PRESET)
    rng = np.random.default_rng(seed)
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
