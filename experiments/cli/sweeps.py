"""``sweep``, ``report`` and ``capacity``: many runs, their report, an SLO search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.cli.common import JOBS, add_run_args, emit, run_config
from experiments.sweeps.capacity import CapacitySearch
from experiments.sweeps.probe import DEFAULT_DURATION_S


def cmd_sweep(args: argparse.Namespace) -> None:
    from experiments.sweeps.sweep import render_sweep, sweep_main

    summary = sweep_main(args.file, jobs=args.jobs, ray_address=args.ray_address,
                         out=args.out, tracking_uri=args.tracking_uri, seeds=args.seeds,
                         log=not args.no_mlflow)
    emit(args, summary, render_sweep(summary))


def cmd_report(args: argparse.Namespace) -> None:
    from experiments.sweeps.report import write_report

    report = write_report(args.sweep_run, Path(args.out) if args.out else None,
                          args.tracking_uri)
    if args.json:
        print(json.dumps({"report": str(report.path), "images": report.images,
                          "tables": report.tables}, sort_keys=True))
    else:
        print(f"wrote {report.path} ({report.images} figures, {report.tables} tables)")


def cmd_capacity(args: argparse.Namespace) -> None:
    """With one policy the JSON is its search; with several, ``{"searches": [...],
    "capacity_ratio": {spec: ratio}}``."""
    from experiments.evaluation.scenario import load_scenario
    from experiments.sweeps.capacity import Slo, capacity_searches

    scenario = load_scenario(args.scenario) if args.scenario else None
    slo = Slo(ttft_s=args.ttft, tpot_s=args.tpot, warmup_s=args.warmup)
    search = CapacitySearch(duration_s=args.duration, tolerance=args.tolerance, lo=args.lo,
                            hi=args.hi, min_aps=args.min_aps, max_aps=args.max_aps,
                            max_probes=args.max_probes,
                            start_aps=min(max(1.0, args.min_aps), args.max_aps))
    configs = [run_config(args, spec) for spec in args.policy or ["dualpath"]]
    payload, text = capacity_searches(configs, slo, search, scenario, args.jobs,
                                      progress=not args.json)
    emit(args, payload, text)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run every point of a sweep file (experiments/sweeps/)")
    p.add_argument("file", help="sweep name (experiments/sweeps/NAME.toml) or TOML file")
    p.add_argument("--jobs", type=int, default=JOBS,
                   help="local worker processes")
    p.add_argument("--ray-address", help="run on a Ray cluster: auto, local or HOST:PORT")
    p.add_argument("--seeds", type=int, help="override the file's seeds with 0..N-1")
    p.add_argument("--out", help="output folder (default results/sweeps/NAME-TIME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="one self-contained HTML report of a sweep's runs")
    p.add_argument("sweep_run", metavar="SWEEP_RUN",
                   help="the sweep's parent run id, or a sweep name (its latest run)")
    p.add_argument("--out", metavar="FILE",
                   help="HTML file (default report-SWEEP-RUNID8.html here)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("capacity", help="highest online arrival rate (agents/s) at which the "
                                        "SLO on mean TTFT and TPOT holds")
    add_run_args(p, agents=512)
    p.add_argument("--policy", action="append",
                   help="policy spec; repeat to compare (searches run in --jobs processes, "
                        "capacity ratios are over the first; default dualpath)")
    p.add_argument("--oracle", action="store_true", help="zero-I/O oracle")
    p.add_argument("--scenario", help="take the cluster and the workload from a scenario "
                                      "(name or file); --set adds overrides")
    p.add_argument("--ttft", type=float, help="SLO on mean TTFT, seconds (default: the "
                                              "preset's slo_ttft_s)")
    p.add_argument("--tpot", type=float, help="SLO on mean TPOT, seconds (default: the "
                                              "preset's slo_tpot_s)")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help="arrival window of a probe, seconds")
    p.add_argument("--warmup", type=float, help="requests arriving earlier are not measured "
                                                "(default: half of --duration)")
    p.add_argument("--tolerance", type=float, default=CapacitySearch.tolerance,
                   help="stop when the bracket is narrower than this share of its top")
    p.add_argument("--lo", type=float, help="a rate expected to hold (agents/s)")
    p.add_argument("--hi", type=float, help="a rate expected to fail (agents/s)")
    p.add_argument("--min-aps", type=float, default=CapacitySearch.min_aps,
                   help="below this the capacity is reported as 0")
    p.add_argument("--max-aps", type=float, default=CapacitySearch.max_aps,
                   help="the highest rate probed")
    p.add_argument("--max-probes", type=int, default=CapacitySearch.max_probes)
    p.set_defaults(func=cmd_capacity)
