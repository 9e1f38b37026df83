"""The ``dualpath`` command line.

Each module here registers a group of commands on the parser and holds their handlers;
a handler parses its arguments, calls one function of another ``experiments``
subpackage and prints what it returns (``--json``: one JSON object). Nothing outside
this package imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiments.cli import (
    bench,
    calibrate,
    canary,
    gateway,
    learning,
    live,
    load,
    runs,
    scoring,
    service,
    sweeps,
)

#: The command groups, in the order ``dualpath --help`` lists their commands.
GROUPS = (runs, learning, scoring, bench, live, gateway, load, service, canary, sweeps,
          calibrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualpath", description="The ``dualpath`` command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, LookupError) as exc:
        print(f"dualpath {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
