"""``bench sim|env|policy|transport|grpc|soak|replay|...``: every benchmark prints its
figures."""

from __future__ import annotations

import argparse

from experiments.bench.sim import BENCH, bench_sim, render_bench_sim
from experiments.cli.common import emit
from experiments.evaluation.runner import DEFAULT_PRESET


def cmd_bench_sim(args: argparse.Namespace) -> None:
    payload = bench_sim(args.agents, progress=not args.json)
    emit(args, payload, render_bench_sim(payload))


def cmd_bench_env(args: argparse.Namespace) -> None:
    from experiments.bench.env_steps import bench_env, render_bench_env

    payload = bench_env(steps=args.steps, seed=args.seed)
    emit(args, payload, render_bench_env(payload))


def cmd_bench_policy(args: argparse.Namespace) -> None:
    from experiments.bench.env_steps import bench_policy, render_bench_policy

    payload = bench_policy(args.policy or ["dualpath"], preset=args.preset, agents=args.agents,
                           overrides=args.overrides, scenario=args.scenario)
    emit(args, payload, render_bench_policy(payload))


def cmd_bench_transport(args: argparse.Namespace) -> None:
    from experiments.bench.transport import bench_transport, render_transport

    payload = bench_transport(size=args.size_mib << 20, repeats=args.repeats)
    emit(args, payload, render_transport(payload))


def cmd_bench_grpc(args: argparse.Namespace) -> None:
    from experiments.bench.service import bench_grpc, render_grpc

    payload = bench_grpc(calls=args.calls, learned=args.learned, batch=args.batch,
                         log=not args.no_log, runs=args.runs, pin_cores=not args.no_pin)
    emit(args, payload, render_grpc(payload))


def cmd_bench_cache_events(args: argparse.Namespace) -> None:
    from experiments.bench.cache_events import bench_cache_events, render_cache_events

    payload = bench_cache_events(seconds=args.seconds)
    emit(args, payload, render_cache_events(payload))


def cmd_bench_soak(args: argparse.Namespace) -> None:
    from experiments.bench.soak import render_soak, soak

    payload = soak(minutes=args.minutes, clients=args.clients, swap_every_s=args.swap_every,
                   deadline_ms=args.deadline_ms)
    emit(args, payload, render_soak(payload))
    if not payload["ok"]:  # a failed call or swap fails the command, after the report
        raise SystemExit(1)


def _add_grpc(bench: argparse._SubParsersAction) -> None:
    b = bench.add_parser("grpc", help="latency and throughput of the scheduler service on "
                                      "loopback")
    b.add_argument("--calls", type=int, default=20_000, help="Schedule calls per measurement")
    b.add_argument("--learned", default="pretrained:paper-offline",
                   help="the learned policy measured beside dualpath")
    b.add_argument("--batch", type=int, default=64, help="requests per ScheduleBatch call")
    b.add_argument("--no-log", action="store_true", help="serve with the decision log off")
    b.add_argument("--runs", type=int, default=5,
                   help="runs, each on a fresh server; the figures are their medians")
    b.add_argument("--no-pin", action="store_true",
                   help="leave the server and the client unpinned (default: a core each)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_grpc)


def cmd_bench_replay(args: argparse.Namespace) -> None:
    from experiments.bench.replay import bench_replay, render_replay_bench

    payload = bench_replay(decisions=args.decisions, resamples=args.resamples, jobs=args.jobs,
                           train_seeds=args.train_seeds)
    emit(args, payload, render_replay_bench(payload))


def _add_replay_parser(bench: argparse._SubParsersAction) -> None:
    b = bench.add_parser("replay", help="wall time of replay and train --from-log on a log "
                                        "a real service wrote")
    b.add_argument("--decisions", type=int, default=10_000, help="at least this many logged")
    b.add_argument("--resamples", type=int, default=10)
    b.add_argument("--jobs", type=int, default=2)
    b.add_argument("--train-seeds", type=int, default=4)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_replay)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="what", required=True)
    b = bench.add_parser("sim", help="simulated requests per second (ds660b-2p4d, 64K, dualpath)")
    b.add_argument("--agents", type=int, default=BENCH.agents)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_sim)
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
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value (node.dram_cache_gb=80); repeatable")
    b.add_argument("--scenario", help="decide on this scenario's cluster and workload instead")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_policy)
    b = bench.add_parser("transport", help="GiB/s of one-sided writes between two processes, "
                                           "per transport, beside memcpy")
    b.add_argument("--size-mib", type=int, default=64, help="bytes per write, in MiB")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_transport)
    _add_grpc(bench)
    b = bench.add_parser("cache-events", help="the service's block index under a flood of "
                                             "cache events: statuses, calls/s, memory")
    b.add_argument("--seconds", type=float, default=30.0, help="length of the flood")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_cache_events)

    b = bench.add_parser("soak", help="the scheduler service under steady load for minutes, "
                                      "its policy swapped; failures and server memory")
    b.add_argument("--minutes", type=float, default=10.0, help="length of the load (0.2 ok)")
    b.add_argument("--clients", type=int, default=4, help="concurrent client loops (threads)")
    b.add_argument("--swap-every", type=float, default=30.0,
                   help="seconds between SwapPolicy calls (dualpath <-> pretrained:paper-offline)")
    b.add_argument("--deadline-ms", type=float, default=2000.0, help="deadline of every call")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_soak)

    _add_replay_parser(bench)
    _add_engine_parser(bench)
    b = bench.add_parser("gateway", help="latency the endpoint picker adds behind Envoy, "
                                         "against round robin over the same engines")
    b.add_argument("--requests", type=int, default=2000, help="measured requests per target "
                                                              "and concurrency")
    b.add_argument("--warmup", type=int, default=200, help="requests first, not measured")
    b.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_gateway)


def cmd_bench_gateway(args: argparse.Namespace) -> None:
    from experiments.bench.gateway import bench_gateway, render_gateway

    payload = bench_gateway(args.requests, args.warmup, tuple(args.concurrency))
    emit(args, payload, render_gateway(payload))


def cmd_bench_engine(args: argparse.Namespace) -> None:
    import json
    import sys

    from experiments.bench.engine import bench_engine, render

    payload = bench_engine(size=args.size, dtype=args.dtype, device=args.device,
                           quick=args.quick, block_tokens=args.block_tokens,
                           sweep_name=args.sweep,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
    emit(args, payload, render(payload) + (f"\nwrote {args.out}" if args.out else ""))


def _add_engine_parser(bench: argparse._SubParsersAction) -> None:
    b = bench.add_parser("engine", help="the real model's prefill, decode, KV copies and "
                                        "layer-wise prefill on a device (for calibrate engine)")
    b.add_argument("--size", default="tiny", help="model size: tiny, small, base, 1b")
    b.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--block-tokens", type=int, default=64, help="tokens per KV block")
    b.add_argument("--out", metavar="FILE.json", help="write the measurements here")
    b.add_argument("--quick", action="store_true", help="a handful of points (seconds on a CPU)")
    b.add_argument("--sweep", choices=["quick", "medium", "full"],
                   help="the points measured (default: full, or quick with --quick); medium "
                        "bounds a 1b model on one GPU to minutes")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_engine)
