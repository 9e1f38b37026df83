"""``load``: real streaming load on an OpenAI-compatible server, measured at the client."""

from __future__ import annotations

import argparse
from typing import Any

from experiments.cli.common import emit, key_values


def cmd_load(args: argparse.Namespace) -> None:
    from experiments.live.load import SUMMARY_KEYS, LoadConfig, run_load

    cfg = LoadConfig(url=args.url, agents=args.agents, mal=args.mal, rate=args.rate,
                     seed=args.seed, trace=args.trace, speed=args.speed, model=args.model,
                     timeout_s=args.timeout, think_time_s=args.think_time)
    result = run_load(cfg)
    emit(args, result, render_load(result, SUMMARY_KEYS))
    if result["requests"] == 0:  # nothing completed (server down?): fail, after the report
        raise SystemExit(1)


def render_load(result: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The summary as ``key  value`` lines, then the kept error messages."""
    shown = {k: "-" if result[k] is None else result[k] for k in keys}
    text = key_values(shown, list(keys))
    for message in result["error_messages"]:
        text += f"\n{'error':>20}  {message}"
    return text


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="streaming load on an OpenAI-compatible server "
                                    "(agents or a trace); TTFT, TPOT, throughput, errors")
    p.add_argument("--url", required=True, help="the server's base URL, http://HOST:PORT")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--agents", type=int, help="agents replaying the agentic workload "
                                                   "(closed loop)")
    source.add_argument("--trace", help="replay a trace instead (open loop): mooncake:PATH")
    p.add_argument("--mal", default="64k", choices=["32k", "48k", "64k"],
                   help="agents: max agent length set")
    p.add_argument("--rate", type=float,
                   help="agents: arrivals per second (Poisson; default: all at once)")
    p.add_argument("--seed", type=int, default=0, help="agents: workload and text seed")
    p.add_argument("--think-time", type=float, default=0.0,
                   help="agents: mean think seconds between turns")
    p.add_argument("--speed", type=float, default=1.0,
                   help="trace: replay X times faster than recorded")
    p.add_argument("--model", default="dualpath", help="the request's model name")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per request, to the end of its stream")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_load)
