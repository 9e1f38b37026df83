"""``dualpath bench grpc``: the scheduler service's latency and throughput on loopback.

A server (``dualpath serve``, preset ds27b-1p1d, decision log on) runs in its own
process; the load comes from this process (one client) and from child processes
(eight clients). Calls carry real snapshots: the (request, view) pairs of a
short simulation, encoded once beforehand, so that the figures are the
service's and the transport's, not the client's encoding. Every call has a
deadline. The empty call (``Ping``) is measured in the same run as the
baseline: what gRPC on loopback costs with nothing to do.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from agents.spec import resolve_policy
from experiments.evaluation.table import format_table
from experiments.live.service_process import ServiceProcess
from policy_service.codec import request_to_pb, view_to_pb
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN, SCHEDULER
from runtime.preset import load_preset
from runtime.sim.simulator import Simulator
from runtime.workload.agentic import AgenticWorkload

PRESET = "ds27b-1p1d"
CLIENTS = 8
POINTS = 2_000      # distinct (request, view) pairs, cycled
WARMUP = 500
DEADLINE_S = 5.0


def sample_points(n: int = POINTS, seed: int = 0, preset: str = PRESET, agents: int = 256,
                  mal: str = "64k") -> list[tuple[Any, Any]]:
    """(request, view) pairs of a simulation under dualpath: real inputs for the service."""
    sim = Simulator(load_preset(preset), AgenticWorkload(agents, mal, seed=seed))
    policy = resolve_policy("dualpath").policy
    points: list[tuple[Any, Any]] = []
    while len(points) < n and (point := sim.next_decision()) is not None:
        points.append(point)
        sim.apply(policy.decide(*point))
    return points


def schedule_messages(points: list[tuple[Any, Any]]) -> list[bytes]:
    return [pb.ScheduleRequest(request=request_to_pb(r), view=view_to_pb(v),
                               client_id="bench").SerializeToString() for r, v in points]


def batch_messages(points: list[tuple[Any, Any]], size: int) -> list[bytes]:
    """Batches of ``size`` requests, each on the view of its first request."""
    out = []
    for i in range(0, len(points) - size + 1, size):
        chunk = points[i:i + size]
        out.append(pb.ScheduleBatchRequest(
            requests=[request_to_pb(r) for r, _ in chunk], view=view_to_pb(chunk[0][1]),
            client_id="bench").SerializeToString())
    return out


def raw_bytes(raw: bytes) -> bytes:
    """A no-op (de)serializer: the calls send and receive serialized messages."""
    return raw


def time_calls(target: str, method: str, messages: list[bytes], calls: int,
               warmup: int = WARMUP) -> np.ndarray:
    """Seconds per call of ``calls`` sequential calls of ``method`` (after a warm-up)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=raw_bytes,
                                   response_deserializer=raw_bytes)
        n = len(messages)
        for i in range(warmup):
            call(messages[i % n], timeout=DEADLINE_S)
        out = np.empty(calls)
        clock = time.perf_counter
        for i in range(calls):
            t0 = clock()
            call(messages[i % n], timeout=DEADLINE_S)
            out[i] = clock() - t0
    return out


def _client(args: tuple[str, str, list[bytes], int]) -> np.ndarray:
    return time_calls(*args)


