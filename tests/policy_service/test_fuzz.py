"""Fuzzing the service: random bytes and random field values, 5,000+ messages in all,
the admin calls with the valid token (so their parsing is reached) and without one, and
``SwapPolicy`` and ``SetShadow`` with random and near-valid policy specs.

Every answer must be a clean status (OK, or an error the API documents with a
message); the server must still serve a valid request afterwards.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import HEURISTICS
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN, SCHEDULER
from tests.policy_service.conftest import TOKEN, schedule_msg, sim_points

METHODS = [(SCHEDULER, m) for m in ("Schedule", "ScheduleBatch", "ReportEngineState",
                                    "Complete", "GetPolicy", "Ping")]
ADMIN_METHODS = ["SwapPolicy", "Rollback", "SetShadow"]
METHODS += [(ADMIN, m) for m in ADMIN_METHODS]
# A refused policy is FAILED_PRECONDITION; Rollback with nothing to go back to too.
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
         grpc.StatusCode.FAILED_PRECONDITION}
AUTH = [("authorization", f"Bearer {TOKEN}")]
EXAMPLES = 2_600  # per test, two tests: over 5,000 messages

ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 70_000))
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@pytest.fixture(scope="module")
def server_and_calls(tmp_path_factory):
    from dataclasses import replace

    from policy_service.server import ServeConfig
    from tests.policy_service.conftest import RunningServer

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "token").write_text(TOKEN + "\n")
    server = RunningServer(replace(ServeConfig(port=0, db=f"sqlite:///{folder / 'decisions.db'}"),
                                   admin_token_file=str(folder / "token"), log_flush_s=0.05))
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


def _status(call, raw: bytes, metadata=None) -> grpc.StatusCode:
    try:
        call(raw, timeout=30, metadata=metadata)
    except grpc.RpcError as err:
        assert err.details(), "an error without a message"
        return err.code()
    return grpc.StatusCode.OK


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from([m for _, m in METHODS]), raw=st.binary(max_size=300))
def test_random_bytes_get_clean_statuses(server_and_calls, method, raw):
    _, calls = server_and_calls
    admin = method in ADMIN_METHODS
    assert _status(calls[method], raw, AUTH if admin else None) in CLEAN


ADMIN_MESSAGES = {"SwapPolicy": lambda text: pb.SwapPolicyRequest(spec=text),
                  "Rollback": lambda text: pb.RollbackRequest(),
                  "SetShadow": lambda text: pb.SetShadowRequest(spec=text)}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(ADMIN_METHODS), text=st.text(max_size=40),
       token=st.one_of(st.none(), st.text(  # what a header value may hold
           st.characters(min_codepoint=33, max_codepoint=126), max_size=30)))
def test_admin_calls_without_the_token_are_refused(server_and_calls, method, text, token):
    """Well-formed admin calls with no token or a wrong one: refused, whatever they ask."""
    _, calls = server_and_calls
    if token == TOKEN:
        return
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    raw = ADMIN_MESSAGES[method](text).SerializeToString()
    assert _status(calls[method], raw, metadata) is grpc.StatusCode.UNAUTHENTICATED


# Every heuristic, and near misses of them.
NAMES = [*HEURISTICS, "dualpth", "pretrained", "grpc", "", "DUALPATH"]
KEYS = ["alpha_s", "beta_s", "z_slack", "layerwise", "oracle", "speed", "", "alpha"]
VALUES = st.one_of(st.sampled_from(["1", "-1", "0", "nan", "inf", "true", "x", "1e309", ""]),
                   st.text(max_size=8))
PARAMS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3).map(
    lambda kv: ",".join(f"{k}={v}" for k, v in kv))
SPECS = st.one_of(
    st.text(max_size=60),
    st.builds(lambda n, p: f"{n}:{p}" if p else n, st.sampled_from(NAMES), PARAMS),
    st.builds(lambda n: f"pretrained:{n}", st.sampled_from(["paper-offline", "nope", "", "../x"])),
    st.sampled_from(["grpc://127.0.0.1:1", "/no/such/artifact", "policy.onnx", ".", "/"]))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["SwapPolicy", "SetShadow"]), spec=SPECS)
def test_policy_specs_get_clean_statuses(server_and_calls, method, spec):
    """With the token, any spec to ``SwapPolicy`` or ``SetShadow``: taken (OK), or refused
    with a message (INVALID_ARGUMENT, FAILED_PRECONDITION); the server then still decides
    with whatever it serves."""
    _, calls = server_and_calls
    msg = ADMIN_MESSAGES[method](spec).SerializeToString()
    assert _status(calls[method], msg, AUTH) in CLEAN
    reply = pb.Decision.FromString(calls["Schedule"](_base().SerializeToString(), timeout=30))
    assert reply.policy_version


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
