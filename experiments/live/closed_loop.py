"""``dualpath decisions fidelity``: does replaying a production log predict live figures?

The loop the decision log closes, run end to end on one machine:

1. a live cluster behind the gateway (:class:`experiments.live.gateway.Gateway`: Envoy,
   the endpoint picker, the service logging every decision) serves agentic traffic from
   real HTTP clients (:func:`experiments.live.load.run_load`) under the first policy;
2. a predictive picker is trained on that log's replay (``train --from-log``), unless a
   learned policy is named;
3. every policy (the learned one included) serves the same traffic live, each run
   logging to its own database;
4. the first run's log is replayed in the simulator under every policy
   (:func:`experiments.evaluation.replay.replay`).

For each policy it reports the live mean JCT (the cluster's: per session, from its
first arrival to its last turn's end), the replay's, and their relative error; and
whether the replay ranks the policies as the live runs do.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.evaluation.replay import replay
from experiments.evaluation.table import format_table
from experiments.live.gateway import Gateway, GatewayConfig, running
from experiments.live.load import LoadConfig, run_load

#: The largest relative error of a replayed mean JCT the check accepts.
MAX_ERROR = 0.10


@dataclass(frozen=True)
class FidelityConfig:
    preset: str = "io-bound-live"
    policies: tuple[str, ...] = ("pe_only", "dualpath")
    learned: str | None = None  # None: train a picker on the first run's log
    agents: int = 16
    mal: str = "32k"
    seed: int = 0
    resamples: int = 10
    jobs: int = 1

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("name at least one policy to run live")
        if self.agents < 1:
            raise ValueError(f"agents must be >= 1, got {self.agents}")


def live_run(cfg: FidelityConfig, policy: str, db: Path) -> dict[str, Any]:
    """One gateway run of ``policy`` serving the load; the cluster's and the client's
    figures (``live`` and ``client``)."""
    gateway = Gateway(GatewayConfig(preset=cfg.preset, policy=policy, port=0,
                                    db=f"sqlite:///{db}"), announce=False)
    with running(gateway) as result:
        client = run_load(LoadConfig(url=gateway.url, agents=cfg.agents, mal=cfg.mal,
                                     seed=cfg.seed))
    if "error" in result:
        raise RuntimeError(f"live run of {policy}: {result['error']}")
    return {"live": result, "client": client}


def _train(log: Path, out: Path, jobs: int) -> str:
    """A predictive picker trained on the replay of ``log`` by ``dualpath train
    --from-log`` (the command a user runs); its path."""
    command = [sys.executable, "-m", "experiments.cli", "train", "--from-log",
               f"sqlite:///{log}", "--out", str(out), "--jobs", str(jobs), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return str(json.loads(done.stdout)["artifact"])


def say(text: str) -> None:
    print(f"[fidelity] {text}", file=sys.stderr, flush=True)


def fidelity(cfg: FidelityConfig, workdir: Path | None = None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; the rows and the verdicts."""
    folder = workdir or Path(tempfile.mkdtemp(prefix="dualpath-fidelity-"))
    folder.mkdir(parents=True, exist_ok=True)
    first, logged = cfg.policies[0], folder / "log-0.db"
    say(f"live run of {first}, logging to {logged}")
    runs = {first: live_run(cfg, first, logged)}
    learned = cfg.learned or _train(logged, folder / "trained", cfg.jobs)
    specs = [*cfg.policies, learned]
    for k, spec in enumerate(specs[1:], 1):
        say(f"live run of {spec}")
        runs[spec] = live_run(cfg, spec, folder / f"log-{k}.db")
    say(f"replaying {logged} under {len(specs)} policies")
    replayed = replay(f"sqlite:///{logged}", specs, resamples=cfg.resamples, jobs=cfg.jobs)
    return _verdict(specs, runs, replayed, learned, logged)


def _verdict(specs: Sequence[str], runs: dict[str, Any], replayed: dict[str, Any],
             learned: str, logged: Path) -> dict[str, Any]:
    by_policy = {row["policy"]: row for row in replayed["rows"]}
    rows = []
    for spec in specs:
        live, sim = runs[spec]["live"]["jct_mean_s"], by_policy[spec]["jct_mean_s"]
        rows.append({"policy": spec, "live_jct_mean_s": live, "replay_jct_mean_s": sim,
                     "replay_ci95_s": by_policy[spec]["jct_mean_s_ci95"],
                     "error": sim / live - 1, "live_requests": runs[spec]["live"]["requests"],
                     "client_errors": runs[spec]["client"]["errors"]})
    live_order = sorted(specs, key=lambda s: runs[s]["live"]["jct_mean_s"])
    replay_order = sorted(specs, key=lambda s: by_policy[s]["jct_mean_s"])
    return {"log": str(logged), "learned": learned, "rows": rows,
            "live_order": live_order, "replay_order": replay_order,
            "same_order": live_order == replay_order,
            "max_abs_error": max(abs(r["error"]) for r in rows), "max_error_allowed": MAX_ERROR,
            "within": all(abs(r["error"]) <= MAX_ERROR for r in rows),
            "replay_sessions": replayed["sessions"], "runs": runs}


def render_fidelity(payload: dict[str, Any]) -> str:
    head = (f"replay of {payload['log']} ({payload['replay_sessions']} sessions) against each "
            "policy's own live run; error = replay / live - 1")
    table = format_table(payload["rows"], ["policy", "live_jct_mean_s", "replay_jct_mean_s",
                                           "replay_ci95_s", "error", "live_requests",
                                           "client_errors"])
    verdict = (f"order live {payload['live_order']}, replay {payload['replay_order']}: "
               f"{'same' if payload['same_order'] else 'DIFFERENT'}; largest error "
               f"{payload['max_abs_error']:.1%} (allowed {payload['max_error_allowed']:.0%})")
    return "\n".join([head, table, verdict])
