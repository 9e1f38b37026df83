"""Tracking and the policy registry against a real SQLite store in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient

from experiments.tracking import mlflow_runs as tracking

CONFIG = {"policy": "dualpath", "seeds": [0, 1, 2], "cluster": {"preset": "tiny", "pe": 2},
          "note": "x" * 7000}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One store for the module: creating the schema is the slow part (about 2 s)."""
    return tmp_path_factory.mktemp("store").resolve()


@pytest.fixture
def tracked(store, monkeypatch) -> Path:
    """The embedded default store, in a temporary working directory."""
    monkeypatch.chdir(store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_state", {})  # later tests elsewhere set up afresh
    tracking.setup()
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _policy_dir(root: Path, tag: str) -> Path:
    d = root / f"policy-{tag}"
    d.mkdir()
    (d / "policy.onnx").write_bytes(b"\x08\x07fake-onnx-" + tag.encode())
    (d / "policy.json").write_text(json.dumps({"tag": tag, "obs_dim": 12}))
    return d


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.tracking_uri("sqlite:///other.db") == "sqlite:///other.db"


def test_artifact_location_follows_the_store(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    absolute = f"sqlite:///{here}/a/m.db"  # four slashes: the path itself starts with one
    assert tracking.artifact_location(absolute) == (here / "a" / "mlartifacts").as_uri()
    assert tracking.artifact_location("sqlite:///rel/m.db") == (here / "rel/mlartifacts").as_uri()
    assert tracking.artifact_location("postgresql://u@h/db") == (here / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None


def test_default_store_in_working_directory(tracked):
    tracking.setup()  # idempotent
    assert mlflow.get_tracking_uri() == f"sqlite:///{tracked}/mlflow.db"
    exp = MlflowClient().get_experiment_by_name("dualpath")
    assert exp.artifact_location == (tracked / "mlartifacts").as_uri()
    with tracking.run("default", {"a": 1}) as active:
        tracking.log_metrics({"m": 1.0})
    assert (tracked / "mlflow.db").is_file()
    assert (tracked / "mlartifacts" / active.info.run_id / "artifacts" / "config.json").is_file()
    assert not (tracked / "mlruns").exists()


def test_environment_uri_is_used(tracked, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the store is not in the working directory any more
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracked}/mlflow.db")
    tracking.setup()
    assert mlflow.get_tracking_uri() == f"sqlite:///{tracked}/mlflow.db"
    assert not (tmp_path / "mlflow.db").exists()


def test_run_logs_params_metrics_and_artifacts(tracked):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    rows = [{"policy": "a", "jct": 1.5}, {"policy": "b", "jct": 2.0, "extra": True}]
    with tracking.run("unit", CONFIG, tags={"kind": "test"}) as active:
        tracking.log_metrics({"jct": 2.5, "ok": True, "name": "skipped"}, step=0)
        tracking.log_metrics({"jct": 2.0}, step=1)
        tracking.log_figure(fig, "figures/curve")
        tracking.log_table(rows, "compare")
        run_id = active.info.run_id
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "test"
    params = run.data.params
    assert params["cluster.preset"] == "tiny" and params["cluster.pe"] == "2"
    assert json.loads(params["seeds"]) == [0, 1, 2]
    assert len(params["note"]) == 6000
    assert [m.value for m in client.get_metric_history(run_id, "jct")] == [2.5, 2.0]
    assert run.data.metrics["ok"] == 1.0 and "name" not in run.data.metrics
    out = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=""))
    assert json.loads((out / "config.json").read_text()) == CONFIG
    assert (out / "figures/curve.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "compare.json").read_text()) == rows
    assert (out / "compare.csv").read_text().splitlines() == [
        "policy,jct,extra", "a,1.5,", "b,2.0,True"]


def test_failed_body_marks_run_failed(tracked):
    with pytest.raises(RuntimeError), tracking.run("boom", {}) as active:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(active.info.run_id).info.status == "FAILED"


def test_register_alias_and_download(tracked, tmp_path):
    first, second = _policy_dir(tmp_path, "one"), _policy_dir(tmp_path, "two")
    with tracking.run("train-1", {"seed": 1}) as r1:
        v1 = tracking.register_policy(first, r1)
    with tracking.run("train-2", {"seed": 2}) as r2:
        v2 = tracking.register_policy(second, r2.info.run_id, alias=None)
    assert v2 == v1 + 1
    client = MlflowClient()
    assert client.get_registered_model(tracking.MODEL_NAME).name == tracking.MODEL_NAME
    assert client.get_model_version(tracking.MODEL_NAME, str(v1)).run_id == r1.info.run_id
    assert tracking.get_alias_version("challenger") == v1

    got = tracking.download_model(f"models:/{tracking.MODEL_NAME}@challenger", tmp_path / "dl1")
    assert sorted(p.name for p in got.iterdir()) == ["policy.json", "policy.onnx"]
    assert (got / "policy.onnx").read_bytes() == (first / "policy.onnx").read_bytes()

    tracking.set_alias("challenger", v2)
    tracking.set_alias("champion", v1)
    assert tracking.get_alias_version("challenger") == v2
    assert tracking.get_alias_version("champion") == v1
    got = tracking.download_model(f"models:/{tracking.MODEL_NAME}@challenger")
    assert (got / "policy.json").read_text() == (second / "policy.json").read_text()
    assert tracked not in got.parents  # a copy, not the registry's own files
    got = tracking.download_model(f"models:/{tracking.MODEL_NAME}/{v1}", tmp_path / "dl2")
    assert (got / "policy.onnx").read_bytes() == (first / "policy.onnx").read_bytes()


def test_missing_alias_model_or_version_is_a_clear_error(tracked, tmp_path):
    with tracking.run("train", {}) as r:
        tracking.register_policy(_policy_dir(tmp_path, "x"), r)
    assert tracking.get_alias_version("nope") is None
    assert tracking.get_alias_version("champion", name="no-such-model") is None
    for uri in (f"models:/{tracking.MODEL_NAME}@nope", "models:/no-such-model@champion",
                f"models:/{tracking.MODEL_NAME}/999", "models:/no-such-model/1"):
        with pytest.raises(LookupError, match=uri):
            tracking.download_model(uri, tmp_path / "dl")
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        tracking.download_model("runs:/abc/policy")


def test_register_refuses_an_empty_directory(tracked, tmp_path):
    with tracking.run("train", {}) as r, pytest.raises(ValueError, match="policy files"):
        tracking.register_policy(tmp_path, r)


def test_run_inside_a_run_is_nested(tracked):
    with tracking.run("sweep", {"n": 2}) as parent, tracking.run("trial", {"x": 1}) as child:
        pass
    tags = MlflowClient().get_run(child.info.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.info.run_id


def _first_use(uri: str) -> str:
    from experiments.tracking import mlflow_runs as t

    t.setup(uri)
    return "ok"


def test_two_processes_can_create_a_new_store_at_once(tmp_path):
    import multiprocessing

    uri = f"sqlite:///{tmp_path}/race.db"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_first_use, [uri, uri]) == ["ok", "ok"]
