"""What several commands share: the run arguments, the config they make, the output."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from experiments.evaluation.runner import DEFAULT_PRESET, RunConfig

#: ``--jobs``' default: every core.
JOBS = os.cpu_count() or 1


def add_run_args(p: argparse.ArgumentParser, agents: int) -> None:
    """The arguments of one simulated run (``simulate``, ``compare``, ``capacity``, ...)."""
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
    p.add_argument("--jobs", type=int, default=JOBS, help="parallel processes for several runs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run_config(args: argparse.Namespace, policy: str) -> RunConfig:
    """The run :func:`add_run_args`' arguments describe, with ``policy``; the options only
    some commands have (``--oracle``, ``--online``, ...) default when absent."""
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


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """One JSON object with ``--json``, else the text."""
    print(json.dumps(payload, sort_keys=True) if args.json else text)


def key_values(result: dict[str, Any], keys: list[str]) -> str:
    """``key  value`` lines, right-aligned keys."""
    from experiments.evaluation.table import format_value

    return "\n".join(f"{k:>20}  {format_value(result[k])}" for k in keys)
