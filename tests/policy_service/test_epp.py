"""The endpoint picker over a real gRPC server: Envoy's ext_proc messages in, routing out."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from grpc_health.v1 import health_pb2, health_pb2_grpc

from policy_service.proto import scheduler_pb2 as pb
from runtime.preset import load_preset
from runtime.serving import headers as h
from tests.policy_service.conftest import Client

SPEC = load_preset("ds27b-1p1d")
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def endpoint(engine: int) -> str:
    return f"10.0.0.{engine}:8000"


def report(client: Client, free_hbm: float = SPEC.node.de_hbm_kv_bytes, tok: int = 0) -> None:
    client.ReportEngineState(pb.EngineStateReport(engines=[pb.EngineReport(
        engine_id=e, role=pb.PREFILL if e < SPEC.prefill_engines else pb.DECODE,
        node_id=SPEC.node_of(e), free_hbm_bytes=free_hbm, tok=tok * e, endpoint=endpoint(e))
        for e in range(SPEC.engines)]), timeout=5)


def header_msg(path: str = "/v1/completions", end: bool = False, duplex: bool = False,
               **extra: str) -> ep.ProcessingRequest:
    pairs = {":path": path, ":method": "POST", **{k.replace("_", "-"): v
                                                  for k, v in extra.items()}}
    msg = ep.ProcessingRequest(request_headers=ep.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode())
                                            for k, v in pairs.items()]), end_of_stream=end))
    if duplex:
        msg.protocol_config.request_body_mode = \
            processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
    return msg


def body_msg(body: bytes, end: bool = True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=end))


def completion(prompt: str = "hello " * 30, **fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": prompt, "max_tokens": 4, **fields}).encode()


def process(target: str, *messages: ep.ProcessingRequest, timeout: float = 20
            ) -> list[ep.ProcessingResponse]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(PROCESS, request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=ep.ProcessingResponse.FromString)
        return list(call(iter(messages), timeout=timeout))


def set_headers(resp: ep.ProcessingResponse, phase: str = "request_body") -> dict[str, str]:
    common = getattr(resp, phase).response
    return {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}


@pytest.fixture
def picker(start_server):
    server = start_server(epp_port=0, epp_max_wait_s=0.5)
    client = Client(server.target)
    yield server, client, f"127.0.0.1:{server.server.epp_port}"
    client.close()


def test_a_request_is_routed_to_the_engines_the_policy_chose(picker) -> None:
    server, client, epp = picker
    report(client)
    first, routed = process(epp, header_msg(x_session_id="s1"), body_msg(completion()))
    assert first.request_headers.response.status == ep.CommonResponse.CONTINUE
    got = set_headers(routed)
    decode = got[h.DESTINATION].split(",")
    assert len(decode) == SPEC.decode_engines  # the choice, then every other decode engine
    engines = {endpoint(e): e for e in range(SPEC.engines)}
    de, pe = engines[decode[0]], engines[got[h.PREFILLER]]
    assert SPEC.role_of(de).value == "decode" and SPEC.role_of(pe).value == "prefill"
    meta = routed.dynamic_metadata.fields[h.LB_NAMESPACE].struct_value.fields
    assert meta[h.DESTINATION].string_value == got[h.DESTINATION]
    assert 0.0 <= float(got[h.DECODE_SHARE]) <= 1.0 and got[h.HIT_TOKENS] == "0"
    # The decision log holds the same decision under the picker's client id.
    server.server.core.log.flush()
    rows = _logged(server.server.config.db, int(got[h.REQUEST_ID]))
    assert rows == [(pe, de, float(got[h.DECODE_SHARE]))]


def _logged(url: str, request_id: int) -> list[tuple[int, int, float]]:
    import sqlalchemy as sa
    with sa.create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT prefill_engine, decode_engine, decode_share FROM decisions "
            "WHERE client_id = 'epp' AND request_id = :rid"), {"rid": request_id})]


def test_full_duplex_answers_the_headers_after_the_body_and_sends_it_on(picker) -> None:
    _, client, epp = picker
    report(client)
    raw = completion()
    out = process(epp, header_msg(duplex=True), body_msg(raw[:20], end=False),
                  body_msg(raw[20:]))
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert h.DESTINATION in set_headers(out[0], "request_headers")
    assert out[1].request_body.response.body_mutation.streamed_response.body == raw


def test_the_next_turn_counts_the_blocks_its_previous_turn_stored(picker) -> None:
    _, client, epp = picker
    report(client)
    prompt = "x" * (3 * SPEC.block_tokens + 5)
    _, routed = process(epp, header_msg(x_session_id="agent"), body_msg(completion(prompt)))
    rid = int(set_headers(routed)[h.REQUEST_ID])
    client.Complete(pb.CompleteRequest(request_id=rid, client_id="epp"), timeout=5)
    _, again = process(epp, header_msg(x_session_id="agent"),
                       body_msg(completion(prompt + "more" * 40)))
    assert set_headers(again)[h.HIT_TOKENS] == str(3 * SPEC.block_tokens)


@pytest.mark.parametrize(("raw", "needle"), [
    (b"{not json", "not JSON"), (completion(max_tokens=-1), "max_tokens"),
    (completion(prompt="x" * 10, max_tokens=4_000_000), "max_tokens"),
])
def test_malformed_bodies_get_400_and_the_picker_goes_on(picker, raw: bytes,
                                                         needle: str) -> None:
    _, client, epp = picker
    report(client)
    _, refused = process(epp, header_msg(), body_msg(raw))
    assert refused.immediate_response.status.code == 400
    assert needle in json.loads(refused.immediate_response.body)["error"]["message"]
    _, bad_class = process(epp, header_msg(x_dualpath_class="urgent"), body_msg(completion()))
    assert bad_class.immediate_response.status.code == 400
    # Not a ProcessingRequest at all:
    with pytest.raises(grpc.RpcError) as err, grpc.insecure_channel(epp) as channel:
        list(channel.stream_stream(PROCESS)(iter([b"\xff\xff\xff"]), timeout=5))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, routed = process(epp, header_msg(), body_msg(completion()))
    assert h.DESTINATION in set_headers(routed)


def test_no_engine_503_and_a_full_cluster_429_after_the_wait(picker) -> None:
    _, client, epp = picker
    _, none = process(epp, header_msg(), body_msg(completion()))
    assert none.immediate_response.status.code == 503
    report(client, free_hbm=0.0)  # every decode engine full: the policy defers
    start = time.monotonic()
    _, full = process(epp, header_msg(), body_msg(completion()))
    assert full.immediate_response.status.code == 429
    assert time.monotonic() - start >= 0.5


def test_headers_only_requests_pass_unrouted_and_ready_once_engines_report(picker) -> None:
    _, client, epp = picker
    (only,) = process(epp, header_msg("/v1/models", end=True))
    assert only.request_headers.response.status == ep.CommonResponse.CONTINUE
    assert not only.request_headers.response.header_mutation.set_headers
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(epp) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        # Alive, but not ready: no engine has told it where it serves.
        assert status("liveness") == serving and status("readiness") != serving
        report(client)
        deadline = time.monotonic() + 10
        while status("readiness") != serving:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status("envoy.service.ext_proc.v3.ExternalProcessor") == serving


def test_a_deferred_request_is_routed_once_an_engine_frees(picker) -> None:
    import threading

    _, client, epp = picker
    report(client, free_hbm=0.0)
    threading.Timer(0.15, report, (client,)).start()  # an engine frees while it waits
    _, routed = process(epp, header_msg(), body_msg(completion()))
    assert h.DESTINATION in set_headers(routed)


def test_a_counting_reporter_releases_a_reservation_only_when_it_names_the_request() -> None:
    from policy_service.cluster_state import HOLD_MAX_S, ClusterState
    from runtime.decision import Decision
    from runtime.request import Request

    now = [0.0]
    state = ClusterState(SPEC, clock=lambda: now[0])
    reports = [pb.EngineReport(engine_id=e, role=pb.PREFILL if e < SPEC.prefill_engines
                               else pb.DECODE, node_id=SPEC.node_of(e),
                               free_hbm_bytes=SPEC.node.de_hbm_kv_bytes)
               for e in range(SPEC.engines)]
    state.report(reports, counted=[])
    de = SPEC.prefill_engines
    state.hold("epp", Request(5, 0, 0, 0, 100, 10, 0.0), Decision(0, de, 0.0))
    seq = lambda: state.view().engines[de].seq  # noqa: E731
    now[0] = 0.1
    state.report(reports, counted=[])  # a later report that does not count it yet
    assert seq() == 1
    state.report(reports, counted=[5])
    assert seq() == 0
    state.hold("epp", Request(6, 0, 0, 0, 100, 10, 0.0), Decision(0, de, 0.0))
    now[0] = 0.2 + HOLD_MAX_S  # never reached the engines: dropped in the end
    state.report(reports, counted=[])
    assert seq() == 0
    state.hold("epp", Request(7, 0, 0, 0, 100, 10, 0.0), Decision(0, de, 0.0))
    now[0] += 0.1
    state.report(reports)  # a reporter that does not count: a later report absorbs it
    assert seq() == 0


def test_a_failing_policy_gets_500_and_every_answer_is_counted(picker) -> None:
    server, client, epp = picker
    report(client)
    policy = server.server.registry.current.policy

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    policy.decide = broken  # the served instance fails from now on
    try:
        _, failed = process(epp, header_msg(), body_msg(completion()))
    finally:
        del policy.decide
    assert failed.immediate_response.status.code == 500
    assert "boom" in json.loads(failed.immediate_response.body)["error"]["message"]
    _, routed = process(epp, header_msg(), body_msg(completion()))
    assert h.DESTINATION in set_headers(routed)
    sample = server.server.metrics.registry.get_sample_value
    assert sample("dualpath_epp_answers_total", {"outcome": "500"}) == 1
    assert sample("dualpath_epp_answers_total", {"outcome": "routed"}) == 1
    assert sample("dualpath_epp_pick_seconds_count") == 2
