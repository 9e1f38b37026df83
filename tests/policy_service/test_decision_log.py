"""The decision log: rows, outcomes, flushing, write errors, Parquet export and replay."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from agents import resolve_policy
from policy_service.codec import cluster_digest, view_to_pb
from policy_service.decision_log import DecisionLog, LoggedDecision
from policy_service.log_reader import agree, cluster_of, export
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement import reserve_view as reserve
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import Simulator
from runtime.view import ClusterView
from runtime.workload.agentic import AgenticWorkload

SPEC = load_preset("tiny")
CALL = 3  # decisions per logged call


@pytest.fixture(scope="module")
def points() -> list[tuple[Request, ClusterView]]:
    """Real (request, view) pairs: the decision points of a short dualpath simulation."""
    policy = resolve_policy("dualpath", cluster=SPEC).policy
    sim = Simulator(SPEC, AgenticWorkload(16, "64k", 0))
    out: list[tuple[Request, ClusterView]] = []
    while len(out) < 60 and (point := sim.next_decision()) is not None:
        out.append(point)
        sim.apply(policy.decide(*point))
    return out


def _calls(points, spec: str = "dualpath", client: str = "c"):
    """Calls of CALL requests each, decided as the service decides a batch: in order,
    each on the view after the reservations of the decisions before it."""
    policy = resolve_policy(spec, cluster=SPEC).policy
    for i in range(0, len(points), CALL):
        group = points[i:i + CALL]
        start = view = group[0][1]
        rows = []
        for request, _ in group:
            answer = policy.decide(request, view)
            rows.append(LoggedDecision(request, answer, spec, f"{spec}@1", 20.0, time.time(),
                                       client_id=client))
            if isinstance(answer, Decision):
                view = reserve(view, request, answer)
        yield view_to_pb(start).SerializeToString(), start.time_s, rows


def _record_all(log: DecisionLog, points, **kw) -> int:
    n = 0
    for snapshot, time_s, rows in _calls(points, **kw):
        log.record_call(snapshot, cluster_digest(SPEC), time_s, rows)
        n += len(rows)
    return n


def _url(tmp_path, name: str = "log.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _rows(url: str, query: str) -> list[sa.Row]:
    engine = sa.create_engine(url)  # a reader of its own, as another process would be
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)))
    finally:
        engine.dispose()


def _wait(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    # Generous: the writer is a fresh process, which takes seconds to start when every
    # core is busy; a condition that holds returns at once.
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _sql(path, statement: str) -> None:
    """Change the database behind the log's back, from a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _request(request_id: int, hit: int = 64) -> Request:
    return Request(request_id, agent_id=7, turn=2, hit_tokens=hit, appended_tokens=30,
                   gen_tokens=5, arrival_s=1.5)


def _row(request_id: int, answer, **kw) -> LoggedDecision:
    return LoggedDecision(_request(request_id), answer, "dualpath", "v1", 33.0, 1000.0 + request_id,
                          client_id=kw.pop("client_id", "c"), **kw)


def _snapshot(points) -> bytes:
    return view_to_pb(points[0][1]).SerializeToString()


