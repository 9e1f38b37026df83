"""Fuzzing the service: random bytes and random field values, 5,000+ messages in all.

Every answer must be a clean status (OK, or an error the API documents with a
message); the server must still serve a valid request afterwards.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN, SCHEDULER
from tests.policy_service.conftest import schedule_msg, sim_points

METHODS = [(SCHEDULER, m) for m in ("Schedule", "ScheduleBatch", "ReportEngineState",
                                    "Complete", "GetPolicy", "Ping")]
METHODS += [(ADMIN, m) for m in ("SwapPolicy", "Rollback", "SetShadow")]
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED}
EXAMPLES = 2_600  # per test, two tests: over 5,000 messages

ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 70_000))
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@pytest.fixture(scope="module")
def server_and_calls(tmp_path_factory):
    from dataclasses import replace

    from policy_service.server import ServeConfig
    from tests.policy_service.conftest import RunningServer

    db = tmp_path_factory.mktemp("fuzz") / "decisions.db"
    server = RunningServer(replace(ServeConfig(port=0, db=f"sqlite:///{db}"), log_flush_s=0.05))
    channel = grpc.insecure_channel(server.target)
    calls = {m: channel.unary_unary(f"/{s}/{m}", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b) for s, m in METHODS}
    yield server, calls
    # Still alive and deciding after everything.
    request, view = sim_points(1)[0]
    reply = pb.Decision.FromString(calls["Schedule"](
        schedule_msg(request, view).SerializeToString(), timeout=5))
    assert reply.policy_version
    channel.close()
    server.stop()


def _status(call, raw: bytes) -> grpc.StatusCode:
    try:
        call(raw, timeout=5)
    except grpc.RpcError as err:
        assert err.details(), "an error without a message"
        return err.code()
    return grpc.StatusCode.OK


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from([m for _, m in METHODS]), raw=st.binary(max_size=300))
def test_random_bytes_get_clean_statuses(server_and_calls, method, raw):
    _, calls = server_and_calls
    assert _status(calls[method], raw) in CLEAN


_BASE = []


def _base():
    if not _BASE:
        request, view = sim_points(1)[0]
        _BASE.append(schedule_msg(request, view))
    return _BASE[0]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_field_values_get_clean_statuses(server_and_calls, data):
    _, calls = server_and_calls
    msg = pb.ScheduleRequest()
    msg.CopyFrom(_base())
    for _ in range(data.draw(st.integers(1, 4))):
        target = data.draw(st.sampled_from(["request", "engine", "node", "view"]))
        if target == "request":
            field = data.draw(st.sampled_from(["request_id", "agent_id", "turn", "hit_tokens",
                                               "appended_tokens", "gen_tokens", "arrival_s"]))
            obj = msg.request
        elif target == "engine":
            obj = msg.view.engines[data.draw(st.integers(0, len(msg.view.engines) - 1))]
            field = data.draw(st.sampled_from(["engine_id", "node_id", "group", "seq", "tok",
                                               "free_hbm_bytes", "cnic_busy_until_s"]))
        elif target == "node":
            obj = msg.view.nodes[data.draw(st.integers(0, len(msg.view.nodes) - 1))]
            field = data.draw(st.sampled_from(["node_id", "read_q_tokens", "snic_bytes_s",
                                               "free_buffer_bytes"]))
        else:
            obj = msg.view
            field = data.draw(st.sampled_from(["time_s", "queue_requests", "queue_tokens"]))
        kind = obj.DESCRIPTOR.fields_by_name[field].cpp_type
        if kind == obj.DESCRIPTOR.fields_by_name[field].CPPTYPE_DOUBLE:
            setattr(obj, field, data.draw(floats))
        else:
            bits = 32 if kind in (1, 3) else 64  # INT32, UINT32
            value = data.draw(ints)
            setattr(obj, field, max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, value)))
    if data.draw(st.booleans()):
        batch = pb.ScheduleBatchRequest(requests=[msg.request] * data.draw(st.integers(0, 3)),
                                        view=msg.view)
        assert _status(calls["ScheduleBatch"], batch.SerializeToString()) in CLEAN
    else:
        assert _status(calls["Schedule"], msg.SerializeToString()) in CLEAN
