"""Policies side by side: on one workload (``dualpath compare``, the main job, and
``dualpath ablation``) or on a scenario's evaluation seeds (``compare --scenario``: the
table, plots, and everything logged to MLflow)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import agents
from experiments.evaluation.evaluate import DEFAULT_POLICIES, METRICS, run_all, summarize_seeds
from experiments.evaluation.runner import RunConfig, run_many
from experiments.evaluation.scenario import Scenario, load_scenario
from experiments.evaluation.table import format_table
from experiments.tracking import mlflow_runs as tracking
from experiments.tracking import plots

TABLE_COLUMNS = ["policy", "jct_mean_s", "jct_ci95_s", "jct_vs_pe_only", "throughput_tok_s",
                 "ttft_p99_s", "ttft_p99_interactive_s", "ttft_p99_batch_s", "slo_attainment",
                 "storage_bytes_read"]
JSON_KEYS = ("policy", "jct_mean_s", "jct_ci95_s", "throughput_tok_s", "ttft_p99_s",
             "slo_attainment", "storage_bytes_read", "ttft_p99_interactive_s",
             "ttft_p99_interactive_s_ci95", "ttft_p99_batch_s", "ttft_p99_batch_s_ci95",
             "slo_attainment_ci95", "storage_bytes_read_ci95", "jct_vs_pe_only",
             "jct_vs_pe_only_ci95", "seeds", "per_seed_jct_mean_s", "per_seed_ttft_p99_s")
#: The main job's columns, and its policies: the paper's baseline first.
SUMMARY = ["policy", "jct_s", "jct_mean_s", "throughput_tok_s", "ttft_mean_s", "tpot_mean_s",
           "slo_attainment", "snic_util_mean", "snic_max_over_avg"]
COMPARE_POLICIES = ("pe_only:layerwise=false", "pe_only", "dualpath", "dualpath_split")
ABLATION_STEPS = (
    ("baseline", "pe_only:layerwise=false"),
    ("+layerwise", "pe_only"),
    ("+dual-path", "round_robin"),
    ("+scheduler", "dualpath"),
    ("oracle", "dualpath:oracle=true"),
)


def split_specs(text: str) -> list[str]:
    """``--policies`` as a list: commas separate specs, except that a ``key=value`` item
    continues the spec before it (``dualpath:alpha_s=2,beta_s=5,pe_only`` is two specs)."""
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"--policies {text!r}: empty policy spec")
        continues = ("=" in item and ":" not in item.split("=", 1)[0]
                     and "/" not in item and specs and ":" in specs[-1])
        if continues:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def shipped_policies() -> list[str]:
    """Names of the learned policies shipped in ``agents/pretrained/``."""
    root = Path(agents.__file__).resolve().parent / "pretrained"
    return sorted(p.name for p in root.iterdir() if (p / "policy.json").exists()) \
        if root.is_dir() else []


def main_job_policies() -> list[str]:
    """The main job's policies: the heuristics, then the shipped learned policy trained on
    the paper-offline scenario (whose cluster the main job runs)."""
    learned = [f"pretrained:{n}" for n in shipped_policies() if n == "paper-offline"]
    return [*COMPARE_POLICIES, *learned]


def compare_runs(configs: Sequence[RunConfig], jobs: int) -> list[dict[str, Any]]:
    """One run per config (the same workload), each with ``speedup`` = the first's JCT / its."""
    rows = run_many(configs, jobs, progress=True)
    base = rows[0]["jct_s"]
    for row in rows:
        row["speedup"] = base / row["jct_s"] if row["jct_s"] > 0 else 0.0
    return rows


def ablation(config: RunConfig, jobs: int) -> dict[str, Any]:
    """The paper's ablation steps (and the oracle) on ``config``'s workload: each step's JCT
    and its reduction from the baseline's."""
    rows = run_many([replace(config, policy=spec) for _, spec in ABLATION_STEPS], jobs,
                    progress=True)
    base = rows[0]["jct_s"]
    steps = [{"name": name, "policy": spec, "jct_s": row["jct_s"],
              "reduction_pct": 100.0 * (1 - row["jct_s"] / base)}
             for (name, spec), row in zip(ABLATION_STEPS, rows, strict=True)]
    return {"steps": steps, "runs": rows}


