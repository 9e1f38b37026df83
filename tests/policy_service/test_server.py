"""The service end to end over a real port: decisions, batches, its own view, admin, health."""

from __future__ import annotations

import math
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agents import resolve_policy
from policy_service.codec import decision_from_pb, request_to_pb, view_to_pb
from policy_service.proto import scheduler_pb2 as pb
from runtime.decision import Decision, Defer
from runtime.placement import reserve_view as reserve
from runtime.preset import load_preset
from tests.policy_service.conftest import Client, schedule_msg, sim_points

SPEC = load_preset("ds27b-1p1d")


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_schedule_on_a_snapshot_decides_as_the_local_policy(served):
    _, client = served
    local = resolve_policy("dualpath").policy
    for request, view in sim_points(150):
        reply = client.Schedule(schedule_msg(request, view), timeout=5)
        assert decision_from_pb(reply) == _plain(local.decide(request, view))
        assert reply.policy_version.startswith("v1:dualpath") and reply.reason
        assert reply.request_id == request.request_id


def _plain(answer):
    return answer if answer is not None else Defer()


def test_a_batch_is_decided_in_order_with_reservations_between(served):
    _, client = served
    local = resolve_policy("dualpath").policy
    points = sim_points(64)
    view = points[0][1]
    requests = [r for r, _ in points]
    reply = client.ScheduleBatch(pb.ScheduleBatchRequest(
        requests=[request_to_pb(r) for r in requests], view=view_to_pb(view)), timeout=5)
    expected = []
    for request in requests:
        answer = _plain(local.decide(request, view))
        expected.append(answer)
        if isinstance(answer, Decision):
            view = reserve(view, request, answer)
    assert [decision_from_pb(d) for d in reply.decisions] == expected
    # Reservations matter: the batch does not put every request on one prefill engine.
    assert len({d.prefill_engine for d in reply.decisions if not d.defer}) > 1


def _report(client: Client, engines=None, time_s: float = 0.0, **fields) -> None:
    reports = [pb.EngineReport(engine_id=e, role=pb.PREFILL if e < SPEC.prefill_engines
                               else pb.DECODE, node_id=SPEC.node_of(e),
                               free_hbm_bytes=SPEC.node.de_hbm_kv_bytes, reporter_time_s=time_s,
                               **fields)
               for e in (range(SPEC.engines) if engines is None else engines)]
    ack = client.ReportEngineState(pb.EngineStateReport(engines=reports), timeout=5)
    assert ack.accepted == len(reports)


def test_own_view_skips_engines_that_stopped_reporting(start_server):
    server = start_server(engine_max_age_s=0.3)
    client = Client(server.target)
    request = sim_points(1)[0][0]
    reply = client.Schedule(schedule_msg(request, None), timeout=5)
    assert reply.defer, "nothing reported yet: no engine may be chosen"
    _report(client)
    reply = client.Schedule(schedule_msg(request, None), timeout=5)
    assert not reply.defer
    time.sleep(0.4)  # every report is now too old ...
    live = [0, SPEC.prefill_engines + 3]  # ... but one PE and one DE report again
    _report(client, live)
    chosen = set()
    for i in range(6):
        r = client.Schedule(schedule_msg(request, None, client_id=f"c{i}"), timeout=5)
        assert not r.defer, r.reason
        chosen.add((r.prefill_engine, r.decode_engine))
    assert chosen == {(0, SPEC.prefill_engines + 3)}
    client.close()


