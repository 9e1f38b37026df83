"""``canary set|status|clear``: a running scheduler service's canary.

``dualpath promote --canary HOST:PORT`` (in :mod:`experiments.cli.learning`) decides
on the canary's window and promotes its challenger.
"""

from __future__ import annotations

import argparse

from experiments.cli.common import emit


def cmd_canary_set(args: argparse.Namespace) -> None:
    from experiments.training.canary import render_status, set_canary

    status = set_canary(args.target, args.admin_token_file, args.spec, args.share)
    emit(args, status, render_status(status))


def cmd_canary_status(args: argparse.Namespace) -> None:
    from experiments.training.canary import canary_status, render_status

    status = canary_status(args.target, samples=args.samples)
    emit(args, status, render_status(status))


def cmd_canary_clear(args: argparse.Namespace) -> None:
    from experiments.training.canary import clear_canary, render_status

    status = clear_canary(args.target, args.admin_token_file)
    emit(args, status, render_status(status))


def cmd_canary_trial(args: argparse.Namespace) -> None:
    from pathlib import Path

    from experiments.training.canary_trial import TrialConfig, canary_trial, render_trial

    cfg = TrialConfig(champion=args.champion, challenger=args.challenger, share=args.share,
                      preset=args.preset, overrides=tuple(args.overrides), agents=args.agents,
                      mal=args.mal, seed=args.seed)
    payload = canary_trial(cfg, Path(args.out) if args.out else None)
    emit(args, payload, render_trial(payload))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("canary", help="a share of a running service's sessions on a "
                                      "challenger, rolled back if it regresses")
    what = p.add_subparsers(dest="what", required=True)
    c = what.add_parser("set", help="send --share of the sessions to --spec (replaces any "
                                    "canary)")
    c.add_argument("--target", required=True, metavar="HOST:PORT", help="the service")
    c.add_argument("--spec", required=True, help="the challenger's policy spec")
    c.add_argument("--share", type=float, required=True,
                   help="share of the sessions, in (0, 1)")
    c.add_argument("--admin-token-file", required=True, help="file holding the admin token")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_canary_set)
    c = what.add_parser("status", help="the canary's state and each arm's window")
    c.add_argument("--target", required=True, metavar="HOST:PORT", help="the service")
    c.add_argument("--samples", action="store_true",
                   help="with --json: each arm's TTFTs and JCTs in the window")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_canary_status)
    c = what.add_parser("clear", help="end the canary: the champion decides every session")
    c.add_argument("--target", required=True, metavar="HOST:PORT", help="the service")
    c.add_argument("--admin-token-file", required=True, help="file holding the admin token")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_canary_clear)
    c = what.add_parser("trial", help="a canary on a live cluster behind the gateway under "
                                      "real clients: rolled back, or put to the promotion rule")
    c.add_argument("--champion", default="dualpath")
    c.add_argument("--challenger", default="pe_only")
    c.add_argument("--share", type=float, default=0.2)
    c.add_argument("--preset", default="io-bound-live", help="live preset")
    c.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="preset override (for example a degraded SNIC: "
                                             "snic_factors=0.5,1,1)")
    c.add_argument("--agents", type=int, default=16)
    c.add_argument("--mal", default="32k")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="keep the decision log here")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_canary_trial)
