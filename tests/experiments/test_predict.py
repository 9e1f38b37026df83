"""Training the predictive picker, the distribution file, and honest selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.learned.predictive import FEATURES, Knobs, Predictor
from agents.learned.predictor_file import load_predictor, save_predictor
from experiments.cli import main
from experiments.training import select as select_module
from experiments.training.distribution import (
    DISTRIBUTION_FILE,
    Condition,
    load_distribution,
)
from experiments.training.predict import KNOB_GRID, PredictConfig, fit, r2, train_predictor

SCENARIO = """
name = "tiny-cache"
description = "a few agents on the tiny preset with small caches"
preset = "tiny"
set = ["node.dram_cache_gb=0.05", "node.hbm_cache_gb=0.02"]
[workload]
agents = 4
mal = "32k"
shuffle = true
[seeds]
train = [11, 12]
eval = [1, 2]
validate = [5, 6]
"""


@pytest.fixture()
def scenario(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny-cache.toml"
    path.write_text(SCENARIO)
    return path


def test_fit_recovers_a_linear_model_and_r2_scores_it():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.random((400, len(FEATURES) - 1)), np.ones(400)])
    truth = np.array([0.5, 0.2, 0.0, 0.3, 1.5, 0.8, 0.05])
    y = x @ truth
    fitted = fit(x, y, ridge=0.0)
    assert np.allclose(fitted.weights, truth, atol=1e-8)
    assert r2(fitted, x, y) == pytest.approx(1.0)
    assert r2(Predictor.prior(), x, y) < 0.99
    shrunk = fit(x, y, ridge=1e9)  # all prior
    assert np.allclose(shrunk.weights, Predictor.prior().weights, atol=1e-3)


def test_train_writes_a_predictor_with_its_command_fit_and_knob_grid(scenario, tmp_path):
    out = tmp_path / "out"
    summary = train_predictor([Condition(str(scenario))], PredictConfig(seeds=1), name="t",
                              out=out, command="dualpath train ...",
                              tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    picker, body = load_predictor(out)
    assert body["train"]["command"] == "dualpath train ..."
    assert len(body["train"]["knob_grid"]) == len(KNOB_GRID)
    best = min(body["train"]["knob_grid"], key=lambda g: g["jct_rel"])
    assert picker.knobs.to_json() == best["knobs"] == summary["knobs"]
    assert body["train"]["fit"]["samples"] > 0 and body["train"]["training_time_s"] > 0
    assert all(np.isfinite(g["jct_rel"]) and g["jct_rel"] > 0 for g in body["train"]["knob_grid"])


def test_the_shipped_distribution_holds_out_conditions_apart_from_training():
    distribution = load_distribution()
    assert distribution.train and distribution.held_out
    assert not set(distribution.train) & set(distribution.held_out)
    condition = distribution.held_out[0]
    held = condition.build()
    assert held.name == condition.label != condition.scenario
    assert held.overrides[-len(condition.overrides):] == condition.overrides
    assert all(held.workload_config[k] == v for k, v in condition.workload)


@pytest.mark.parametrize(("body", "message"), [
    ('[[train]]\nscenario = "online"\n[[held_out]]\nscenario = "online"\n', "also training"),
    ('[[train]]\nscenario = "online"\ncolour = 1\n', "unknown keys"),
    ('[[held_out]]\nscenario = "online"\n', "no \\[\\[train\\]\\]"),
    ('[[train]]\nscenario = "cache-mooncake"\nworkload = { aps = 2.0 }\n', "agentic"),
    ('[[train]]\nscenario = "online"\nset = ["node.snic_gb_s=-1"]\n', "snic"),
])
def test_a_bad_distribution_is_refused_naming_the_file(tmp_path, body, message):
    path = tmp_path / "d.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as err:
        load_distribution(path)
    assert str(path) in str(err.value)


def test_a_condition_applies_its_overrides_and_workload():
    plain = Condition("online").build()
    changed = Condition("online", ("node.dram_cache_gb=24",), (("aps", 1.5),)).build()
    assert changed.cluster().node.dram_cache_gb == 24 and plain.cluster().node.dram_cache_gb == 0
    assert changed.workload_config["aps"] == 1.5 and plain.workload_config["aps"] == 0.8
    assert changed.name == "online[node.dram_cache_gb=24, aps=1.5]"
    assert DISTRIBUTION_FILE.exists()


def test_select_chooses_on_validation_seeds_and_ships(scenario, tmp_path, monkeypatch, capsys):
    trained = tmp_path / "cand"
    train_predictor([Condition(str(scenario))], PredictConfig(seeds=1), name="c", out=trained,
                    command="x", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    paper = save_predictor(tmp_path / "paper", "paper", Predictor.prior(),
                           Knobs(prefill="paper", decode="paper", shares="split"), {}).parent
    monkeypatch.setattr(select_module, "PRETRAINED_ROOT", tmp_path / "pretrained")
    capsys.readouterr()
    assert main(["select", "--scenario", str(scenario), "--candidate", str(trained),
                 "--candidate", str(paper), "--ship", "mine", "--jobs", "1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["validation_seeds"] == [5, 6]
    assert [c["candidate"] for c in payload["candidates"]] == [str(trained), str(paper)]
    assert payload["chosen"] in (str(trained), str(paper))
    shipped, body = load_predictor(tmp_path / "pretrained" / "mine")
    chosen, _ = load_predictor(Path(payload["chosen"]))
    assert shipped.name == "learned:mine"
    assert (shipped.predictor, shipped.knobs) == (chosen.predictor, chosen.knobs)
    assert body["train"]["selection"]["validation_seeds"] == [5, 6]
    assert body["train"]["selection"]["scenario"] == "tiny-cache"


def test_select_refuses_to_ship_a_heuristic(scenario, tmp_path, monkeypatch):
    monkeypatch.setattr(select_module, "PRETRAINED_ROOT", tmp_path / "pretrained")
    with pytest.raises(ValueError, match="not a predictor"):
        select_module.select(str(scenario), ["dualpath"], ship="x")
    assert not (tmp_path / "pretrained").exists()


def test_heldout_runs_a_policy_and_every_heuristic_on_each_held_out_condition(
        scenario, tmp_path, capsys):
    distribution = tmp_path / "d.toml"
    distribution.write_text(f'[[train]]\nscenario = "{scenario}"\n'
                            f'[[held_out]]\nscenario = "{scenario}"\n'
                            'set = ["node.snic_gb_s=0.5"]\nworkload = { agents = 3 }\n')
    policy = save_predictor(tmp_path / "p", "p", Predictor.prior(), Knobs(affinity=3.0), {})
    capsys.readouterr()
    assert main(["heldout", "--policy", str(policy), "--distribution", str(distribution),
                 "--jobs", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["scenario"] == f"{scenario}[node.snic_gb_s=0.5, agents=3]"
    assert row["best_learned"] == str(policy) and row["jct_rel"] > 0
    assert str(policy) in row["jct_mean_s"] and "dualpath_split" in row["jct_mean_s"]
