"""Scenarios: a cluster, a workload, and the seeds to train and to evaluate on.

A scenario is a TOML file in ``experiments/scenarios/`` (or any path)::

    name = "paper-offline"
    description = "..."
    preset = "ds660b-2p4d"          # a preset name or a TOML file
    set = ["node.snic_gb_s=25"]     # optional preset overrides
    layerwise = true                # optional, default true

    [workload]                      # kind = agentic | mooncake | mixed | replay
    kind = "agentic"
    agents = 256
    mal = "64k"

    [seeds]
    train = [1000, 1001]            # never overlaps eval
    eval = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    validate = [50, 51]             # optional; overlaps neither (model selection)

    [train]                         # optional defaults for `dualpath train`
    mode = "route"
    steps = 100000

``heuristics`` (optional, a list of heuristic specs, default every heuristic) names
what a learned policy must beat on this scenario: ``dualpath promote`` compares the
challenger with the best of them.

Workload kinds: ``agentic`` takes :class:`AgenticWorkload`'s keywords (``agents``,
``mal``, ``online``, ``aps``, ``duration_s``, ``arrival``, ``burst_s``,
``burst_factor``, ``burst_share``, ``append_scale``, ``gen_scale``,
``tool_latency_s``, ``think_time_s``, ``shuffle``, ``batch_share``) and is seeded per
run; ``mooncake`` takes
``path`` (relative to the scenario file), ``limit``, ``time_scale`` and
``storage_capacity_blocks``; ``mixed`` takes ``parts``, a list of the other kinds;
``replay`` takes ``path``, a sessions file rebuilt from a decision log
(:mod:`runtime.workload.replay`), each seed a bootstrap resample of its sessions.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.heuristics import HEURISTICS
from agents.parse import parse_heuristic
from runtime.cluster import ClusterSpec
from runtime.preset import load_preset
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.base import Workload
from runtime.workload.mixed import MixedWorkload
from runtime.workload.mooncake import MooncakeTrace
from runtime.workload.replay import ReplayWorkload, read_sessions

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
MODES = ("route", "tune")
_AGENTIC_KEYS = {"agents", "mal", "online", "aps", "duration_s", "arrival", "burst_s",
                 "burst_factor", "burst_share", "append_scale", "gen_scale", "tool_latency_s",
                 "think_time_s", "shuffle", "batch_share"}
_MOONCAKE_KEYS = {"path", "limit", "time_scale", "storage_capacity_blocks"}
_REPLAY_KEYS = {"path"}
_TOP_KEYS = {"name", "description", "preset", "set", "layerwise", "workload", "seeds", "train",
             "heuristics"}


@dataclass(frozen=True)
class TrainDefaults:
    """What ``dualpath train --scenario`` uses unless told otherwise."""

    mode: str = "route"
    steps: int = 100_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"train.steps must be an integer >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; :meth:`cluster` and :meth:`workload` build what a run needs."""

    name: str
    description: str
    preset: str
    overrides: tuple[str, ...]
    layerwise: bool
    workload_config: Mapping[str, Any] = field(hash=False)
    train_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    train: TrainDefaults
    source: Path
    #: The heuristic specs a learned policy is compared with (promotion's bar).
    heuristics: tuple[str, ...] = tuple(HEURISTICS)
    #: Seeds for choosing among trained policies, apart from both others.
    validate_seeds: tuple[int, ...] = ()

    def cluster(self) -> ClusterSpec:
        return load_preset(self._preset_path(), self.overrides)

    def workload(self, seed: int) -> Workload:
        return _build_workload(self.workload_config, seed, self.source.parent)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "preset": self.preset,
                "set": list(self.overrides), "layerwise": self.layerwise,
                "workload": dict(self.workload_config),
                "seeds": {"train": list(self.train_seeds), "eval": list(self.eval_seeds),
                          "validate": list(self.validate_seeds)},
                "train": {"mode": self.train.mode, "steps": self.train.steps},
                "heuristics": list(self.heuristics),
                "source": str(self.source)}

    def _preset_path(self) -> str:
        local = self.source.parent / self.preset
        return str(local) if self.preset.endswith(".toml") and local.exists() else self.preset


