"""The core without gRPC: scores reach the log, and the shadow sees the served reservations."""

from __future__ import annotations

import sqlite3

from policy_service.cluster_state import ClusterState
from policy_service.decision_log import DecisionLog
from policy_service.hot_swap import PolicyRegistry
from policy_service.metrics import Metrics
from policy_service.scheduler import SchedulerCore
from runtime.decision import Decision
from runtime.preset import load_preset
from tests.policy_service.conftest import schedule_msg, sim_points


class Scored:
    """Always the first engines; says its candidates' scores like a learned router."""

    name = "scored"

    def __init__(self) -> None:
        self.last_scores: tuple[float, ...] | None = None

    def decide(self, request, view):
        self.last_scores = (0.5, float(request.request_id))
        return Decision(0, view.spec.prefill_engines, 0.0, "first")


def test_scores_and_shadow_decisions_reach_the_log(tmp_path):
    spec = load_preset("ds27b-1p1d")
    registry = PolicyRegistry(spec, build=lambda text, cluster: Scored())
    registry.swap("scored")
    registry.set_shadow("scored-too")
    db = tmp_path / "log.db"
    core = SchedulerCore(registry, ClusterState(spec), Metrics(),
                         DecisionLog(f"sqlite:///{db}", flush_interval_s=0.05))
    points = sim_points(3)
    msg = schedule_msg(points[0][0], points[0][1])
    done = core.schedule([r for r, _ in points], msg.view, "c")
    assert done.version == "v1:scored" and all(isinstance(a, Decision) for a in done.answers)
    core.drain_shadow()
    core.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, scores, shadow_version, shadow_prefill_engine "
                            "FROM decisions ORDER BY batch_index").fetchall()
    assert [r[0] for r in rows] == [r.request_id for r, _ in points]
    assert rows[1][1] == f"[0.5, {float(points[1][0].request_id)}]"
    assert {r[2] for r in rows} == {"v2:scored-too"} and {r[3] for r in rows} == {0}
