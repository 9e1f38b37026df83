"""``dualpath scoreboard``: every shipped scenario, its heuristics and every shipped learned
policy on the evaluation seeds; per scenario the best heuristic, the best learned policy
and how they compare, paired by seed.

- ``jct_rel``: the mean over seeds of the best learned policy's mean JCT divided by the
  best heuristic's (best: the lowest mean JCT over seeds), with ``jct_rel_ci95`` the
  half-width of its Student-t 95% interval;
- ``ttft_p99_rel``: likewise for the interactive class's p99 TTFT, against the heuristic
  with the lowest mean of that measure.

The best learned policy of a scenario is the one chosen for it on validation seeds
(``dualpath select --ship`` records the scenario in the shipped file), so that the
evaluation seeds choose nothing; on a scenario no policy was chosen for, it is the shipped
policy with the lowest mean JCT. A learned policy *wins* a scenario when ``jct_rel`` ≤
0.95 or ``ttft_p99_rel`` ≤ 0.85 with the interval's upper end below 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from agents.learned import PRETRAINED_ROOT, pretrained_names
from agents.learned.predictor_file import PREDICTOR_FILE, load_predictor
from experiments.evaluation.evaluate import run_task
from experiments.evaluation.fanout import local
from experiments.evaluation.scenario import Scenario, list_scenarios, load_scenario
from experiments.evaluation.stats import mean_ci95
from experiments.evaluation.table import format_table

#: The heuristic specs on every scenario's board, beside those its file lists.
REQUIRED_HEURISTICS = ("pe_only", "dualpath", "dualpath_split", "cache_aware",
                       "cache_aware:path=shorter", "dualpath_cache", "dualpath_cache:order=edf",
                       "dualpath_cache:order=short")
TTFT = "ttft_p99_interactive_s"
JCT_WIN, TTFT_WIN, JCT_WORST = 0.95, 0.85, 1.01
ROW_KEYS = ("scenario", "best_heuristic", "best_learned", "jct_rel", "jct_rel_ci95",
            "best_heuristic_ttft", "ttft_p99_rel", "ttft_p99_rel_ci95", "win")


def heuristics_of(scenario: Scenario) -> list[str]:
    """The required heuristics, then the scenario's own that are not among them."""
    return list(dict.fromkeys((*REQUIRED_HEURISTICS, *scenario.heuristics)))


def learned_policies() -> list[str]:
    return [f"pretrained:{name}" for name in pretrained_names()]


def selected_for() -> dict[str, str]:
    """Scenario name -> the shipped policy chosen for it on validation seeds."""
    chosen = {}
    for name in pretrained_names():
        path = PRETRAINED_ROOT / name / PREDICTOR_FILE
        if path.is_file():
            selection = load_predictor(path)[1].get("train", {}).get("selection") or {}
            if "scenario" in selection:
                chosen[selection["scenario"]] = f"pretrained:{name}"
    return chosen


