"""``train`` and ``promote``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from env.encoding import PARTS
from experiments.cli.common import JOBS, emit
from experiments.cli.service import add_log_args
from experiments.evaluation.scenario import load_scenario


def cmd_train(args: argparse.Namespace) -> None:
    from experiments.training.seeds import render_training, train_seeds
    from experiments.training.train import TrainConfig

    if args.from_log:
        args.scenario = _log_scenario(args, "train")
        args.mode = args.mode or "predict"
    if args.mode == "predict" or args.distribution:
        cmd_train_predict(args)
        return
    if not args.scenario:
        raise ValueError("train: --scenario is required (or --mode predict --distribution FILE)")
    scenario = load_scenario(args.scenario)
    mode = args.mode or scenario.train.mode
    cfg = TrainConfig(
        mode=mode, steps=args.steps or scenario.train.steps, seed=args.seed,
        control=tuple(args.control.split(",")) if args.control else PARTS,
        fallback=args.fallback, window_s=args.window,
        imitate=None if args.imitate.lower() == "none" else args.imitate,
        imitate_steps=args.imitate_steps, relative_to=args.relative_to)
    payload = train_seeds(scenario, cfg, seeds=args.seeds,
                          out=Path(args.out) if args.out else None, jobs=args.jobs,
                          ray_address=args.ray_address, tracking_uri=args.tracking_uri,
                          progress=not args.json)
    emit(args, payload, render_training(payload))


def _log_scenario(args: argparse.Namespace, command: str) -> str:
    """``--from-log``: the log's sessions and a scenario replaying them, written into
    ``--out``/replay (``--out`` default: results/COMMAND/log-NAME); the scenario's path."""
    from experiments.cli.service import log_args
    from experiments.evaluation.replay import log_name, log_scenario

    if args.scenario or getattr(args, "distribution", None):
        raise ValueError(f"{command}: --from-log replaces --scenario and --distribution")
    if not args.out:
        args.out = str(Path("results") / command / f"log-{log_name(args.from_log)}")
    scenario = log_scenario(args.from_log, Path(args.out) / "replay", **log_args(args))
    print(f"{command}: {scenario.description} ({scenario.source})", file=sys.stderr)
    return str(scenario.source)


def cmd_train_predict(args: argparse.Namespace) -> None:
    import shlex
    import sys

    from experiments.training.distribution import Condition, load_distribution
    from experiments.training.predict import PredictConfig, train_predictor

    if bool(args.scenario) == bool(args.distribution):
        raise ValueError("train --mode predict: give exactly one of --scenario NAME and "
                         "--distribution FILE")
    if args.distribution:
        conditions = load_distribution(args.distribution).train
        name = args.name or "distribution"
    else:
        scenario = load_scenario(args.scenario)
        conditions = (Condition(args.scenario if Path(args.scenario).is_file()
                                else scenario.name),)
        name = args.name or scenario.name
    config = PredictConfig(seeds=args.train_seeds, jobs=args.jobs)
    out = Path(args.out) if args.out else Path("results") / "train" / f"{name}-predict"
    command = "dualpath " + shlex.join(sys.argv[1:])
    payload = train_predictor(conditions, config, name=name, out=out, command=command,
                              tracking_uri=args.tracking_uri, progress=not args.json)
    best = min(payload["knob_grid"], key=lambda g: g["jct_rel"])
    emit(args, payload, f"predictor {payload['artifact']}: knobs {payload['knobs']}, "
                        f"JCT {best['jct_rel']:.4f} x {payload['reference']} on the training "
                        f"seeds, held-back R² {payload['fit']['r2_prior']:.3f} (analytic) -> "
                        f"{payload['fit']['r2_fitted']:.3f}, {payload['training_time_s']} s")


