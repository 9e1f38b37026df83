"""``cluster``, ``fidelity``, ``stress`` and ``doctor``: the live runtime's commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from experiments.cli.common import emit, key_values
from experiments.evaluation.compare import SUMMARY
from runtime.live.transport import TRANSPORTS


def faults_of(args: argparse.Namespace) -> Any:
    """The :class:`~runtime.live.router.Faults` ``--kill-node N@T`` and ``--corrupt N``
    ask for."""
    from runtime.live.router import Faults

    kill, at = None, 0.0
    if args.kill_node is not None:
        node, sep, when = args.kill_node.partition("@")
        if not sep:
            raise ValueError(f"--kill-node {args.kill_node}: expected NODE@SECONDS")
        kill, at = int(node), float(when)
    return Faults(kill_node=kill, kill_at_s=at, corrupt_blocks=args.corrupt)


def cmd_cluster(args: argparse.Namespace) -> None:
    from experiments.live.runs import LiveRunConfig, run_cluster
    from runtime.live.router import RunFailed

    cfg = LiveRunConfig(
        preset=args.preset, policy=args.policy, overrides=tuple(args.overrides),
        agents=args.agents, mal=args.mal, seed=args.seed, trace=args.trace,
        transport=args.transport, netns=args.netns, time_scale=args.time_scale,
        bytes_scale=args.bytes_scale, layerwise=not args.no_layerwise, device=args.device,
        faults=faults_of(args), engine=args.engine, model_size=args.model_size,
        model_dtype=args.model_dtype, token_check=not args.no_token_check)
    try:
        result = run_cluster(cfg)
    except RunFailed as exc:  # a node died with no replacement, or reported a fatal error
        counts = "" if exc.outcome is None else " (" + ", ".join(
            f"{k} {v}" for k, v in exc.outcome.items()) + ")"
        print(f"dualpath cluster: the run failed{counts}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    keys = [k for k in SUMMARY if k != "policy"] + ["requests", "wall_s", "transport",
                                                     "netns", "time_scale"]
    text = key_values(result, ["policy", "preset", "engine", *keys])
    text += "\n" + "\n".join(f"{k:>20}  {v:,}" for k, v in result["live"].items())
    emit(args, result, text)


def cmd_fidelity(args: argparse.Namespace) -> None:
    from experiments.live.runs import (
        FIDELITY_CONFIGS,
        LiveRunConfig,
        fidelity,
        fidelity_failures,
        model_configs,
        render_fidelity,
    )

    known = FIDELITY_CONFIGS if args.engine == "emulated" else model_configs(
        args.preset or "tiny-live", LiveRunConfig(
            model_size=args.model_size, model_dtype=args.model_dtype, device=args.device,
            agents=args.agents, overrides=tuple(args.overrides),
            token_check=not args.no_token_check, gen_scale=args.gen_scale))
    labels = [label for label, _ in known]
    if unknown := [c for c in args.configs if c not in labels]:
        raise SystemExit(f"dualpath fidelity: unknown --config {unknown}; choose from {labels}")
    configs = [(label, cfg) for label, cfg in known if not args.configs or label in args.configs]
    payload = fidelity(configs, runs=args.runs)
    emit(args, payload, render_fidelity(payload))
    if args.max_error_pct is not None:
        failures = fidelity_failures(payload, args.max_error_pct)
        for failure in failures:
            print(f"dualpath fidelity: {failure}", file=sys.stderr)
        if failures:  # after the report, so the figures are there to read
            raise SystemExit(1)


def cmd_stress(args: argparse.Namespace) -> None:
    from experiments.live.stress import StressConfig, parse_faults, render_stress, stress

    cfg = StressConfig(count=args.count, faults=parse_faults(args.faults), agents=args.agents,
                       hog=not args.no_hog, overrides=tuple(args.overrides))
    payload = stress(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    emit(args, payload, render_stress(payload))
    if not payload["ok"]:  # a lost or duplicated request fails the command, after the report
        raise SystemExit(1)


def cmd_doctor(args: argparse.Namespace) -> None:
    from runtime.live.doctor import doctor, format_doctor

    payload = doctor()
    emit(args, payload, format_doctor(payload))


def model_args(p: argparse.ArgumentParser) -> None:
    """The model engine's options (with ``--engine model``)."""
    p.add_argument("--model-size", help="the model engine's size: tiny, small, base, 1b "
                                        "(default: the live preset's [model] engine_size)")
    p.add_argument("--model-dtype", default="float32",
                   choices=["float32", "bfloat16", "float16"], help="the model's dtype")
    p.add_argument("--no-token-check", action="store_true",
                   help="skip checking every token against float64 after the run (for "
                        "reduced-precision runs timed for speed)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stress", help="live clusters under each fault in turn while a CPU hog "
                                      "keeps every core busy; every request exactly once")
    p.add_argument("--count", type=int, default=1, help="runs of each fault")
    p.add_argument("--faults", default=None,
                   help="comma-separated subset of: kill-decode, kill-prefill, kill-storage, "
                        "kill-scheduler, stop-2s, stop-10s, link-rate, corrupt-block (default all)")
    p.add_argument("--agents", type=int, default=4, help="agents per run")
    p.add_argument("--no-hog", action="store_true", help="run without the CPU hog")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the stress cluster (for example "
                        "node.dram_cache_gb=0.05: caches on); repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stress)

    add_cluster_parser(sub)
    add_fidelity_parser(sub)

    p = sub.add_parser("doctor", help="which transports and network modes work on this host")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="run a live cluster of real processes moving real KV "
                                       "bytes")
    p.add_argument("--preset", default="tiny-live",
                   help="live preset (tiny-live, io-bound-live, compute-bound-live, "
                        "cache-live), any cluster preset, or a TOML file")
    p.add_argument("--policy", default="dualpath", help="policy spec, grpc://HOST:PORT too")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a cluster preset value; repeatable")
    p.add_argument("--agents", type=int, help="offline agents (default: the preset's)")
    p.add_argument("--mal", choices=["32k", "48k", "64k"], help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", help="replay a trace instead: mooncake:PATH")
    p.add_argument("--transport", default="shm", choices=TRANSPORTS)
    p.add_argument("--netns", action="store_true",
                   help="each node in its own network namespace, links shaped by tc (root)")
    p.add_argument("--time-scale", type=float,
                   help="run X times slower than the modelled cluster (default: the preset's)")
    p.add_argument("--bytes-scale", type=int,
                   help="move 1/N of the modelled KV bytes (default: the preset's)")
    p.add_argument("--no-layerwise", action="store_true", help="turn layer-wise prefill off")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: prefill engines keep KV in GPU memory (real H2D copies)")
    p.add_argument("--engine", default="emulated", choices=["emulated", "model"],
                   help="model: a real transformer (seeded weights) computes on the KV both "
                        "paths deliver and generates real tokens, checked against float64; "
                        "bytes at scale 1")
    model_args(p)
    p.add_argument("--kill-node", help="fault: SIGKILL node N at model time T (N@T)")
    p.add_argument("--corrupt", type=int, default=0, metavar="N",
                   help="fault: corrupt, in storage, the first block of the first N requests "
                        "that read any")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster)



def add_fidelity_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fidelity", help="simulator vs live runtime: throughput and mean JCT "
                                        "(and, with caches, hit bytes by source)")
    p.add_argument("--runs", type=int, default=3, help="live runs per config (median)")
    p.add_argument("--config", dest="configs", action="append", default=[], metavar="LABEL",
                   help="run only this configuration (its label in the table); repeatable")
    p.add_argument("--max-error-pct", type=float, metavar="X",
                   help="exit 1 (after the report) if a throughput, mean JCT or (with caches) "
                        "per-source hit bytes error exceeds X%%")
    p.add_argument("--engine", default="emulated", choices=["emulated", "model"],
                   help="model: the engines run a real transformer; the configs are --preset "
                        "with the dualpath and pe_only policies (calibrate the preset to the "
                        "engine first: dualpath calibrate engine)")
    p.add_argument("--preset", help="with --engine model: the preset (default tiny-live)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="with --engine model: where the engines compute")
    p.add_argument("--agents", type=int, help="with --engine model: agents per run")
    p.add_argument("--gen-scale", type=float, default=1.0,
                   help="with --engine model: every turn's generated tokens times X")
    model_args(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --engine model: override a preset value; repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fidelity)

