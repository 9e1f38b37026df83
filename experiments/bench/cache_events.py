"""``dualpath bench cache-events``: the block index under a flood of cache events.

Starts ``dualpath serve`` (a child process) for a cluster with DRAM and HBM caches,
then sends, from one client, as fast as the server answers: well-formed batches that
store fresh blocks and evict old ones (a cache's steady state), batches that would
grow a location past its cache (a flood of stores nothing evicts), and malformed
batches (unknown node, engine or kind; NaN times; oversized). It reports each kind's
calls per second and the status every call got, the server's resident memory before
and after, and a Schedule call answered after the flood (the server is still serving,
and the prefix it reports is the index's).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import grpc

from experiments.bench.soak import rss_mib
from experiments.live.service_process import ServiceProcess
from policy_service.cache_index import MAX_EVENTS_PER_CALL
from policy_service.codec import request_to_pb
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import SCHEDULER
from runtime.preset import load_preset
from runtime.request import Request

CLUSTER = ("node.dram_cache_gb=1", "node.hbm_cache_gb=0.25")
EVENT_BLOCKS = 256  # hashes per event


def _steady(k: int, nodes: int) -> pb.CacheEventBatch:
    """Node ``k % nodes`` stores 256 fresh blocks and evicts the 256 it stored 8 calls ago."""
    node, fresh = k % nodes, k * EVENT_BLOCKS
    events = [pb.CacheEvent(kind=pb.CACHE_STORED, node_id=node, engine_id=-1,
                            hashes=range(fresh, fresh + EVENT_BLOCKS), at_s=float(k))]
    if k >= 8 * nodes:
        old = (k - 8 * nodes) * EVENT_BLOCKS
        events.append(pb.CacheEvent(kind=pb.CACHE_EVICTED, node_id=node, engine_id=-1,
                                    hashes=range(old, old + EVENT_BLOCKS), at_s=float(k)))
    return pb.CacheEventBatch(events=events, alive_nodes=[node])


def _hoarding(k: int) -> pb.CacheEventBatch:
    """Stores into node 0's DRAM that nothing evicts: refused once past its cache."""
    start = (1 << 40) + k * 4096
    return pb.CacheEventBatch(events=[pb.CacheEvent(
        kind=pb.CACHE_STORED, node_id=0, engine_id=-1, hashes=range(start, start + 4096))])


MALFORMED = (
    pb.CacheEventBatch(events=[pb.CacheEvent(node_id=999, engine_id=-1)]),
    pb.CacheEventBatch(events=[pb.CacheEvent(node_id=0, engine_id=999)]),
    pb.CacheEventBatch(events=[pb.CacheEvent(kind=42,  # type: ignore[arg-type]  # on purpose
                                             node_id=0, engine_id=-1)]),
    pb.CacheEventBatch(events=[pb.CacheEvent(node_id=0, engine_id=-1, at_s=float("nan"))]),
    pb.CacheEventBatch(events=[pb.CacheEvent(node_id=0, engine_id=-1)]
                       * (MAX_EVENTS_PER_CALL + 1)),
)


def bench_cache_events(seconds: float = 10.0) -> dict[str, Any]:
    """Each of the three kinds of load for ``seconds / 3``; see the module docstring."""
    spec = load_preset("ds27b-1p2d", CLUSTER)
    args = ["--preset", "ds27b-1p2d", *(a for kv in CLUSTER for a in ("--set", kv)),
            "--db", "none"]
    with ServiceProcess(args) as server:
        channel = grpc.insecure_channel(server.target)
        report = channel.unary_unary(f"/{SCHEDULER}/ReportCacheEvents",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=pb.ReportAck.FromString)
        schedule = channel.unary_unary(f"/{SCHEDULER}/Schedule",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=pb.Decision.FromString)
        rss_before = rss_mib(server.proc.pid)
        loads = {"steady": lambda k: _steady(k, spec.nodes), "hoarding": _hoarding,
                 "malformed": lambda k: MALFORMED[k % len(MALFORMED)]}
        kinds = {}
        for name, make in loads.items():
            kinds[name] = _flood(report, make, seconds / 3)
            kinds[name]["rss_after_mib"] = rss_mib(server.proc.pid)
        rss_after = rss_mib(server.proc.pid)
        request = Request(1, 0, 0, 0, 16, 1, 0.0, block_hashes=(0, 1, 2))
        answer = schedule(pb.ScheduleRequest(request=request_to_pb(request)), timeout=10)
        channel.close()
    return {"cluster": f"ds27b-1p2d {' '.join(CLUSTER)}", "kinds": kinds,
            "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "served_after": {"policy_version": answer.policy_version,
                             "dram_blocks": list(answer.prefix.dram_blocks)}}


def _flood(report: Any, make: Any, seconds: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    events = k = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = make(k)
        try:
            report(batch, timeout=10)
            statuses["OK"] += 1
            events += len(batch.events)
        except grpc.RpcError as err:
            statuses[err.code().name] += 1
        k += 1
    wall = time.perf_counter() - start
    return {"calls": k, "calls_per_s": k / wall, "events_accepted": events,
            "statuses": dict(statuses)}


def render_cache_events(payload: dict[str, Any]) -> str:
    lines = [f"cache events into dualpath serve ({payload['cluster']}):"]
    for name, kind in payload["kinds"].items():
        statuses = ", ".join(f"{code} {n}" for code, n in sorted(kind["statuses"].items()))
        lines.append(f"  {name:9s} {kind['calls_per_s']:8.0f} calls/s, "
                     f"{kind['events_accepted']:,} events taken; {statuses}; server RSS "
                     f"then {kind['rss_after_mib']:.0f} MiB")
    lines.append(f"  server RSS {payload['rss_before_mib']:.0f} MiB before, "
                 f"{payload['rss_after_mib']:.0f} MiB after; then served "
                 f"{payload['served_after']['policy_version']} with prefix "
                 f"{payload['served_after']['dram_blocks']}")
    return "\n".join(lines)
