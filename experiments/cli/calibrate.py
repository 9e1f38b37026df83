"""``calibrate``: fit the simulator's preset values to a paper's results, or to
measurements of a real model (``dualpath bench engine``)."""

from __future__ import annotations

import argparse
import sys

from experiments.cli.common import JOBS, emit


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.target == "engine":
        cmd_calibrate_engine(args)
        return
    from experiments.calibration.paper import calibrate_paper, render

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    payload = calibrate_paper(jobs=args.jobs, steps=args.steps, write=not args.dry_run,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    emit(args, payload, render(payload))


def cmd_calibrate_engine(args: argparse.Namespace) -> None:
    from experiments.calibration.engine import calibrate_engine, render

    if not args.measurements or not args.out:
        raise ValueError("calibrate engine needs --measurements FILE.json and --out "
                         "PRESET.toml")
    payload = calibrate_engine(args.measurements, args.out, base=args.base)
    emit(args, payload, render(payload))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit preset values to the paper's offline JCTs "
                                         "(paper) or to measurements of a real model (engine)")
    p.add_argument("target", choices=["paper", "engine"],
                   help="what to fit to: the DualPath paper's offline results (paper), or "
                        "the file 'dualpath bench engine' wrote (engine)")
    p.add_argument("--jobs", type=int, default=JOBS, help="parallel simulation processes")
    p.add_argument("--steps", type=int, default=6,
                   help="search steps after the first batch (the start and one probe per "
                        "parameter)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fit without writing the presets")
    p.add_argument("--measurements", metavar="FILE.json",
                   help="engine: the measurements 'dualpath bench engine --out' wrote")
    p.add_argument("--out", metavar="PRESET.toml", help="engine: the preset file to write")
    p.add_argument("--base", default="tiny",
                   help="engine: the preset (name or file) whose other values are kept")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_calibrate)