def cmd_promote(args: argparse.Namespace) -> None:
    from experiments.training.promote import promote, promote_canary

    if args.canary:
        if not args.admin_token_file:
            raise ValueError("promote --canary: --admin-token-file is required (promoting is "
                             "an admin call)")
        payload = promote_canary(args.canary, args.admin_token_file)
    elif args.from_log:
        from experiments.evaluation.stats import bootstrap_ci95

        payload = promote(load_scenario(_log_scenario(args, "promote")), args.challenger,
                          jobs=args.jobs, seeds=args.seeds, tracking_uri=args.tracking_uri,
                          interval=bootstrap_ci95)
    else:
        payload = promote(load_scenario(args.scenario), args.challenger, jobs=args.jobs,
                          seeds=args.seeds, tracking_uri=args.tracking_uri)
    emit(args, payload, payload["reason"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a learned policy on a scenario (MLflow-logged)")
    p.add_argument("--scenario", help="scenario name or file")
    p.add_argument("--from-log", metavar="URL",
                   help="train on the sessions of this decision log, replayed (default mode: "
                        "predict)")
    add_log_args(p)
    p.add_argument("--mode", choices=["route", "tune", "predict"],
                   help="default: the scenario's; predict: a predictive picker")
    p.add_argument("--distribution", help="predict: train on the [[train]] conditions of "
                                          "this file instead of one scenario")
    p.add_argument("--train-seeds", type=int, default=4,
                   help="predict: training seeds per condition (default 4)")
    p.add_argument("--name", help="predict: the policy's name (default: the scenario's, or "
                                  "distribution)")
    p.add_argument("--steps", type=int, help="env steps (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0, help="the learner's seed")
    p.add_argument("--control", help="route: parts the agent decides, from "
                                     "prefill,decode,path (default all)")
    p.add_argument("--fallback", help="route: heuristic spec for the other parts")
    p.add_argument("--imitate", default="dualpath",
                   help="heuristic to imitate before PPO (routing: also the fallback whose "
                        "decisions the agent sees); 'none' starts from scratch")
    p.add_argument("--imitate-steps", type=int,
                   help="demonstration steps (default 20,000 routing, 400 tuning)")
    p.add_argument("--relative-to", help="tune: reward relative to this heuristic's "
                                         "parameters, run on a copy of the simulation")
    p.add_argument("--window", type=float, default=10.0,
                   help="tune: simulated seconds per parameter setting")
    p.add_argument("--seeds", type=int, default=1,
                   help="train N policies, seeds SEED..SEED+N-1, in parallel")
    p.add_argument("--jobs", type=int, default=JOBS,
                   help="with --seeds: local worker processes")
    p.add_argument("--ray-address", help="with --seeds: train on a Ray cluster (auto, local, "
                                         "HOST:PORT)")
    p.add_argument("--out", help="artifact folder (default results/train/SCENARIO-MODE-TIME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)
    _add_promote_parser(sub)


def _add_promote_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="move the champion alias to the challenger if it wins "
                                       "(--scenario, or --from-log: a replayed log), or "
                                       "promote a service's canary if its window passes the "
                                       "rule (--canary)")
    source = p.add_mutually_exclusive_group(required=True)  # what the rule is applied to
    source.add_argument("--scenario", help="evaluate --challenger on this scenario's seeds")
    source.add_argument("--canary", metavar="HOST:PORT",
                        help="decide on the window of the canary running at this service")
    source.add_argument("--from-log", metavar="URL",
                        help="evaluate --challenger on the replayed sessions of this decision "
                             "log (bootstrap resamples as seeds)")
    add_log_args(p)
    p.add_argument("--out", help="with --from-log: where the sessions and scenario go "
                                 "(default results/promote/log-NAME)")
    p.add_argument("--admin-token-file", help="with --canary: file holding the admin token")
    p.add_argument("--challenger", default="models:/dualpath-scheduler@challenger",
                   help="policy spec of the challenger")
    p.add_argument("--seeds", type=int, help="the first N evaluation seeds")
    p.add_argument("--jobs", type=int, default=JOBS)
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)
