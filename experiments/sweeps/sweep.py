"""Sweeps: every point of a grid over cluster and workload parameters, every listed policy,
the same seeds. ``dualpath sweep FILE.toml [--jobs N] [--ray-address ADDR]``.

A sweep file (``experiments/sweeps/*.toml``)::

    name = "offline-jct"
    figure = "Offline JCT vs number of agents"          # the paper figure it regenerates
    paper = "up to 1.87x throughput over the baseline"  # the paper's statement, for reports
    preset = "ds660b-2p4d"
    policies = ["pe_only:layerwise=false", "dualpath", "dualpath:oracle=true"]
    seeds = [0]
    x = "agents"                      # the grid key on the plots' x axis
    metrics = ["jct_s", "throughput_tok_s"]
    kind = "run"                      # or "capacity": each point is an online capacity search
    [base]                            # parameters every point shares
    mal = "64k"
    [grid]                            # the cartesian product of these, in file order
    agents = [512, 1024, 2048]

Parameters (in ``base`` or ``grid``): ``preset``; ``pd`` ("2:4", prefill:decode nodes);
``agents``, ``mal``, ``append_scale``, ``gen_scale``, ``length_scale`` (both scales),
``tool_latency_s``, ``think_time_s``, ``layerwise``; online: ``aps``, ``duration_s``;
bandwidths and model: ``snic_gb_s``, ``cnic_gb_s``, ``kv_bytes_per_token``; and any preset
value as ``set.KEY`` (``set.node.pcie_gb_s``).

Runs fan out over local processes or Ray (:mod:`experiments.evaluation.fanout`); only this process
writes results: a table (CSV and Parquet), PNG plots and MLflow (a parent run, a child run
per point), so a SQLite store is never written by two processes.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.evaluation.runner import RunConfig
from experiments.evaluation.runner import run as run_config
from experiments.evaluation.table import format_table
from experiments.sweeps.sweep_file import Sweep, config_of, load_sweep

if TYPE_CHECKING:
    from experiments.evaluation.fanout import Fanout


# -- running ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One simulation of a sweep: what a worker process needs (it pickles)."""

    point: int
    policy: str
    seed: int
    config: RunConfig
    kind: str = "run"


def run_task(task: Task) -> dict[str, Any]:
    """Run one task (in a worker); returns its scalar metrics, nothing is logged here."""
    if task.kind == "capacity":
        from experiments.sweeps.capacity import find_capacity

        metrics = find_capacity(task.config)
    else:
        metrics = run_config(task.config)
    return {k: v for k, v in metrics.items() if _scalar(v)}


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) and not (
        isinstance(value, float) and math.isnan(value))


def tasks_of(sweep: Sweep) -> list[Task]:
    return [Task(k, policy, seed, config_of(sweep, point, policy, seed), sweep.kind)
            for k, point in enumerate(sweep.points())
            for policy in sweep.policies for seed in sweep.seeds]


def run_sweep(sweep: Sweep, fanout: Fanout, progress: Callable[[int, int], None] | None = None
              ) -> list[dict[str, Any]]:
    """Every task of ``sweep`` through ``fanout``; one row per (point, policy, seed)."""
    tasks = tasks_of(sweep)
    results = fanout.map(run_task, tasks, progress)
    points = sweep.points()
    rows = []
    for task, metrics in zip(tasks, results, strict=True):
        rows.append({"point": task.point, **points[task.point], "policy": task.policy,
                     "seed": task.seed, **{k: v for k, v in metrics.items()
                                           if k not in ("policy", "seed", "preset")}})
    return rows


