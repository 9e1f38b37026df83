"""Honest selection and held-out checks of trained policies.

- :func:`select`: trained candidates against the scenario's heuristics on its
  *validation* seeds (never the evaluation seeds); the candidate with the lowest mean JCT
  is chosen, and with ``ship`` its predictor is copied to ``agents/pretrained/NAME``
  with the selection's figures.
- :func:`held_out`: one policy against every heuristic on each held-out condition of a
  distribution file, on the evaluation seeds, in the scoreboard's terms.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.learned import PRETRAINED_ROOT
from agents.learned.predictor_file import PREDICTOR_FILE, is_predictor, load_predictor
from experiments.evaluation.evaluate import run_seed
from experiments.evaluation.fanout import local
from experiments.evaluation.scenario import Scenario, load_scenario
from experiments.evaluation.scoreboard import board_row, heuristics_of, policy_means
from experiments.training.distribution import DISTRIBUTION_FILE, Condition, load_distribution

#: Validation seeds of a scenario that names none (apart from every scenario's others).
DEFAULT_VALIDATE = tuple(range(50, 60))


def validation_seeds(scenario: Scenario) -> tuple[int, ...]:
    seeds = scenario.validate_seeds or DEFAULT_VALIDATE
    clash = set(seeds) & (set(scenario.train_seeds) | set(scenario.eval_seeds))
    if clash:
        raise ValueError(f"scenario {scenario.name}: validation seeds {sorted(clash)} are also "
                         "training or evaluation seeds")
    return seeds


def _run(task: tuple[Condition, str, int]) -> dict[str, Any]:
    condition, spec, seed = task
    return run_seed(condition.build(), spec, seed)


def _runs(conditions: Sequence[tuple[Condition, tuple[int, ...]]], learned: Sequence[str],
          jobs: int, label: str) -> list[dict[str, list[dict[str, Any]]]]:
    """Per condition (its seeds given), every policy's runs: its heuristics and
    ``learned``."""
    specs = {c: [*heuristics_of(c.build()), *learned] for c, _ in conditions}
    tasks = [(c, spec, seed) for c, seeds in conditions for spec in specs[c] for seed in seeds]

    def report(done: int, total: int) -> None:
        print(f"[{label}] {done}/{total} runs", file=sys.stderr, flush=True)
    with local(min(jobs, len(tasks))) as fanout:
        runs = fanout.map(_run, tasks, progress=report)
    by_key = dict(zip(tasks, runs, strict=True))
    return [{spec: [by_key[(c, spec, seed)] for seed in seeds] for spec in specs[c]}
            for c, seeds in conditions]


def _row(label: str, per_spec: dict[str, list[dict[str, Any]]], scenario: Scenario,
         learned: Sequence[str]) -> dict[str, Any]:
    row = board_row(label, per_spec, heuristics_of(scenario), learned)
    row["jct_mean_s"] = {spec: m["jct_mean_s"] for spec, m in policy_means(per_spec).items()}
    return row


def select(scenario_name: str, candidates: Sequence[str], *, jobs: int = 1,
           ship: str | None = None) -> dict[str, Any]:
    """Choose among ``candidates`` on the validation seeds (see the module docstring)."""
    if not candidates:
        raise ValueError("select: give at least one --candidate")
    scenario = load_scenario(scenario_name)
    seeds = validation_seeds(scenario)
    per_spec = _runs([(Condition(scenario_name), seeds)], candidates, jobs,
                     f"select {scenario.name}")[0]
    rows = [_row(scenario.name, per_spec, scenario, [c]) for c in candidates]
    chosen = min(range(len(candidates)), key=lambda i: rows[i]["jct_mean_s"][candidates[i]])
    figures = [{"candidate": c, "jct_rel": r["jct_rel"], "jct_rel_ci95": r["jct_rel_ci95"],
                "ttft_p99_rel": r["ttft_p99_rel"], "best_heuristic": r["best_heuristic"],
                "validation_win": r["win"]} for c, r in zip(candidates, rows, strict=True)]
    payload = {"scenario": scenario.name, "validation_seeds": list(seeds),
               "chosen": candidates[chosen], "candidates": figures, "shipped": None}
    if ship is not None:
        payload["shipped"] = str(_ship(candidates[chosen], ship, payload))
    return payload


def _ship(candidate: str, name: str, selection: dict[str, Any]) -> Path:
    source = Path(candidate)
    if not is_predictor(source):
        raise ValueError(f"--ship: the chosen candidate {candidate!r} is not a predictor file "
                         "or folder; only predictive pickers are shipped by select")
    _, body = load_predictor(source)
    body["name"] = name
    body["train"] = {**body.get("train", {}), "selection": {**selection, "shipped": name}}
    folder = PRETRAINED_ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PREDICTOR_FILE
    path.write_text(json.dumps(body, indent=2) + "\n")
    load_predictor(path)  # what was written loads
    return path


def held_out(policy: str, *, distribution: str | Path = DISTRIBUTION_FILE,
             jobs: int = 1) -> dict[str, Any]:
    """``policy`` on each held-out condition's evaluation seeds, with every heuristic."""
    conditions = load_distribution(distribution).held_out
    if not conditions:
        raise ValueError(f"{distribution}: no [[held_out]] condition")
    pairs = [(c, c.build().eval_seeds) for c in conditions]
    runs = _runs(pairs, [policy], jobs, "held out")
    rows = [_row(c.label, per_spec, c.build(), [policy])
            for c, per_spec in zip(conditions, runs, strict=True)]
    return {"policy": policy, "distribution": str(distribution), "rows": rows}
