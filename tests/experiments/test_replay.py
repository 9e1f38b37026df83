"""Replaying the decision log: a log written by a real service replays closed-loop to
the figures of the run that wrote it; the CLI's replay, train and promote from a log;
bad logs and windows named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agents import resolve_policy
from experiments.cli import main
from experiments.evaluation.replay import log_scenario, match_cluster, parse_duration
from experiments.live.service_process import ServiceProcess
from policy_service.client import remote_policy
from policy_service.codec import cluster_digest
from policy_service.log_reader import logged_traffic
from runtime.preset import load_preset
from runtime.sim import Simulator
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.replay import ReplayWorkload, build_sessions

AGENTS = 8


def _log(db: Path, overrides: tuple[str, ...] = ()) -> dict:
    """Drive a simulation through a real ``dualpath serve`` (decision log at ``db``);
    the run's metrics."""
    args = ["--policy", "dualpath", "--preset", "tiny", "--db", f"sqlite:///{db}"]
    for item in overrides:
        args += ["--set", item]
    spec = load_preset("tiny", overrides)
    with ServiceProcess(args) as service:
        policy = remote_policy(f"grpc://{service.target}", spec)
        try:
            result = Simulator(spec, AgenticWorkload(AGENTS, "32k", 0)).run(policy)
        finally:
            policy.close()
    return result.metrics


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[Path, dict]:
    db = tmp_path_factory.mktemp("replay") / "log.db"
    return db, _log(db)


def test_replaying_a_log_as_logged_reproduces_its_run(logged):
    db, metrics = logged
    traffic = logged_traffic(f"sqlite:///{db}")
    assert len(traffic.turns) == metrics["requests"]
    rebuilt = build_sessions(traffic.turns)
    assert len(rebuilt.sessions) == AGENTS and rebuilt.without_outcome == 0
    spec = load_preset("tiny")
    again = Simulator(spec, ReplayWorkload(rebuilt.sessions)).run(
        resolve_policy("dualpath", spec).policy).metrics
    assert again["requests"] == metrics["requests"]
    assert again["jct_mean_s"] == pytest.approx(metrics["jct_mean_s"], rel=0.01)
    assert again["ttft_mean_s"] == pytest.approx(metrics["ttft_mean_s"], rel=0.05)


def test_the_replay_command_prints_compares_table(logged, capsys):
    db, _ = logged
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    main(["decisions", "replay", "--db", f"sqlite:///{db}", "--policy", "pe_only",
          "--policy", "dualpath", "--resamples", "3", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in payload["rows"]] == ["pe_only", "dualpath"]
    assert payload["sessions"] == AGENTS and payload["resamples"] == 3
    for row in payload["rows"]:
        assert row["jct_mean_s"] > 0 and 0 < row["jct_ci95_s"] < row["jct_mean_s"]
        assert row["seeds"] == 3
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # replay never writes


def test_train_from_a_log_writes_a_predictor(logged, tmp_path, capsys):
    db, _ = logged
    out = tmp_path / "trained"
    main(["train", "--from-log", f"sqlite:///{db}", "--train-seeds", "1", "--jobs", "1",
          "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert Path(payload["artifact"]) == out / "predictor.json" and (out / "replay").is_dir()
    assert payload["fit"]["samples"] > 0
    assert resolve_policy(str(out), load_preset("tiny")).policy.name


def test_promote_from_a_log_applies_the_rule_on_resamples(logged, tmp_path, capsys):
    db, _ = logged
    main(["promote", "--from-log", f"sqlite:///{db}", "--challenger", "pe_only",
          "--resamples", "3", "--jobs", "1", "--out", str(tmp_path / "p"),
          "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["promoted"] is False and payload["seeds"] == [0, 1, 2]
    assert payload["reason"].startswith("refused: mean JCT improvement")
    assert (tmp_path / "p" / "replay" / "sessions.json").is_file()


def test_a_cluster_no_preset_matches_is_named(tmp_path):
    db = tmp_path / "odd.db"
    _log(db, ("node.snic_gb_s=0.37",))
    url = f"sqlite:///{db}"
    with pytest.raises(ValueError, match=r"matches none of the \d+ known presets.*--preset"):
        log_scenario(url, tmp_path / "a")
    with pytest.raises(ValueError, match="the log's cluster is tiny:"):
        log_scenario(url, tmp_path / "b", preset="tiny")
    scenario = log_scenario(url, tmp_path / "c", preset="tiny",
                            overrides=("node.snic_gb_s=0.37",), resamples=2)
    assert scenario.overrides == ("node.snic_gb_s=0.37",) and scenario.eval_seeds == (0, 1)


def test_the_cluster_is_found_by_its_digest():
    live = load_preset("tiny", ("block_tokens=1024", "decode_nodes=2", "node.snic_gb_s=0.2"))
    assert match_cluster(cluster_digest(live)) == (
        "tiny", ("block_tokens=1024", "decode_nodes=2", "node.snic_gb_s=0.2"))
    assert match_cluster(cluster_digest(load_preset("ds27b-1p1d"))) == ("ds27b-1p1d", ())


def test_windows_and_durations(logged):
    db, _ = logged
    assert parse_duration("90") == 90 and parse_duration("15m") == 900
    assert parse_duration("2h") == 7200 and parse_duration("1d") == 86400
    for bad in ("", "-5m", "0", "3 weeks", "m"):
        with pytest.raises(ValueError, match="positive duration"):
            parse_duration(bad)
    assert logged_traffic(f"sqlite:///{db}", since_s=3600).turns
    future = logged_traffic(f"sqlite:///{db}").last_at + 10_000
    with pytest.raises(ValueError, match=r"no decisions in the last 60 s"):
        logged_traffic(f"sqlite:///{db}", since_s=60, now=future)


def test_no_log_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such database file"):
        logged_traffic(f"sqlite:///{tmp_path}/missing.db")
    with pytest.raises(ValueError, match="--resamples must lie in 2..1000"):
        log_scenario(f"sqlite:///{tmp_path}/missing.db", tmp_path, resamples=1)


@pytest.mark.slow
def test_the_replay_benchmark_times_every_step():
    from experiments.bench.replay import bench_replay, render_replay_bench

    payload = bench_replay(decisions=300, resamples=2, jobs=1, train_seeds=1)
    assert payload["decisions"] >= 300 and payload["replay_runs"] == 6
    for key in ("log_write_s", "read_and_rebuild_s", "replay_s", "train_from_log_s"):
        assert payload[key] > 0
    assert "train --from-log" in render_replay_bench(payload)
