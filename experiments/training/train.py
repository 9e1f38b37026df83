"""``dualpath train``: MaskablePPO in routing mode or PPO in tuning mode on a scenario's
training seeds, logged to MLflow, exported as an artifact and registered as the
``challenger`` version of ``dualpath-scheduler``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.learned import export_artifact, fallback_policy, make_tunable
from env import DualPathEnv, Encoding, Tuning
from env.encoding import ROUTING_PARTS
from experiments.evaluation.fanout import local
from experiments.evaluation.scenario import MODES, Scenario
from experiments.tracking import mlflow_runs as tracking
from experiments.tracking import plots
from experiments.training import imitate

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
    control: tuple[str, ...] = ROUTING_PARTS
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
        if (self.mode == "route" and not set(ROUTING_PARTS) <= set(self.control)
                and self.fallback is None
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


class MemoryWriter(KVWriter):
    """Keeps SB3's logged scalars by timestep, for the process that logs to MLflow (a
    training worker never writes to the store itself)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
              step: int = 0) -> None:
        self.rows.append((step, {k: float(v) for k, v in key_values.items()
                                 if isinstance(v, int | float | np.floating)}))


class RewardCurve(BaseCallback):
    """Mean reward per step of each rollout: the learning curve (episodes may be long)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.values: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        assert isinstance(self.model, OnPolicyAlgorithm)  # PPO and MaskablePPO
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
    kwargs: dict[str, Any] = dict(learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
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


@dataclass(frozen=True)
class FitTask:
    """One training run as a worker receives it (it pickles): the MLflow run is created
    by the parent beforehand, so the exported artifact can name it."""

    scenario: Scenario
    cfg: TrainConfig
    out_dir: Path
    run_id: str
    progress: bool = False


@dataclass
class Fitted:
    """What a worker returns: the artifact on disk and the numbers for the parent to log."""

    artifact_dir: Path
    scalars: list[tuple[int, dict[str, float]]]
    curve: tuple[list[int], list[float]]
    warm: dict[str, float]
    env_time_share: float
    wall_s: float


def fit(task: FitTask) -> Fitted:
    """Train and export one policy; touches no MLflow store."""
    scenario, cfg, out_dir = task.scenario, task.cfg, task.out_dir
    torch.set_num_threads(1)  # small networks: threads only contend with the simulator
    envs = [TimedEnv(make_env(scenario, cfg)) for _ in range(cfg.n_envs)]
    vec = DummyVecEnv([partial(Monitor, e) for e in envs])
    vec.seed(cfg.seed)
    model = make_model(vec, cfg)
    curve = RewardCurve()
    warm = warm_start(model, scenario, cfg) if cfg.imitate else {}
    writer = MemoryWriter()
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    start = time.perf_counter()
    model.learn(total_timesteps=cfg.steps, callback=curve, progress_bar=task.progress)
    wall = time.perf_counter() - start
    meta = {"scenario": scenario.name, "config": _jsonable(asdict(cfg)), "steps": cfg.steps,
            "mlflow_run_id": task.run_id, "command": command_line(scenario, cfg)}
    artifact = export_artifact(
        model, out_dir, mode=cfg.mode, encoding=envs[0].unwrapped.encoding,  # type: ignore[attr-defined]
        tuning=Tuning(window_s=cfg.window_s) if cfg.mode == "tune" else None,
        fallback=route_fallback(cfg), train_meta=meta)
    model.save(out_dir / "sb3_model.zip")
    share = sum(e.env_s for e in envs) / wall if wall > 0 else 0.0
    return Fitted(artifact, writer.rows, (curve.steps, curve.values), warm, share, wall)


def train_many(scenario: Scenario, cfgs: Sequence[TrainConfig], out_dirs: Sequence[Path], *,
               fanout: Any = None, tracking_uri: str | None = None,
               progress: bool = True) -> list[TrainResult]:
    """Train ``cfgs`` (several seeds, say) through ``fanout`` (local processes or Ray);
    this process alone logs each to its MLflow run and registers it."""
    tracking.setup(tracking_uri)
    run_ids = [tracking.create_run(
        f"train-{scenario.name}-{cfg.mode}",
        {"scenario": scenario.to_json(), "train": _jsonable(asdict(cfg)),
         "algo": "MaskablePPO" if cfg.mode == "route" else "PPO"},
        tags={"kind": "train", "scenario": scenario.name}) for cfg in cfgs]
    tasks = [FitTask(scenario, cfg, out, run_id, progress and len(cfgs) == 1)
             for cfg, out, run_id in zip(cfgs, out_dirs, run_ids, strict=True)]
    try:
        fitted = (fanout or local(1)).map(fit, tasks)
    except BaseException:
        for run_id in run_ids:
            tracking.end_run(run_id, "FAILED")
        raise
    return [_record(cfg, f, run_id) for cfg, f, run_id in zip(cfgs, fitted, run_ids,
                                                               strict=True)]


def _record(cfg: TrainConfig, fitted: Fitted, run_id: str) -> TrainResult:
    with tracking.resume(run_id):
        tracking.log_metrics(fitted.warm)
        for step, scalars in fitted.scalars:
            tracking.log_metrics(scalars, step=step)
        tracking.log_metrics({"env_time_share": fitted.env_time_share,
                              "train_wall_s": fitted.wall_s,
                              "steps_per_s": cfg.steps / fitted.wall_s if fitted.wall_s else 0.0})
        steps, values = fitted.curve
        if steps:
            fig = plots.training_figure(steps, values, "mean reward per step")
            tracking.log_figure(fig, "learning_curve")
        version = tracking.register_policy(fitted.artifact_dir, run_id, alias="challenger")
    return TrainResult(fitted.artifact_dir, run_id, version, fitted.env_time_share,
                       fitted.wall_s)


def train(scenario: Scenario, cfg: TrainConfig, *, out_dir: Path,
          tracking_uri: str | None = None, progress: bool = True) -> TrainResult:
    """Train, export, log and register; the artifact lands in ``out_dir``."""
    return train_many(scenario, [cfg], [out_dir], tracking_uri=tracking_uri,
                      progress=progress)[0]


def command_line(scenario: Scenario, cfg: TrainConfig) -> str:
    """The ``dualpath train`` command that reproduces ``cfg`` on ``scenario``."""
    parts = [f"dualpath train --scenario {scenario.name} --mode {cfg.mode} "
             f"--steps {cfg.steps} --seed {cfg.seed}"]
    if cfg.mode == "route" and tuple(cfg.control) != ROUTING_PARTS:
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
