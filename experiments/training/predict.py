"""``dualpath train --mode predict``: a predictive picker (``agents.learned.predictive``)
trained on a scenario, or on a distribution of clusters and loads.

Three steps, all on training seeds:

1. **Data.** The picker with the analytic predictor (and cache affinity) runs each
   condition, exploring (guarded: only candidates scored within 25% of the best) on a
   tenth of its decisions;
   every finished request gives its chosen candidate's features and its TTFT.
2. **Fit.** Ridge regression of TTFT on the features, shrunk towards the analytic
   predictor; R² on the fifth of the samples held back from the fit, for both.
3. **Knobs.** Each knob set of :data:`KNOB_GRID` runs every condition with the fitted
   predictor; the one with the lowest mean JCT relative to ``dualpath_split`` on the same
   seed wins.

The result is a ``predictor.json`` in ``out`` (with the command, data, fit and every knob
set's figures in its ``train`` block), logged to MLflow, and beside it in ``out/prior`` the
same knobs with the analytic predictor: the ablation that tells what fitting gave.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.learned.predictive import (
    FEATURES,
    Knobs,
    PredictivePicker,
    Predictor,
    RecordingPicker,
)
from agents.learned.predictor_file import save_predictor
from agents.running import policy_run
from experiments.evaluation.fanout import local
from experiments.tracking import mlflow_runs as tracking
from experiments.training.distribution import Condition
from runtime.sim import SimOptions, Simulator

#: The knob sets tried: the paper's rule first (``dualpath_split``'s decisions where
#: nothing is cached), then wider candidate sets, cache affinity and the long-read lane.
KNOB_GRID = (
    Knobs(prefill="paper", decode="paper", shares="split"),
    Knobs(shares="split"),
    Knobs(),
    Knobs(affinity=3.0),
    Knobs(affinity=3.0, shares="split"),
    Knobs(affinity=3.0, lane_tokens=2048),
    Knobs(affinity=3.0, shares="split", lane_tokens=2048),
    Knobs(affinity=3.0, lane_tokens=8192),
)
REFERENCE = "dualpath_split"


@dataclass(frozen=True)
class PredictConfig:
    """What determines a predictive training run besides its conditions."""

    seeds: int = 4
    explore: float = 0.1
    guard: float = 1.25
    ridge: float = 10.0
    jobs: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"--seeds must be an integer >= 1, got {self.seeds!r}")
        if not 0 <= self.explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {self.explore!r}")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")


# -- one simulated run (in a worker process) ------------------------------------------

def _record(task: tuple[Condition, int, float, float]) -> list[tuple[tuple[float, ...], float]]:
    condition, seed, explore, guard = task
    scenario = condition.build()
    picker = RecordingPicker(Predictor.prior(), Knobs(affinity=3.0), explore=explore,
                             guard=guard, seed=seed)
    Simulator(scenario.cluster(), scenario.workload(seed), SimOptions()).run(picker)
    return picker.samples


def _jct(task: tuple[Condition, int, Any]) -> float:
    """Mean JCT of one run: ``policy`` is a heuristic spec or (weights, knobs)."""
    condition, seed, policy = task
    scenario = condition.build()
    cluster = scenario.cluster()
    if isinstance(policy, str):
        with policy_run(policy, cluster) as chosen:
            result = Simulator(cluster, scenario.workload(seed), SimOptions()).run(chosen.policy)
    else:
        picker = PredictivePicker(Predictor(policy[0]), Knobs(**policy[1]))
        result = Simulator(cluster, scenario.workload(seed), SimOptions()).run(picker)
    return float(result.metrics["jct_mean_s"])


# -- the three steps ----------------------------------------------------------------

def fit(x: np.ndarray, y: np.ndarray, ridge: float) -> Predictor:
    """Ridge regression of ``y`` on ``x``, shrunk towards the analytic predictor."""
    prior = np.array(Predictor.prior().weights)
    lhs = x.T @ x + ridge * np.eye(x.shape[1])
    rhs = x.T @ y + ridge * prior
    return Predictor(tuple(float(w) for w in np.linalg.solve(lhs, rhs)))


def r2(predictor: Predictor, x: np.ndarray, y: np.ndarray) -> float:
    residual = y - x @ np.array(predictor.weights)
    return float(1.0 - residual.var() / y.var()) if y.var() > 0 else 0.0


def _seeds(condition: Condition, n: int) -> list[int]:
    seeds = list(condition.build().train_seeds)
    return seeds[:n]


def train_predictor(conditions: Sequence[Condition], config: PredictConfig, *, name: str,
                    out: Path, command: str, tracking_uri: str | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Run the three steps; write ``out/predictor.json``; returns the summary."""
    start = time.perf_counter()
    tasks = [(c, s) for c in conditions for s in _seeds(c, config.seeds)]
    say = (lambda text: print(f"[train predict] {text}", file=sys.stderr, flush=True)) \
        if progress else (lambda text: None)
    with local(min(config.jobs, len(tasks))) as fanout:
        say(f"recording {len(tasks)} runs")
        batches = fanout.map(_record, [(c, s, config.explore, config.guard) for c, s in tasks])
        samples = [s for batch in batches for s in batch]
        if len(samples) < 10 * len(FEATURES):
            raise ValueError(f"only {len(samples)} samples recorded; the conditions finished "
                             "too few requests to fit a predictor")
        x = np.array([s[0] for s in samples])
        y = np.array([s[1] for s in samples])
        holdout = np.random.default_rng(0).random(len(y)) < 0.2
        predictor = fit(x[~holdout], y[~holdout], config.ridge)
        quality = {"samples": len(y), "r2_prior": r2(Predictor.prior(), x[holdout], y[holdout]),
                   "r2_fitted": r2(predictor, x[holdout], y[holdout])}
        say(f"fitted on {len(y)} samples: held-back R² {quality['r2_prior']:.3f} (analytic) "
            f"-> {quality['r2_fitted']:.3f}")
        grid = _tune(fanout, tasks, predictor, say)
    best = min(grid, key=lambda g: g["jct_rel"])
    knobs = Knobs(**best["knobs"])
    train = {"command": command, "conditions": [c.to_json() for c in conditions],
             "seeds_per_condition": config.seeds, "explore": config.explore,
             "guard": config.guard, "ridge": config.ridge, "fit": quality, "knob_grid": grid,
             "reference": REFERENCE, "training_time_s": round(time.perf_counter() - start, 1)}
    path = save_predictor(out, name, predictor, knobs, train)
    save_predictor(out / "prior", f"{name}-prior", Predictor.prior(), knobs,
                   {**train, "ablation": "the analytic predictor with the trained knobs"})
    summary = {"name": name, "artifact": str(path), "weights": list(predictor.weights),
               "knobs": knobs.to_json(), **{k: v for k, v in train.items() if k != "command"}}
    _log(summary, out, tracking_uri)
    return summary


