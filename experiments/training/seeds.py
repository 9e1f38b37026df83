"""``dualpath train``: one policy, or several seeds of it in parallel, on a scenario."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from experiments.evaluation.fanout import make_fanout
from experiments.evaluation.scenario import Scenario
from experiments.evaluation.table import format_table, format_value
from experiments.tracking.mlflow_runs import MODEL_NAME
from experiments.training.train import TrainConfig, train_many


def train_seeds(scenario: Scenario, cfg: TrainConfig, *, seeds: int = 1,
                out: Path | None = None, jobs: int = 1, ray_address: str | None = None,
                tracking_uri: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` with seeds ``cfg.seed .. cfg.seed + seeds - 1`` (through local processes
    or Ray); the one run's record, or ``{"runs": [...], "wall_s": ...}`` for several.

    Artifacts go to ``out`` (default ``results/train/SCENARIO-MODE-TIME``), one folder per
    seed when there are several."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    cfgs = [replace(cfg, seed=cfg.seed + k) for k in range(seeds)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out or Path("results") / "train" / f"{scenario.name}-{cfg.mode}-{stamp}"
    outs = [base if seeds == 1 else base / f"seed{c.seed}" for c in cfgs]
    wall = time.perf_counter()
    with make_fanout(min(jobs, seeds), ray_address) as fanout:
        results = train_many(scenario, cfgs, outs, fanout=fanout, tracking_uri=tracking_uri,
                             progress=progress and fanout.workers == 1)
    runs = [{"seed": c.seed, "artifact": str(r.artifact_dir), "mlflow_run_id": r.run_id,
             "model": f"{MODEL_NAME} version {r.version}", "alias": "challenger",
             "env_time_share": r.env_time_share, "wall_s": r.wall_s}
            for c, r in zip(cfgs, results, strict=True)]
    if len(runs) == 1:
        return runs[0]
    return {"runs": runs, "wall_s": time.perf_counter() - wall}


def render_training(payload: dict[str, Any]) -> str:
    if "runs" not in payload:
        return "\n".join(f"{k:>16}  {format_value(v)}" for k, v in payload.items()
                         if k != "seed")
    return format_table(payload["runs"], ["seed", "model", "wall_s", "artifact"]) + (
        f"\n{len(payload['runs'])} seeds in {payload['wall_s']:.0f} s; the challenger alias "
        "is on the last one registered")