def test_rows_round_trip(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url)
    shadowed = _row(1, Decision(1, 3, 0.5, "split it"), shadow=Defer("full", WaitFor.DECODE),
                    shadow_spec="pe_only", shadow_version="pe_only@2", scores=(0.25, 1.5))
    log.record_call(_snapshot(points), "tiny:x", 2.5,
                    [shadowed, _row(2, Defer("no room", WaitFor.PREFILL))])
    log.record_call(_snapshot(points), "tiny:x", 3.0, [_row(3, Decision(0, 2))])
    log.close()
    views = _rows(url, "SELECT view_id, cluster, time_s, length(snapshot) FROM views "
                       "ORDER BY view_id")
    assert [(v[1], v[2]) for v in views] == [("tiny:x", 2.5), ("tiny:x", 3.0)]
    assert all(v[3] > 0 for v in views)
    rows = {r.request_id: r._asdict() for r in _rows(url, "SELECT * FROM decisions")}
    assert len(rows) == 3
    one, two, three = rows[1], rows[2], rows[3]
    assert (one["view_id"], one["batch_index"], two["view_id"], two["batch_index"]) == (
        views[0][0], 0, views[0][0], 1)
    assert three["view_id"] == views[1][0] and three["batch_index"] == 0
    assert {k: one[k] for k in ("agent_id", "turn", "hit_tokens", "appended_tokens",
                                "gen_tokens", "arrival_s", "client_id")} == {
        "agent_id": 7, "turn": 2, "hit_tokens": 64, "appended_tokens": 30, "gen_tokens": 5,
        "arrival_s": 1.5, "client_id": "c"}
    assert (one["defer"], one["prefill_engine"], one["decode_engine"], one["decode_share"],
            one["path"], one["reason"], one["wait_for"]) == (
        0, 1, 3, 0.5, "split", "split it", None)
    assert (one["shadow_spec"], one["shadow_version"], one["shadow_defer"],
            one["shadow_prefill_engine"], one["shadow_reason"]) == (
        "pe_only", "pe_only@2", 1, None, "full")
    assert json.loads(one["scores"]) == [0.25, 1.5]
    assert (one["latency_us"], one["decided_at"], one["policy_version"]) == (33.0, 1001.0, "v1")
    assert (two["defer"], two["prefill_engine"], two["path"], two["wait_for"]) == (
        1, None, "defer", int(WaitFor.PREFILL))
    assert (three["path"], three["decode_share"]) == ("pe", 0.0)
    for row in (two, three):  # no shadow: every shadow column null
        assert all(row[k] is None for k in row if k.startswith("shadow_")), row
        assert row["scores"] is None and row["outcome"] is None


def test_outcome_goes_to_the_latest_placed_decision_once(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url, flush_interval_s=10.0)
    snap = _snapshot(points)
    log.record_call(snap, "tiny:x", 0.0, [_row(1, Decision(0, 2)), _row(2, Defer())])
    log.record_call(snap, "tiny:x", 1.0, [_row(2, Decision(1, 3, 1.0)), _row(2, Defer()),
                                          _row(1, Decision(0, 2), client_id="other")])
    # Queued behind the decisions above, in the same write: order holds within a write.
    log.record_outcome("c", 1, {"ttft_s": 0.5, "latency_s": 2.0})
    log.record_outcome("c", 1, {"ttft_s": 9.0})  # a repeat: ignored
    log.record_outcome("c", 2, {"ttft_s": 0.7})
    log.record_outcome("c", 99, {"ttft_s": 1.0})  # never decided: nothing to attach to
    log.close()
    rows = _rows(url, "SELECT client_id, request_id, defer, decode_share, outcome, "
                      "completed_at FROM decisions ORDER BY decision_id")
    got = [(r[0], r[1], r[2], json.loads(r[4]) if r[4] else None) for r in rows]
    assert got == [("c", 1, 0, {"ttft_s": 0.5, "latency_s": 2.0}), ("c", 2, 1, None),
                   ("c", 2, 0, {"ttft_s": 0.7}), ("c", 2, 1, None), ("other", 1, 0, None)]
    assert all((r[5] is not None) == (r[4] is not None) for r in rows)


def test_flush_and_close_commit_everything(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url, flush_interval_s=60.0)
    n = _record_all(log, points[:12])
    log.record_outcome("c", points[0][0].request_id, {"ttft_s": 1.0})
    assert log.pending == n + 1
    assert _rows(url, "SELECT count(*) FROM decisions")[0][0] == 0  # nothing written yet
    log.flush()
    assert log.pending == 0 and log.stats.written == n + 1
    assert _rows(url, "SELECT count(*) FROM decisions")[0][0] == n
    _record_all(log, points[12:24])
    log.close()
    log.close()  # idempotent
    assert log.pending == 0
    assert _rows(url, "SELECT count(*) FROM decisions")[0][0] == 24
    with pytest.raises(RuntimeError, match="closed"):
        log.record_call(_snapshot(points), "tiny:x", 0.0, [_row(1, Defer())])
    with pytest.raises(RuntimeError, match="closed"):
        log.record_outcome("c", 1, {})


