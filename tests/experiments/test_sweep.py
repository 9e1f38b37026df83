"""Sweeps: parsing, the grid, results equal across fan-outs, outputs and MLflow runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.evaluation.fanout import local
from experiments.evaluation.runner import RunConfig
from experiments.evaluation.runner import run as simulate
from experiments.sweeps.sweep import run_sweep, sweep_main
from experiments.sweeps.sweep_file import config_of, list_sweeps, load_sweep
from experiments.tracking import mlflow_runs as tracking
from tests.requirements import require_module

SMALL = """
name = "small"
figure = "a test figure"
paper = "nothing"
preset = "tiny"
policies = ["pe_only", "dualpath"]
seeds = [0, 1]
x = "agents"
metrics = ["jct_s", "throughput_tok_s"]
[base]
mal = "32k"
[grid]
agents = [2, 3]
snic_gb_s = [0.5, 1.0]
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_state", {})
    return tmp_path


def test_points_are_the_grid_product_and_map_to_configs(small):
    sweep = load_sweep(str(small))
    assert [(p["agents"], p["snic_gb_s"]) for p in sweep.points()] == [
        (2, 0.5), (2, 1.0), (3, 0.5), (3, 1.0)]
    cfg = config_of(sweep, sweep.points()[1], "dualpath", 1)
    assert cfg == RunConfig(policy="dualpath", preset="tiny", agents=2, mal="32k", seed=1,
                            overrides=("node.snic_gb_s=1.0",))


def test_every_run_is_the_simulators_own(small):
    sweep = load_sweep(str(small))
    rows = run_sweep(sweep, local(1))
    assert len(rows) == 4 * 2 * 2
    row = next(r for r in rows if r["point"] == 3 and r["policy"] == "pe_only" and r["seed"] == 1)
    alone = simulate(config_of(sweep, sweep.points()[3], "pe_only", 1))
    assert row["jct_s"] == alone["jct_s"] and row["requests"] == alone["requests"]


def test_parallel_results_equal_serial(small):
    sweep = load_sweep(str(small))
    drop = ("wall_s", "sim_requests_per_s")
    serial = [{k: v for k, v in r.items() if k not in drop} for r in run_sweep(sweep, local(1))]
    with local(2) as pool:
        parallel = [{k: v for k, v in r.items() if k not in drop}
                    for r in run_sweep(sweep, pool)]
    assert parallel == serial


def test_outputs_and_mlflow_runs(small, tracked):
    summary = sweep_main(str(small), jobs=1, out=str(tracked / "out"))
    out = tracked / "out"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 16 and {"point", "agents", "snic_gb_s", "policy", "seed",
                                 "jct_s"} <= set(table.columns)
    assert pd.read_parquet(out / "results.parquet").shape == table.shape
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["jct_s.png",
                                                                 "throughput_tok_s.png"]
    assert json.loads((out / "summary.json").read_text())["points"] == 4
    client = tracking._client()
    parent = client.get_run(summary["run_id"])
    assert parent.data.tags["dualpath.sweep"] == "small"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert len(children) == 4
    assert all("dualpath/jct_s" in c.data.metrics and "pe_only/jct_s" in c.data.metrics
               for c in children)
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"results.csv", "summary.json", "sweep.toml", "plots"} <= artifacts


def test_shipped_sweeps_load():
    names = list_sweeps()
    assert {"offline-jct", "pd-ratio", "length-scaling", "online-capacity", "ablation",
            "snic-balance"} <= set(names)
    for name in names:
        assert load_sweep(name).figure


@pytest.mark.parametrize("text, needle", [
    (SMALL.replace("snic_gb_s", "snic_speed"), "unknown parameter 'snic_speed'"),
    (SMALL.replace('x = "agents"', 'x = "mal"'), "x = 'mal' is not a grid key"),
    (SMALL.replace('policies = ["pe_only", "dualpath"]', "policies = []"), "'policies' is empty"),
    (SMALL.replace("agents = [2, 3]", "agents = []"), "grid.agents has no values"),
    (SMALL.replace('name = "small"', 'name = "small"\ncolour = 1'), "unknown key(s) colour"),
])
def test_bad_sweep_files_are_clear_errors(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(str(path))


def test_a_sweep_on_ray_equals_the_local_run(small, tracked):
    require_module("ray")
    drop = ("wall_s", "sim_requests_per_s")
    on_ray = sweep_main(str(small), ray_address="local", out=str(tracked / "ray"), log=False)
    here = sweep_main(str(small), jobs=1, out=str(tracked / "local"), log=False)
    assert on_ray["backend"] == "ray" and here["backend"] == "local"
    ray_rows = pd.read_csv(tracked / "ray" / "results.csv").drop(columns=list(drop))
    local_rows = pd.read_csv(tracked / "local" / "results.csv").drop(columns=list(drop))
    pd.testing.assert_frame_equal(ray_rows, local_rows)
    print(f"\nsmall sweep: ray {on_ray['wall_s']:.1f} s (with start-up), "
          f"local {here['wall_s']:.1f} s")
