"""train → compare → promote with a tiny budget against a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.cli import main
from experiments.tracking.mlflow_runs import MODEL_NAME

SCENARIO = """
name = "tiny-test"
description = "two agents on the tiny preset"
preset = "tiny"
[workload]
agents = 3
mal = "32k"
shuffle = true
[seeds]
train = [11, 12]
eval = [1, 2, 3]
[train]
mode = "route"
steps = 64
"""


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenario = tmp_path / "tiny-test.toml"
    scenario.write_text(SCENARIO)
    return scenario, f"sqlite:///{tmp_path}/mlflow.db"


def run_json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode", ["route", "tune"])
def test_train_logs_registers_and_compare_evaluates(store, capsys, tmp_path, mode):
    scenario, uri = store
    art = tmp_path / f"art-{mode}"
    trained = run_json(capsys, ["train", "--scenario", str(scenario), "--mode", mode,
                                "--steps", "64", "--imitate-steps", "64", "--window", "5",
                                "--out", str(art), "--tracking-uri", uri, "--json"])
    assert Path(trained["artifact"], "policy.onnx").exists()
    assert Path(trained["artifact"], "policy.json").exists()

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "env_time_share" in run.data.metrics and "imitation_accuracy" in run.data.metrics
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert version.run_id == trained["mlflow_run_id"]

    policies = f"pe_only,dualpath,{art},models:/{MODEL_NAME}@challenger"
    out = run_json(capsys, ["compare", "--scenario", str(scenario), "--policies", policies,
                            "--seeds", "2", "--jobs", "1", "--tracking-uri", uri,
                            "--out", str(tmp_path / "plots"), "--json"])
    rows = out["rows"]
    assert [r["policy"] for r in rows] == policies.split(",")
    for row in rows:
        for key in ("jct_mean_s", "jct_ci95_s", "throughput_tok_s", "ttft_p99_s",
                    "slo_attainment"):
            assert isinstance(row[key], float)
        assert row["jct_mean_s"] > 0 and 0 <= row["slo_attainment"] <= 1
    # The registered model and the artifact it came from decide alike.
    assert rows[2]["per_seed_jct_mean_s"] == rows[3]["per_seed_jct_mean_s"]
    assert (tmp_path / "plots" / "compare.png").stat().st_size > 1000
    assert client.get_run(out["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize(("heuristics", "wins"), [
    # Layer-wise prefill and the dual path against neither: a clear win.
    (["pe_only:layerwise=false"], True),
    # Against the zero-I/O oracle no policy can win.
    (["pe_only", "dualpath:oracle=true"], False),
])
def test_promote_moves_champion_only_when_the_rule_passes(store, capsys, tmp_path, heuristics,
                                                          wins):
    scenario, uri = store
    run_json(capsys, ["train", "--scenario", str(scenario), "--mode", "tune", "--steps", "32",
                      "--imitate", "none", "--window", "5", "--out", str(tmp_path / "a"),
                      "--tracking-uri", uri, "--json"])
    bar = tmp_path / "bar.toml"
    bar.write_text("heuristics = " + json.dumps(heuristics) + "\n" + SCENARIO)
    result = run_json(capsys, ["promote", "--scenario", str(bar), "--seeds", "3",
                               "--jobs", "1", "--tracking-uri", uri, "--json"])
    aliases = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(
        MODEL_NAME).aliases
    assert result["promoted"] is wins
    assert ("champion" in aliases) is wins
    assert result["best_heuristic"] == min(heuristics, key=result["jct_mean_s"].get)
    assert result["reason"].startswith("promoted" if wins else "refused")


def test_training_seeds_fan_out_and_only_the_parent_logs(store, capsys, tmp_path):
    scenario, uri = store
    out = run_json(capsys, ["train", "--scenario", str(scenario), "--mode", "tune",
                            "--steps", "32", "--imitate", "none", "--window", "5",
                            "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "many"),
                            "--tracking-uri", uri, "--json"])
    runs = out["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for run in runs:
        meta = json.loads(Path(run["artifact"], "policy.json").read_text())
        assert meta["train"]["mlflow_run_id"] == run["mlflow_run_id"]
        logged = client.get_run(run["mlflow_run_id"])
        assert logged.info.status == "FINISHED"
        assert logged.data.params["train.seed"] == str(run["seed"])
        assert "train_wall_s" in logged.data.metrics
    versions = {v.run_id for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    assert {r["mlflow_run_id"] for r in runs} <= versions
