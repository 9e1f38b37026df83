"""``calibrate``: fit the simulator's free preset values to a paper's results."""

from __future__ import annotations

import argparse
import sys

from experiments.cli.common import JOBS, emit


def cmd_calibrate(args: argparse.Namespace) -> None:
    from experiments.calibration.paper import calibrate_paper, render

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    payload = calibrate_paper(jobs=args.jobs, steps=args.steps, write=not args.dry_run,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    emit(args, payload, render(payload))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the free preset values to the paper's offline "
                                         "JCTs and write them into the presets")
    p.add_argument("target", choices=["paper"],
                   help="what to fit to: the DualPath paper's offline results")
    p.add_argument("--jobs", type=int, default=JOBS, help="parallel simulation processes")
    p.add_argument("--steps", type=int, default=6,
                   help="search steps after the first batch (the start and one probe per "
                        "parameter)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fit without writing the presets")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_calibrate)
