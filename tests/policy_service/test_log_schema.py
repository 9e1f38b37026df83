"""Schema 2 of the decision log: what replay and off-policy work need is in every row,
an older log is refused by name, and readers never write."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import replace

import pytest

from agents.learned.predictive import Knobs, PredictivePicker, Predictor
from policy_service.cluster_state import ClusterState
from policy_service.decision_log import DecisionLog
from policy_service.hot_swap import PolicyRegistry
from policy_service.log_reader import export, logged_traffic
from policy_service.log_schema import SCHEMA_VERSION
from policy_service.metrics import Metrics
from policy_service.scheduler import SchedulerCore
from runtime.decision import Decision
from runtime.preset import load_preset
from tests.policy_service.conftest import schedule_msg, sim_points

SPEC = load_preset("ds27b-1p1d")


def _core(db, policy) -> SchedulerCore:
    registry = PolicyRegistry(SPEC, build=lambda text, cluster: policy)
    registry.swap("under-test")
    return SchedulerCore(registry, ClusterState(SPEC), Metrics(),
                         DecisionLog(f"sqlite:///{db}", flush_interval_s=0.05))


def _rows(db, columns: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {columns} FROM decisions ORDER BY decision_id").fetchall()


def test_rows_carry_session_class_blocks_probability_and_outcome(tmp_path):
    db = tmp_path / "log.db"
    core = _core(db, PredictivePicker(Predictor.prior(), Knobs()))
    points = sim_points(2)
    hashed = replace(points[1][0], block_hashes=(11, 22, 0xABC), slo_class="batch")
    view = schedule_msg(points[0][0], points[0][1]).view
    done = core.schedule([points[0][0], hashed], view, "c", sessions=["chat-7", ""])
    assert all(isinstance(a, Decision) for a in done.answers)
    core.complete("c", hashed.request_id, {"ttft_s": 0.25, "tpot_s": 0.01, "latency_s": 2.0,
                                           "finish_s": 9.0})
    core.close()
    first, second = _rows(db, "session_id, slo_class, block_count, block_digest, action_prob, "
                              "arm, ttft_s, tpot_s, latency_s, finish_s")
    assert first[:2] == ("chat-7", "interactive") and first[6:] == (None,) * 4
    assert second[:6] == (str(hashed.agent_id), "batch", 3, f"{0xABC:016x}", 1.0, "champion")
    assert second[6:] == (0.25, 0.01, 2.0, 9.0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM log_meta WHERE key='schema_version'"
                            ).fetchone() == (str(SCHEMA_VERSION),)


def test_a_heuristic_gives_no_action_probability(tmp_path):
    from agents import resolve_policy

    db = tmp_path / "log.db"
    core = _core(db, resolve_policy("dualpath", SPEC).policy)
    request, view = sim_points(1)[0]
    core.schedule([request], schedule_msg(request, view).view, "c")
    core.close()
    assert _rows(db, "action_prob, session_id") == [(None, str(request.agent_id))]


def _schema_1(path) -> str:
    """A log as the first version wrote it: its tables, no version table."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE views (view_id INTEGER PRIMARY KEY, cluster TEXT)")
        conn.execute("CREATE TABLE decisions (decision_id INTEGER PRIMARY KEY, view_id INT)")
    return f"sqlite:///{path}"


def test_an_older_log_is_refused_by_writers_and_readers(tmp_path):
    url = _schema_1(tmp_path / "old.db")
    for action in (lambda: DecisionLog(url), lambda: logged_traffic(url),
                   lambda: export(url, tmp_path / "x.parquet")):
        with pytest.raises(ValueError, match="schema version 1; this version of dualpath "
                                             "reads and writes version 2"):
            action()


def test_an_empty_log_is_named(tmp_path):
    db = tmp_path / "empty.db"
    DecisionLog(f"sqlite:///{db}").close()
    with pytest.raises(ValueError, match="holds no decisions: nothing to replay"):
        logged_traffic(f"sqlite:///{db}")


def test_reading_never_writes(tmp_path):
    db = tmp_path / "log.db"
    core = _core(db, PredictivePicker(Predictor.prior(), Knobs()))
    request, view = sim_points(1)[0]
    core.schedule([request], schedule_msg(request, view).view, "c")
    core.complete("c", request.request_id, {"ttft_s": 0.5, "latency_s": 1.0})
    core.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    traffic = logged_traffic(f"sqlite:///{db}")
    assert len(traffic.turns) == 1 and traffic.turns[0].latency_s == 1.0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
