"""The canary through a real server: SetCanary, GetCanary, PromoteCanary, the rollback the
service does by itself, its metrics and decision-log rows, and calls under changes.

The statistics and the core without gRPC: ``test_canary_stats.py``.
"""

from __future__ import annotations

import functools
import math
import random
import sqlite3
import threading
import time
import urllib.request
from dataclasses import replace
from typing import Any

import grpc
import pytest

from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN, SCHEDULER
from tests.policy_service.conftest import TOKEN, Client, schedule_msg, sim_points


@functools.cache
def _points() -> list[tuple[Any, Any]]:
    return sim_points(60)


_CANARY_CALLS = {"GetCanary": SCHEDULER, "SetCanary": ADMIN, "PromoteCanary": ADMIN}


def canary_call(client: Client, name: str, msg: Any, token: str | None = TOKEN) -> Any:
    """One canary RPC on ``client``'s channel (admin ones with ``token``)."""
    service = _CANARY_CALLS[name]
    stub = client.channel.unary_unary(f"/{service}/{name}",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=pb.CanaryStatus.FromString)
    metadata = ([("authorization", f"Bearer {token}")]
                if service == ADMIN and token is not None else None)
    return stub(msg, timeout=120, metadata=metadata)


def status(client: Client, samples: bool = False) -> Any:
    return canary_call(client, "GetCanary", pb.GetCanaryRequest(samples=samples))


class Traffic:
    """Schedule, then Complete with a synthetic outcome: each request its own session (its
    agent id), from ``first`` on. ``outcome(version, rng)`` gives (TTFT, JCT) for the
    policy version that answered."""

    def __init__(self, target: str, client_id: str, first: int = 0,
                 outcome: Any = None) -> None:
        self.client = Client(target)
        self.client_id = client_id
        self.next = first
        self.rng = random.Random(first)
        self.outcome = outcome or self.worse_pe_only

    @staticmethod
    def worse_pe_only(version: str, rng: random.Random) -> tuple[float, float]:
        """pe_only's TTFT three times the others' (JCT 2 s more than the TTFT)."""
        ttft = (0.9 if ":pe_only" in version else 0.3) * rng.uniform(0.8, 1.2)
        return ttft, ttft + 2.0

    def one(self) -> pb.Decision:
        k = self.next
        self.next += 1
        points = _points()
        request, view = points[k % len(points)]
        msg = schedule_msg(replace(request, request_id=k, agent_id=k), view, self.client_id)
        reply = self.client.Schedule(msg, timeout=10)
        ttft, jct = self.outcome(reply.policy_version, self.rng)
        self.client.Complete(pb.CompleteRequest(request_id=k, client_id=self.client_id,
                                                outcome={"ttft_s": ttft, "latency_s": jct}),
                             timeout=10)
        return reply

    def until(self, admin: Client, state: str, most: int = 3000) -> list[pb.Decision]:
        """Calls until GetCanary says ``state`` (checked every 10 calls); the replies."""
        replies = []
        while status(admin).state != state:
            assert len(replies) < most, f"not {state} after {most} requests: {status(admin)}"
            replies += [self.one() for _ in range(10)]
        return replies

    def close(self) -> None:
        self.client.close()


def _metrics(server: Any) -> str:
    port = server.server.metrics_port
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


@pytest.mark.parametrize("spec,share,message", [
    ("pe_only", 0.0, r"share must lie in the open interval (0, 1), got 0.0"),
    ("pe_only", 1.0, r"share must lie in the open interval (0, 1), got 1.0"),
    ("pe_only", 1.5, r"share must lie in the open interval (0, 1), got 1.5"),
    ("pe_only", math.nan, r"share must lie in the open interval (0, 1), got nan"),
    ("", 0.2, "share 0.2 given with an empty spec"),
])
def test_bad_canaries_are_invalid_arguments_naming_the_problem(served, spec, share, message):
    _server, client = served
    with pytest.raises(grpc.RpcError) as err:
        canary_call(client, "SetCanary", pb.SetCanaryRequest(spec=spec, share=share))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert status(client).state == "none"


def test_canary_admin_calls_need_the_token_and_a_canary_to_promote(served):
    _server, client = served
    assert status(client).state == "none"
    with pytest.raises(grpc.RpcError) as err:
        canary_call(client, "SetCanary", pb.SetCanaryRequest(spec="pe_only", share=0.2),
                    token="wrong")
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        canary_call(client, "PromoteCanary", pb.PromoteCanaryRequest())
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no canary is running" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        canary_call(client, "SetCanary", pb.SetCanaryRequest(spec="no_such_policy", share=0.2))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert status(client).state == "none"


