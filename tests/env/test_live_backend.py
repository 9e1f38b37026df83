"""The gymnasium env stepping a live cluster (``backend="live"``) instead of the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from env import DualPathEnv
from runtime.live.config import LiveOptions
from runtime.preset import load_preset
from runtime.workload.agentic import AgenticWorkload


def test_live_backend_runs_an_episode_to_the_end():
    spec = load_preset("tiny", ("block_tokens=1024",))
    env = DualPathEnv(spec, workload=lambda seed: AgenticWorkload(1, "32k", seed),
                      backend="live", live=LiveOptions(time_scale=0.25))
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        rewards, steps, done = [], 0, False
        info = {}
        while not done:
            mask = env.action_masks()
            action = _first_valid(mask, env.action_space.nvec)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            steps += 1
            done = terminated or truncated
        assert steps > 10
        assert all(r <= 0 for r in rewards)  # minus time in system
        assert info["metrics"]["live"]["blocks_verified"] > 0
        assert info["metrics"]["requests"] == info["finished"]
    finally:
        env.close()


@pytest.mark.slow
def test_live_backend_with_the_model_engine_runs_300_routing_steps():
    """The agent routes every request of 12 agents on engines that compute the model; the
    path it picks varies (random valid actions), the tokens all check against float64."""
    spec = load_preset("tiny", ("block_tokens=256",))
    env = DualPathEnv(spec, workload=lambda seed: AgenticWorkload(12, "32k", seed,
                                                                  append_scale=0.05,
                                                                  gen_scale=0.05),
                      backend="live", live=LiveOptions(engine="model", bytes_scale=1))
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        steps, done, info = 0, False, {}
        while not done:
            action = _random_valid(env.action_masks(), env.action_space.nvec, rng)
            _, _, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
        live = info["metrics"]["live"]
        assert steps >= 300
        assert info["metrics"]["requests"] == info["finished"]
        assert live["tokens_checked"] == live["tokens_generated"] > 0
        assert live["token_mismatches"] == 0
    finally:
        env.close()


def test_live_backend_refuses_tuning_mode():
    with pytest.raises(ValueError, match="routing mode only"):
        DualPathEnv("tiny", mode="tune", tunable=lambda p: None, backend="live")


def _first_valid(mask: np.ndarray, nvec: np.ndarray) -> np.ndarray:
    action, start = [], 0
    for n in nvec:
        action.append(int(np.flatnonzero(mask[start:start + n])[0]))
        start += n
    return np.asarray(action)


def _random_valid(mask: np.ndarray, nvec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    action, start = [], 0
    for n in nvec:
        action.append(int(rng.choice(np.flatnonzero(mask[start:start + n]))))
        start += n
    return np.asarray(action)