def summarize_sweep(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (point, policy): the grid values and each metric's mean over seeds."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    counts: dict[tuple[int, str], int] = {}
    for row in rows:
        key = (row["point"], row["policy"])
        agg = out.setdefault(key, {"point": row["point"], **{k: row[k] for k in sweep.grid},
                                   "policy": row["policy"], **{m: 0.0 for m in sweep.metrics}})
        counts[key] = counts.get(key, 0) + 1
        for metric in sweep.metrics:
            agg[metric] += float(row.get(metric, math.nan))
    for key, agg in out.items():
        for metric in sweep.metrics:
            agg[metric] /= counts[key]
    return list(out.values())


# -- outputs ---------------------------------------------------------------------------
def write_outputs(sweep: Sweep, rows: list[dict[str, Any]], out: Path,
                  summary: dict[str, Any]) -> list[Path]:
    """``results.csv``/``.parquet``, ``summary.json``, ``sweep.toml`` and ``plots/*.png``."""
    import pandas as pd

    from experiments.sweeps.plots import sweep_figures
    from experiments.tracking.plots import save

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "results.csv", index=False)
    frame.to_parquet(out / "results.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "sweep.toml").write_text(sweep.text)
    plots = []
    for name, fig in sweep_figures(sweep, summarize_sweep(sweep, rows)):
        plots.append(save(fig, out / "plots" / f"{name}.png"))
    return plots


def log_to_mlflow(sweep: Sweep, rows: list[dict[str, Any]], out: Path,
                  summary: dict[str, Any], tracking_uri: str | None) -> str:
    """One parent run (artifacts: the outputs) and one child run per point; its run id."""
    from experiments.evaluation.compare import metric_key
    from experiments.tracking import mlflow_runs as tracking

    tracking.setup(tracking_uri)
    tags = {"dualpath.kind": "sweep", "dualpath.sweep": sweep.name,
            "dualpath.code_version": code_version()}
    config = {"preset": sweep.preset, "policies": list(sweep.policies),
              "seeds": list(sweep.seeds), "kind": sweep.kind, "base": sweep.base,
              "grid": {k: list(v) for k, v in sweep.grid.items()}}
    with tracking.run(f"sweep:{sweep.name}", config, tags) as parent:
        tracking.log_artifact_dir(out)
        tracking.log_metrics({"wall_s": summary["wall_s"], "points": summary["points"]})
        means = summarize_sweep(sweep, rows)
        for k, point in enumerate(sweep.points()):
            with tracking.run(f"point-{k:03d}", point):
                tracking.log_metrics({metric_key(row["policy"], m): row[m]
                                      for row in means if row["point"] == k
                                      for m in sweep.metrics})
        return str(parent.info.run_id)


def code_version() -> str:
    """The git commit of the code that ran (``-dirty`` with uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("-dirty" if dirty.strip() else "")


def sweep_main(name_or_path: str, *, jobs: int = 1, ray_address: str | None = None,
               out: str | None = None, tracking_uri: str | None = None,
               seeds: int | None = None, log: bool = True) -> dict[str, Any]:
    """What ``dualpath sweep`` does; returns the summary (with the run id and output folder)."""
    from experiments.evaluation.fanout import make_fanout

    sweep = load_sweep(name_or_path)
    if seeds is not None:
        sweep = replace(sweep, seeds=tuple(range(seeds)))
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else Path("results") / "sweeps" / f"{sweep.name}-{stamp}"
    wall = time.perf_counter()
    with make_fanout(jobs, ray_address) as fanout:
        total = len(tasks_of(sweep))
        print(f"[sweep {sweep.name}] {len(sweep.points())} points x {len(sweep.policies)} "
              f"policies x {len(sweep.seeds)} seeds = {total} runs on {fanout.name} "
              f"({fanout.workers} workers)", file=sys.stderr, flush=True)
        rows = run_sweep(sweep, fanout, _progress(sweep.name))
        backend, workers = fanout.name, fanout.workers
    wall = time.perf_counter() - wall
    summary: dict[str, Any] = {
        "name": sweep.name, "description": sweep.description, "figure": sweep.figure,
        "paper": sweep.paper, "x": sweep.x, "metrics": list(sweep.metrics),
        "policies": list(sweep.policies), "points": len(sweep.points()),
        "seeds": list(sweep.seeds), "runs": len(rows), "wall_s": wall, "jobs": workers,
        "backend": backend, "started": started.isoformat(),
        "points_per_min": len(sweep.points()) / wall * 60.0
    }
    write_outputs(sweep, rows, folder, summary)
    if log:
        summary["run_id"] = log_to_mlflow(sweep, rows, folder, summary, tracking_uri)
    summary["out"] = str(folder)
    summary["rows"] = summarize_sweep(sweep, rows)
    return summary


def _progress(name: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"[sweep {name}] {done}/{total} runs done", file=sys.stderr, flush=True)
    return report


def render_sweep(summary: dict[str, Any]) -> str:
    """A sweep's summary as text: its size, speed, the table and where the outputs are."""
    metric = summary["metrics"][0]
    text = (f"sweep {summary['name']}: {summary['points']} points, {summary['runs']} runs in "
            f"{summary['wall_s']:.1f} s on {summary['backend']} ({summary['jobs']} workers; "
            f"{summary['points_per_min']:.1f} points/min)\n"
            + format_table(summary["rows"], ["point", *(k for k in summary["rows"][0]
                                                       if k not in ("point", "policy",
                                                                    *summary["metrics"])),
                                             "policy", *summary["metrics"]])
            + f"\noutputs in {summary['out']}"
            + (f"; MLflow run {summary['run_id']}" if "run_id" in summary else "")
            + f"\n(main metric: {metric})")
    return text