def test_a_worse_challenger_is_rolled_back_by_the_service(start_server, tmp_path):
    server = start_server(metrics_port=0)
    admin = Client(server.target)
    set_reply = canary_call(admin, "SetCanary", pb.SetCanaryRequest(spec="pe_only", share=0.5))
    assert (set_reply.state, set_reply.share) == ("running", 0.5)
    assert (set_reply.champion.spec, set_reply.challenger.spec) == ("dualpath", "pe_only")
    assert (set_reply.max_regression, set_reply.min_completions) == (0.1, 50)
    assert "dualpath_canary_share 0.5" in _metrics(server)
    traffic = Traffic(server.target, "load")
    before = traffic.until(admin, "rolled_back")
    canary_version = set_reply.challenger.version
    assert sum(r.policy_version == canary_version for r in before) >= 50
    after = [traffic.one() for _ in range(60)]
    assert {r.policy_version for r in after} == {set_reply.champion.version}
    final = status(admin, samples=True)
    assert final.reason.startswith("ttft: challenger mean ")
    assert "past the +10% bound" in final.reason
    assert min(final.champion.completions, final.challenger.completions) == 50
    assert len(final.challenger.ttft_s) == final.challenger.completions
    assert final.challenger.ttft_mean_s > 2 * final.champion.ttft_mean_s
    text = _metrics(server)
    assert 'dualpath_canary_rollbacks_total{reason="ttft"} 1.0' in text
    assert "dualpath_canary_share 0.0" in text
    assert 'dualpath_policy_swaps_total{kind="canary"} 1.0' in text
    traffic.close()
    admin.close()
    server.stop()  # flushes the decision log
    with sqlite3.connect(tmp_path / "decisions.db") as conn:
        events = conn.execute("SELECT event, spec, version, share, reason, at "
                              "FROM canary_events ORDER BY event_id").fetchall()
        rows = conn.execute("SELECT arm, policy_version, decided_at, request_id "
                            "FROM decisions WHERE client_id = 'load'").fetchall()
    assert [e[:4] for e in events] == [("set", "pe_only", canary_version, 0.5),
                                       ("rolled_back", "pe_only", canary_version, 0.5)]
    assert events[1][4] == final.reason
    rolled_back_at = events[1][5]
    canary_rows = [r for r in rows if r[0] == "canary"]
    assert len(canary_rows) >= 50 and {r[1] for r in canary_rows} == {canary_version}
    assert max(r[2] for r in canary_rows) <= rolled_back_at
    last_before = max(r.request_id for r in before)
    assert {r[0] for r in rows if r[3] > last_before} == {"champion"}


def test_promote_makes_the_challenger_current_and_rollback_restores_the_champion(
        start_server, tmp_path):
    server = start_server(metrics_port=0)
    admin = Client(server.target)
    canary_call(admin, "SetCanary", pb.SetCanaryRequest(spec="least_tokens", share=0.3))
    traffic = Traffic(server.target, "load")
    replies = [traffic.one() for _ in range(60)]
    assert {":least_tokens" in r.policy_version for r in replies} == {True, False}
    promoted = canary_call(admin, "PromoteCanary", pb.PromoteCanaryRequest())
    assert promoted.state == "promoted" and "least_tokens" in promoted.reason
    info = admin.GetPolicy(pb.GetPolicyRequest(), timeout=5)
    assert (info.spec, info.previous_spec) == ("least_tokens", "dualpath")
    assert {":least_tokens" in traffic.one().policy_version for _ in range(20)} == {True}
    assert admin.admin("Rollback", pb.RollbackRequest()).spec == "dualpath"
    assert {":dualpath" in traffic.one().policy_version for _ in range(20)} == {True}
    text = _metrics(server)
    assert 'dualpath_policy_swaps_total{kind="promote"} 1.0' in text
    assert "dualpath_canary_share 0.0" in text
    traffic.close()
    admin.close()
    server.stop()
    with sqlite3.connect(tmp_path / "decisions.db") as conn:
        events = [e[0] for e in conn.execute("SELECT event FROM canary_events "
                                             "ORDER BY event_id")]
    assert events == ["set", "promoted"]


class _Load:
    """Threads making Schedule and Complete calls back to back; failures recorded."""

    def __init__(self, target: str, threads: int = 2) -> None:
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.calls = 0
        self._threads = [threading.Thread(target=self._run, args=(target, i))
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, target: str, i: int) -> None:
        traffic = Traffic(target, f"load{i}", first=i * 10_000_000)
        while not self.stop.is_set():
            try:
                self.versions.add(traffic.one().policy_version)
                self.calls += 1
            except grpc.RpcError as err:
                self.failures.append(f"{err.code().name}: {err.details()}")
        traffic.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)


def _wait_for(admin: Client, state: str, limit_s: float = 120.0) -> Any:
    start = time.monotonic()
    while (now := status(admin)).state != state:
        assert time.monotonic() - start < limit_s, f"not {state} within {limit_s} s: {now}"
        time.sleep(0.05)
    return now


def test_no_call_fails_while_canaries_are_set_rolled_back_promoted_and_ended(start_server):
    server = start_server()
    admin = Client(server.target)
    load = _Load(server.target)
    try:
        canary_call(admin, "SetCanary", pb.SetCanaryRequest(spec="pe_only", share=0.3))
        assert _wait_for(admin, "rolled_back").reason.startswith("ttft: ")
        canary_call(admin, "SetCanary", pb.SetCanaryRequest(spec="least_tokens", share=0.3))
        time.sleep(0.3)
        assert canary_call(admin, "PromoteCanary", pb.PromoteCanaryRequest()).state == \
            "promoted"
        time.sleep(0.3)
        assert admin.admin("Rollback", pb.RollbackRequest()).spec == "dualpath"
        canary_call(admin, "SetCanary", pb.SetCanaryRequest(spec="round_robin", share=0.5))
        time.sleep(0.3)
        assert canary_call(admin, "SetCanary", pb.SetCanaryRequest()).state == "ended"
        time.sleep(0.2)
    finally:
        load.finish()
    assert load.failures == []
    assert load.calls > 100
    served = {v.split(":", 1)[1] for v in load.versions}
    assert {"dualpath", "pe_only", "least_tokens", "round_robin"} <= served
    admin.close()