def scoreboard(names: Sequence[str] | None = None, *, jobs: int = 1,
               progress: bool = True) -> dict[str, Any]:
    """Run every board and summarise; ``names``: scenarios (default every shipped one)."""
    scenarios = [load_scenario(n) for n in (names or list_scenarios())]
    learned = learned_policies()
    preferred = selected_for()
    boards = {s.name: (heuristics_of(s), learned) for s in scenarios}
    tasks = [(str(s.source), spec, seed) for s in scenarios
             for spec in (*boards[s.name][0], *learned) for seed in s.eval_seeds]
    report = None
    if progress:
        def report(done: int, total: int) -> None:
            print(f"[scoreboard] {done}/{total} runs", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with local(min(jobs, len(tasks))) as fanout:
        runs = fanout.map(run_task, tasks, progress=report)
    by_key = {(task[0], task[1], task[2]): run for task, run in zip(tasks, runs, strict=True)}
    rows, policies = [], {}
    for s in scenarios:
        per_spec = {spec: [by_key[(str(s.source), spec, seed)] for seed in s.eval_seeds]
                    for spec in (*boards[s.name][0], *learned)}
        rows.append(board_row(s.name, per_spec, boards[s.name][0], learned,
                              preferred.get(s.name)))
        policies[s.name] = policy_means(per_spec)
    return {"rows": rows, "policies": policies, "learned": learned,
            "wall_s": round(time.perf_counter() - start, 1)}


def policy_means(per_spec: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every policy's mean JCT and interactive p99 TTFT over its runs."""
    return {spec: {"jct_mean_s": _mean(rs, "jct_mean_s"), TTFT: _mean(rs, TTFT)}
            for spec, rs in per_spec.items()}


def _mean(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r.get(key) for r in runs]
    return mean_ci95([float(v) for v in values if v is not None])[0] \
        if all(v is not None for v in values) else None


def board_row(name: str, per_spec: dict[str, list[dict[str, Any]]], heuristics: Sequence[str],
              learned: Sequence[str], preferred: str | None = None) -> dict[str, Any]:
    """One scenario's row from every policy's per-seed runs (same seeds, same order);
    ``preferred``: the learned policy chosen for it on validation seeds, if any."""
    jct = {spec: mean_ci95([r["jct_mean_s"] for r in rs])[0] for spec, rs in per_spec.items()}
    best_h = min(heuristics, key=lambda h: jct[h])
    ttft_h = min(heuristics, key=lambda h: _mean(per_spec[h], TTFT) or 0.0)
    row: dict[str, Any] = {"scenario": name, "best_heuristic": best_h,
                           "best_heuristic_ttft": ttft_h, "best_learned": None,
                           "jct_rel": None, "jct_rel_ci95": None, "ttft_p99_rel": None,
                           "ttft_p99_rel_ci95": None, "win": False,
                           "selected_on_validation": False}
    if not learned:
        return row
    best_l = (preferred if preferred is not None and preferred in learned
              else min(learned, key=lambda p: jct[p]))
    row["best_learned"] = best_l
    row["selected_on_validation"] = best_l == preferred
    row["jct_rel"], row["jct_rel_ci95"] = paired_ratio(per_spec[best_l], per_spec[best_h],
                                                       "jct_mean_s")
    if _mean(per_spec[best_l], TTFT) is not None:
        row["ttft_p99_rel"], row["ttft_p99_rel_ci95"] = paired_ratio(
            per_spec[best_l], per_spec[ttft_h], TTFT)
    row["win"] = wins(row)
    return row


def paired_ratio(mine: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]],
                 key: str) -> tuple[float, float]:
    """Mean over seeds of ``mine[key] / base[key]`` and its 95% half-width."""
    return mean_ci95([m[key] / b[key] for m, b in zip(mine, base, strict=True)])


def wins(row: dict[str, Any]) -> bool:
    """The scoreboard's win (see the module docstring)."""
    def beats(rel: float | None, half: float | None, bar: float) -> bool:
        return rel is not None and half is not None and rel <= bar and rel + half < 1.0
    return (beats(row["jct_rel"], row["jct_rel_ci95"], JCT_WIN)
            or beats(row["ttft_p99_rel"], row["ttft_p99_rel_ci95"], TTFT_WIN))


def render_scoreboard(payload: dict[str, Any]) -> str:
    rows = [{k: row[k] for k in ROW_KEYS} for row in payload["rows"]]
    wins_ = sum(row["win"] for row in payload["rows"])
    worse = [row["scenario"] for row in payload["rows"]
             if row["jct_rel"] is not None and row["jct_rel"] > JCT_WORST]
    return "\n".join([
        "evaluation seeds; rel = best learned / best heuristic, paired by seed, ± 95% CI; "
        f"win: jct_rel <= {JCT_WIN} or ttft_p99_rel <= {TTFT_WIN}, interval below 1",
        format_table(rows, list(ROW_KEYS)),
        f"learned policies: {', '.join(payload['learned']) or 'none shipped'}",
        f"wins: {wins_} of {len(rows)} scenarios; mean JCT more than 1% worse on: "
        f"{', '.join(worse) or 'none'}; {payload['wall_s']} s"])
