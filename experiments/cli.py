"""The ``dualpath`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from env.encoding import PARTS
from experiments.capacity import add_cli as add_capacity_cli
from experiments.compare import (
    compare,
    default_specs,
    pick_seeds,
    render,
    shipped_policies,
    split_specs,
)
from experiments.report import add_cli as add_report_cli
from experiments.runner import DEFAULT_PRESET, RunConfig, run, run_many
from experiments.scenario import list_scenarios, load_scenario
from experiments.table import format_table, format_value
from experiments.tracking import MODEL_NAME
from runtime.live.config import is_live_preset, load_live_preset

SUMMARY = ["policy", "jct_s", "jct_mean_s", "throughput_tok_s", "ttft_mean_s", "tpot_mean_s",
           "slo_attainment", "snic_util_mean", "snic_max_over_avg"]
COMPARE_POLICIES = ("pe_only:layerwise=false", "pe_only", "dualpath", "dualpath_split")
#: The shipped learned policy the main job compares with the heuristics (trained on the
#: paper-offline scenario, whose cluster the main job runs).
MAIN_JOB_LEARNED = tuple(f"pretrained:{n}" for n in shipped_policies() if n == "paper-offline")
ABLATION_STEPS = (
    ("baseline", "pe_only:layerwise=false"),
    ("+layerwise", "pe_only"),
    ("+dual-path", "round_robin"),
    ("+scheduler", "dualpath"),
    ("oracle", "dualpath:oracle=true"),
)
BENCH = RunConfig(policy="dualpath", preset=DEFAULT_PRESET, agents=2048, mal="64k")


def _add_run_args(p: argparse.ArgumentParser, agents: int) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, help="preset name or path to a TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value (node.snic_gb_s=25); repeatable")
    p.add_argument("--agents", type=int, default=agents, help="offline agents")
    p.add_argument("--mal", default="64k", choices=["32k", "48k", "64k"],
                   help="max agent length set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-layerwise", action="store_true", help="turn layer-wise prefill off")
    p.add_argument("--append-scale", type=float, default=1.0)
    p.add_argument("--gen-scale", type=float, default=1.0)
    p.add_argument("--tool-latency", type=float, default=0.0, help="mean tool-call seconds")
    p.add_argument("--think-time", type=float, default=0.0, help="mean think seconds")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="parallel processes for several runs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _config(args: argparse.Namespace, policy: str) -> RunConfig:
    return RunConfig(
        policy=policy, preset=args.preset, overrides=tuple(args.overrides), agents=args.agents,
        mal=args.mal, seed=args.seed, layerwise=not args.no_layerwise,
        oracle=getattr(args, "oracle", False), append_scale=args.append_scale,
        gen_scale=args.gen_scale, tool_latency_s=args.tool_latency,
        think_time_s=args.think_time, online=getattr(args, "online", False),
        aps=getattr(args, "aps", None), duration_s=getattr(args, "duration", None),
        trace=getattr(args, "trace", None),
        storage_capacity_blocks=getattr(args, "storage_blocks", None),
        timeline=getattr(args, "timeline", None))


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, sort_keys=True) if args.json else text)


def cmd_simulate(args: argparse.Namespace) -> None:
    result = run(_config(args, args.policy), progress=True)
    keys = [k for k in SUMMARY if k != "policy"] + ["requests", "wall_s", "sim_requests_per_s"]
    text = "\n".join(f"{k:>20}  {format_value(result[k])}" for k in ["policy", "preset", *keys])
    _emit(args, result, text)


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
    policies = args.policy or [*COMPARE_POLICIES, *MAIN_JOB_LEARNED]
    rows = run_many([_config(args, p) for p in policies], args.jobs, progress=True)
    base = rows[0]["jct_s"]
    for row in rows:
        row["speedup"] = base / row["jct_s"] if row["jct_s"] > 0 else 0.0
    header = (f"preset {args.preset}, {args.agents} agents, {args.mal} set, seed {args.seed}; "
              f"speedup = JCT of {policies[0]} / JCT")
    _emit(args, {"runs": rows}, header + "\n" + format_table(rows, [*SUMMARY, "speedup"]))


def _compare_scenario(args: argparse.Namespace) -> None:
    scenario = load_scenario(args.scenario)
    specs = (split_specs(args.policies) if args.policies is not None
             else (args.policy or default_specs(scenario, shipped_policies())))
    seeds = pick_seeds(scenario, args.seeds)
    out = Path(args.out) if args.out else Path("results") / "compare" / scenario.name
    payload = compare(scenario, specs, seeds, jobs=args.jobs, out_dir=out,
                      tracking_uri=args.tracking_uri, progress=not args.json)
    _emit(args, payload, render(payload))


def cmd_ablation(args: argparse.Namespace) -> None:
    rows = run_many([_config(args, spec) for _, spec in ABLATION_STEPS], args.jobs,
                    progress=True)
    base = rows[0]["jct_s"]
    steps = []
    for (name, spec), row in zip(ABLATION_STEPS, rows, strict=True):
        steps.append({"name": name, "policy": spec, "jct_s": row["jct_s"],
                      "reduction_pct": 100.0 * (1 - row["jct_s"] / base)})
    header = f"ablation on {args.preset}, {args.agents} agents, {args.mal} set, seed {args.seed}"
    _emit(args, {"steps": steps, "runs": rows},
          header + "\n" + format_table(steps, ["name", "policy", "jct_s", "reduction_pct"]))


def cmd_train(args: argparse.Namespace) -> None:
    from experiments.fanout import make_fanout
    from experiments.train import TrainConfig, train_many

    scenario = load_scenario(args.scenario)
    mode = args.mode or scenario.train.mode
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    cfgs = [TrainConfig(
        mode=mode, steps=args.steps or scenario.train.steps, seed=args.seed + k,
        control=tuple(args.control.split(",")) if args.control else PARTS,
        fallback=args.fallback, window_s=args.window,
        imitate=None if args.imitate.lower() == "none" else args.imitate,
        imitate_steps=args.imitate_steps, relative_to=args.relative_to)
        for k in range(args.seeds)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.out) if args.out else Path("results") / "train" / (
        f"{scenario.name}-{mode}-{stamp}")
    outs = [base if args.seeds == 1 else base / f"seed{cfg.seed}" for cfg in cfgs]
    wall = time.perf_counter()
    with make_fanout(min(args.jobs, args.seeds), args.ray_address) as fanout:
        results = train_many(scenario, cfgs, outs, fanout=fanout,
                             tracking_uri=args.tracking_uri,
                             progress=not args.json and fanout.workers == 1)
    runs = [{"seed": cfg.seed, "artifact": str(r.artifact_dir), "mlflow_run_id": r.run_id,
             "model": f"{MODEL_NAME} version {r.version}", "alias": "challenger",
             "env_time_share": r.env_time_share, "wall_s": r.wall_s}
            for cfg, r in zip(cfgs, results, strict=True)]
    if len(runs) == 1:
        payload: dict[str, Any] = runs[0]
        text = "\n".join(f"{k:>16}  {format_value(v)}" for k, v in payload.items()
                         if k != "seed")
    else:
        payload = {"runs": runs, "wall_s": time.perf_counter() - wall}
        text = format_table(runs, ["seed", "model", "wall_s", "artifact"]) + (
            f"\n{len(runs)} seeds in {payload['wall_s']:.0f} s; the challenger alias is on "
            "the last one registered")
    _emit(args, payload, text)


def cmd_promote(args: argparse.Namespace) -> None:
    from experiments.promote import promote

    payload = promote(load_scenario(args.scenario), args.challenger, jobs=args.jobs,
                      seeds=args.seeds, tracking_uri=args.tracking_uri)
    _emit(args, payload, payload["reason"])


def cmd_bench_env(args: argparse.Namespace) -> None:
    from experiments.bench import bench_env

    payload = bench_env(steps=args.steps, seed=args.seed)
    text = (f"{payload['steps']:,} env steps ({payload['preset']}, random valid actions) in "
            f"{payload['wall_s']:.2f} s: {payload['steps_per_s']:,.0f} steps/s")
    _emit(args, payload, text)


def cmd_bench_policy(args: argparse.Namespace) -> None:
    from experiments.bench import bench_policy

    payload = bench_policy(args.policy or ["dualpath"], preset=args.preset, agents=args.agents)
    text = (f"decision latency on {payload['preset']} ({payload['agents']} agents, 64K)\n"
            + format_table(payload["rows"], ["policy", "decisions", "mean_us", "p50_us",
                                             "p99_us", "vs_first"]))
    _emit(args, payload, text)


def cmd_bench(args: argparse.Namespace) -> None:
    cfg = replace(BENCH, agents=args.agents)
    result = run(cfg, progress=not args.json)
    payload = {k: result[k] for k in ("requests", "wall_s", "sim_requests_per_s", "jct_s")}
    payload.update(preset=cfg.preset, agents=cfg.agents, mal=cfg.mal, policy=cfg.policy)
    text = (f"simulated {result['requests']:,} requests ({cfg.preset}, {cfg.mal}, "
            f"{cfg.agents} agents, {cfg.policy}) in {result['wall_s']:.1f} s wall: "
            f"{result['sim_requests_per_s']:,.0f} simulated requests/s")
    _emit(args, payload, text)


def cmd_serve(args: argparse.Namespace) -> None:
    from policy_service.server import ServeConfig, serve

    # models:/ specs download from this store, as the alias watch reads it.
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    preset, overrides = args.preset, tuple(args.overrides)
    if is_live_preset(preset):  # serve the cluster a live preset runs
        live = load_live_preset(preset)
        preset, overrides = live.cluster, live.overrides + overrides
    config = ServeConfig(
        policy=args.policy or (None if args.watch_alias else "dualpath"), preset=preset,
        overrides=overrides,
        host=args.host, port=args.port, watch_alias=args.watch_alias,
        watch_interval_s=args.watch_interval, tracking_uri=uri,
        db=None if args.db == "none" else args.db, log_flush_s=args.log_flush,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert, tls_key=args.tls_key, admin_token_file=args.admin_token_file,
        max_batch=args.max_batch, engine_max_age_s=args.engine_max_age, grace_s=args.grace)
    serve(config)


def cmd_decisions_export(args: argparse.Namespace) -> None:
    from policy_service.decision_log import export

    rows = export(args.db, args.out)
    _emit(args, {"rows": rows, "out": args.out}, f"exported {rows:,} decisions to {args.out}")


def cmd_decisions_agree(args: argparse.Namespace) -> None:
    from agents.spec import resolve_policy
    from policy_service.decision_log import agree, cluster_of
    from runtime.preset import load_preset

    logged = cluster_of(args.db)
    preset = args.preset or (logged.partition(":")[0] if logged else None)
    if preset is None:
        raise ValueError(f"{args.db}: the log holds no decisions (and no --preset was given)")
    spec = load_preset(preset)
    payload = agree(args.db, resolve_policy(args.policy, spec).policy, spec)
    payload.update(policy=args.policy, preset=spec.name)
    text = (f"{args.policy} agrees with {payload['agreed']:,} of {payload['decisions']:,} "
            f"logged decisions ({payload['rate']:.1%})")
    _emit(args, payload, text)


def cmd_bench_grpc(args: argparse.Namespace) -> None:
    from experiments.bench_grpc import bench_grpc, render_grpc

    payload = bench_grpc(calls=args.calls, learned=args.learned, batch=args.batch,
                         log=not args.no_log)
    _emit(args, payload, render_grpc(payload))


def cmd_bench_soak(args: argparse.Namespace) -> None:
    from experiments.soak import render_soak, soak

    payload = soak(minutes=args.minutes, clients=args.clients, swap_every_s=args.swap_every,
                   deadline_ms=args.deadline_ms)
    _emit(args, payload, render_soak(payload))
    if not payload["ok"]:  # a failed call or swap fails the command, after the report
        raise SystemExit(1)


def cmd_stress(args: argparse.Namespace) -> None:
    from experiments.stress import StressConfig, parse_faults, render_stress, stress

    cfg = StressConfig(count=args.count, faults=parse_faults(args.faults), agents=args.agents,
                       hog=not args.no_hog)
    payload = stress(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    _emit(args, payload, render_stress(payload))
    if not payload["ok"]:  # a lost or duplicated request fails the command, after the report
        raise SystemExit(1)


def _faults(args: argparse.Namespace) -> Any:
    from runtime.live.router import Faults

    kill, at = None, 0.0
    if args.kill_node is not None:
        node, sep, when = args.kill_node.partition("@")
        if not sep:
            raise ValueError(f"--kill-node {args.kill_node}: expected NODE@SECONDS")
        kill, at = int(node), float(when)
    return Faults(kill_node=kill, kill_at_s=at, corrupt_blocks=args.corrupt)


def cmd_cluster(args: argparse.Namespace) -> None:
    from experiments.live import LiveRunConfig, run_cluster
    from runtime.live.router import RunFailed

    cfg = LiveRunConfig(
        preset=args.preset, policy=args.policy, overrides=tuple(args.overrides),
        agents=args.agents, mal=args.mal, seed=args.seed, trace=args.trace,
        transport=args.transport, netns=args.netns, time_scale=args.time_scale,
        bytes_scale=args.bytes_scale, layerwise=not args.no_layerwise, device=args.device,
        faults=_faults(args))
    try:
        result = run_cluster(cfg)
    except RunFailed as exc:  # a node died with no replacement, or reported a fatal error
        counts = "" if exc.outcome is None else " (" + ", ".join(
            f"{k} {v}" for k, v in exc.outcome.items()) + ")"
        print(f"dualpath cluster: the run failed{counts}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    live = result["live"]
    keys = [k for k in SUMMARY if k != "policy"] + ["requests", "wall_s", "transport",
                                                     "netns", "time_scale"]
    text = "\n".join(f"{k:>20}  {format_value(result[k])}" for k in ["policy", "preset", *keys])
    text += "\n" + "\n".join(f"{k:>20}  {v:,}" for k, v in live.items())
    _emit(args, result, text)


def cmd_fidelity(args: argparse.Namespace) -> None:
    from experiments.live import fidelity

    payload = fidelity(runs=args.runs)
    cols = ["config", "sim_throughput_tok_s", "live_throughput_tok_s", "throughput_error_pct",
            "sim_jct_mean_s", "live_jct_mean_s", "jct_error_pct", "blocks_verified"]
    text = (format_table(payload["rows"], cols)
            + f"\nlive = median of {payload['runs']} runs; largest error "
              f"{payload['max_error_pct']:.1f}%")
    _emit(args, payload, text)


def cmd_bench_transport(args: argparse.Namespace) -> None:
    from runtime.live.bench_transport import bench_transport
    from runtime.live.bench_transport import format_table as transport_table

    payload = bench_transport(size=args.size_mib << 20, repeats=args.repeats)
    _emit(args, payload, transport_table(payload))


def cmd_sweep(args: argparse.Namespace) -> None:
    from experiments.sweep import sweep_main

    summary = sweep_main(args.file, jobs=args.jobs, ray_address=args.ray_address,
                         out=args.out, tracking_uri=args.tracking_uri, seeds=args.seeds,
                         log=not args.no_mlflow)
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
    _emit(args, summary, text)


def cmd_doctor(args: argparse.Namespace) -> None:
    from runtime.live.doctor import doctor, format_doctor

    payload = doctor()
    _emit(args, payload, format_doctor(payload))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualpath", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate one policy on a cluster and workload")
    _add_run_args(p, agents=512)
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
    _add_run_args(p, agents=512)
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
    _add_run_args(p, agents=1024)
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("train", help="train a learned policy on a scenario (MLflow-logged)")
    p.add_argument("--scenario", required=True, help="scenario name or file")
    p.add_argument("--mode", choices=["route", "tune"], help="default: the scenario's")
    p.add_argument("--steps", type=int, help="env steps (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0, help="the learner's seed")
    p.add_argument("--control", help="route: parts the agent decides, from "
                                     "prefill,decode,path (default all)")
    p.add_argument("--fallback", help="route: heuristic spec for the other parts")
    p.add_argument("--imitate", default="dualpath",
                   help="heuristic to imitate before PPO (routing: also the fallback whose "
                        "decisions the agent sees); 'none' starts from scratch")
    p.add_argument("--imitate-steps", type=int,
                   help="demonstration steps (default 20,000 routing, 400 tuning)")
    p.add_argument("--relative-to", help="tune: reward relative to this heuristic's "
                                         "parameters, run on a copy of the simulation")
    p.add_argument("--window", type=float, default=10.0,
                   help="tune: simulated seconds per parameter setting")
    p.add_argument("--seeds", type=int, default=1,
                   help="train N policies, seeds SEED..SEED+N-1, in parallel")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="with --seeds: local worker processes")
    p.add_argument("--ray-address", help="with --seeds: train on a Ray cluster (auto, local, "
                                         "HOST:PORT)")
    p.add_argument("--out", help="artifact folder (default results/train/SCENARIO-MODE-TIME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("promote", help="move the champion alias to the challenger if it wins")
    p.add_argument("--scenario", required=True)
    p.add_argument("--challenger", default="models:/dualpath-scheduler@challenger",
                   help="policy spec of the challenger")
    p.add_argument("--seeds", type=int, help="the first N evaluation seeds")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="what", required=True)
    b = bench.add_parser("sim", help="simulated requests per second (ds660b-2p4d, 64K, dualpath)")
    b.add_argument("--agents", type=int, default=BENCH.agents)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("env", help="raw env steps per second (ds27b-1p1d, random valid "
                                     "actions)")
    b.add_argument("--steps", type=int, default=50_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_env)
    b = bench.add_parser("policy", help="microseconds per decision of policy specs")
    b.add_argument("--policy", action="append", help="policy spec; repeat (first = baseline)")
    b.add_argument("--preset", default=DEFAULT_PRESET)
    b.add_argument("--agents", type=int, default=64)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_policy)
    b = bench.add_parser("transport", help="GiB/s of one-sided writes between two processes, "
                                           "per transport, beside memcpy")
    b.add_argument("--size-mib", type=int, default=64, help="bytes per write, in MiB")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_transport)
    b = bench.add_parser("grpc", help="latency and throughput of the scheduler service on "
                                      "loopback")
    b.add_argument("--calls", type=int, default=20_000, help="Schedule calls per measurement")
    b.add_argument("--learned", default="pretrained:paper-offline",
                   help="the learned policy measured beside dualpath")
    b.add_argument("--batch", type=int, default=64, help="requests per ScheduleBatch call")
    b.add_argument("--no-log", action="store_true", help="serve with the decision log off")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_grpc)
    b = bench.add_parser("soak", help="the scheduler service under steady load for minutes, "
                                      "its policy swapped; failures and server memory")
    b.add_argument("--minutes", type=float, default=10.0, help="length of the load (0.2 ok)")
    b.add_argument("--clients", type=int, default=4, help="concurrent client loops (threads)")
    b.add_argument("--swap-every", type=float, default=30.0,
                   help="seconds between SwapPolicy calls (dualpath <-> pretrained:paper-offline)")
    b.add_argument("--deadline-ms", type=float, default=2000.0, help="deadline of every call")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_soak)

    p = sub.add_parser("stress", help="live clusters under each fault in turn while a CPU hog "
                                      "keeps every core busy; every request exactly once")
    p.add_argument("--count", type=int, default=1, help="runs of each fault")
    p.add_argument("--faults", default=None,
                   help="comma-separated subset of: kill-decode, kill-prefill, kill-storage, "
                        "kill-scheduler, stop-2s, stop-10s, link-rate, corrupt-block (default all)")
    p.add_argument("--agents", type=int, default=4, help="agents per run")
    p.add_argument("--no-hog", action="store_true", help="run without the CPU hog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stress)

    p = sub.add_parser("serve", help="run the scheduler service (gRPC)")
    p.add_argument("--policy", default=None,
                   help="policy spec to serve (default dualpath unless --watch-alias)")
    p.add_argument("--preset", default="ds27b-1p1d",
                   help="the cluster served: preset, live preset or file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value; repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--watch-alias", help="poll the registry alias (for example champion) and "
                                         "serve the version it names")
    p.add_argument("--watch-interval", type=float, default=0.25, help="seconds between polls")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ specs and the watch")
    p.add_argument("--db", default="sqlite:///decisions.db",
                   help="decision log SQLAlchemy URL, or 'none'")
    p.add_argument("--log-flush", type=float, default=0.5,
                   help="seconds between shipments to the decision log's writer (the most "
                        "a hard kill can lose)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key): serve over TLS")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--admin-token-file", help="file holding the token admin calls must present")
    p.add_argument("--max-batch", type=int, default=1024, help="most requests per batch call")
    p.add_argument("--engine-max-age", type=float, default=2.0,
                   help="seconds after its last report an engine is no longer chosen")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight calls get to finish on SIGTERM")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cluster", help="run a live cluster of real processes moving real KV "
                                       "bytes")
    p.add_argument("--preset", default="tiny-live",
                   help="live preset (tiny-live, io-bound-live, compute-bound-live), any "
                        "cluster preset, or a TOML file")
    p.add_argument("--policy", default="dualpath", help="policy spec, grpc://HOST:PORT too")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a cluster preset value; repeatable")
    p.add_argument("--agents", type=int, help="offline agents (default: the preset's)")
    p.add_argument("--mal", choices=["32k", "48k", "64k"], help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", help="replay a trace instead: mooncake:PATH")
    p.add_argument("--transport", default="shm", choices=["shm", "tcp", "nixl", "pyverbs"])
    p.add_argument("--netns", action="store_true",
                   help="each node in its own network namespace, links shaped by tc (root)")
    p.add_argument("--time-scale", type=float,
                   help="run X times slower than the modelled cluster (default: the preset's)")
    p.add_argument("--bytes-scale", type=int,
                   help="move 1/N of the modelled KV bytes (default: the preset's)")
    p.add_argument("--no-layerwise", action="store_true", help="turn layer-wise prefill off")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: prefill engines keep KV in GPU memory (real H2D copies)")
    p.add_argument("--kill-node", help="fault: SIGKILL node N at model time T (N@T)")
    p.add_argument("--corrupt", type=int, default=0, metavar="N",
                   help="fault: corrupt, in storage, the first block of the first N requests "
                        "that read any")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("fidelity", help="simulator vs live runtime: throughput and mean JCT")
    p.add_argument("--runs", type=int, default=3, help="live runs per config (median)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("sweep", help="run every point of a sweep file (experiments/sweeps/)")
    p.add_argument("file", help="sweep name (experiments/sweeps/NAME.toml) or TOML file")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="local worker processes")
    p.add_argument("--ray-address", help="run on a Ray cluster: auto, local or HOST:PORT")
    p.add_argument("--seeds", type=int, help="override the file's seeds with 0..N-1")
    p.add_argument("--out", help="output folder (default results/sweeps/NAME-TIME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("doctor", help="which transports and network modes work on this host")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("decisions", help="the service's decision log")
    dec = p.add_subparsers(dest="what", required=True)
    d = dec.add_parser("export", help="export the log as a Parquet dataset")
    d.add_argument("--db", required=True, help="decision log SQLAlchemy URL")
    d.add_argument("--out", required=True, help="FILE.parquet")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_export)
    d = dec.add_parser("agree", help="how often a policy would have decided as logged")
    d.add_argument("--db", required=True, help="decision log SQLAlchemy URL")
    d.add_argument("--policy", required=True, help="candidate policy spec")
    d.add_argument("--preset", help="the logged cluster (default: the one the log names)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_agree)

    add_report_cli(sub)
    add_capacity_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, LookupError) as exc:
        print(f"dualpath {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
