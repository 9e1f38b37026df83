"""``serve`` (the scheduler service) and ``decisions export|agree|replay`` (its log)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from experiments.cli.common import emit


def cmd_serve(args: argparse.Namespace) -> None:
    from agents.model_registry import tracking_uri
    from policy_service.server import ServeConfig, serve
    from runtime.live.config import is_live_preset, load_live_preset

    # models:/ specs download from this store, as the alias watch reads it.
    uri = tracking_uri(args.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    preset, overrides = args.preset, tuple(args.overrides)
    if is_live_preset(preset):  # serve the cluster a live preset runs
        live = load_live_preset(preset)
        preset, overrides = live.cluster, live.overrides + overrides
    config = ServeConfig(
        policy=args.policy or (None if args.watch_alias else "dualpath"), preset=preset,
        overrides=overrides,
        host=args.host, port=args.port, watch_alias=args.watch_alias,
        watch_interval_s=args.watch_interval, tracking_uri=uri,
        db=None if args.db == "none" else args.db, log_flush_s=args.log_flush,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert, tls_key=args.tls_key, admin_token_file=args.admin_token_file,
        max_batch=args.max_batch, engine_max_age_s=args.engine_max_age, grace_s=args.grace,
        cache_ttl_s=args.cache_ttl, epp_port=args.epp_port, epp_max_wait_s=args.epp_max_wait_s,
        tokenizer=args.tokenizer, canary_max_regression=args.canary_max_regression,
        canary_min_completions=args.canary_min_completions, canary_window=args.canary_window)
    serve(config)


def cmd_decisions_export(args: argparse.Namespace) -> None:
    from policy_service.log_reader import export

    rows = export(args.db, args.out)
    emit(args, {"rows": rows, "out": args.out}, f"exported {rows:,} decisions to {args.out}")


def cmd_decisions_agree(args: argparse.Namespace) -> None:
    from experiments.evaluation.agreement import agree_with_log

    payload = agree_with_log(args.db, args.policy, args.preset)
    text = (f"{args.policy} agrees with {payload['agreed']:,} of {payload['decisions']:,} "
            f"logged decisions ({payload['rate']:.1%})")
    emit(args, payload, text)


def add_log_args(p: argparse.ArgumentParser) -> None:
    """What names a log's traffic: its URL, a window, its cluster, the resamples."""
    p.add_argument("--since", help="only the last DURATION of the log (90s, 15m, 2h, 1d)")
    p.add_argument("--preset", help="the cluster the service served (default: found by the "
                                    "log's cluster digest)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="preset override, with --preset")
    p.add_argument("--resamples", type=int, default=10,
                   help="bootstrap resamples of the sessions (evaluation seeds)")


def log_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`experiments.evaluation.replay.log_scenario`."""
    from experiments.evaluation.replay import parse_duration

    return {"since_s": parse_duration(args.since) if args.since else None,
            "preset": args.preset, "overrides": tuple(args.overrides),
            "resamples": args.resamples}


def cmd_decisions_replay(args: argparse.Namespace) -> None:
    from experiments.evaluation.evaluate import DEFAULT_POLICIES
    from experiments.evaluation.replay import render_replay, replay

    payload = replay(args.db, args.policy or DEFAULT_POLICIES, jobs=args.jobs,
                     out_dir=Path(args.out) if args.out else None, **log_args(args))
    emit(args, payload, render_replay(payload))


def cmd_decisions_fidelity(args: argparse.Namespace) -> None:
    from experiments.live.closed_loop import FidelityConfig, fidelity, render_fidelity

    cfg = FidelityConfig(preset=args.preset, policies=tuple(args.policy or ("pe_only",
                                                                            "dualpath")),
                         learned=args.learned, agents=args.agents, mal=args.mal,
                         resamples=args.resamples, jobs=args.jobs)
    payload = fidelity(cfg, Path(args.out) if args.out else None)
    emit(args, payload, render_fidelity(payload))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_serve_parser(sub)
    _add_decisions_parser(sub)


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the scheduler service (gRPC)")
    p.add_argument("--policy", default=None,
                   help="policy spec to serve (default dualpath unless --watch-alias)")
    p.add_argument("--preset", default="ds27b-1p1d",
                   help="the cluster served: preset, live preset or file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value; repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--watch-alias", help="poll the registry alias (for example champion) and "
                                         "serve the version it names")
    p.add_argument("--watch-interval", type=float, default=0.25, help="seconds between polls")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ specs and the watch")
    p.add_argument("--db", default="sqlite:///decisions.db",
                   help="decision log SQLAlchemy URL, or 'none'")
    p.add_argument("--log-flush", type=float, default=0.5,
                   help="seconds between shipments to the decision log's writer (the most "
                        "a hard kill can lose)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key): serve over TLS")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--admin-token-file", help="file holding the token admin calls must present")
    p.add_argument("--max-batch", type=int, default=1024, help="most requests per batch call")
    p.add_argument("--engine-max-age", type=float, default=2.0,
                   help="seconds after its last report an engine is no longer chosen")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight calls get to finish on SIGTERM")
    p.add_argument("--cache-ttl", type=float, default=30.0,
                   help="seconds after which the block index forgets a node no cache event "
                        "or heartbeat named")
    p.add_argument("--epp-port", type=int,
                   help="also serve the endpoint picker (Envoy ext_proc) on this port")
    p.add_argument("--epp-max-wait-s", type=float, default=30.0,
                   help="seconds a request the policy defers may wait before a 429")
    p.add_argument("--tokenizer", default="bytes",
                   help="the picker's tokenizer: bytes (UTF-8 bytes, the default) or "
                        "module:attribute")
    p.add_argument("--canary-max-regression", type=float, default=0.10,
                   help="a canary rolls back when its challenger's TTFT or JCT regression "
                        "(one-sided 95%% lower bound) exceeds this share of the champion's "
                        "mean (default 0.10)")
    p.add_argument("--canary-min-completions", type=int, default=50,
                   help="completions per arm before the canary's test runs (default 50)")
    p.add_argument("--canary-window", type=int, default=2000,
                   help="the last completions each canary arm keeps (default 2000)")
    p.set_defaults(func=cmd_serve)


def _add_decisions_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decisions", help="the service's decision log")
    dec = p.add_subparsers(dest="what", required=True)
    d = dec.add_parser("export", help="export the log as a Parquet dataset")
    d.add_argument("--db", required=True, help="decision log SQLAlchemy URL")
    d.add_argument("--out", required=True, help="FILE.parquet")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_export)
    d = dec.add_parser("agree", help="how often a policy would have decided as logged")
    d.add_argument("--db", required=True, help="decision log SQLAlchemy URL")
    d.add_argument("--policy", required=True, help="candidate policy spec")
    d.add_argument("--preset", help="the logged cluster (default: the one the log names)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_agree)
    d = dec.add_parser("replay", help="replay the log's sessions closed-loop in the simulator "
                                      "under each policy")
    d.add_argument("--db", required=True, help="decision log SQLAlchemy URL (read only)")
    add_log_args(d)
    d.add_argument("--policy", action="append",
                   help="policy spec (repeat; default pe_only, dualpath, dualpath_split)")
    d.add_argument("--jobs", type=int, default=1, help="parallel processes")
    d.add_argument("--out", help="keep the sessions and scenario files in this folder")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_replay)
    d = dec.add_parser("fidelity", help="live runs through the gateway, one logged; does the "
                                        "log's replay rank and predict them?")
    d.add_argument("--preset", default="io-bound-live", help="live preset")
    d.add_argument("--policy", action="append", help="policies run live, the first logged "
                   "and replayed (default pe_only, dualpath)")
    d.add_argument("--learned", help="the learned policy (default: train a predictive "
                                     "picker on the first run's log)")
    d.add_argument("--agents", type=int, default=16)
    d.add_argument("--mal", default="32k")
    d.add_argument("--resamples", type=int, default=10)
    d.add_argument("--jobs", type=int, default=1)
    d.add_argument("--out", help="keep the logs and the trained policy in this folder")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decisions_fidelity)