def test_sqlite_runs_in_wal_mode(tmp_path):
    log = DecisionLog(_url(tmp_path))
    log.close()
    conn = sqlite3.connect(tmp_path / "log.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_rows_commit_after_the_interval_without_flush(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url, flush_interval_s=0.05)
    n = _record_all(log, points[:9])
    # No flush: the writer commits on its own. The wait is generous only because the
    # writer is a fresh process (seconds to start on a loaded machine).
    _wait(lambda: _rows(url, "SELECT count(*) FROM decisions")[0][0] == n, timeout_s=10.0)
    # It commits, then acknowledges: the rows can be seen a moment before the
    # acknowledgement is read back.
    _wait(lambda: log.pending == 0, timeout_s=10.0)
    log.close()


def test_a_write_error_keeps_the_writer_and_the_rows(tmp_path, points, capfd):
    url = _url(tmp_path)
    log = DecisionLog(url, flush_interval_s=0.02)
    _record_all(log, points[:6])
    log.flush()
    # The database now refuses decisions.
    _sql(tmp_path / "log.db", "ALTER TABLE decisions RENAME TO decisions_away")
    _record_all(log, points[6:12])
    log.record_outcome("c", points[0][0].request_id, {"ttft_s": 1.0})
    _wait(lambda: log.stats.errors >= 2)
    assert log._child.poll() is None and log.pending == 7
    assert "decision log write failed" in capfd.readouterr().err  # the writer's stderr
    with pytest.raises(TimeoutError):
        log.flush(timeout_s=0.1)
    _sql(tmp_path / "log.db", "ALTER TABLE decisions_away RENAME TO decisions")
    log.flush(timeout_s=5.0)
    assert log.pending == 0 and log.stats.dropped == 0 and log.stats.written == 13
    # A failed write left nothing behind: no view without its decisions.
    assert _rows(url, "SELECT count(*) FROM views")[0][0] == 4
    assert _rows(url, "SELECT count(*) FROM decisions WHERE outcome IS NOT NULL")[0][0] == 1
    log.close()


def test_the_queue_drops_its_oldest_rows_beyond_max_pending(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url, flush_interval_s=0.02, max_pending=4)
    _sql(tmp_path / "log.db", "ALTER TABLE decisions RENAME TO decisions_away")
    n = _record_all(log, points[:12])  # 4 calls of 3 rows
    _wait(lambda: log.pending == 3)  # all but the newest call dropped
    _sql(tmp_path / "log.db", "ALTER TABLE decisions_away RENAME TO decisions")
    log.close()
    stats = log.stats
    assert stats.dropped == 9 and stats.written == 3 and stats.written + stats.dropped == n
    assert [r[0] for r in _rows(url, "SELECT request_id FROM decisions")] == [
        p[0].request_id for p in points[9:12]]  # the newest call survived


def test_an_in_memory_url_is_refused():
    # The writer is another process: it could not see this one's memory.
    with pytest.raises(ValueError, match="in-memory database"):
        DecisionLog("sqlite://")


def test_a_dead_writer_counts_its_rows_as_dropped(tmp_path, points):
    log = DecisionLog(_url(tmp_path), flush_interval_s=0.02)
    _record_all(log, points[:3])
    log.flush()
    log._child.kill()
    log._child.wait()
    _wait(lambda: log._closed)
    with pytest.raises(RuntimeError, match="closed"):
        _record_all(log, points[3:6])
    assert log.stats.written == 3 and log.pending == 0
    log.close()


def test_export_writes_one_row_per_decision_with_its_view(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url)
    n = _record_all(log, points[:12])
    first, second = points[0][0].request_id, points[1][0].request_id
    log.record_outcome("c", first, {"ttft_s": 0.5, "latency_s": 3.0})
    log.record_outcome("c", second, {"ttft_s": 0.25})
    log.close()
    out = tmp_path / "log.parquet"
    assert export(url, out, chunk_rows=5) == n  # several chunks
    table = pq.read_table(out)
    assert table.num_rows == n
    for name in ("decision_id", "view_id", "batch_index", "request_id", "defer", "decode_share",
                 "path", "shadow_spec", "latency_us", "outcome", "cluster", "view_time_s",
                 "engine_seq", "engine_tok", "engine_free_hbm_bytes", "node_read_q_tokens",
                 "snapshot", "outcome_ttft_s", "outcome_latency_s"):
        assert name in table.column_names, name
    rows = table.to_pylist()
    by_id = {r["request_id"]: r for r in rows}
    assert (by_id[first]["outcome_ttft_s"], by_id[first]["outcome_latency_s"]) == (0.5, 3.0)
    assert (by_id[second]["outcome_ttft_s"], by_id[second]["outcome_latency_s"]) == (0.25, None)
    for k, (request, _) in enumerate(points[:12]):
        view = points[k - k % CALL][1]  # each call logs the view of its first request
        row = by_id[request.request_id]
        assert row["batch_index"] == k % CALL and row["view_time_s"] == view.time_s
        assert row["engine_seq"] == [e.seq for e in view.engines]
        assert row["engine_tok"] == [e.tok for e in view.engines]
        assert row["engine_free_hbm_bytes"] == [e.free_hbm_bytes for e in view.engines]
        assert row["node_read_q_tokens"] == [nd.read_q_tokens for nd in view.nodes]
        assert row["snapshot"] == view_to_pb(view).SerializeToString()
    assert str(table.schema.field("engine_seq").type) == "list<element: int64>"


def test_export_of_an_empty_log_and_of_no_log(tmp_path):
    url = _url(tmp_path)
    DecisionLog(url).close()
    assert export(url, tmp_path / "empty.parquet") == 0
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0 and "engine_seq" in table.column_names
    other = tmp_path / "other.db"
    _sql(other, "CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="no decision log"):
        export(f"sqlite:///{other}", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no such database file"):
        export(_url(tmp_path, "missing.db"), tmp_path / "x.parquet")
    assert not (tmp_path / "missing.db").exists()


def test_agree_replays_the_logged_calls(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url)
    n = _record_all(log, points)
    log.close()
    same = agree(url, resolve_policy("dualpath", cluster=SPEC).policy, SPEC)
    assert (same["decisions"], same["agreed"], same["rate"]) == (n, n, 1.0)
    assert same["by_version"] == {"dualpath@1": {"decisions": n, "agreed": n, "rate": 1.0}}
    assert same["by_part"] == {"prefill": 1.0, "decode": 1.0, "share": 1.0}
    other = agree(url, resolve_policy("pe_only", cluster=SPEC).policy, SPEC)
    assert other["decisions"] == n and other["rate"] < 1.0
    assert other["by_part"]["share"] < 1.0


class Spy:
    """pe_only, remembering every view it is asked on."""

    name = "spy"

    def __init__(self) -> None:
        self.inner = resolve_policy("pe_only").policy
        self.views: list[ClusterView] = []

    def decide(self, request: Request, view: ClusterView):
        self.views.append(view)
        return self.inner.decide(request, view)


def test_agree_applies_the_logged_decisions_not_the_candidates(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url)
    _record_all(log, points)
    log.close()
    # The views dualpath decided on when logging: each after the logged reservations.
    policy, expected = resolve_policy("dualpath").policy, []
    for i in range(0, len(points), CALL):
        view = points[i][1]
        for request, _ in points[i:i + CALL]:
            expected.append(view)
            answer = policy.decide(request, view)
            if isinstance(answer, Decision):
                view = reserve(view, request, answer)
    spy = Spy()
    assert agree(url, spy, SPEC)["rate"] < 1.0  # the spy's own choices differ...
    assert [(v.engines, v.nodes, v.queue, v.time_s) for v in spy.views] == [
        (v.engines, v.nodes, v.queue, v.time_s) for v in expected]  # ...and are never applied


def test_agree_refuses_another_cluster(tmp_path, points):
    url = _url(tmp_path)
    log = DecisionLog(url)
    _record_all(log, points[:6])
    log.close()
    assert cluster_of(url) == cluster_digest(SPEC)
    other = load_preset("ds27b-1p1d")
    with pytest.raises(ValueError, match=cluster_digest(other)):
        agree(url, resolve_policy("dualpath", cluster=other).policy, other)
    empty = _url(tmp_path, "empty.db")
    DecisionLog(empty).close()
    assert cluster_of(empty) is None
    assert agree(empty, resolve_policy("dualpath").policy, SPEC)["rate"] is None
