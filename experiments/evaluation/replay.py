"""From the decision log back to the simulator: ``dualpath decisions replay``, and the
scenario ``train --from-log`` and ``promote --from-log`` run on.

:func:`log_scenario` reads a log (read-only), rebuilds its sessions
(:func:`runtime.workload.replay.build_sessions`), finds the preset of the cluster it
logged (by the views' cluster digest) and writes ``sessions.json`` and
``scenario.toml`` into a folder: a scenario like any other, whose workload replays
the sessions closed-loop and whose seeds are bootstrap resamples of them. Its
evaluation seeds are ``0 .. resamples-1``; training seeds 1000..1003 and validation
seeds 50..52 are other resamples.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from experiments.evaluation.compare import TABLE_COLUMNS
from experiments.evaluation.evaluate import DEFAULT_POLICIES, run_all, summarize_seeds
from experiments.evaluation.scenario import Scenario, list_scenarios, load_scenario
from experiments.evaluation.stats import bootstrap_ci95
from experiments.evaluation.table import format_table
from policy_service.codec import cluster_digest
from policy_service.log_reader import logged_traffic
from runtime.live.config import list_live_presets, load_live_preset
from runtime.preset import list_presets, load_preset
from runtime.workload.replay import build_sessions, read_sessions, write_sessions

RESAMPLES = 10
TRAIN_SEEDS = (1000, 1001, 1002, 1003)
VALIDATE_SEEDS = (50, 51, 52)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` in seconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"--since {text!r}: give a positive duration such as 90s, 15m, 2h "
                         "or 1d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _known_clusters() -> list[tuple[str, tuple[str, ...]]]:
    """(preset, overrides) of every cluster a service is usually started on: the presets,
    the live presets' clusters, and the scenarios' clusters."""
    known: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in list_presets()]
    for name in list_live_presets():
        live = load_live_preset(name)
        known.append((live.cluster, live.overrides))
    for name in list_scenarios():
        scenario = load_scenario(name)
        if not scenario.preset.endswith(".toml"):
            known.append((scenario.preset, scenario.overrides))
    return known


def match_cluster(digest: str, preset: str | None = None,
                  overrides: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """The (preset, overrides) whose cluster has ``digest``: the given ones, checked, or
    the first known one that matches; ValueError naming the digest when none does."""
    if preset is not None:
        given = (preset, tuple(overrides))
        if cluster_digest(load_preset(*given)) != digest:
            raise ValueError(f"the log's cluster is {digest}; --preset {preset} "
                             f"{' '.join(overrides)} is {cluster_digest(load_preset(*given))}")
        return given
    known = _known_clusters()
    for name, sets in known:
        if cluster_digest(load_preset(name, sets)) == digest:
            return name, sets
    raise ValueError(f"the log's cluster {digest} matches none of the {len(known)} known "
                     "presets, live presets and scenario clusters; give the one the service "
                     "served with --preset NAME [--set KEY=VALUE ...]")


def log_name(url: str) -> str:
    """A short name for the log at ``url``: its database's file stem."""
    return Path(sa.make_url(url).database or "log").stem


def _toml_list(values: Sequence[Any]) -> str:
    # A JSON string is a TOML basic string: quotes and backslashes escaped alike.
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def log_scenario(url: str, out_dir: Path, *, since_s: float | None = None,
                 preset: str | None = None, overrides: Sequence[str] = (),
                 resamples: int = RESAMPLES) -> Scenario:
    """Write the log's sessions and a scenario replaying them into ``out_dir``; returns it.
    ValueError for an empty log or window, an older schema, or an unknown cluster."""
    if not 2 <= resamples <= 1000:
        raise ValueError(f"--resamples must lie in 2..1000, got {resamples}")
    traffic = logged_traffic(url, since_s)
    name, sets = match_cluster(traffic.cluster, preset, overrides)
    rebuilt = build_sessions(traffic.turns)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    write_sessions(out_dir / "sessions.json", rebuilt.sessions, log=shown,
                   cluster=traffic.cluster, since_s=since_s, decisions=traffic.decisions,
                   turns=rebuilt.turns, turns_without_outcome=rebuilt.without_outcome)
    lines = [f"name = {json.dumps('log-' + log_name(url))}",
             f"description = {json.dumps('sessions replayed from ' + shown)}",
             f"preset = {json.dumps(name)}",
             f"set = {_toml_list(sets)}", "", "[workload]", 'kind = "replay"',
             'path = "sessions.json"', "", "[seeds]",
             f"eval = {_toml_list(range(resamples))}", f"train = {_toml_list(TRAIN_SEEDS)}",
             f"validate = {_toml_list(VALIDATE_SEEDS)}"]
    (out_dir / "scenario.toml").write_text("\n".join(lines) + "\n")
    return load_scenario(str(out_dir / "scenario.toml"))


def replay(url: str, specs: Sequence[str] = DEFAULT_POLICIES, *, since_s: float | None = None,
           resamples: int = RESAMPLES, jobs: int = 1, preset: str | None = None,
           overrides: Sequence[str] = (), out_dir: Path | None = None) -> dict[str, Any]:
    """``dualpath decisions replay``: each policy on ``resamples`` bootstrap resamples of
    the log's sessions, replayed closed-loop; rows as ``compare --scenario``'s, their
    intervals the resamples' (normal bootstrap, 95%)."""
    with tempfile.TemporaryDirectory(prefix="dualpath-replay-") as tmp:
        folder = out_dir or Path(tmp)
        scenario = log_scenario(url, folder, since_s=since_s, preset=preset,
                                overrides=overrides, resamples=resamples)
        seeds = list(scenario.eval_seeds)
        runs = run_all(scenario, specs, seeds, jobs=jobs)
        sessions = len(read_sessions(folder / "sessions.json")[0])
    rows = summarize_seeds(runs, specs, bootstrap_ci95)
    return {"log": scenario.description.removeprefix("sessions replayed from "),
            "cluster": f"{scenario.preset} {' '.join(scenario.overrides)}".strip(),
            "sessions": sessions, "since_s": since_s, "resamples": len(seeds),
            "rows": [{k: v for k, v in row.items() if not k.startswith("per_seed")}
                     for row in rows], "runs": runs}


def render_replay(payload: dict[str, Any]) -> str:
    header = (f"replay of {payload['log']} on {payload['cluster']}: {payload['sessions']} "
              f"sessions, {payload['resamples']} bootstrap resamples; mean over resamples "
              "with the 95% half-width (1.96 sd of the resamples)")
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in payload["rows"])]
    return header + "\n" + format_table(payload["rows"], columns)
