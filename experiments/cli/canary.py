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
