"""The scoreboard: its paired ratios and wins, and a whole board on a tiny scenario."""

from __future__ import annotations

import json

import pytest

from agents.learned.predictive import Knobs, Predictor
from agents.learned.predictor_file import save_predictor
from experiments.cli import main
from experiments.evaluation import scoreboard as board
from experiments.evaluation.scenario import load_scenario

SCENARIO = """
name = "tiny-board"
description = "a few agents on the tiny preset"
preset = "tiny"
heuristics = ["pe_only", "least_tokens"]
[workload]
agents = 4
mal = "32k"
shuffle = true
[seeds]
train = [11]
eval = [1, 2, 3]
"""


def runs(jct, ttft):
    return [{"jct_mean_s": j, "ttft_p99_interactive_s": t} for j, t in zip(jct, ttft, strict=True)]


def test_a_row_pairs_the_best_learned_with_the_best_heuristic_on_each_measure():
    per_spec = {"a": runs([10, 20, 30], [1.0, 1.0, 1.0]),
                "b": runs([11, 21, 31], [0.5, 0.5, 0.5]),
                "l1": runs([9, 18, 27], [0.6, 0.7, 0.8]),
                "l2": runs([12, 22, 32], [0.1, 0.1, 0.1])}
    row = board.board_row("s", per_spec, ["a", "b"], ["l1", "l2"])
    assert (row["best_heuristic"], row["best_heuristic_ttft"], row["best_learned"]) == \
        ("a", "b", "l1")
    assert row["jct_rel"] == pytest.approx(0.9) and row["jct_rel_ci95"] == pytest.approx(0.0)
    assert row["ttft_p99_rel"] == pytest.approx((1.2 + 1.4 + 1.6) / 3)
    assert row["ttft_p99_rel_ci95"] > 0
    assert row["win"]  # 10% better mean JCT, the interval below 1


@pytest.mark.parametrize(("jct", "half", "ttft", "ttft_half", "win"), [
    (0.95, 0.01, 1.2, 0.1, True),
    (0.96, 0.0, 1.0, 0.0, False),
    (0.90, 0.2, 1.0, 0.0, False),   # the interval reaches 1
    (1.00, 0.0, 0.80, 0.05, True),
    (1.00, 0.0, 0.80, 0.3, False),
])
def test_wins_need_the_bar_and_an_interval_below_one(jct, half, ttft, ttft_half, win):
    row = {"jct_rel": jct, "jct_rel_ci95": half, "ttft_p99_rel": ttft,
           "ttft_p99_rel_ci95": ttft_half}
    assert board.wins(row) is win


def test_the_board_holds_the_required_heuristics_and_the_scenario_s_own(tmp_path):
    path = tmp_path / "tiny-board.toml"
    path.write_text(SCENARIO)
    specs = board.heuristics_of(load_scenario(str(path)))
    assert specs[:len(board.REQUIRED_HEURISTICS)] == list(board.REQUIRED_HEURISTICS)
    assert specs[-1] == "least_tokens" and specs.count("pe_only") == 1


def test_the_scoreboard_command_runs_every_policy_on_the_evaluation_seeds(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "tiny-board.toml"
    path.write_text(SCENARIO)
    learned = save_predictor(tmp_path / "p", "p", Predictor.prior(), Knobs(affinity=3.0), {})
    monkeypatch.setattr(board, "learned_policies", lambda: [str(learned)])
    capsys.readouterr()
    assert main(["scoreboard", "--scenario", str(path), "--jobs", "1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (row,) = payload["rows"]
    assert set(board.ROW_KEYS) <= set(row)
    assert row["scenario"] == "tiny-board" and row["best_learned"] == str(learned)
    policies = payload["policies"]["tiny-board"]
    assert set(policies) == {*board.heuristics_of(load_scenario(str(path))), str(learned)}
    assert row["best_heuristic"] == min(
        board.heuristics_of(load_scenario(str(path))), key=lambda h: policies[h]["jct_mean_s"])
    assert row["jct_rel"] > 0 and row["jct_rel_ci95"] >= 0


def test_without_learned_policies_a_row_says_so(tmp_path, monkeypatch):
    path = tmp_path / "tiny-board.toml"
    path.write_text(SCENARIO)
    monkeypatch.setattr(board, "learned_policies", lambda: [])
    (row,) = board.scoreboard([str(path)], progress=False)["rows"]
    assert row["best_learned"] is None and row["jct_rel"] is None and row["win"] is False


def test_the_policy_chosen_on_validation_is_the_scenario_s_learned_policy():
    per_spec = {"a": runs([10, 20], [1.0, 1.0]), "l1": runs([9, 18], [1.0, 1.0]),
                "l2": runs([12, 22], [1.0, 1.0])}
    chosen = board.board_row("s", per_spec, ["a"], ["l1", "l2"], preferred="l2")
    unchosen = board.board_row("s", per_spec, ["a"], ["l1", "l2"])
    assert (chosen["best_learned"], chosen["selected_on_validation"]) == ("l2", True)
    assert (unchosen["best_learned"], unchosen["selected_on_validation"]) == ("l1", False)
    assert chosen["jct_rel"] > 1.0 > unchosen["jct_rel"]


def test_compare_s_defaults_name_the_picker_shipped_for_the_scenario():
    from experiments.evaluation.compare import default_specs

    scenario = load_scenario("cache-agentic")
    assert default_specs(scenario, ["picker-cache-agentic", "paper-offline"])[-1] == \
        "pretrained:picker-cache-agentic"
    assert not any(s.startswith("pretrained:")
                   for s in default_specs(scenario, ["picker-cache-tenants"]))
