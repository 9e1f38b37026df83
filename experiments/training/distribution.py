"""Conditions: a shipped scenario with extra preset overrides and workload keys, and the
file that lists the training distribution and the held-out conditions
(``experiments/training/distribution.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.evaluation.scenario import Scenario, load_scenario

DISTRIBUTION_FILE = Path(__file__).resolve().parent / "distribution.toml"


@dataclass(frozen=True)
class Condition:
    """``scenario`` with ``overrides`` applied after its own and ``workload`` keys
    replacing its workload's (agentic workloads only)."""

    scenario: str
    overrides: tuple[str, ...] = ()
    workload: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def label(self) -> str:
        parts = [*self.overrides, *(f"{k}={v}" for k, v in self.workload)]
        return self.scenario + (f"[{', '.join(parts)}]" if parts else "")

    def build(self) -> Scenario:
        """The scenario this condition stands for (its cluster checked)."""
        base = load_scenario(self.scenario)
        if not self.overrides and not self.workload:
            return base
        config = dict(base.workload_config)
        if self.workload and config.get("kind", "agentic") != "agentic":
            raise ValueError(f"condition {self.label}: workload keys apply to agentic "
                             f"workloads; {self.scenario}'s is {config.get('kind')}")
        config.update(dict(self.workload))
        built = replace(base, name=self.label, overrides=base.overrides + self.overrides,
                        workload_config=config)
        built.cluster()
        built.workload(built.eval_seeds[0])
        return built

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "set": list(self.overrides),
                "workload": dict(self.workload)}

    @classmethod
    def from_json(cls, data: Any) -> Condition:
        if not isinstance(data, dict) or not isinstance(data.get("scenario"), str):
            raise ValueError(f"a condition needs a scenario name, got {data!r}")
        unknown = set(data) - {"scenario", "set", "workload"}
        if unknown:
            raise ValueError(f"condition {data['scenario']}: unknown keys {sorted(unknown)}")
        overrides = data.get("set", [])
        workload = data.get("workload", {})
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"condition {data['scenario']}: set must be a list of KEY=VALUE")
        if not isinstance(workload, dict):
            raise ValueError(f"condition {data['scenario']}: workload must be a table")
        return cls(data["scenario"], tuple(overrides), tuple(sorted(workload.items())))


@dataclass(frozen=True)
class Distribution:
    train: tuple[Condition, ...]
    held_out: tuple[Condition, ...]


def load_distribution(path: str | Path = DISTRIBUTION_FILE) -> Distribution:
    """The file's conditions, each checked by building it; ValueError naming the problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read a distribution: {err}") from err
    try:
        train = tuple(Condition.from_json(c) for c in data.get("train", []))
        held = tuple(Condition.from_json(c) for c in data.get("held_out", []))
        if not train:
            raise ValueError("no [[train]] condition")
        overlap = set(train) & set(held)
        if overlap:
            raise ValueError(f"held-out conditions are also training conditions: "
                             f"{sorted(c.label for c in overlap)}")
        for condition in (*train, *held):
            condition.build()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return Distribution(train, held)
