"""``dualpath train``: MaskablePPO in routing mode or PPO in tuning mode on a scenario's
training seeds, logged to MLflow, exported as an artifact and registered as the
``challenger`` version of ``dualpath-scheduler``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.learned import export_artifact, fallback_policy, make_tunable
from env import DualPathEnv, Encoding, Tuning
from env.encoding import PARTS
from experiments import imitate, plots, tracking
from experiments.scenario import MODES, Scenario

ROUTE_PPO: dict[str, Any] = {"n_steps": 512, "batch_size": 256, "gamma": 0.99,
                             "imitate_steps": 20_000}
TUNE_PPO: dict[str, Any] = {"n_steps": 32, "batch_size": 32, "gamma": 0.9,
                            "imitate_steps": 400}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the scenario."""

    mode: str = "route"
    steps: int = 100_000
    seed: int = 0
    control: tuple[str, ...] = PARTS
    fallback: str | None = None
    window_s: float = 10.0
    reward_scale: float = 0.01
    slo_penalty: float = 0.0
    learning_rate: float = 3e-4
    # None: the mode's default (``ROUTE_PPO`` / ``TUNE_PPO``): a routing episode has
    # thousands of short steps, a tuning episode a few dozen windows.
    n_steps: int | None = None
    batch_size: int | None = None
    n_epochs: int = 5
    gamma: float | None = None
    ent_coef: float = 0.01
    net_arch: tuple[int, ...] = (128, 128)
    n_envs: int = 4
    #: The heuristic whose decisions (routing) or parameters (tuning) the network first
    #: imitates before PPO improves on it; None starts from a random network.
    imitate: str | None = "dualpath"
    imitate_steps: int | None = None
    clip_range: float = 0.1
    #: Tuning: reward relative to this heuristic's parameters on a copy of the
    #: simulation (a counterfactual baseline); None rewards the plain time in system.
    relative_to: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"--steps must be an integer >= 1, got {self.steps!r}")
        if (self.mode == "route" and len(self.control) < len(PARTS) and self.fallback is None
                and self.imitate is None):
            raise ValueError(f"--control {','.join(self.control)} leaves parts to a fallback: "
                             "pass --fallback SPEC (e.g. dualpath)")
        defaults = ROUTE_PPO if self.mode == "route" else TUNE_PPO
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.n_steps < 2 or self.batch_size < 2:  # type: ignore[operator]
            raise ValueError("n_steps and batch_size must be >= 2")
        if self.n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {self.n_envs}")


@dataclass(frozen=True)
class TrainResult:
    artifact_dir: Path
    run_id: str
    version: int
    env_time_share: float
    wall_s: float


class TimedEnv(gym.Wrapper):
    """Counts the wall time spent inside the env, to report its share of training."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.env_s = 0.0

    def reset(self, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.env.reset(**kwargs)
        finally:
            self.env_s += time.perf_counter() - start

    def step(self, action: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.env.step(action)
        finally:
            self.env_s += time.perf_counter() - start

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()  # type: ignore[attr-defined]


class MlflowWriter(KVWriter):
    """Sends SB3's logged scalars to the active MLflow run, stepped by timesteps."""

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
              step: int = 0) -> None:
        tracking.log_metrics({k: v for k, v in key_values.items()
                              if isinstance(v, int | float | np.floating)}, step=step)


class RewardCurve(BaseCallback):
    """Mean reward per step of each rollout: the learning curve (episodes may be long)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.values: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        value = float(np.mean(self.model.rollout_buffer.rewards))
        self.steps.append(self.num_timesteps)
        self.values.append(value)
        self.logger.record("train/reward_per_step", value)


def route_fallback(cfg: TrainConfig) -> str | None:
    """The routing env's fallback: the one given, else the imitation teacher (whose
    decisions the agent then sees as hints and whose deferrals it inherits)."""
    return cfg.fallback or cfg.imitate if cfg.mode == "route" else None


def make_env(scenario: Scenario, cfg: TrainConfig) -> DualPathEnv:
    """The scenario's env on its training seeds (each episode draws one of them)."""
    seeds = scenario.train_seeds
    fallback = route_fallback(cfg)
    tuning = Tuning(window_s=cfg.window_s)
    baseline = (tuning.params(imitate.tune_action(cfg.relative_to, tuning))
                if cfg.relative_to and cfg.mode == "tune" else None)
    return DualPathEnv(
        scenario.cluster(), mode=cfg.mode,
        workload=lambda s: scenario.workload(seeds[s % len(seeds)]),
        encoding=Encoding(control=cfg.control),
        fallback=fallback_policy(fallback) if fallback else None,
        tuning=tuning, tunable=make_tunable, layerwise=scenario.layerwise,
        reward_scale=cfg.reward_scale, slo_penalty=cfg.slo_penalty, baseline=baseline)


