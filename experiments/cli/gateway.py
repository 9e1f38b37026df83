"""``gateway``: a live cluster serving the OpenAI API behind Envoy and the endpoint picker."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_gateway(args: argparse.Namespace) -> None:
    from experiments.live.gateway import GatewayConfig, run_gateway

    cfg = GatewayConfig(
        preset=args.preset, policy=args.policy, port=args.port, fail_open=not args.fail_closed,
        overrides=tuple(args.overrides), db=None if args.db == "none" else args.db,
        admin_token_file=args.admin_token_file, local_policy=args.local_policy,
        max_wait_s=args.epp_max_wait_s, engine=args.engine, model_size=args.model_size)
    result = run_gateway(cfg)
    # stdout carries only the ready line: what was served goes to stderr.
    served = {k: result.get(k) for k in ("admitted", "completed", "lost", "error") if k in result}
    print(f"gateway stopped: {json.dumps(served)}", file=sys.stderr, flush=True)
    if result.get("error"):
        raise SystemExit(1)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="serve a live cluster over HTTP (OpenAI API) behind "
                                       "Envoy, our scheduler as its endpoint picker")
    p.add_argument("--preset", default="tiny-live", help="live preset (or TOML file)")
    p.add_argument("--policy", default="dualpath", help="the policy the picker serves")
    p.add_argument("--port", type=int, default=8080, help="Envoy's port (0: a free one)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fail-open", action="store_true",
                      help="(default) if the picker fails, route by round robin and let the "
                           "decode front's local policy choose")
    mode.add_argument("--fail-closed", action="store_true",
                      help="if the picker fails, answer 503")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a cluster preset value; repeatable")
    p.add_argument("--db", default="sqlite:///decisions.db",
                   help="the picker's decision log (SQLAlchemy URL) or 'none'")
    p.add_argument("--admin-token-file", help="token for the service's admin calls (swaps)")
    p.add_argument("--local-policy", default="dualpath",
                   help="decides requests that arrive without the picker's choice")
    p.add_argument("--epp-max-wait-s", type=float, default=30.0,
                   help="seconds a deferred request waits in the picker before a 429")
    p.add_argument("--engine", default="emulated", choices=["emulated", "model"],
                   help="model: the engines run a real transformer (seeded weights) and "
                        "stream its tokens")
    p.add_argument("--model-size", help="the model engine's size (default: the preset's)")
    p.set_defaults(func=cmd_gateway)
