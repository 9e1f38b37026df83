"""``dualpath bench replay``: wall time of replay and of training from a log of at least
``decisions`` decisions.

The log is written by a real ``dualpath serve`` (decision log on SQLite) while a
simulation of agentic traffic on ``preset`` asks it for every decision and reports
every outcome, as a router in production does; agents are added until the log holds
enough decisions. Then, timed apart: reading the log and rebuilding its sessions;
``decisions replay`` of three policies on the resamples (in ``jobs`` processes); and
``dualpath train --from-log`` (the command, in its own process).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.evaluation.replay import log_scenario, replay
from experiments.live.service_process import ServiceProcess
from policy_service.client import remote_policy
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload

POLICIES = ("pe_only", "dualpath", "dualpath_split")
#: About the requests an agent of the 32K set makes (seed 0: 62): sizes the first try.
_TURNS_PER_AGENT = 60


def write_log(db: Path, decisions: int, preset: str = "tiny") -> dict[str, Any]:
    """Fill ``db`` with at least ``decisions`` decisions (several runs if need be)."""
    spec = load_preset(preset)
    start, logged, runs = time.perf_counter(), 0, 0
    with ServiceProcess(["--policy", "dualpath", "--preset", preset,
                         "--db", f"sqlite:///{db}"]) as service:
        while logged < decisions:
            agents = max(8, math.ceil((decisions - logged) / _TURNS_PER_AGENT))
            policy = remote_policy(f"grpc://{service.target}", spec)
            try:
                result = Simulator(spec, AgenticWorkload(agents, "32k", runs)).run(policy)
            finally:
                policy.close()
            logged += int(result.metrics["requests"])
            runs += 1
    return {"runs": runs, "requests": logged, "log_write_s": time.perf_counter() - start}


def bench_replay(decisions: int = 10_000, resamples: int = 10, jobs: int = 2,
                 train_seeds: int = 4) -> dict[str, Any]:
    if decisions < 1:
        raise ValueError(f"decisions must be >= 1, got {decisions}")
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-replay-") as tmp:
        folder = Path(tmp)
        db = folder / "log.db"
        url = f"sqlite:///{db}"
        written = write_log(db, decisions)
        t0 = time.perf_counter()
        scenario = log_scenario(url, folder / "read", resamples=resamples)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        replayed = replay(url, POLICIES, resamples=resamples, jobs=jobs)
        replay_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained = _train(url, folder / "trained", jobs, train_seeds)
        train_s = time.perf_counter() - t0
    runs = len(POLICIES) * resamples
    return {"decisions": written["requests"], "sessions": replayed["sessions"],
            "log_write_s": written["log_write_s"], "read_and_rebuild_s": read_s,
            "replay_s": replay_s, "replay_runs": runs, "replay_s_per_run": replay_s / runs * jobs,
            "train_from_log_s": train_s, "train_seeds": train_seeds, "jobs": jobs,
            "trained_knobs": trained["knobs"], "scenario": scenario.name,
            "rows": [{k: r[k] for k in ("policy", "jct_mean_s", "jct_ci95_s")}
                     for r in replayed["rows"]]}


def _train(url: str, out: Path, jobs: int, seeds: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "experiments.cli", "train", "--from-log", url,
               "--out", str(out), "--jobs", str(jobs), "--train-seeds", str(seeds),
               "--tracking-uri", f"sqlite:///{out.parent}/mlflow.db", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"train --from-log failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


def render_replay_bench(p: dict[str, Any]) -> str:
    return "\n".join([
        f"log of {p['decisions']:,} decisions ({p['sessions']} sessions), written by a real "
        f"service in {p['log_write_s']:.1f} s",
        f"read and rebuild sessions: {p['read_and_rebuild_s']:.2f} s",
        f"replay of {', '.join(POLICIES)} x {p['replay_runs'] // len(POLICIES)} resamples "
        f"({p['jobs']} processes): {p['replay_s']:.1f} s ({p['replay_s_per_run']:.2f} s a run)",
        f"train --from-log ({p['train_seeds']} training resamples, knob grid): "
        f"{p['train_from_log_s']:.1f} s; knobs {p['trained_knobs']}"])