def _tune(fanout: Any, tasks: list[tuple[Condition, int]], predictor: Predictor,
          say: Any) -> list[dict[str, Any]]:
    """Every knob set's mean JCT relative to the reference, over the training runs."""
    jobs: list[tuple[Condition, int, Any]] = [(c, s, REFERENCE) for c, s in tasks]
    for knobs in KNOB_GRID:
        jobs += [(c, s, (predictor.weights, knobs.to_json())) for c, s in tasks]
    say(f"tuning knobs: {len(jobs)} runs")
    jcts = fanout.map(_jct, jobs)
    n = len(tasks)
    reference = jcts[:n]
    grid = []
    for i, knobs in enumerate(KNOB_GRID):
        mine = jcts[n * (i + 1):n * (i + 2)]
        rel = statistics.fmean(m / r for m, r in zip(mine, reference, strict=True))
        grid.append({"knobs": knobs.to_json(), "jct_rel": rel})
        say(f"  {knobs.to_json()}: JCT {rel:.4f} x {REFERENCE}")
    return grid


def _log(summary: dict[str, Any], out: Path, tracking_uri: str | None) -> None:
    tracking.setup(tracking_uri)
    with tracking.run(f"train-predict-{summary['name']}", summary,
                      tags={"kind": "train", "mode": "predict"}):
        tracking.log_metrics({"r2_prior": summary["fit"]["r2_prior"],
                              "r2_fitted": summary["fit"]["r2_fitted"],
                              "samples": summary["fit"]["samples"],
                              "best_jct_rel": min(g["jct_rel"] for g in summary["knob_grid"]),
                              "training_time_s": summary["training_time_s"]})
        tracking.log_table([{**g["knobs"], "jct_rel": g["jct_rel"]}
                            for g in summary["knob_grid"]], "knob_grid")
        tracking.log_artifact_dir(out, "predictor")
