"""``dualpath bench soak``: the scheduler service under steady load for minutes, its
policy swapped back and forth, its memory watched.

A real ``dualpath serve`` (preset ds27b-1p1d, policy ``dualpath``, decision log on, an
admin token) runs in its own process on a free loopback port. ``clients`` threads of
this process call ``Schedule`` (and every eighth call ``ScheduleBatch`` of 16) in closed
loops on the snapshots of a short simulation, the same inputs as ``bench grpc``; every
call has a deadline. Every ``swap_every_s`` seconds ``SwapPolicy`` alternates the served
policy between ``dualpath`` and ``pretrained:paper-offline``. A call or a swap fails on
any non-OK status (``DEADLINE_EXCEEDED`` included) or any other error.

The server's resident memory is sampled once a second. ``rss_start_mib`` is taken once
the service has settled: after the first minute of load, or after the first half of a
run shorter than two minutes (too short a run has no settled minute to spare);
``rss_end_mib`` after the load stops, before the server is stopped. The server is always
stopped: SIGTERM, then SIGKILL if it has not exited after ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import itertools
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from experiments.bench.service import (
    PRESET,
    admin_call,
    batch_messages,
    raw_bytes,
    sample_points,
    schedule_messages,
)
from experiments.evaluation.table import format_value
from experiments.live.service_process import ServiceProcess
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import SCHEDULER

#: The served policy alternates between these; the server starts on the first.
POLICIES = ("dualpath", "pretrained:paper-offline")
BATCH = 16          # requests per ScheduleBatch call
BATCH_EVERY = 8     # one call in this many is a ScheduleBatch
FAILURES_KEPT = 5   # failure messages kept for the report (the counts keep the rest)
SETTLE_S = 60.0     # load before rss_start_mib is taken (runs of two minutes or more)
STOP_TIMEOUT_S = 30.0  # SIGTERM's wait (the server drains for --grace, 10 s) before SIGKILL

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SoakConfig:
    """The run's arguments, checked: ``minutes`` > 0 (fractions allowed), ``clients`` >= 1,
    ``swap_every_s`` > 0, ``deadline_ms`` > 0 (per call)."""

    minutes: float = 10.0
    clients: int = 4
    swap_every_s: float = 30.0
    deadline_ms: float = 2000.0

    def __post_init__(self) -> None:
        if not self.minutes > 0:  # also refuses NaN
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        if self.clients < 1:
            raise ValueError(f"--clients must be >= 1, got {self.clients}")
        if not self.swap_every_s > 0:
            raise ValueError(f"--swap-every must be > 0 seconds, got {self.swap_every_s}")
        if not self.deadline_ms > 0:
            raise ValueError(f"--deadline-ms must be > 0, got {self.deadline_ms}")

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def settle_s(self) -> float:
        """When rss_start_mib is taken: after a minute, or half of a run under two."""
        return SETTLE_S if self.duration_s >= 2 * SETTLE_S else self.duration_s / 2


@dataclass
class Tally:
    """Counts shared by the client and swap threads (one lock: a call takes ~1 ms, the
    lock microseconds)."""

    calls: int = 0
    failed_calls: int = 0
    decisions: int = 0
    swaps: int = 0
    failed_swaps: int = 0
    serving: str = POLICIES[0]
    latencies_s: list[float] = field(default_factory=list)
    swap_s: list[float] = field(default_factory=list)
    by_policy: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call_ok(self, seconds: float, versions: list[str]) -> None:
        with self.lock:
            self.calls += 1
            self.decisions += len(versions)
            self.latencies_s.append(seconds)
            # A version is "v<N>:<spec>": counting specs shows the swaps took effect.
            self.by_policy.update(v.partition(":")[2] for v in versions)

    def call_failed(self, message: str) -> None:
        with self.lock:
            self.calls += 1
            self.failed_calls += 1
            self._keep(message)

    def swap_done(self, spec: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.swaps += 1
            if error is None:
                self.serving = spec
                self.swap_s.append(seconds)
            else:
                self.failed_swaps += 1
                self._keep(f"SwapPolicy({spec}): {error}")

    def note(self, message: str) -> None:
        """A failure outside any call (the server exited): reported, not counted."""
        with self.lock:
            self._keep(message)

    def _keep(self, message: str) -> None:
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(message)


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (psutil if installed, else
    /proc/PID/status); None once the process is gone."""
    try:
        import psutil
    except ImportError:
        return _proc_rss_mib(pid)
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def _proc_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):  # "VmRSS:  123456 kB"
            return int(line.split()[1]) / 1024
    return None  # a zombie has no VmRSS line