def make_model(env: VecEnv, cfg: TrainConfig) -> Any:
    kwargs = dict(learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
                  batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                  ent_coef=cfg.ent_coef, clip_range=cfg.clip_range, seed=cfg.seed, verbose=0,
                  device="cpu", policy_kwargs={"net_arch": list(cfg.net_arch)})
    if cfg.mode == "route":
        from sb3_contrib import MaskablePPO
        return MaskablePPO("MlpPolicy", env, **kwargs)
    from stable_baselines3 import PPO
    return PPO("MlpPolicy", env, **kwargs)


def warm_start(model: Any, scenario: Scenario, cfg: TrainConfig) -> dict[str, float]:
    """Imitate ``cfg.imitate`` on demonstrations from the training seeds."""
    env = make_env(scenario, cfg)
    teacher = (imitate.route_teacher if cfg.mode == "route"
               else imitate.tune_teacher(cfg.imitate, env.tuning))  # type: ignore[arg-type]
    start = time.perf_counter()
    demos = imitate.demonstrate(env, teacher, cfg.imitate_steps,  # type: ignore[arg-type]
                                seed=10_000 + cfg.seed, gamma=cfg.gamma)  # type: ignore[arg-type]
    accuracy = imitate.clone(model, demos, seed=cfg.seed)
    return {"imitation_accuracy": accuracy, "imitation_steps": len(demos.actions),
            "imitation_wall_s": time.perf_counter() - start}


def train(scenario: Scenario, cfg: TrainConfig, *, out_dir: Path,
          tracking_uri: str | None = None, progress: bool = True) -> TrainResult:
    """Train, export, log and register; the artifact lands in ``out_dir``."""
    torch.set_num_threads(1)  # small networks: threads only contend with the simulator
    envs = [TimedEnv(make_env(scenario, cfg)) for _ in range(cfg.n_envs)]
    vec = DummyVecEnv([lambda e=e: Monitor(e) for e in envs])
    vec.seed(cfg.seed)
    model = make_model(vec, cfg)
    curve = RewardCurve()
    tracking.setup(tracking_uri)
    config = {"scenario": scenario.to_json(), "train": _jsonable(asdict(cfg)),
              "algo": type(model).__name__}
    with tracking.run(f"train-{scenario.name}-{cfg.mode}", config,
                      tags={"kind": "train", "scenario": scenario.name}) as run:
        if cfg.imitate:
            tracking.log_metrics(warm_start(model, scenario, cfg))
        model.set_logger(Logger(folder=None, output_formats=[MlflowWriter()]))
        start = time.perf_counter()
        model.learn(total_timesteps=cfg.steps, callback=curve, progress_bar=progress)
        wall = time.perf_counter() - start
        share = sum(e.env_s for e in envs) / wall if wall > 0 else 0.0
        tracking.log_metrics({"env_time_share": share, "train_wall_s": wall,
                              "steps_per_s": cfg.steps / wall if wall > 0 else 0.0})
        meta = {"scenario": scenario.name, "config": _jsonable(asdict(cfg)),
                "steps": cfg.steps, "mlflow_run_id": run.info.run_id,
                "command": command_line(scenario, cfg)}
        artifact = export_artifact(
            model, out_dir, mode=cfg.mode, encoding=envs[0].unwrapped.encoding,  # type: ignore[attr-defined]
            tuning=Tuning(window_s=cfg.window_s) if cfg.mode == "tune" else None,
            fallback=route_fallback(cfg), train_meta=meta)
        model.save(out_dir / "sb3_model.zip")
        if curve.steps:
            fig = plots.training_figure(curve.steps, curve.values, "mean reward per step")
            tracking.log_figure(fig, "learning_curve")
        version = tracking.register_policy(artifact, run, alias="challenger")
        run_id = run.info.run_id
    return TrainResult(artifact, run_id, version, share, wall)


def command_line(scenario: Scenario, cfg: TrainConfig) -> str:
    """The ``dualpath train`` command that reproduces ``cfg`` on ``scenario``."""
    parts = [f"dualpath train --scenario {scenario.name} --mode {cfg.mode} "
             f"--steps {cfg.steps} --seed {cfg.seed}"]
    if cfg.mode == "route" and tuple(cfg.control) != PARTS:
        parts.append(f"--control {','.join(cfg.control)}")
    if cfg.fallback and cfg.mode == "route":
        parts.append(f"--fallback {cfg.fallback}")
    parts.append(f"--imitate {cfg.imitate or 'none'}")
    if cfg.relative_to and cfg.mode == "tune":
        parts.append(f"--relative-to {cfg.relative_to}")
    return " ".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
