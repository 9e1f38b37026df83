"""``dualpath bench grpc``: the scheduler service's latency and throughput on loopback.

A server (``dualpath serve``, preset ds27b-1p1d, decision log on) runs in its own
process; the load comes from this process (one client) and from child processes
(eight clients). Calls carry real snapshots: the (request, view) pairs of a
short simulation, encoded once beforehand, so that the figures are the
service's and the transport's, not the client's encoding. Every call has a
deadline. The empty call (``Ping``) is measured in the same run, by the same
client, just before ``Schedule``, as the baseline: what gRPC on loopback costs
with nothing to do.

The figures the targets name (:data:`TARGETS`) are medians over ``runs`` runs,
each on a fresh server (a run's tail latencies swing with whatever else the
machine does; one run decides nothing); the learned policy's and the eight
clients' lines come from the first run only.

Pinning (``pin=True``, the default, on a machine of two cores or more): the
server's process, its threads and its decision-log writer run on one core, the
measuring client on another. Unpinned, the client and the server migrate onto
the same core now and then and a call waits for the client's own work, which
is the client's cost, not the service's; pinned, the service has one core to
itself and is charged for everything it runs, its log writer included. The
eight clients' processes are not pinned (they would share one core).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
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


#: Each target: the figure, and whether it must be at most (True) or at least the bound.
TARGETS: dict[str, tuple[str, float, bool]] = {
    "p99_ms<=2": ("p99_ms", 2.0, True),
    "p99_over_empty_ms<=0.5": ("p99_over_empty_ms", 0.5, True),
    "batch_decisions_per_s>=20000": ("batch_decisions_per_s", 20_000.0, False),
}
#: The figures each run yields, their medians reported as the bench's figures.
FIGURES = ("p50_ms", "p99_ms", "empty_call_p50_ms", "empty_call_p99_ms", "p99_over_empty_ms",
           "batch_decisions_per_s")


def pin(pid: int, cpus: set[int]) -> None:
    """Run process ``pid``, each of its threads and its child processes on ``cpus``
    (threads and processes started later inherit it from their parent thread)."""
    tasks = Path(f"/proc/{pid}/task")
    for tid in (int(t.name) for t in tasks.iterdir()) if tasks.is_dir() else (pid,):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)
        with contextlib.suppress(OSError):
            for child in (tasks / str(tid) / "children").read_text().split():
                pin(int(child), cpus)


def _cores(want: bool) -> tuple[set[int], set[int]] | None:
    """(the server's core, the client's core), or None when not pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[-1]}, {cpus[0]}) if want and len(cpus) >= 2 else None


