"""Warm start: the network first imitates a heuristic, so PPO starts from the heuristic's
behaviour rather than from a random policy (which loses badly to a good heuristic).

Routing: the env's fallback is the teacher; its decision on each pending request
(``DualPathEnv.fallback_action``) is the demonstrated action, and the observation
carries it as a hint, so the network learns "follow the heuristic unless the
features say otherwise". Tuning: the demonstrated action is the level nearest to
each of the teacher's parameters, every window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from agents.heuristics import DualPathSplit
from agents.spec import resolve_policy
from env import DualPathEnv, Tuning

Teacher = Callable[[DualPathEnv], np.ndarray]


@dataclass(frozen=True)
class Demonstrations:
    obs: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    returns: np.ndarray


def route_teacher(env: DualPathEnv) -> np.ndarray:
    action = env.fallback_action()
    if action is None:
        raise ValueError("imitation in routing mode needs the env's fallback (the teacher)")
    return action


def tune_action(spec: str, tuning: Tuning) -> np.ndarray:
    """The tuning action whose levels are nearest to the parameters of heuristic ``spec``."""
    policy = resolve_policy(spec).policy
    values = {name: float(getattr(policy, name)) for name, _ in tuning.levels
              if hasattr(policy, name)}
    values.setdefault("split", 1.0 if isinstance(policy, DualPathSplit) else 0.0)
    return np.array([int(np.argmin([abs(v - values.get(name, v)) for v in levels]))
                     for name, levels in tuning.levels], dtype=np.int64)


def tune_teacher(spec: str, tuning: Tuning) -> Teacher:
    """The constant tuning action of heuristic ``spec``, every window."""
    action = tune_action(spec, tuning)
    return lambda env: action


def demonstrate(env: DualPathEnv, teacher: Teacher, steps: int, seed: int,
                gamma: float) -> Demonstrations:
    """Run the teacher for ``steps`` env steps; keep observations, masks, its actions and
    the discounted returns that follow (the value head's first targets)."""
    obs, _ = env.reset(seed=seed)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rewards: list[float] = []
    ends: list[bool] = []
    for _ in range(steps):
        action = teacher(env)
        rows.append((obs, env.action_masks(), action))
        obs, reward, done, truncated, _ = env.step(action)
        rewards.append(reward)
        ends.append(done or truncated)
        if done or truncated:
            seed += 1
            obs, _ = env.reset(seed=seed)
    returns = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for k in range(len(rewards) - 1, -1, -1):
        running = rewards[k] + (0.0 if ends[k] else gamma * running)
        returns[k] = running
    return Demonstrations(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                          np.stack([r[2] for r in rows]), returns)


def clone(model: object, demos: Demonstrations, *, epochs: int = 8, batch_size: int = 256,
          lr: float = 1e-3, entropy: float = 0.05, seed: int = 0) -> float:
    """Fit the policy to the demonstrated actions (cross-entropy, masked where the model
    takes masks) and the value head to the returns; returns the share of demonstrations
    the deterministic policy then reproduces exactly.

    An ``entropy`` bonus keeps the cloned policy stochastic: the argmax follows the
    teacher, but PPO still explores around it (a fully sharpened clone never does).
    """
    policy = model.policy  # type: ignore[attr-defined]
    maskable = "action_masks" in policy.evaluate_actions.__code__.co_varnames
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    n = len(demos.actions)
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            log_prob, spread, value_loss = _evaluate(policy, demos, idx, maskable)
            loss = -log_prob.mean() - entropy * spread.mean() + 0.5 * value_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.set_training_mode(False)
    return agreement(model, demos, maskable)


def _evaluate(policy: object, demos: Demonstrations, idx: np.ndarray,
              maskable: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.as_tensor(demos.obs[idx])
    actions = torch.as_tensor(demos.actions[idx])
    kwargs = {"action_masks": demos.masks[idx]} if maskable else {}
    values, log_prob, spread = policy.evaluate_actions(obs, actions, **kwargs)  # type: ignore[attr-defined]
    target = torch.as_tensor(demos.returns[idx])
    return log_prob, spread, torch.nn.functional.mse_loss(values.flatten(), target)


def agreement(model: object, demos: Demonstrations, maskable: bool,
              sample: Sequence[int] | None = None) -> float:
    idx = np.arange(len(demos.actions)) if sample is None else np.asarray(sample)
    kwargs = {"action_masks": demos.masks[idx]} if maskable else {}
    predicted, _ = model.predict(demos.obs[idx], deterministic=True, **kwargs)  # type: ignore[attr-defined]
    return float((predicted == demos.actions[idx]).all(axis=1).mean())
