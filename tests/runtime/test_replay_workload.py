"""Sessions rebuilt from logged turns, and their closed-loop replay."""

from __future__ import annotations

import json

import pytest

from runtime.workload.replay import (
    ID_STRIDE,
    LoggedTurn,
    ReplayWorkload,
    Session,
    Turn,
    build_sessions,
    read_sessions,
    write_sessions,
)


def turn(session: str, arrival: float, latency: float | None, hit: int = 0) -> LoggedTurn:
    return LoggedTurn(session, arrival, hit, 100, 10, "interactive", latency)


def test_think_time_is_the_gap_after_the_previous_finish():
    rebuilt = build_sessions([
        turn("b", 12.0, 1.0), turn("a", 10.0, 2.0), turn("a", 13.5, 1.0, hit=100),
        turn("a", 14.0, None, hit=200)])
    a, b = rebuilt.sessions
    assert (a.session_id, a.start_s, b.session_id, b.start_s) == ("a", 0.0, "b", 2.0)
    assert [t.think_s for t in a.turns] == [0.0, 1.5, 0.0]  # 13.5 - (10 + 2); 14 < 13.5 + 1
    assert [t.hit_tokens for t in a.turns] == [0, 100, 200]
    assert rebuilt.turns == 4 and rebuilt.without_outcome == 0


def test_a_turn_after_one_without_outcome_is_counted():
    rebuilt = build_sessions([turn("a", 0.0, None), turn("a", 5.0, 1.0)])
    assert rebuilt.without_outcome == 1
    assert rebuilt.sessions[0].turns[1].think_s == 0.0


def test_replay_is_closed_loop():
    sessions = [Session("a", 0.0, (Turn(0, 100, 10, "interactive", 0.0),
                                   Turn(100, 50, 10, "batch", 2.5))),
                Session("b", 1.0, (Turn(0, 80, 5, "interactive", 0.0),))]
    workload = ReplayWorkload(sessions)
    first = workload.initial_requests()
    assert [(r.agent_id, r.turn, r.arrival_s) for r in first] == [(0, 0, 0.0), (1, 0, 1.0)]
    (nxt,) = workload.on_complete(first[0], finish_s=7.0)
    assert (nxt.arrival_s, nxt.hit_tokens, nxt.appended_tokens, nxt.slo_class) == (
        9.5, 100, 50, "batch")
    assert nxt.request_id == 1 and first[1].request_id == ID_STRIDE
    assert workload.on_complete(nxt, 20.0) == []
    assert workload.on_complete(first[1], 3.0) == []


def test_a_seed_is_a_bootstrap_resample():
    sessions = [Session(str(i), float(i), (Turn(0, 10 + i, 1, "interactive", 0.0),))
                for i in range(20)]
    one, again, other = (ReplayWorkload(sessions, seed) for seed in (3, 3, 4))
    ids = [s.session_id for s in one.sessions]
    assert ids == [s.session_id for s in again.sessions]
    assert ids != [s.session_id for s in other.sessions]
    assert len(ids) == 20 and len(set(ids)) < 20  # drawn with replacement
    # A session drawn twice is two agents.
    assert len({r.agent_id for r in one.initial_requests()}) == 20
    assert [s.session_id for s in ReplayWorkload(sessions).sessions] == [str(i)
                                                                         for i in range(20)]


def test_the_sessions_file_round_trips(tmp_path):
    sessions = [Session("a", 0.5, (Turn(0, 100, 10, "interactive", 0.0),
                                   Turn(100, 20, 3, "batch", 1.25)))]
    path = tmp_path / "s.json"
    write_sessions(path, sessions, cluster="tiny:abc")
    back, about = read_sessions(path)
    assert back == sessions and about["cluster"] == "tiny:abc"


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "cannot read"),
    (json.dumps({"format": "other"}), "not a dualpath-sessions file"),
    (json.dumps({"format": "dualpath-sessions", "version": 9}), "version 9"),
    (json.dumps({"format": "dualpath-sessions", "version": 1, "sessions": []}), "no sessions"),
    (json.dumps({"format": "dualpath-sessions", "version": 1,
                 "sessions": [{"id": "a", "start_s": 0, "turns": [[0, 0, 1, "interactive", 0]]}]}),
     "empty prompt"),
    (json.dumps({"format": "dualpath-sessions", "version": 1,
                 "sessions": [{"id": "a", "start_s": 0, "turns": [[0, 5, 1, "gold", 0]]}]}),
     "unknown class"),
])
def test_a_bad_sessions_file_is_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_sessions(path)
    assert str(path) in str(err.value)


def test_bad_sessions_are_refused():
    with pytest.raises(ValueError, match="at least one session"):
        ReplayWorkload([])
    with pytest.raises(ValueError, match="no turns"):
        Session("a", 0.0, ())
    with pytest.raises(ValueError, match="think_s"):
        Turn(0, 1, 1, "interactive", -1.0)
    with pytest.raises(ValueError, match="no turns to rebuild"):
        build_sessions([])
