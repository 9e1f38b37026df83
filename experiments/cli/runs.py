"""``simulate``, ``scenarios``, ``compare`` (the main job) and ``ablation``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from experiments.cli.common import add_run_args, emit, key_values, run_config
from experiments.evaluation.compare import (
    SUMMARY,
    ablation,
    compare_runs,
    compare_scenario,
    main_job_policies,
    render_compare,
)
from experiments.evaluation.runner import run
from experiments.evaluation.scenario import list_scenarios, load_scenario
from experiments.evaluation.table import format_table


def cmd_simulate(args: argparse.Namespace) -> None:
    result = run(run_config(args, args.policy), progress=True)
    keys = [k for k in SUMMARY if k != "policy"] + ["requests", "wall_s", "sim_requests_per_s"]
    emit(args, result, key_values(result, ["policy", "preset", *keys]))


def cmd_scenarios(args: argparse.Namespace) -> None:
    names = list_scenarios()
    if args.json:
        print(json.dumps({"scenarios": [load_scenario(n).to_json() for n in names]}))
        return
    for name in names:
        print(f"{name:<16} {load_scenario(name).description}")


def cmd_compare(args: argparse.Namespace) -> None:
    if args.scenario is not None:
        _compare_scenario(args)
        return
    if args.policies is not None or args.seeds is not None:
        raise ValueError("--policies and --seeds go with --scenario; without one, name "
                         "policies with --policy")
    policies = args.policy or main_job_policies()
    rows = compare_runs([run_config(args, p) for p in policies], args.jobs)
    header = (f"preset {args.preset}, {args.agents} agents, {args.mal} set, seed {args.seed}; "
              f"speedup = JCT of {policies[0]} / JCT")
    emit(args, {"runs": rows}, header + "\n" + format_table(rows, [*SUMMARY, "speedup"]))


def _compare_scenario(args: argparse.Namespace) -> None:
    payload = compare_scenario(args.scenario, policies=args.policies, policy=args.policy,
                               seeds=args.seeds, jobs=args.jobs, out=args.out,
                               tracking_uri=args.tracking_uri, progress=not args.json)
    emit(args, payload, render_compare(payload))


def cmd_ablation(args: argparse.Namespace) -> None:
    payload: dict[str, Any] = ablation(run_config(args, "dualpath"), args.jobs)
    header = f"ablation on {args.preset}, {args.agents} agents, {args.mal} set, seed {args.seed}"
    emit(args, payload, header + "\n" + format_table(
        payload["steps"], ["name", "policy", "jct_s", "reduction_pct"]))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate one policy on a cluster and workload")
    add_run_args(p, agents=512)
    p.add_argument("--policy", default="dualpath", help="policy spec NAME[:key=value,...]")
    p.add_argument("--oracle", action="store_true", help="zero-I/O oracle")
    p.add_argument("--online", action="store_true", help="Poisson agent arrivals")
    p.add_argument("--aps", type=float, help="online: agents per second")
    p.add_argument("--duration", type=float, help="online: arrival window in seconds")
    p.add_argument("--trace", help="replay a trace instead: mooncake:PATH")
    p.add_argument("--storage-blocks", type=int, help="trace: storage capacity in blocks (LRU)")
    p.add_argument("--timeline", help="write one row per request to FILE.csv or FILE.parquet")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("scenarios", help="list the shipped scenarios")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("compare", help="compare policies on the same workload (the main job)")
    add_run_args(p, agents=512)
    p.add_argument("--policy", action="append", help="policy spec; repeat for several")
    p.add_argument("--scenario", help="evaluate on a scenario's evaluation seeds (name or file)")
    p.add_argument("--policies", help="with --scenario: comma-separated policy specs")
    p.add_argument("--seeds", type=int, help="with --scenario: the first N evaluation seeds")
    p.add_argument("--out", help="with --scenario: folder for the plots "
                                 "(default results/compare/SCENARIO)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                          "else sqlite:///mlflow.db here)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ablation", help="the paper's ablation steps and the oracle")
    add_run_args(p, agents=1024)
    p.set_defaults(func=cmd_ablation)