def client_loop(target: str, singles: list[bytes], batches: list[bytes], start: int,
                deadline_s: float, stop: threading.Event, tally: Tally) -> None:
    """Call the service back to back until ``stop`` is set, starting at message ``start``
    (so clients send different snapshots). Each call has ``deadline_s``; a call that
    raises, or answers after its deadline, counts as failed and the loop goes on."""
    with grpc.insecure_channel(target) as channel:
        schedule = channel.unary_unary(f"/{SCHEDULER}/Schedule", request_serializer=raw_bytes,
                                       response_deserializer=pb.Decision.FromString)
        batch = channel.unary_unary(f"/{SCHEDULER}/ScheduleBatch",
                                    request_serializer=raw_bytes,
                                    response_deserializer=pb.ScheduleBatchResponse.FromString)
        for i in itertools.count(start):
            if stop.is_set():
                return
            is_batch = i % BATCH_EVERY == BATCH_EVERY - 1
            t0 = time.perf_counter()
            try:
                if is_batch:
                    reply = batch(batches[i % len(batches)], timeout=deadline_s)
                    versions = [d.policy_version for d in reply.decisions]
                else:
                    versions = [schedule(singles[i % len(singles)], timeout=deadline_s)
                                .policy_version]
            except Exception as exc:  # any non-OK status, or anything else, is a failure
                tally.call_failed(f"{_name(is_batch)}: {_describe(exc)}")
                continue
            seconds = time.perf_counter() - t0
            if seconds > deadline_s:
                # gRPC checks deadlines on a coarse timer, so an answer may come back OK
                # after its deadline; the caller would have given up on it by then.
                tally.call_failed(f"{_name(is_batch)}: OK after {seconds * 1e3:.3f} ms, past "
                                  f"its {deadline_s * 1e3:g} ms deadline")
            else:
                tally.call_ok(seconds, versions)


def _name(is_batch: bool) -> str:
    return "ScheduleBatch" if is_batch else "Schedule"


def swap_loop(target: str, token: str, every_s: float, stop: threading.Event,
              tally: Tally) -> None:
    """SwapPolicy at every multiple of ``every_s`` after the start, alternating through
    POLICIES (the first swap goes to the learned one), until ``stop`` is set."""
    start, n = time.monotonic(), 1
    # A fixed cadence: a slow swap does not push the later ones back.
    while not stop.wait(max(0.0, start + n * every_s - time.monotonic())):
        spec = POLICIES[n % len(POLICIES)]
        t0 = time.monotonic()
        try:
            admin_call(target, token, "SwapPolicy", pb.SwapPolicyRequest(spec=spec))
        except Exception as exc:  # refused, timed out, unreachable: all are failed swaps
            tally.swap_done(spec, time.monotonic() - t0, _describe(exc))
        else:
            tally.swap_done(spec, time.monotonic() - t0, None)
        n += 1


def _progress_line(elapsed: float, total: float, tally: Tally, rss: float | None) -> str:
    rate = tally.calls / elapsed if elapsed > 0 else 0.0
    mem = f"{rss:,.1f} MiB" if rss is not None else "?"
    return (f"soak {elapsed:6.0f}/{total:.0f} s  calls {tally.calls:,} ({rate:,.0f}/s, "
            f"{tally.failed_calls} failed)  swaps {tally.swaps} ({tally.failed_swaps} failed)  "
            f"serving {tally.serving}  server rss {mem}")


@dataclass
class _Watch:
    """What the main thread saw of the server while the load ran."""

    rss_start: float | None = None
    rss_start_at_s: float | None = None
    rss_max: float = 0.0
    load_s: float = 0.0


def _watch(server: ServiceProcess, cfg: SoakConfig, tally: Tally, stop: threading.Event,
           progress: Progress) -> _Watch:
    """Sample the server's RSS once a second and report progress until the run's time is
    up or the server exits (a dead server would only turn every later call into a fast
    failure)."""
    seen, t0 = _Watch(), time.monotonic()
    every = max(1.0, min(10.0, cfg.duration_s / 6))  # ~6 lines for a short run, else 10 s
    next_line = every
    while (elapsed := time.monotonic() - t0) < cfg.duration_s:
        if (code := server.proc.poll()) is not None:
            tally.note(f"the server exited with code {code} after {elapsed:.1f} s")
            break
        rss = rss_mib(server.proc.pid)
        if rss is not None:
            seen.rss_max = max(seen.rss_max, rss)
            if seen.rss_start is None and elapsed >= cfg.settle_s:
                seen.rss_start, seen.rss_start_at_s = rss, elapsed
        if elapsed >= next_line:
            progress(_progress_line(elapsed, cfg.duration_s, tally, rss))
            next_line += every
        stop.wait(min(1.0, cfg.duration_s - elapsed))
    seen.load_s = time.monotonic() - t0
    return seen