def default_specs(scenario: Scenario, shipped: Sequence[str]) -> list[str]:
    """The heuristics, plus the shipped learned policies trained on this scenario, if any
    (``NAME`` and the predictive picker ``picker-NAME``)."""
    return [*DEFAULT_POLICIES, *(f"pretrained:{name}"
                                 for name in (scenario.name, f"picker-{scenario.name}")
                                 if name in shipped)]


def pick_seeds(scenario: Scenario, n: int | None) -> list[int]:
    seeds = list(scenario.eval_seeds)
    if n is None:
        return seeds
    if not 1 <= n <= len(seeds):
        raise ValueError(f"--seeds {n}: scenario {scenario.name!r} has {len(seeds)} evaluation "
                         "seeds")
    return seeds[:n]


def metric_key(spec: str, metric: str) -> str:
    """An MLflow metric name for ``metric`` of policy ``spec`` (only allowed characters)."""
    # No '/' from the spec: MLflow refuses names that resolve like file paths.
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec).strip('._') or 'policy'}/{metric}"


def compare(scenario: Scenario, specs: Sequence[str], seeds: Sequence[int], *, jobs: int,
            out_dir: Path, tracking_uri: str | None, progress: bool) -> dict[str, Any]:
    """Run, summarize, plot and log; returns the JSON payload (``rows`` among it)."""
    runs = run_all(scenario, specs, seeds, jobs=jobs, progress=progress)
    rows = summarize_seeds(runs, specs)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plots.save(plots.compare_figure(rows, METRICS), out_dir / "compare.png")
    tracking.setup(tracking_uri)
    config = {"scenario": scenario.to_json(), "policies": list(specs), "seeds": list(seeds)}
    with tracking.run(f"compare-{scenario.name}", config, tags={"kind": "compare"}) as run:
        for row in rows:
            tracking.log_metrics({metric_key(row["policy"], m): row[m]
                                  for m in (*METRICS, "jct_ci95_s")})
        tracking.log_table([{k: row[k] for k in JSON_KEYS if k in row} for row in rows],
                           "compare")
        tracking.log_table(runs, "runs")
        tracking.log_artifact_dir(out_dir, "plots")
        run_id = run.info.run_id
    return {"scenario": scenario.name, "seeds": list(seeds), "mlflow_run_id": run_id,
            "plot": str(figure), "rows": [{k: row[k] for k in JSON_KEYS if k in row}
                                          for row in rows]}


def compare_scenario(name: str, *, policies: str | None, policy: Sequence[str] | None,
                     seeds: int | None, jobs: int, out: str | None, tracking_uri: str | None,
                     progress: bool) -> dict[str, Any]:
    """``compare --scenario``: the policies (``policies``' comma-separated specs, else each
    ``policy``, else :func:`default_specs`) on the first ``seeds`` evaluation seeds (all
    when ``None``), plots to ``out`` (default ``results/compare/SCENARIO``)."""
    scenario = load_scenario(name)
    specs = (split_specs(policies) if policies is not None
             else (list(policy or []) or default_specs(scenario, shipped_policies())))
    out_dir = Path(out) if out else Path("results") / "compare" / scenario.name
    return compare(scenario, specs, pick_seeds(scenario, seeds), jobs=jobs, out_dir=out_dir,
                   tracking_uri=tracking_uri, progress=progress)


def render_compare(payload: dict[str, Any]) -> str:
    header = (f"scenario {payload['scenario']}, evaluation seeds {payload['seeds']}; "
              "mean over seeds with the 95% CI half-width of mean JCT; jct_vs_pe_only = "
              "paired mean of JCT / pe_only's JCT")
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in payload["rows"])]
    return "\n".join([header, format_table(payload["rows"], columns),
                      f"plot: {payload['plot']}  mlflow run: {payload['mlflow_run_id']}"])
