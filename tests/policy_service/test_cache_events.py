"""The service's block index over gRPC: events in, prefix locations out; bounds; ordered
batches; and clients of the API before these calls existed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from policy_service.cache_index import MAX_EVENTS_PER_CALL, CacheIndex
from policy_service.codec import InvalidMessage, request_to_pb
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import SCHEDULER
from runtime.cache import prefix_hashes
from runtime.preset import load_preset
from runtime.request import Request
from tests.policy_service.conftest import Client
from tests.requirements import require_module

CACHED = ("node.dram_cache_gb=1", "node.hbm_cache_gb=0.5")
OLD_PROTO = Path(__file__).parent / "data" / "scheduler_v1_before_cache_events.proto"


def _agent_turn(rid: int, agent: int, hit: int = 8192) -> Request:
    return Request(rid, agent, 1, hit, 512, 16, 0.0)


def _stored(index_spec, agent: int, node: int, engine: int, blocks: int) -> pb.CacheEvent:
    hashes = list(prefix_hashes(_agent_turn(0, agent, 1 << 20), index_spec.block_tokens))
    return pb.CacheEvent(kind=pb.CACHE_STORED, node_id=node, engine_id=engine,
                         hashes=hashes[:blocks], at_s=1.0)


def test_index_answers_from_events_and_ages_out_a_silent_node():
    spec = load_preset("ds27b-1p1d", CACHED)
    clock = [0.0]
    index = CacheIndex(spec, ttl_s=5.0, clock=lambda: clock[0])
    request = _agent_turn(1, agent=3)
    assert index.locate(request).dram_blocks == (0, 0)
    index.report(pb.CacheEventBatch(events=[_stored(spec, 3, 0, -1, 4),
                                            _stored(spec, 3, 1, -1, 2),
                                            _stored(spec, 3, 0, 1, 3)]))
    seen = index.locate(request)
    assert seen.dram_blocks == (4, 2) and seen.hbm_blocks[1] == 3
    clock[0] = 4.0
    index.report(pb.CacheEventBatch(alive_nodes=[1]))  # node 1 lives; node 0 says nothing
    clock[0] = 6.0
    seen = index.locate(request)
    assert seen.dram_blocks == (0, 2) and seen.hbm_blocks == (0,) * spec.prefill_engines


def test_guesses_from_placements_only_for_nodes_that_report_nothing():
    from runtime.decision import Decision

    spec = load_preset("ds27b-1p1d", CACHED)
    clock = [0.0]
    index = CacheIndex(spec, ttl_s=5.0, clock=lambda: clock[0])
    request = _agent_turn(1, agent=2)
    index.placed(request, Decision(0, spec.prefill_engines))
    blocks = len(prefix_hashes(request, spec.block_tokens))
    assert index.locate(request).dram_blocks == (blocks, blocks)
    clock[0] = 6.0
    assert index.locate(request).dram_blocks == (0, 0)  # never confirmed: forgotten
    index.report(pb.CacheEventBatch(alive_nodes=[0]))
    index.placed(request, Decision(0, spec.prefill_engines))
    assert index.locate(request).dram_blocks == (0, blocks)  # node 0 reports: not guessed


@pytest.mark.parametrize("event, words", [
    (pb.CacheEvent(kind=7, node_id=0, engine_id=-1), "unknown cache event kind 7"),
    (pb.CacheEvent(node_id=9, engine_id=-1), "names node 9"),
    (pb.CacheEvent(node_id=1, engine_id=0), "not a prefill engine of node 1"),
    (pb.CacheEvent(node_id=0, engine_id=-1, at_s=float("nan")), "not finite"),
])
def test_malformed_events_are_refused_by_name_and_change_nothing(event, words):
    spec = load_preset("ds27b-1p1d", CACHED)
    index = CacheIndex(spec)
    good = _stored(spec, 1, 0, -1, 3)
    with pytest.raises(InvalidMessage, match=words):
        index.report(pb.CacheEventBatch(events=[good, event]))
    assert index.index is not None and index.index.blocks == 0


def test_a_flood_is_bounded_by_call_size_and_cache_size():
    spec = load_preset("ds27b-1p1d", ("node.dram_cache_gb=0.01",))
    index = CacheIndex(spec)
    assert index.index is not None
    with pytest.raises(InvalidMessage, match=f"at most {MAX_EVENTS_PER_CALL}"):
        index.report(pb.CacheEventBatch(events=[pb.CacheEvent(engine_id=-1)]
                                        * (MAX_EVENTS_PER_CALL + 1)))
    cap = index.index.dram_cap
    for start in range(0, 10 * (1 << 16), 4096):  # stores of fresh blocks, never evicted
        batch = pb.CacheEventBatch(events=[pb.CacheEvent(
            node_id=0, engine_id=-1, hashes=range(start, start + 4096))])
        try:
            index.report(batch)
        except InvalidMessage as err:
            assert "more than its cache's" in str(err)
            break
    else:
        raise AssertionError("an endless flood of stores was taken in")
    assert len(index.index.dram[0]) <= cap + (1 << 16)


def test_a_cluster_without_caches_refuses_events_plainly():
    index = CacheIndex(load_preset("ds27b-1p1d"))
    with pytest.raises(InvalidMessage, match="has no cache tiers"):
        index.report(pb.CacheEventBatch(events=[pb.CacheEvent(engine_id=-1)]))


def test_over_grpc_events_fill_the_prefix_a_request_arrives_without(start_server):
    spec = load_preset("ds27b-1p1d", CACHED)
    server = start_server(overrides=CACHED)
    client = Client(server.target)
    try:
        ack = client.ReportCacheEvents(pb.CacheEventBatch(events=[_stored(spec, 5, 1, -1, 6)]),
                                       timeout=30)
        assert ack.accepted == 1
        request = _agent_turn(7, agent=5)
        reply = client.Schedule(pb.ScheduleRequest(request=request_to_pb(request)), timeout=30)
        assert list(reply.prefix.dram_blocks) == [0, 6]
        with pytest.raises(grpc.RpcError) as err:
            client.ReportCacheEvents(pb.CacheEventBatch(events=[pb.CacheEvent(
                node_id=99, engine_id=-1)]), timeout=30)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "names node 99" in err.value.details()
        # The server is still up and the index unchanged.
        again = client.Schedule(pb.ScheduleRequest(request=request_to_pb(request)), timeout=30)
        assert list(again.prefix.dram_blocks) == [0, 6]
    finally:
        client.close()


def test_an_ordered_batch_follows_the_policys_queue_order(start_server):
    server = start_server(policy="dualpath:order=short")
    client = Client(server.target)
    try:
        requests = [Request(i, i, 0, 0, 4096 - 1000 * i, 8, 0.1 * i) for i in range(4)]
        msg = pb.ScheduleBatchRequest(requests=[request_to_pb(r) for r in requests])
        listed = client.ScheduleBatch(msg, timeout=30)
        assert [d.request_id for d in listed.decisions] == [0, 1, 2, 3]
        msg.ordered = True
        ordered = client.ScheduleBatch(msg, timeout=30)
        assert [d.request_id for d in ordered.decisions] == [3, 2, 1, 0]  # shortest first
    finally:
        client.close()


def _old_messages(tmp_path: Path) -> dict[str, type]:
    """The message classes of the API as it was before cache events (its own pool)."""
    require_module("grpc_tools", "grpcio-tools, a dev dependency, compiles the old proto")
    out = tmp_path / "old.pb"
    # A child process: protoc's libraries crash a process that has loaded NIXL/UCX.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{OLD_PROTO.parent}",
                    f"--descriptor_set_out={out}", OLD_PROTO.name], check=True)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    names = ("ScheduleRequest", "Decision", "Request")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"dualpath.v1.{n}"))
            for n in names}


def test_clients_of_the_older_api_keep_working(start_server, tmp_path):
    old = _old_messages(tmp_path)
    server = start_server(overrides=CACHED)
    channel = grpc.insecure_channel(server.target)
    try:
        schedule = channel.unary_unary(f"/{SCHEDULER}/Schedule",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=old["Decision"].FromString)
        request = old["Request"](request_id=3, agent_id=1, turn=0, hit_tokens=4096,
                                 appended_tokens=100, gen_tokens=4, arrival_s=0.0)
        reply = schedule(old["ScheduleRequest"](request=request, client_id="old"), timeout=30)
        # No engine has reported: a defer, read by the old client like any answer.
        assert reply.request_id == 3 and reply.policy_version == "v1:dualpath"
        assert reply.defer and "room" in reply.reason
        # What the old client sent reads as an interactive request without a prefix.
        new = pb.ScheduleRequest.FromString(
            old["ScheduleRequest"](request=request).SerializeToString())
        assert new.request.slo_class == "" and not new.request.HasField("prefix")
    finally:
        channel.close()


def test_remote_policy_forwards_events_before_it_decides(start_server):
    from policy_service.client import RemotePolicy, RemoteSpec
    from runtime.cache.index import CacheEvent, EventKind
    from tests.builders import make_view

    spec = load_preset("ds27b-1p1d", CACHED)
    server = start_server(overrides=CACHED)
    policy = RemotePolicy(RemoteSpec.parse(f"grpc://{server.target}?prefix=service"), spec)
    try:
        request = _agent_turn(9, agent=4)
        hashes = tuple(prefix_hashes(request, spec.block_tokens))
        policy.cache_events(1, [CacheEvent(EventKind.STORE, 1, -1, hashes[:5], 0.5)])
        answer = policy.decide(request, make_view(spec))
        assert answer is not None and policy.served == 1
        # The event went out before the decision: the service located the prefix with it.
        assert policy.service_prefixes[9].dram_blocks == (0, 5)
        assert policy.events_failed == 0
    finally:
        policy.close()


def test_events_lost_while_the_service_was_down_are_resynced(start_server):
    import time

    from policy_service.client import RemotePolicy, RemoteSpec
    from runtime.cache.index import BlockIndex, CacheEvent, EventKind
    from tests.builders import make_view

    spec = load_preset("ds27b-1p1d", CACHED)
    server = start_server(overrides=CACHED)
    port = server.port
    policy = RemotePolicy(RemoteSpec.parse(f"grpc://127.0.0.1:{port}?prefix=service"
                                           "&timeout_ms=500"), spec)
    caller = BlockIndex(spec, spec.block_tokens)  # the caller's own index, always right
    policy.resync = lambda: caller.snapshot(1.0)
    request = _agent_turn(11, agent=6)
    hashes = tuple(prefix_hashes(request, spec.block_tokens))
    try:
        server.stop()
        stored = CacheEvent(EventKind.STORE, 1, -1, hashes[:7], 0.5)
        caller.apply([stored])
        policy.cache_events(1, [stored])  # sent while nobody listens: lost
        deadline = time.monotonic() + 20
        while policy.events_failed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert policy.events_failed >= 1
        start_server(overrides=CACHED, port=port)  # a fresh service: an empty index
        # The channel reconnects; a decision may reach the service before the resync
        # does (on a busy machine the resync's own call can still fail), and the next
        # decision resyncs again: decide until the service locates the prefix.
        deadline = time.monotonic() + 20
        located = None
        while time.monotonic() < deadline:
            policy.decide(request, make_view(spec))
            located = policy.service_prefixes.get(11)
            if located is not None and located.dram_blocks == (0, 7):
                break
            time.sleep(0.05)
        assert policy.served >= 1 and policy.resyncs >= 1
        assert located is not None and located.dram_blocks == (0, 7)
    finally:
        policy.close()


def test_each_request_of_a_batch_is_decided_on_its_own_prefix(start_server):
    spec = load_preset("ds27b-1p1d", CACHED)
    server = start_server(overrides=CACHED)
    client = Client(server.target)
    try:
        client.ReportCacheEvents(pb.CacheEventBatch(events=[_stored(spec, 5, 1, -1, 6)]),
                                 timeout=30)
        cached, other = _agent_turn(1, agent=5), _agent_turn(2, agent=8)
        reply = client.ScheduleBatch(pb.ScheduleBatchRequest(
            requests=[request_to_pb(cached), request_to_pb(other)]), timeout=30)
        first, second = reply.decisions
        assert list(first.prefix.dram_blocks) == [0, 6]
        assert list(second.prefix.dram_blocks) == [0, 0]  # not the first request's
    finally:
        client.close()