def test_own_view_reserves_until_complete_and_complete_is_idempotent(start_server):
    server = start_server()
    client = Client(server.target)
    _report(client)
    request = sim_points(1)[0][0]
    first = client.Schedule(schedule_msg(request, None, "a"), timeout=5)
    second = client.Schedule(schedule_msg(request, None, "b"), timeout=5)
    # The first decision's tokens are reserved, so the second goes elsewhere.
    assert (first.prefill_engine, first.decode_engine) != (second.prefill_engine,
                                                          second.decode_engine)
    done = pb.CompleteRequest(request_id=request.request_id, client_id="a",
                              outcome={"latency_s": 1.5})
    assert client.Complete(done, timeout=5).released
    assert not client.Complete(done, timeout=5).released  # a repeat is harmless
    third = client.Schedule(schedule_msg(request, None, "c"), timeout=5)
    assert (third.prefill_engine, third.decode_engine) == (first.prefill_engine,
                                                          first.decode_engine)
    client.close()


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m.request, "hit_tokens", -5), "hit_tokens must lie in"),
    (lambda m: setattr(m.request, "gen_tokens", 0), "gen_tokens must be >= 1"),
    (lambda m: setattr(m.request, "arrival_s", math.nan), "arrival_s must be a finite"),
    (lambda m: setattr(m.view, "time_s", math.inf), "time_s must be a finite"),
    (lambda m: setattr(m.view.engines[3], "tok", -1), "seq and tok must be >= 0"),
    (lambda m: setattr(m.view.engines[2], "engine_id", 99), "engine_id is 99"),
    (lambda m: m.view.engines.pop(), "engines and"),
    (lambda m: setattr(m.view.nodes[0], "read_q_tokens", math.nan), "read_q_tokens must be"),
    (lambda m: setattr(m.view, "cluster_digest", "other:0"), "describes another cluster"),
    (lambda m: m.ClearField("request"), "request is missing"),
])
def test_malformed_requests_get_invalid_argument(served, mutate, message):
    _, client = served
    request, view = sim_points(1)[0]
    msg = schedule_msg(request, view)
    mutate(msg)
    with pytest.raises(grpc.RpcError) as err:
        client.Schedule(msg, timeout=5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_bad_batches_and_reports_get_invalid_argument(start_server):
    server = start_server(max_batch=8)
    client = Client(server.target)
    points = sim_points(9)
    view = view_to_pb(points[0][1])
    cases = [
        (client.ScheduleBatch, pb.ScheduleBatchRequest(view=view), "at least one"),
        (client.ScheduleBatch, pb.ScheduleBatchRequest(
            requests=[request_to_pb(r) for r, _ in points], view=view), "at most 8"),
        (client.ReportEngineState, pb.EngineStateReport(engines=[pb.EngineReport(
            engine_id=SPEC.engines, role=pb.DECODE)]), "is not an engine"),
        (client.ReportEngineState, pb.EngineStateReport(engines=[pb.EngineReport(
            engine_id=0, role=pb.PREFILL, cnic_backlog_bytes=math.nan)]), "finite"),
        (client.Complete, pb.CompleteRequest(outcome={"x": math.nan}), "NaN"),
    ]
    for call, msg, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            call(msg, timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in err.value.details()
    client.close()


def test_admin_calls_need_the_token(served):
    _, client = served
    for token in (None, "wrong-token"):
        for name, msg in (("SwapPolicy", pb.SwapPolicyRequest(spec="pe_only")),
                          ("Rollback", pb.RollbackRequest()),
                          ("SetShadow", pb.SetShadowRequest(spec="pe_only"))):
            with pytest.raises(grpc.RpcError) as err:
                client.admin(name, msg, token=token)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert client.GetPolicy(pb.GetPolicyRequest(), timeout=5).spec == "dualpath"


def test_swap_refuses_a_bad_policy_and_keeps_serving_then_rolls_back(served):
    _, client = served
    for spec, why in (("no_such_policy", "unknown policy"),
                      ("dualpath:alpha_s=-1", "alpha_s"),
                      ("/nonexistent/policy.onnx", "cannot load")):
        with pytest.raises(grpc.RpcError) as err:
            client.admin("SwapPolicy", pb.SwapPolicyRequest(spec=spec))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert why in err.value.details()
    assert client.GetPolicy(pb.GetPolicyRequest(), timeout=5).spec == "dualpath"
    info = client.admin("SwapPolicy", pb.SwapPolicyRequest(spec="pe_only"))
    assert (info.spec, info.previous_spec, info.swaps) == ("pe_only", "dualpath", 2)
    request, view = sim_points(1)[0]
    assert "pe_only" in client.Schedule(schedule_msg(request, view), timeout=5).policy_version
    info = client.admin("Rollback", pb.RollbackRequest())
    assert (info.spec, info.previous_spec) == ("dualpath", "pe_only")


def test_health_is_not_serving_until_a_policy_loads(start_server, tmp_path):
    # Watching an alias of an empty registry: nothing to serve yet.
    server = start_server(policy=None, watch_alias="champion",
                          tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = Client(server.target)
    assert _health(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
    request, view = sim_points(1)[0]
    with pytest.raises(grpc.RpcError) as err:
        client.Schedule(schedule_msg(request, view), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    client.admin("SwapPolicy", pb.SwapPolicyRequest(spec="dualpath"))
    deadline = time.monotonic() + 2
    while _health(server.target) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "health did not turn SERVING after a swap"
        time.sleep(0.05)
    client.close()


def test_reflection_lists_the_services(served):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server, _ = served
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"dualpath.v1.Scheduler", "dualpath.v1.SchedulerAdmin",
            "grpc.health.v1.Health"} <= names


def test_shadow_decides_on_the_same_requests_and_is_counted(start_server):
    server = start_server(metrics_port=0)
    client = Client(server.target)
    client.admin("SetShadow", pb.SetShadowRequest(spec="pe_only"))
    points = sim_points(40)
    for request, view in points:
        reply = client.Schedule(schedule_msg(request, view), timeout=5)
        assert "dualpath" in reply.policy_version  # only the served policy answers
    server.server.core.drain_shadow()
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5).read().decode()
    assert "dualpath_shadow_decisions_total 40.0" in text
    assert 'dualpath_decisions_total{path="' in text
    assert "dualpath_call_latency_seconds_bucket" in text
    rate = float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("dualpath_shadow_agreement_rate ")))
    assert 0.0 <= rate < 1.0  # pe_only never reads on the DE path, dualpath often does
    client.close()
