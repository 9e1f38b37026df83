"""``scoreboard``, ``select`` and ``heldout``: learned policies against heuristics."""

from __future__ import annotations

import argparse

from experiments.cli.common import JOBS, emit


def cmd_scoreboard(args: argparse.Namespace) -> None:
    from experiments.evaluation.scoreboard import render_scoreboard, scoreboard

    payload = scoreboard(args.scenario or None, jobs=args.jobs, progress=not args.json)
    emit(args, payload, render_scoreboard(payload))


def cmd_select(args: argparse.Namespace) -> None:
    from experiments.evaluation.table import format_table
    from experiments.training.select import select

    payload = select(args.scenario, args.candidate, jobs=args.jobs, ship=args.ship)
    text = "\n".join([
        f"scenario {payload['scenario']}, validation seeds {payload['validation_seeds']}; "
        "rel = candidate / best heuristic, paired by seed",
        format_table(payload["candidates"], ["candidate", "jct_rel", "jct_rel_ci95",
                                             "ttft_p99_rel", "best_heuristic",
                                             "validation_win"]),
        f"chosen: {payload['chosen']}" + (f"; shipped to {payload['shipped']}"
                                          if payload["shipped"] else "")])
    emit(args, payload, text)


def cmd_heldout(args: argparse.Namespace) -> None:
    from experiments.evaluation.scoreboard import ROW_KEYS
    from experiments.evaluation.table import format_table
    from experiments.training.distribution import DISTRIBUTION_FILE
    from experiments.training.select import held_out

    payload = held_out(args.policy, distribution=args.distribution or DISTRIBUTION_FILE,
                       jobs=args.jobs)
    rows = [{k: row[k] for k in ROW_KEYS} for row in payload["rows"]]
    emit(args, payload, f"{payload['policy']} on the held-out conditions of "
                        f"{payload['distribution']} (evaluation seeds)\n"
                        + format_table(rows, list(ROW_KEYS)))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scoreboard", help="every scenario: best heuristic against best learned")
    p.add_argument("--scenario", action="append", default=[],
                   help="a scenario (repeatable; default every shipped one)")
    p.add_argument("--jobs", type=int, default=JOBS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scoreboard)

    p = sub.add_parser("select", help="choose among trained policies on validation seeds")
    p.add_argument("--scenario", required=True)
    p.add_argument("--candidate", action="append", default=[], metavar="SPEC",
                   help="a trained policy (repeatable)")
    p.add_argument("--ship", metavar="NAME",
                   help="copy the chosen predictor to agents/pretrained/NAME")
    p.add_argument("--jobs", type=int, default=JOBS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("heldout", help="a policy on a distribution's held-out conditions")
    p.add_argument("--policy", required=True)
    p.add_argument("--distribution", help="default experiments/training/distribution.toml")
    p.add_argument("--jobs", type=int, default=JOBS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_heldout)