def _measure_run(target: str, messages: dict[str, list[bytes]], calls: int,
                 batch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run's target figures and table rows: Ping, then Schedule, then ScheduleBatch,
    sequential calls of one client."""
    empty = time_calls(target, f"/{SCHEDULER}/Ping", messages["ping"], calls)
    one = time_calls(target, f"/{SCHEDULER}/Schedule", messages["single"], calls)
    per_batch = time_calls(target, f"/{SCHEDULER}/ScheduleBatch", messages["batches"],
                           max(50, calls // batch), warmup=20)
    base, ones = _stats(empty), _stats(one)
    figures = {"p50_ms": ones["p50_ms"], "p99_ms": ones["p99_ms"],
               "empty_call_p50_ms": base["p50_ms"], "empty_call_p99_ms": base["p99_ms"],
               "p99_over_empty_ms": ones["p99_ms"] - base["p99_ms"],
               "batch_decisions_per_s": batch * len(per_batch) / float(per_batch.sum())}
    rows = [{"measure": "empty call (Ping), 1 client", **base},
            {"measure": "Schedule dualpath, 1 client", **ones},
            {"measure": f"ScheduleBatch x{batch} dualpath, 1 client", **_stats(per_batch)}]
    return figures, rows


def _extra_lines(target: str, token: str, single: list[bytes], calls: int, learned: str,
                 cpus: set[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The learned policy's line and the eight clients' line (not targets: one run); the
    eight clients run on ``cpus``."""
    schedule = f"/{SCHEDULER}/Schedule"
    admin_call(target, token, "SwapPolicy", pb.SwapPolicyRequest(spec=learned))
    lrn = _stats(time_calls(target, schedule, single, calls))
    admin_call(target, token, "Rollback", pb.RollbackRequest())
    with ProcessPoolExecutor(CLIENTS, initializer=_set_cpus, initargs=(cpus,)) as pool:
        share = -(-calls // CLIENTS)
        parts = list(pool.map(_client, [(target, schedule, single, share)] * CLIENTS))
    eight = _stats(np.concatenate(parts))
    figures = {"p99_ms_learned": lrn["p99_ms"], "p99_ms_8_clients": eight["p99_ms"],
               "p50_ms_8_clients": eight["p50_ms"]}
    return figures, [{"measure": f"Schedule {learned}, 1 client", "runs": 1, **lrn},
                     {"measure": f"Schedule dualpath, {CLIENTS} clients", "runs": 1, **eight}]


def _set_cpus(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Line by line, each statistic's median over the runs."""
    out = []
    for lines in zip(*runs, strict=True):
        row: dict[str, Any] = {"measure": lines[0]["measure"], "runs": len(lines)}
        for key in ("p50_ms", "p99_ms", "mean_ms"):
            row[key] = float(np.median([line[key] for line in lines]))
        row["calls"] = lines[0]["calls"]
        out.append(row)
    return out


def targets_met(figures: dict[str, float]) -> dict[str, bool]:
    """Each target of :data:`TARGETS` against ``figures``."""
    return {name: (figures[key] <= bound) if at_most else (figures[key] >= bound)
            for name, (key, bound, at_most) in TARGETS.items()}


def bench_grpc(calls: int = 20_000, learned: str = "pretrained:paper-offline",
               batch: int = 64, log: bool = True, runs: int = 5,
               pin_cores: bool = True) -> dict[str, Any]:
    """Measure the service in ``runs`` runs, each on a fresh server; the figures are the
    runs' medians. ``log=False`` serves with the decision log off (``--db none``), to see
    what logging costs; ``pin_cores``: see the module docstring."""
    if calls < 1_000:
        raise ValueError(f"--calls must be >= 1000, got {calls}")
    if not 1 <= batch <= 1024:
        raise ValueError(f"--batch must lie in 1..1024, got {batch}")
    if not 1 <= runs <= 50:
        raise ValueError(f"--runs must lie in 1..50, got {runs}")
    points = sample_points()
    messages = {"single": schedule_messages(points), "batches": batch_messages(points, batch),
                "ping": [pb.PingRequest().SerializeToString()]}
    cores = _cores(pin_cores)
    mine = os.sched_getaffinity(0)
    per_run: list[dict[str, Any]] = []
    lines: list[list[dict[str, Any]]] = []
    extra: tuple[dict[str, Any], list[dict[str, Any]]] = ({}, [])
    try:
        if cores is not None:  # before the first channel: gRPC's threads inherit it
            os.sched_setaffinity(0, cores[1])
        with tempfile.TemporaryDirectory(prefix="dualpath-bench-") as tmp:
            for k in range(runs):
                with _server(Path(tmp), k, log) as (server, token):
                    if cores is not None:
                        pin(server.proc.pid, cores[0])
                    figures, rows = _measure_run(server.target, messages, calls, batch)
                    if k == 0:
                        extra = _extra_lines(server.target, token, messages["single"], calls,
                                             learned, mine)
                per_run.append(figures)
                lines.append(rows)
    finally:
        os.sched_setaffinity(0, mine)
    medians = {key: float(np.median([r[key] for r in per_run])) for key in FIGURES}
    met = targets_met(medians)
    return {
        "preset": PRESET, "calls": calls, "batch": batch, "clients": CLIENTS,
        "decision_log": log, "runs": runs, "pinned": cores is not None, **medians,
        **extra[0], "learned": learned,
        "targets": met, "targets_met": all(met.values()),
        "per_run": per_run, "rows": median_rows(lines) + extra[1],
    }


@contextlib.contextmanager
def _server(tmp: Path, k: int, log: bool) -> Iterator[tuple[ServiceProcess, str]]:
    """A fresh server for run ``k``, its own decision log in ``tmp``; (it, its admin token)."""
    token_file = tmp / f"token-{k}"
    token = secrets.token_hex(16)
    token_file.write_text(token)
    db = f"sqlite:///{tmp / f'decisions-{k}.db'}" if log else "none"
    with ServiceProcess(["--policy", "dualpath", "--preset", PRESET, "--db", db,
                         "--admin-token-file", str(token_file)]) as server:
        yield server, token


def render_grpc(payload: dict[str, Any]) -> str:
    head = (f"scheduler service on loopback ({payload['preset']}, decision log "
            f"{'on' if payload['decision_log'] else 'off'}, "
            f"{payload['calls']:,} calls per line, median of {payload['runs']} runs"
            f"{', server and client pinned to a core each' if payload['pinned'] else ''})")
    table = format_table(payload["rows"], ["measure", "runs", "calls", "p50_ms", "p99_ms",
                                           "mean_ms"])
    tail = (f"p99 above the empty call: {payload['p99_over_empty_ms']:.3f} ms; batched: "
            f"{payload['batch_decisions_per_s']:,.0f} decisions/s; targets met: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in payload["targets"].items())
            + f" -> {'all met' if payload['targets_met'] else 'NOT all met'}")
    return f"{head}\n{table}\n{tail}"