def _drive(server: ServiceProcess, token: str, cfg: SoakConfig, singles: list[bytes],
           batches: list[bytes], progress: Progress) -> tuple[Tally, _Watch, float | None]:
    """Run the clients and the swapper against ``server`` for the configured time; the
    tally, what was watched, and the RSS after the load stopped."""
    stop, tally = threading.Event(), Tally()
    deadline_s = cfg.deadline_ms / 1e3
    threads = [threading.Thread(
        target=client_loop, name=f"soak-client-{k}", daemon=True,
        args=(server.target, singles, batches, k * len(singles) // cfg.clients, deadline_s,
              stop, tally)) for k in range(cfg.clients)]
    threads.append(threading.Thread(target=swap_loop, name="soak-swapper", daemon=True,
                                    args=(server.target, token, cfg.swap_every_s, stop, tally)))
    for thread in threads:
        thread.start()
    try:
        seen = _watch(server, cfg, tally, stop, progress)
    finally:
        stop.set()
        # Each client ends after its call in flight, which ends by its deadline; a swap in
        # flight by bench_grpc's admin deadline.
        for thread in threads:
            thread.join()
    return tally, seen, rss_mib(server.proc.pid)


def _stop_server(server: ServiceProcess) -> int | None:
    """SIGTERM, wait, then SIGKILL: the server never outlives the soak. Its exit status."""
    try:
        return server.stop(timeout_s=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _payload(cfg: SoakConfig, tally: Tally, seen: _Watch, rss_end: float | None,
             exit_code: int | None, wall_s: float) -> dict[str, Any]:
    ms = np.asarray(tally.latencies_s) * 1e3
    pct = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: None)
    growth = (rss_end - seen.rss_start
              if rss_end is not None and seen.rss_start is not None else None)
    rss_max = max(seen.rss_max, rss_end or 0.0) or None
    return {
        "minutes": cfg.minutes, "clients": cfg.clients, "swap_every_s": cfg.swap_every_s,
        "deadline_ms": cfg.deadline_ms, "preset": PRESET, "policies": list(POLICIES),
        "calls": tally.calls, "failed_calls": tally.failed_calls,
        "decisions": tally.decisions, "calls_per_s": tally.calls / seen.load_s,
        "decisions_by_policy": dict(tally.by_policy),
        "latency_p50_ms": pct(50), "latency_p99_ms": pct(99),
        "latency_max_ms": float(ms.max()) if len(ms) else None,
        "swaps": tally.swaps, "failed_swaps": tally.failed_swaps,
        "swap_max_s": max(tally.swap_s) if tally.swap_s else None,
        "rss_start_mib": _mib(seen.rss_start), "rss_start_at_s": seen.rss_start_at_s,
        "rss_end_mib": _mib(rss_end), "rss_max_mib": _mib(rss_max),
        "rss_growth_mib": _mib(growth),
        "server_exit_code": exit_code, "load_s": seen.load_s, "wall_s": wall_s,
        "failures": list(tally.failures),
        "ok": tally.failed_calls == 0 and tally.failed_swaps == 0 and not tally.failures,
    }


def soak(minutes: float = 10.0, clients: int = 4, swap_every_s: float = 30.0,
         deadline_ms: float = 2000.0, progress: Progress = _stderr) -> dict[str, Any]:
    """Soak the service (see the module docstring) and return the report: counts of calls
    and swaps and their failures (``failures``: the first few messages), throughput,
    latency, the server's RSS at the start and end, and ``ok`` (nothing failed)."""
    cfg = SoakConfig(minutes, clients, swap_every_s, deadline_ms)
    began = time.monotonic()
    points = sample_points()
    singles, batches = schedule_messages(points), batch_messages(points, BATCH)
    with tempfile.TemporaryDirectory(prefix="dualpath-soak-") as tmp:
        token = secrets.token_hex(16)
        (Path(tmp) / "token").write_text(token)
        progress(f"soak: starting dualpath serve ({PRESET}, {POLICIES[0]})")
        server = ServiceProcess(["--policy", POLICIES[0], "--preset", PRESET,
                                 "--db", f"sqlite:///{Path(tmp) / 'decisions.db'}",
                                 "--admin-token-file", str(Path(tmp) / "token")])
        try:
            progress(f"soak: {server.target}, {cfg.clients} clients for {cfg.duration_s:.0f} s, "
                     f"swap every {cfg.swap_every_s:g} s, deadline {cfg.deadline_ms:g} ms")
            tally, seen, rss_end = _drive(server, token, cfg, singles, batches, progress)
        finally:
            exit_code = _stop_server(server)
    return _payload(cfg, tally, seen, rss_end, exit_code, time.monotonic() - began)


def render_soak(payload: dict[str, Any]) -> str:
    """The report as a short two-column table."""
    keys = ["minutes", "clients", "calls", "failed_calls", "calls_per_s", "latency_p50_ms",
            "latency_p99_ms", "latency_max_ms", "swaps", "failed_swaps", "swap_max_s",
            "rss_start_mib", "rss_end_mib", "rss_growth_mib", "rss_max_mib", "ok"]
    lines = [f"{k:>16}  {format_value(payload[k])}" for k in keys]
    lines += [f"{'failure':>16}  {f}" for f in payload["failures"]]
    return "\n".join(lines)
