"""Evaluate policies on a scenario's evaluation seeds: per-seed runs, then a table of
means with 95% confidence intervals (over seeds), relative to ``pe_only``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from agents.running import policy_run
from experiments.evaluation.fanout import local
from experiments.evaluation.scenario import Scenario, load_scenario
from experiments.evaluation.stats import Interval, mean_ci95, paired_diff_ci95
from runtime.sim import SimOptions, Simulator
from runtime.slo import CLASSES

#: What ``compare --scenario`` reports per policy (mean and 95% CI over seeds), besides
#: each latency class's p99 TTFT (``ttft_p99_<class>_s``) where a scenario has classes.
METRICS = ("jct_mean_s", "throughput_tok_s", "ttft_p99_s", "slo_attainment",
           "storage_bytes_read")
CLASS_METRICS = tuple(f"ttft_p99_{name}_s" for name in CLASSES)
BASELINE = "pe_only"
DEFAULT_POLICIES = ("pe_only", "dualpath", "dualpath_split")


def run_seed(scenario: Scenario, spec: str, seed: int) -> dict[str, Any]:
    """One simulated run of policy ``spec`` on ``scenario`` with workload seed ``seed``."""
    cluster = scenario.cluster()
    with policy_run(spec, cluster, layerwise=scenario.layerwise) as chosen:
        options = SimOptions(layerwise=chosen.layerwise, oracle=chosen.oracle)
        result = Simulator(cluster, scenario.workload(seed), options).run(chosen.policy)
    per_class = {f"ttft_p99_{name}_s": m["ttft_p99_s"]
                 for name, m in result.metrics["classes"].items()}
    return {"policy": spec, "seed": seed, **result.metrics, **per_class}


def run_task(task: tuple[str, str, int]) -> dict[str, Any]:
    source, spec, seed = task
    return run_seed(load_scenario(source), spec, seed)


def run_all(scenario: Scenario, specs: Sequence[str], seeds: Sequence[int],
            jobs: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Every (policy, seed) run, in parallel processes when ``jobs`` > 1; input order."""
    for spec in specs:  # refuse a bad spec before spending any time
        with policy_run(spec, scenario.cluster()):
            pass
    tasks = [(str(scenario.source), spec, seed) for spec in specs for seed in seeds]
    report = None
    if progress:
        def report(done: int, total: int) -> None:
            print(f"[{scenario.name}] {done}/{total} runs done", file=sys.stderr, flush=True)
    with local(min(jobs, len(tasks))) as fanout:
        return fanout.map(run_task, tasks, progress=report)


def summarize_seeds(runs: Sequence[dict[str, Any]], specs: Sequence[str],
                    interval: Interval = mean_ci95) -> list[dict[str, Any]]:
    """One row per policy: mean and CI half-width of each metric over seeds, and the JCT
    relative to ``pe_only`` (when it ran) with a paired 95% interval. ``interval``: the
    intervals' kind (:func:`~experiments.evaluation.stats.bootstrap_ci95` for seeds that
    are bootstrap resamples)."""
    by_policy = {spec: [r for r in runs if r["policy"] == spec] for spec in specs}
    base = by_policy.get(BASELINE) or next((v for k, v in by_policy.items()
                                            if k.startswith(BASELINE + ":")), None)
    rows = []
    for spec in specs:
        mine = by_policy[spec]
        row: dict[str, Any] = {"policy": spec, "seeds": len(mine)}
        present = [m for m in CLASS_METRICS if all(m in r for r in mine)]
        for metric in (*METRICS, *present):
            mean, half = interval([r[metric] for r in mine])
            row[metric] = mean
            row[f"{metric}_ci95"] = half
        row["jct_ci95_s"] = row["jct_mean_s_ci95"]
        if base:
            diff = paired_diff_ci95([r["jct_mean_s"] for r in mine],
                                    [r["jct_mean_s"] for r in base], interval)
            row["jct_vs_pe_only"] = 1.0 + diff.rel
            row["jct_vs_pe_only_ci95"] = diff.rel_ci95
        row["per_seed_jct_mean_s"] = [r["jct_mean_s"] for r in mine]
        row["per_seed_ttft_p99_s"] = [r["ttft_p99_s"] for r in mine]
        rows.append(row)
    return rows