def list_scenarios() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path; ValueError naming the problem."""
    path = Path(name_or_path)
    if not (name_or_path.endswith(".toml") or path.exists()):
        path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(f"unknown scenario {name_or_path!r}; shipped scenarios: "
                             f"{', '.join(list_scenarios())}")
    if not path.exists():
        raise FileNotFoundError(f"scenario file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    try:
        return _parse(data, path)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: {err}") from err


def _parse(data: dict[str, Any], path: Path) -> Scenario:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    for key in ("name", "preset", "workload", "seeds"):
        if key not in data:
            raise ValueError(f"missing key {key!r}")
    seeds = data["seeds"]
    train = _seeds(seeds, "train")
    evaluate = _seeds(seeds, "eval")
    validate = _seeds(seeds, "validate") if "validate" in seeds else ()
    named = {"train": train, "eval": evaluate, "validate": validate}
    for a, b in (("train", "eval"), ("train", "validate"), ("eval", "validate")):
        overlap = set(named[a]) & set(named[b])
        if overlap:
            raise ValueError(f"seeds.{a} and seeds.{b} overlap: {sorted(overlap)}")
    workload = data["workload"]
    _check_workload(workload)
    overrides = data.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"set must be a list of KEY=VALUE strings, got {overrides!r}")
    layerwise = data.get("layerwise", True)
    if not isinstance(layerwise, bool):
        raise ValueError(f"layerwise must be true or false, got {layerwise!r}")
    scenario = Scenario(
        name=str(data["name"]), description=str(data.get("description", "")),
        preset=str(data["preset"]), overrides=tuple(overrides), layerwise=layerwise,
        workload_config=workload, train_seeds=train, eval_seeds=evaluate,
        train=TrainDefaults(**data.get("train", {})), source=path.resolve(),
        heuristics=_heuristics(data.get("heuristics", list(HEURISTICS))),
        validate_seeds=validate)
    scenario.cluster()  # fail now, naming the scenario, if the preset or overrides are bad
    scenario.workload(evaluate[0])
    return scenario


def _heuristics(specs: Any) -> tuple[str, ...]:
    if not isinstance(specs, list) or not specs or not all(isinstance(s, str) for s in specs):
        raise ValueError(f"heuristics must be a non-empty list of heuristic specs, got {specs!r}")
    for spec in specs:
        if parse_heuristic(spec) is None:
            raise ValueError(f"heuristics: {spec!r} is not a heuristic spec; expected one of "
                             f"{', '.join(HEURISTICS)} with optional parameters")
    return tuple(specs)


def _seeds(seeds: Any, key: str) -> tuple[int, ...]:
    values = seeds.get(key) if isinstance(seeds, dict) else None
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"seeds.{key} must be a non-empty list of integers, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds.{key} repeats a seed: {values}")
    return tuple(values)


def _check_workload(config: Any, nested: bool = False) -> None:
    if not isinstance(config, dict):
        raise ValueError(f"workload must be a table, got {config!r}")
    kind = config.get("kind", "agentic")
    allowed = {"agentic": _AGENTIC_KEYS, "mooncake": _MOONCAKE_KEYS, "replay": _REPLAY_KEYS,
               "mixed": set() if nested else {"parts"}}.get(kind)
    if allowed is None:
        kinds = "agentic, mooncake, replay" + ("" if nested else ", mixed")
        raise ValueError(f"workload kind {kind!r} is not one of {kinds}")
    unknown = set(config) - allowed - {"kind"}
    if unknown:
        raise ValueError(f"workload ({kind}) has unknown keys {sorted(unknown)}; "
                         f"allowed: {sorted(allowed)}")
    if kind == "mixed":
        parts = config.get("parts")
        if not isinstance(parts, list) or not parts:
            raise ValueError("a mixed workload needs a non-empty list of parts")
        for part in parts:
            _check_workload(part, nested=True)


def _build_workload(config: Mapping[str, Any], seed: int, base: Path) -> Workload:
    kind = config.get("kind", "agentic")
    kw = {k: v for k, v in config.items() if k != "kind"}
    if kind == "mixed":
        return MixedWorkload([_build_workload(p, seed, base) for p in kw["parts"]])
    if kind in ("mooncake", "replay"):
        path = Path(kw.pop("path"))
        path = path if path.is_absolute() else base / path
        if kind == "replay":
            return ReplayWorkload(read_sessions(path)[0], seed)
        return MooncakeTrace(path, **kw)
    agents = kw.pop("agents", None)
    return AgenticWorkload(agents, kw.pop("mal", "64k"), seed, **kw)