def admin_call(target: str, token: str, method: str, msg: Any) -> None:
    """One admin call, authorized with ``token``, over a plain channel."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/{ADMIN}/{method}", request_serializer=raw_bytes,
                                   response_deserializer=pb.PolicyInfo.FromString)
        call(msg.SerializeToString(), timeout=120, metadata=[("authorization", f"Bearer {token}")])


def _stats(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "calls": int(len(ms))}


def bench_grpc(calls: int = 20_000, learned: str = "pretrained:paper-offline",
               batch: int = 64, log: bool = True) -> dict[str, Any]:
    """Measure the service; ``log=False`` serves with the decision log off (``--db none``),
    to see what logging costs."""
    if calls < 1_000:
        raise ValueError(f"--calls must be >= 1000, got {calls}")
    if not 1 <= batch <= 1024:
        raise ValueError(f"--batch must lie in 1..1024, got {batch}")
    points = sample_points()
    single = schedule_messages(points)
    batches = batch_messages(points, batch)
    ping = [pb.PingRequest().SerializeToString()]
    schedule, rows = f"/{SCHEDULER}/Schedule", []
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-") as tmp:
        token_file = Path(tmp) / "token"
        token = secrets.token_hex(16)
        token_file.write_text(token)
        db = f"sqlite:///{Path(tmp) / 'decisions.db'}" if log else "none"
        with ServiceProcess(["--policy", "dualpath", "--preset", PRESET, "--db", db,
                             "--admin-token-file", str(token_file)]) as server:
            target = server.target
            empty = time_calls(target, f"/{SCHEDULER}/Ping", ping, calls)
            rows.append({"measure": "empty call (Ping), 1 client", **_stats(empty)})
            one = time_calls(target, schedule, single, calls)
            rows.append({"measure": "Schedule dualpath, 1 client", **_stats(one)})
            per_batch = time_calls(target, f"/{SCHEDULER}/ScheduleBatch", batches,
                                   max(50, calls // batch), warmup=20)
            rows.append({"measure": f"ScheduleBatch x{batch} dualpath, 1 client",
                         **_stats(per_batch)})
            admin_call(target, token, "SwapPolicy", pb.SwapPolicyRequest(spec=learned))
            lrn = time_calls(target, schedule, single, calls)
            rows.append({"measure": f"Schedule {learned}, 1 client", **_stats(lrn)})
            admin_call(target, token, "Rollback", pb.RollbackRequest())
            with ProcessPoolExecutor(CLIENTS) as pool:
                share = -(-calls // CLIENTS)
                parts = list(pool.map(_client, [(target, schedule, single, share)] * CLIENTS))
            eight = np.concatenate(parts)
            rows.append({"measure": f"Schedule dualpath, {CLIENTS} clients", **_stats(eight)})
    decisions_per_s = batch * len(per_batch) / float(per_batch.sum())
    base, ones = _stats(empty), _stats(one)
    return {
        "preset": PRESET, "calls": calls, "batch": batch, "clients": CLIENTS,
        "decision_log": log,
        "p50_ms": ones["p50_ms"], "p99_ms": ones["p99_ms"],
        "p99_ms_learned": _stats(lrn)["p99_ms"], "learned": learned,
        "p99_ms_8_clients": _stats(eight)["p99_ms"], "p50_ms_8_clients": _stats(eight)["p50_ms"],
        "empty_call_p50_ms": base["p50_ms"], "empty_call_p99_ms": base["p99_ms"],
        "p99_over_empty_ms": ones["p99_ms"] - base["p99_ms"],
        "batch_decisions_per_s": decisions_per_s,
        "targets": {"p99_ms<=2": ones["p99_ms"] <= 2.0,
                    "p99_over_empty_ms<=0.5": ones["p99_ms"] - base["p99_ms"] <= 0.5,
                    "batch_decisions_per_s>=20000": decisions_per_s >= 20_000},
        "rows": rows,
    }


def render_grpc(payload: dict[str, Any]) -> str:
    head = (f"scheduler service on loopback ({payload['preset']}, decision log "
            f"{'on' if payload['decision_log'] else 'off'}, "
            f"{payload['calls']:,} calls per line)")
    table = format_table(payload["rows"], ["measure", "calls", "p50_ms", "p99_ms", "mean_ms"])
    tail = (f"p99 above the empty call: {payload['p99_over_empty_ms']:.3f} ms; batched: "
            f"{payload['batch_decisions_per_s']:,.0f} decisions/s; targets met: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in payload["targets"].items()))
    return f"{head}\n{table}\n{tail}"
